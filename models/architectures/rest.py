"""ResT (Zhang and Yang, NeurIPS 2021) with the parameter names and shapes of wofmanaf/ResT's ResTv1 models, so that
its released checkpoints and checkpoints trained with its code load as they are.

Four stages of tokens at 1/4 to 1/32 of the input, with efficient multi-head self-attention: keys and values come
from the map shrunk by a depthwise strided convolution (`attn.sr`, stride 8, 4, 2 by stage, then a LayerNorm), and
where a stage has more than one head, the q.k maps are mixed across heads by a 1x1 convolution (`attn.
transform_conv`) before the softmax and instance-normalised after it (each map over all its entries, without
learned parameters). Positions come from pixel attention, a sigmoid gate by a depthwise 3x3 convolution, after the
stem and each patch embedding. The head averages the last stage's tokens.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from vitserve.models.architectures import layers

# ResTv1's weights are on Google Drive and Baidu (pages to download from by hand, not files)
RELEASES = "https://drive.google.com/drive/folders/1H6QUZsKYbU6LECtxzGHKqEeGbx1E8uQ9"


class EfficientAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio + 1, stride=sr_ratio, padding=sr_ratio // 2, groups=dim)
            self.sr_norm = nn.LayerNorm(dim)
        self.apply_transform = num_heads > 1
        if self.apply_transform:
            self.transform_conv = nn.Conv2d(num_heads, num_heads, 1)
            self.transform_norm = nn.InstanceNorm2d(num_heads)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.sr(x.transpose(1, 2).reshape(b, c, height, width)).flatten(2).transpose(1, 2)
            x = self.sr_norm(x)
        k, v = self.kv(x).reshape(b, -1, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        maps = (q @ k.transpose(-2, -1)) * self.scale
        if self.apply_transform:
            maps = self.transform_norm(self.transform_conv(maps).softmax(dim=-1))
        else:
            maps = maps.softmax(dim=-1)
        return self.proj((maps @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = layers.Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), height, width)
        return x + self.mlp(self.norm2(x))


class PixelAttention(nn.Module):
    """x times a sigmoid gate computed by a depthwise 3x3 convolution (ResT's positional encoding)."""

    def __init__(self, dim: int):
        super().__init__()
        self.pa_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.pa_conv(x))


class Stem(nn.Module):
    """3x3 stride 2 (to half the width), 3x3, 3x3 stride 2, BatchNorm and ReLU after the first two; pixel
    attention."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(dim // 2)
        self.conv2 = nn.Conv2d(dim // 2, dim // 2, 3, stride=1, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(dim // 2)
        self.conv3 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1, bias=False)
        self.act = nn.ReLU()
        self.pos = PixelAttention(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.conv1(x)))
        x = self.act(self.norm2(self.conv2(x)))
        return self.pos(self.conv3(x))


class PatchEmbed(nn.Module):
    """Halves the map: a 3x3 stride-2 convolution, BatchNorm, pixel attention."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(dim)
        self.pos = PixelAttention(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos(self.norm(self.conv(x)))


class ResT(layers.Classifier):
    pool = "mean"

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, embed_dims=(64, 128, 256, 512),
                 num_heads=(1, 2, 4, 8), mlp_ratios=(4, 4, 4, 4), depths=(2, 2, 2, 2), sr_ratios=(8, 4, 2, 1)):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = embed_dims[-1]
        self.stem = Stem(in_chans, embed_dims[0])
        for i in (2, 3, 4):
            setattr(self, f"patch_embed_{i}", PatchEmbed(embed_dims[i - 2], embed_dims[i - 1]))
        for i in (1, 2, 3, 4):
            setattr(self, f"stage{i}", nn.ModuleList(
                Block(embed_dims[i - 1], num_heads[i - 1], mlp_ratios[i - 1], sr_ratios[i - 1])
                for _ in range(depths[i - 1])))
        self.norm = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, tokens of the last stage, width), after the final norm."""
        x = self.stem(x)
        for i in (1, 2, 3, 4):
            if i > 1:
                x = getattr(self, f"patch_embed_{i}")(x)
            b, c, height, width = x.shape
            x = x.flatten(2).transpose(1, 2)
            for block in getattr(self, f"stage{i}"):
                x = block(x, height, width)
            if i < 4:
                x = x.transpose(1, 2).reshape(b, c, height, width)
        return self.norm(x)


def _init_weights(module: nn.Module) -> None:
    """The official initialization: truncated normal convolution and Linear weights, norms at one and zero."""
    if isinstance(module, nn.Conv2d):
        trunc_normal_(module.weight, std=0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    else:
        layers.init_weights(module)


# The eval transform ResTv1 was released with (its DeiT-based datasets.py): a 256 px resize and a 224 px centre crop,
# bicubic; the repository's later ResTv2 code evaluates at crop 1.0
default_cfgs = generate_default_cfgs({
    f"{name}.in1k": layers.official_cfg(origin_url=RELEASES, crop_pct=0.875, first_conv="stem.conv1")
    for name in ("rest_lite", "rest_small", "rest_base", "rest_large")
})
checkpoint_filter_fn = layers.checkpoint_filter_fn


def _create(variant: str, pretrained: bool, **kwargs) -> ResT:
    return build_model_with_cfg(ResT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


layers.register_variants(__name__, _create, {
    "rest_lite": dict(depths=(2, 2, 2, 2)),
    "rest_small": dict(depths=(2, 2, 6, 2)),
    "rest_base": dict(embed_dims=(96, 192, 384, 768), depths=(2, 2, 6, 2)),
    "rest_large": dict(embed_dims=(96, 192, 384, 768), depths=(2, 2, 18, 2)),
})
