"""LV-ViT (Jiang et al., NeurIPS 2021, "All Tokens Matter: Token Labeling"), with the parameter names and shapes
of zihangJiang/TokenLabeling, so that its released checkpoints and checkpoints trained with its code load as they
are.

A ViT with a convolution stem (a 7x7 stride-2 convolution and two 3x3 ones, then 8x8 patches), no q/k/v bias,
residual branches divided by `skip_lam`, and an auxiliary head trained on every patch token (token labeling). At
eval the class token's prediction gets half of the largest auxiliary prediction over the patch tokens added, per
class, as the official model returns it.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from vitserve.models.architectures.layers import (
    Attention,
    Classifier,
    ConvStem,
    Mlp,
    checkpoint_filter_fn,
    init_weights,
    official_cfg,
    register_variants,
)

RELEASES = "https://github.com/zihangJiang/TokenLabeling/releases/download/"


class Block(nn.Module):
    """Pre-norm block whose branches are divided by `skip_lam` before they are added."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, skip_lam: float):
        super().__init__()
        self.skip_lam = skip_lam
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x)) / self.skip_lam
        return x + self.mlp(self.norm2(x)) / self.skip_lam


class LVViT(Classifier):
    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 384, depth: int = 16, num_heads: int = 6, mlp_ratio: float = 3.0,
                 skip_lam: float = 2.0, stem_width: int = 64):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = ConvStem(in_chans, embed_dim, patch_size, width=stem_width, convs=3)
        tokens = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, skip_lam) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.aux_head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.through_blocks(self.patch_embed(x).flatten(2).transpose(1, 2))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            return x[:, 0]
        return self.head(x[:, 0]) + 0.5 * self.aux_head(x[:, 1:]).amax(dim=1)


default_cfgs = generate_default_cfgs({
    "lvvit_t.in1k": official_cfg(RELEASES + "v0.2.0/lvvit_t.pth", first_conv="patch_embed.conv1"),
    "lvvit_s.in1k": official_cfg(RELEASES + "1.0/lvvit_s-26M-224-83.3.pth.tar", first_conv="patch_embed.conv1"),
    "lvvit_m.in1k": official_cfg(RELEASES + "1.0/lvvit_m-56M-224-84.0.pth.tar", crop_pct=1.0,
                                 first_conv="patch_embed.conv1"),
})


def _create(variant: str, pretrained: bool, **kwargs) -> LVViT:
    return build_model_with_cfg(LVViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


register_variants(__name__, _create, {
    "lvvit_t": dict(embed_dim=240, depth=12, num_heads=4, skip_lam=1.0),
    "lvvit_s": dict(embed_dim=384, depth=16, num_heads=6, skip_lam=2.0),
    "lvvit_m": dict(embed_dim=512, depth=20, num_heads=8, skip_lam=2.0),
})
