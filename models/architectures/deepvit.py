"""DeepViT (Zhou et al., 2021) with the parameter names and shapes of zhoudaquan/dvit_repo, so that its released
checkpoints and checkpoints trained with its code load as they are.

A ViT whose deeper blocks re-generate their attention maps ("re-attention"): the softmax attention of all heads is
mixed by a learned head-by-head matrix (a 1x1 convolution over the heads, `attn.reatten_matrix`) and normalised by
BatchNorm over the heads (`attn.var_norm`) before it weighs the values. `deepvit_s` (16 blocks, the last 5
re-attending) and `deepvit_l` (32 blocks, the last 12) embed patches with a small convolution stem and scale each
block's input by 0.5 and its branches' outputs by 2 (the official `scale_adjustment`); `deepvit_s` also multiplies
the re-generated maps by the attention scale. The official eval transform uses 0.5 mean and std.
"""

from __future__ import annotations

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from vitserve.models.architectures.layers import (
    Attention,
    Classifier,
    ConvStem,
    Mlp,
    attend,
    checkpoint_filter_fn,
    official_cfg,
    register_variants,
)

# The weights are on Google Drive (pages to download from by hand, not files)
RELEASES = {"deepvit_s": "https://drive.google.com/file/d/1evhBjla4Nth7LawW2PAXnGEcpv3YBWEC/view?usp=sharing",
            "deepvit_l": "https://drive.google.com/file/d/1MTRm0NK_sPGRSyuD_hHJ1Zgw2diEaKLR/view?usp=sharing"}


class ReAttention(Attention):
    """Self-attention whose softmax maps (B, heads, N, N), where `re_attend`, are mixed across heads by
    `reatten_matrix`, normalised by `var_norm` and scaled by `reatten_scale` before they weigh the values."""

    def __init__(self, dim: int, num_heads: int, re_attend: bool, scale_maps: bool):
        super().__init__(dim, num_heads, qkv_bias=True)
        self.re_attend = re_attend
        if re_attend:
            self.reatten_matrix = nn.Conv2d(num_heads, num_heads, 1)
            self.var_norm = nn.BatchNorm2d(num_heads)
            self.reatten_scale = self.scale if scale_maps else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(x)
        if not self.re_attend:
            return self.merge(attend(q, k, v, self.scale, self.fused_attn))
        maps = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        maps = self.var_norm(self.reatten_matrix(maps)) * self.reatten_scale
        return self.merge(maps @ v)


class Block(nn.Module):
    """Pre-norm block whose branches see the input times `adjust` and add their output divided by it."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, re_attend: bool, scale_maps: bool,
                 adjust: float):
        super().__init__()
        self.adjust_ratio = adjust
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ReAttention(dim, num_heads, re_attend, scale_maps)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.adjust_ratio
        x = x + self.attn(self.norm1(x * a)) / a
        return x + self.mlp(self.norm2(x * a)) / a


class DeepViT(Classifier):
    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 396, depth: int = 16, re_attention_blocks: int = 5, num_heads: int = 12,
                 mlp_ratio: float = 3.0, scale_maps: bool = False, adjust: float = 0.5):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = ConvStem(in_chans, embed_dim, patch_size, convs=2)
        tokens = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, i >= depth - re_attention_blocks, scale_maps, adjust)
            for i in range(depth))
        self.add_norm_and_head(embed_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.through_blocks(self.patch_embed(x).flatten(2).transpose(1, 2))


default_cfgs = generate_default_cfgs({
    f"{name}.in1k": official_cfg(origin_url=page, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                 first_conv="patch_embed.conv1")
    for name, page in RELEASES.items()
})


def _create(variant: str, pretrained: bool, **kwargs) -> DeepViT:
    return build_model_with_cfg(DeepViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


register_variants(__name__, _create, {
    "deepvit_s": dict(embed_dim=396, depth=16, re_attention_blocks=5, scale_maps=True),
    "deepvit_l": dict(embed_dim=420, depth=32, re_attention_blocks=12, scale_maps=False),
})
