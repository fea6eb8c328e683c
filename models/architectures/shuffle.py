"""Shuffle Transformer (Huang et al., 2021) with the parameter names and shapes of mulinmeng/Shuffle-Transformer, so
that its released checkpoints and checkpoints trained with its code load as they are.

A Swin-like hierarchy of convolutional-layout blocks (B, C, H, W) in pairs: the first attends within regular 7x7
windows, the second within "shuffled" windows, each of which gathers tokens spread across the whole map (every
(H/7)-th row and every (W/7)-th column): a reshape in place of Swin's shifted windows, with no roll and no mask. Each
block adds a depthwise 7x7 convolution (`local`, the neighbour-window connection) between the attention and the MLP
(1x1 convolutions with ReLU6); norms are BatchNorm, windows have Swin's relative position bias.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from vitserve.models.architectures import layers

# The weights are on Google Drive (pages to download from by hand, not files)
RELEASES = {"shuffle_t": "https://drive.google.com/drive/folders/1goDJtcnxgBAcHhZnNwrgOlG_WBftpmOS",
            "shuffle_s": "https://drive.google.com/drive/folders/1GUBBQyDldY145vDiK-BHqivmpj3K6HK2",
            "shuffle_b": "https://drive.google.com/drive/folders/1x0biaJRdN4nxLmp_3lQcA_6hO_sDBoUM"}


def relative_position_index(window: int) -> torch.Tensor:
    """(window^2, window^2): for tokens i and j of a window, the row of the bias table for their offset,
    (dy + window - 1) * (2 window - 1) + (dx + window - 1)."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    dy = rows.flatten()[:, None] - rows.flatten()[None, :]
    dx = cols.flatten()[:, None] - cols.flatten()[None, :]
    return (dy + window - 1) * (2 * window - 1) + (dx + window - 1)


class WindowAttention(nn.Module):
    """Attention within 7x7 windows of a (B, C, H, W) map: regular windows of adjacent tokens, or shuffled ones."""

    def __init__(self, dim: int, num_heads: int, window: int, shuffle: bool):
        super().__init__()
        self.num_heads, self.ws, self.shuffle = num_heads, window, shuffle
        self.scale = (dim // num_heads) ** -0.5
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        heads, ws = self.num_heads, self.ws
        hh, ww, d = h // ws, w // ws, c // heads
        qkv = self.to_qkv(x)
        if self.shuffle:  # row (i * hh + r) of the map is row i of window row r: windows of far-apart tokens
            qkv = qkv.reshape(b, 3, heads, d, ws, hh, ws, ww).permute(1, 0, 5, 7, 2, 4, 6, 3)
        else:  # row (r * ws + i) is row i of window row r
            qkv = qkv.reshape(b, 3, heads, d, hh, ws, ww, ws).permute(1, 0, 4, 6, 2, 5, 7, 3)
        q, k, v = qkv.reshape(3, b * hh * ww, heads, ws * ws, d).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(ws * ws, ws * ws, heads).permute(2, 0, 1)
        out = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1) @ v
        out = out.reshape(b, hh, ww, heads, ws, ws, d)
        if self.shuffle:
            out = out.permute(0, 3, 6, 4, 1, 5, 2)  # b, heads, d, ws1, hh, ws2, ww
        else:
            out = out.permute(0, 3, 6, 1, 4, 2, 5)  # b, heads, d, hh, ws1, ww, ws2
        return self.proj(out.reshape(b, c, h, w))


class ConvMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.ReLU6()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shuffle: bool, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = WindowAttention(dim, num_heads, window, shuffle)
        self.local = nn.Conv2d(dim, dim, window, padding=window // 2, groups=dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.norm3 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.local(self.norm2(x))
        return x + self.mlp(self.norm3(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.reduction = nn.Conv2d(dim, out_dim, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(x))


class Stage(nn.Module):
    """Pairs of blocks (regular windows, then shuffled ones), after a patch merging where the width changes."""

    def __init__(self, depth: int, dim: int, out_dim: int, num_heads: int, window: int, mlp_ratio: float):
        super().__init__()
        self.patch_partition = PatchMerging(dim, out_dim) if dim != out_dim else None
        self.layers = nn.ModuleList(
            nn.ModuleList([Block(out_dim, num_heads, window, False, mlp_ratio),
                           Block(out_dim, num_heads, window, True, mlp_ratio)])
            for _ in range(depth // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch_partition is not None:
            x = self.patch_partition(x)
        for regular, shuffled in self.layers:
            x = shuffled(regular(x))
        return x


def _conv_bn_relu6(in_chans: int, out_chans: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chans, out_chans, 3, stride=2, padding=1), nn.BatchNorm2d(out_chans),
                         nn.ReLU6())


class PatchEmbedding(nn.Module):
    """Two 3x3 stride-2 convolutions with BatchNorm and ReLU6, then a 1x1 one: 1/4 of the input."""

    def __init__(self, inter_channel: int, out_channels: int):
        super().__init__()
        self.conv1 = _conv_bn_relu6(3, inter_channel)
        self.conv2 = _conv_bn_relu6(inter_channel, out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class ShuffleTransformer(layers.Classifier):
    pool, mean_dims = "mean", (2, 3)

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000, token_dim: int = 32,
                 embed_dim: int = 96, mlp_ratio: float = 4.0, layers=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                 window_size: int = 7):
        super().__init__()
        if in_chans != 3:
            raise ValueError("the official Shuffle Transformer takes 3-channel images")
        self.num_classes = num_classes
        dims = [32 * heads for heads in num_heads]
        self.num_features = dims[-1]
        self.to_token = PatchEmbedding(token_dim, embed_dim)
        widths = [embed_dim, *dims]
        for i in range(4):
            setattr(self, f"stage{i + 1}", Stage(layers[i], widths[i], widths[i + 1], num_heads[i], window_size,
                                                 mlp_ratio))
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_token(x)
        for i in range(1, 5):
            x = getattr(self, f"stage{i}")(x)
        return x


def _init_weights(module: nn.Module) -> None:
    """The official initialization: truncated normal convolution and Linear weights, zero biases, norms at one."""
    if isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Linear, nn.Conv2d)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# The official eval transform (its data/build.py with TEST.CROP): a 256 px resize and a 224 px centre crop, bicubic
default_cfgs = generate_default_cfgs({
    f"shuffle_vit_{size}_patch4_window7_224.in1k": layers.official_cfg(
        origin_url=RELEASES[f"shuffle_{size[0]}"], crop_pct=0.875, first_conv="to_token.conv1.0")
    for size in ("tiny", "small", "base")
})
checkpoint_filter_fn = layers.checkpoint_filter_fn


def _create(variant: str, pretrained: bool, **kwargs) -> ShuffleTransformer:
    return build_model_with_cfg(ShuffleTransformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                **kwargs)


layers.register_variants(__name__, _create, {
    "shuffle_vit_tiny_patch4_window7_224": dict(embed_dim=96, layers=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "shuffle_vit_small_patch4_window7_224": dict(embed_dim=96, layers=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "shuffle_vit_base_patch4_window7_224": dict(embed_dim=128, layers=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
})
