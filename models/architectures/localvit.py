"""LocalViT (Li et al., IROS 2023, "LocalViT: Analyzing Locality in Vision Transformers") on DeiT, with the parameter
names and shapes of ofsoundof/LocalViT, so that its released checkpoints and checkpoints trained with its code load
as they are.

A DeiT whose blocks have no second LayerNorm and no token MLP: after the attention, the patch tokens, as a map, go
through a residual "locality feed-forward" (`blocks.N.conv.conv`, one Sequential): a pointwise convolution, a
depthwise 3x3 one, a squeeze-and-excitation gate and a pointwise one, each convolution without bias and followed by
BatchNorm, the first two by hard-swish; the gate squeezes to hidden / `reduction` and ends in a hard sigmoid. The
class token skips it. The released variants (`localvit_t`, `localvit_t_se4`, `localvit_s`) differ in width, heads
and the gate's reduction.
"""

from __future__ import annotations

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from vitserve.models.architectures import layers

RELEASE = "https://github.com/ofsoundof/LocalViT/releases/download/v1.0.0/"
# registered name -> the release's file
RELEASES = {"localvit_tiny_mlp4_act3_r192": "localvit_t.pth", "localvit_tiny_mlp4_act3_r4": "localvit_t_se4.pth",
            "localvit_small_mlp4_act3_r384": "localvit_s.pth"}


class SqueezeExcite(nn.Module):
    """Channel gate: the map's mean per channel through `fc` (squeeze, ReLU, excite, hard sigmoid) scales it."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(),
                                nn.Linear(channels // reduction, channels), nn.Hardsigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


def locality_feed_forward(dim: int, hidden: int, reduction: int) -> nn.Sequential:
    """The residual branch of the locality feed-forward, indexed as the official Sequential is (0-8)."""
    return nn.Sequential(
        nn.Conv2d(dim, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish(),
        nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish(),
        SqueezeExcite(hidden, reduction),
        nn.Conv2d(hidden, dim, 1, bias=False), nn.BatchNorm2d(dim),
    )


class LocalityFeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, reduction: int):
        super().__init__()
        self.conv = locality_feed_forward(dim, hidden, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class Block(nn.Module):
    """Pre-norm attention, then the locality feed-forward on the patch tokens as a side x side map."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, reduction: int, side: int):
        super().__init__()
        self.side = side
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = layers.Attention(dim, num_heads, qkv_bias=True)
        self.conv = LocalityFeedForward(dim, int(dim * mlp_ratio), reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        b, _, c = x.shape
        cls_token, tokens = x[:, :1], x[:, 1:]
        y = self.conv(tokens.transpose(1, 2).reshape(b, c, self.side, self.side))
        return torch.cat((cls_token, y.flatten(2).transpose(1, 2)), dim=1)


class LocalViT(layers.Classifier):
    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 192, depth: int = 12, num_heads: int = 4, mlp_ratio: float = 4.0,
                 reduction: int = 192):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        side = img_size // patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side + 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, reduction, side) for _ in range(depth))
        self.add_norm_and_head(embed_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.through_blocks(self.patch_embed.proj(x).flatten(2).transpose(1, 2))


# The official eval transform (DeiT's): a 256 px resize and a 224 px centre crop, bicubic
default_cfgs = generate_default_cfgs({
    f"{name}.in1k": layers.official_cfg(RELEASE + file, crop_pct=0.875, first_conv="patch_embed.proj")
    for name, file in RELEASES.items()
})
checkpoint_filter_fn = layers.checkpoint_filter_fn


def _create(variant: str, pretrained: bool, **kwargs) -> LocalViT:
    return build_model_with_cfg(LocalViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


layers.register_variants(__name__, _create, {
    "localvit_tiny_mlp4_act3_r192": dict(embed_dim=192, num_heads=4, reduction=192),
    "localvit_tiny_mlp4_act3_r4": dict(embed_dim=192, num_heads=4, reduction=4),
    "localvit_small_mlp4_act3_r384": dict(embed_dim=384, num_heads=8, reduction=384),
})
