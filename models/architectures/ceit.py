"""CeiT (Yuan et al., ICCV 2021, "Incorporating Convolution Designs into Visual Transformers") with the parameter
names and shapes of coeusguo/ceit, so that its released checkpoints and checkpoints trained with its code load as
they are.

Image-to-tokens: a 7x7 stride-2 convolution, BatchNorm and a 3x3 stride-2 max pool (no activation), then 4x4
patches. Each block's feed-forward is locally enhanced (LeFF): the patch tokens, as a map, go through a pointwise,
a depthwise 3x3 and a pointwise convolution, each with BatchNorm (GELU after the first two), while the class token
passes through unchanged. The class tokens of all blocks, with a learned per-layer embedding, then meet in one
layer-wise class-token attention block (LCA), in which only the last block's class token queries.
"""

from __future__ import annotations

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from vitserve.models.architectures import layers

# The weights are on Google Drive (a page to download from by hand, not a file)
RELEASES = "https://drive.google.com/file/d/1S19SQUic9ILBGNkcJTOy74MGoj-JRM4x/view?usp=sharing"


class ImageToTokens(nn.Module):
    """The stem (`i2t.backbone`) and the 4x4 patch projection (`i2t.proj`)."""

    def __init__(self, in_chans: int, embed_dim: int, width: int = 64, patch_size: int = 4):
        super().__init__()
        self.backbone = nn.Sequential()
        self.backbone.add_module("conv", nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False))
        self.backbone.add_module("bn", nn.BatchNorm2d(width))
        self.backbone.add_module("maxpool", nn.MaxPool2d(3, stride=2, padding=1))
        self.proj = nn.Conv2d(width, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(x)).flatten(2).transpose(1, 2)


class LocallyEnhancedFeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, side: int):
        super().__init__()
        self.side = side
        self.conv1 = nn.Conv2d(dim, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.conv3 = nn.Conv2d(hidden, dim, 1)
        self.act = nn.GELU()
        self.bn1 = nn.BatchNorm2d(hidden)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.bn3 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        cls_token, tokens = x[:, :1], x[:, 1:]
        y = tokens.reshape(b, self.side, self.side, c).permute(0, 3, 1, 2)
        y = self.act(self.bn1(self.conv1(y)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.cat((cls_token, y.flatten(2).transpose(1, 2)), dim=1)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, side: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = layers.Attention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.leff = LocallyEnhancedFeedForward(dim, int(dim * mlp_ratio), side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.leff(self.norm2(x))


class LastTokenAttention(layers.Attention):
    """Attention in which only the last token queries (the rows of `qkv` that make q, applied to it alone); all
    tokens give keys and values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        head = c // self.num_heads
        q = nn.functional.linear(x[:, -1:], self.qkv.weight[:c], self.qkv.bias[:c])
        q = q.reshape(b, 1, self.num_heads, head).transpose(1, 2)
        kv = nn.functional.linear(x, self.qkv.weight[c:], self.qkv.bias[c:])
        k, v = kv.reshape(b, n, 2, self.num_heads, head).permute(2, 0, 3, 1, 4).unbind(0)
        return self.merge(layers.attend(q, k, v, self.scale, self.fused_attn))


class LayerClassAttention(nn.Module):
    """LCA: the last class token plus its attention over all blocks' class tokens, then an MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = LastTokenAttention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.feedforward = layers.Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, -1:] + self.attn(self.norm1(x))
        return x + self.feedforward(self.norm2(x))


class CeiT(layers.Classifier):
    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 192,
                 depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.i2t = ImageToTokens(in_chans, embed_dim)
        side = img_size // 16  # the stem's stride 4, then 4x4 patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side + 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, side) for _ in range(depth))
        self.lca = LayerClassAttention(embed_dim, num_heads, mlp_ratio)
        self.pos_layer_embed = nn.Parameter(torch.zeros(1, depth, embed_dim))
        self.add_norm_and_head(embed_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised output of the class-token attention, (B, 1, width)."""
        x = self.i2t(x)
        x = layers.with_class_token(x, self.cls_token, self.pos_embed)
        class_tokens = []
        for block in self.blocks:
            x = block(x)
            class_tokens.append(x[:, 0])
        return self.norm(self.lca(torch.stack(class_tokens, dim=1) + self.pos_layer_embed))


# The official eval transform (DeiT's): a 256 px resize and a 224 px centre crop, bicubic
default_cfgs = generate_default_cfgs({
    f"{name}.in1k": layers.official_cfg(origin_url=RELEASES, crop_pct=0.875, first_conv="i2t.backbone.conv")
    for name in ("ceit_tiny_patch16_224", "ceit_small_patch16_224", "ceit_base_patch16_224")
})
checkpoint_filter_fn = layers.checkpoint_filter_fn


def _create(variant: str, pretrained: bool, **kwargs) -> CeiT:
    return build_model_with_cfg(CeiT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


layers.register_variants(__name__, _create, {
    "ceit_tiny_patch16_224": dict(embed_dim=192, num_heads=3),
    "ceit_small_patch16_224": dict(embed_dim=384, num_heads=6),
    "ceit_base_patch16_224": dict(embed_dim=768, num_heads=12),
})
