"""CSWin Transformer (Dong et al., CVPR 2022) with the parameter names and shapes of microsoft/CSWin-Transformer, so
that its released checkpoints and checkpoints trained with its code load as they are.

Cross-shaped window self-attention: each block splits its channels (and heads) in two; one half attends within
vertical stripes (full height, `split` columns wide), the other within horizontal stripes (full width, `split` rows
high), so that together a token sees a cross through it. Where the map is as small as the stripe (the last stage),
one branch attends over the whole map. Locally-enhanced positional encoding (LePE): a depthwise 3x3 convolution of
the values within each stripe (`get_v`, zero-padded at the stripe's edges) is added to the attention output. Four
stages at 1/4 to 1/32 of the input, joined by 3x3 stride-2 convolutions; the head averages the last stage's tokens.
"""

from __future__ import annotations

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from vitserve.models.architectures import layers

RELEASES = "https://github.com/microsoft/CSWin-Transformer/releases/download/v0.1.0/"


def to_stripes(x: torch.Tensor, side: int, rows: int, cols: int) -> torch.Tensor:
    """(B, side*side, C) in row-major image order -> (B * stripes, rows*cols, C): stripes of `rows` x `cols` tokens,
    in row-major order of stripes, tokens row-major within each."""
    b, _, c = x.shape
    x = x.reshape(b, side // rows, rows, side // cols, cols, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, rows * cols, c)


def from_stripes(x: torch.Tensor, side: int, rows: int, cols: int) -> torch.Tensor:
    """to_stripes undone: (B * stripes, rows*cols, C) -> (B, side*side, C)."""
    c = x.shape[-1]
    x = x.reshape(-1, side // rows, side // cols, rows, cols, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, side * side, c)


class LePEAttention(nn.Module):
    """Attention within stripes of `rows` x `cols` tokens of a `side` x `side` map, plus LePE."""

    def __init__(self, dim: int, side: int, rows: int, cols: int, num_heads: int):
        super().__init__()
        self.side, self.rows, self.cols = side, rows, cols
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.fused_attn = True
        self.get_v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: (B, side*side, C) -> (B, side*side, C)."""
        c, heads = q.shape[-1], self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (B', tokens, C) -> (B', heads, tokens, C / heads)
            return t.reshape(t.shape[0], t.shape[1], heads, c // heads).transpose(1, 2)

        q, k, v = (to_stripes(t, self.side, self.rows, self.cols) for t in (q, k, v))
        grid = v.transpose(1, 2).reshape(-1, c, self.rows, self.cols)
        lepe = self.get_v(grid).flatten(2).transpose(1, 2)
        y = layers.attend(split(q), split(k), split(v), self.scale, self.fused_attn) + split(lepe)
        return from_stripes(y.transpose(1, 2).reshape(-1, self.rows * self.cols, c), self.side, self.rows, self.cols)


class CSWinBlock(nn.Module):
    def __init__(self, dim: int, side: int, num_heads: int, split: int, mlp_ratio: float, last_stage: bool):
        super().__init__()
        self.qkv = nn.Linear(dim, dim * 3)
        self.norm1 = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        if last_stage or side == split:  # one branch over the whole map
            self.attns = nn.ModuleList([LePEAttention(dim, side, side, side, num_heads)])
        else:  # vertical stripes on the first half of the channels, horizontal on the second
            self.attns = nn.ModuleList([LePEAttention(dim // 2, side, side, split, num_heads // 2),
                                        LePEAttention(dim // 2, side, split, side, num_heads // 2)])
        self.mlp = layers.Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        if len(self.attns) == 1:
            y = self.attns[0](q, k, v)
        else:
            half = q.shape[-1] // 2
            y = torch.cat([attn(q[..., i * half:(i + 1) * half], k[..., i * half:(i + 1) * half],
                                v[..., i * half:(i + 1) * half]) for i, attn in enumerate(self.attns)], dim=-1)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class MergeBlock(nn.Module):
    """Halves the map: a 3x3 stride-2 convolution, then a LayerNorm over the tokens."""

    def __init__(self, dim: int, dim_out: int, side: int):
        super().__init__()
        self.side = side
        self.conv = nn.Conv2d(dim, dim_out, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.side, self.side)
        return self.norm(self.conv(x).flatten(2).transpose(1, 2))


class ChannelsLastNorm(nn.LayerNorm):
    """A LayerNorm over the channels of (B, C, N), returned as (B, N, C): the official stem's rearrange and norm in
    one module, so that its parameters keep their name (`stage1_conv_embed.2`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2))


class CSWin(layers.Classifier):
    pool = "mean"

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 64,
                 depth=(1, 2, 21, 1), split_size=(1, 2, 7, 7), num_heads=(2, 4, 8, 16), mlp_ratio: float = 4.0):
        super().__init__()
        self.num_classes = num_classes
        self.stage1_conv_embed = nn.Sequential()
        self.stage1_conv_embed.add_module("0", nn.Conv2d(in_chans, embed_dim, 7, stride=4, padding=2))
        self.stage1_conv_embed.add_module("1", nn.Flatten(2))
        self.stage1_conv_embed.add_module("2", ChannelsLastNorm(embed_dim))
        dim, side = embed_dim, img_size // 4
        for i in range(4):
            if i > 0:
                setattr(self, f"merge{i}", MergeBlock(dim, dim * 2, side))
                dim, side = dim * 2, side // 2
            setattr(self, f"stage{i + 1}", nn.ModuleList(
                CSWinBlock(dim, side, num_heads[i], split_size[i], mlp_ratio, last_stage=i == 3)
                for _ in range(depth[i])))
        self.num_features = dim
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(layers.init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage1_conv_embed(x)
        for i in range(1, 5):
            if i > 1:
                x = getattr(self, f"merge{i - 1}")(x)
            for block in getattr(self, f"stage{i}"):
                x = block(x)
        return self.norm(x)


default_cfgs = generate_default_cfgs({
    f"cswin_{size}_224.in1k": layers.official_cfg(RELEASES + f"cswin_{size}_224.pth", first_conv="stage1_conv_embed.0")
    for size in ("tiny", "small", "base")
})
checkpoint_filter_fn = layers.checkpoint_filter_fn


def _create(variant: str, pretrained: bool, **kwargs) -> CSWin:
    return build_model_with_cfg(CSWin, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


layers.register_variants(__name__, _create, {
    "cswin_tiny_224": dict(embed_dim=64, depth=(1, 2, 21, 1), num_heads=(2, 4, 8, 16)),
    "cswin_small_224": dict(embed_dim=64, depth=(2, 4, 32, 2), num_heads=(2, 4, 8, 16)),
    "cswin_base_224": dict(embed_dim=96, depth=(2, 4, 32, 2), num_heads=(4, 8, 16, 32)),
})
