"""T2T-ViT (Yuan et al., ICCV 2021) with the parameter names and shapes of yitu-opensource/T2T-ViT, so that its
released checkpoints and checkpoints trained with its code load as they are.

Tokens-to-token: three soft splits (overlapping unfolds: 7x7 stride 4, then 3x3 stride 2 twice) with a small
one-head transformer between them, so that each token gathers its neighbours before the ViT blocks see 14x14 tokens
at 224 px. The `t2t_vit_N` models use a Performer there (softmax attention approximated by positive random features;
the frozen feature matrix `w` is part of the state dict), the `t2t_vit_t_N` models plain attention. Both use the
value as the shortcut, since the token width changes inside them. Position embeddings are fixed sinusoids, also
in the state dict.
"""

from __future__ import annotations

import math

import torch
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from vitserve.models.architectures.layers import (
    Attention,
    Classifier,
    Mlp,
    attend,
    checkpoint_filter_fn,
    init_weights,
    official_cfg,
    register_variants,
)

RELEASES = "https://github.com/yitu-opensource/T2T-ViT/releases/download/main/"


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenTransformer(nn.Module):
    """Tokens-to-token with softmax attention (`t2t_vit_t_N`): one head from `dim` to `out_dim`, the value as
    the shortcut."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, 1, out_dim=out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.attn.heads(self.norm1(x))
        x = v.squeeze(1) + self.attn.merge(attend(q, k, v, self.attn.scale, self.attn.fused_attn))
        return x + self.mlp(self.norm2(x))


class TokenPerformer(nn.Module):
    """Tokens-to-token with Performer attention (`t2t_vit_N`), one head from `dim` to `out_dim`.

    softmax(q.k) is approximated by phi(q).phi(k) with phi(x) = exp(w x - |x|^2 / 2) / sqrt(m): the m rows of `w`
    are random orthonormal directions scaled by sqrt(m), drawn once and never trained. Attention is then linear in
    the tokens: y = phi(Q) (phi(K)^T V) / (phi(Q) sum_t phi(k_t))."""

    def __init__(self, dim: int, out_dim: int, kernel_ratio: float = 0.5, epsilon: float = 1e-8):
        super().__init__()
        self.out_dim = out_dim
        self.epsilon = epsilon
        self.kqv = nn.Linear(dim, 3 * out_dim)  # k, q, v in that order
        self.proj = nn.Linear(out_dim, out_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = nn.Sequential(nn.Linear(out_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        m = int(out_dim * kernel_ratio)
        self.w = nn.Parameter(nn.init.orthogonal_(torch.empty(m, out_dim)) * math.sqrt(m), requires_grad=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x): (B, T, out_dim) -> (B, T, m)."""
        m = self.w.shape[0]
        return torch.exp(x @ self.w.t() - (x * x).sum(dim=-1, keepdim=True) / 2) / math.sqrt(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(self.norm1(x)).split(self.out_dim, dim=-1)
        kp, qp = self.features(k), self.features(q)
        normaliser = qp @ kp.sum(dim=1).unsqueeze(-1)  # (B, T, 1)
        y = (qp @ (kp.transpose(1, 2) @ v)) / (normaliser + self.epsilon)
        x = v + self.proj(y)
        return x + self.mlp(self.norm2(x))


class T2TModule(nn.Module):
    """Image -> tokens: soft split, re-structure (token transformer), soft split, re-structure, soft split,
    project. The maps between the steps are 1/4, 1/8 and 1/16 of the input's side."""

    def __init__(self, img_size: int, tokens_type: str, in_chans: int, embed_dim: int, token_dim: int = 64):
        super().__init__()
        self.soft_split0 = nn.Unfold(kernel_size=7, stride=4, padding=2)
        self.soft_split1 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.soft_split2 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        if tokens_type == "performer":
            self.attention1 = TokenPerformer(in_chans * 7 * 7, token_dim)
            self.attention2 = TokenPerformer(token_dim * 3 * 3, token_dim)
        elif tokens_type == "transformer":
            self.attention1 = TokenTransformer(in_chans * 7 * 7, token_dim)
            self.attention2 = TokenTransformer(token_dim * 3 * 3, token_dim)
        else:
            raise ValueError(f"tokens_type {tokens_type!r}: 'performer' or 'transformer'")
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)
        side = (img_size + 2 * 2 - 7) // 4 + 1
        self.sides = (side, (side - 1) // 2 + 1)  # the maps the second and third soft splits take
        self.num_patches = ((self.sides[1] - 1) // 2 + 1) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention1(self.soft_split0(x).transpose(1, 2))
        x = self.attention2(self.soft_split1(self._map(x, self.sides[0])).transpose(1, 2))
        return self.project(self.soft_split2(self._map(x, self.sides[1])).transpose(1, 2))

    @staticmethod
    def _map(tokens: torch.Tensor, side: int) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


def sinusoids(positions: int, dim: int) -> torch.Tensor:
    """(1, positions, dim): sin(p / 10000^(2i/dim)) in even channels 2i, cos of the same angle in odd ones."""
    position = torch.arange(positions, dtype=torch.float64)[:, None]
    rate = torch.pow(10000.0, 2 * (torch.arange(dim) // 2) / dim).to(torch.float64)
    angles = position / rate
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angles), torch.cos(angles))
    return table.float()[None]


class T2TViT(Classifier):
    def __init__(self, img_size: int = 224, tokens_type: str = "performer", in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 token_dim: int = 64):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.tokens_to_token = T2TModule(img_size, tokens_type, in_chans, embed_dim, token_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sinusoids(self.tokens_to_token.num_patches + 1, embed_dim),
                                      requires_grad=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.through_blocks(self.tokens_to_token(x))


default_cfgs = generate_default_cfgs({
    f"{name}.in1k": official_cfg(RELEASES + file, first_conv="tokens_to_token.soft_split0")
    for name, file in (("t2t_vit_7", "71.7_T2T_ViT_7.pth.tar"), ("t2t_vit_10", "75.2_T2T_ViT_10.pth.tar"),
                       ("t2t_vit_12", "76.5_T2T_ViT_12.pth.tar"), ("t2t_vit_14", "81.5_T2T_ViT_14.pth.tar"),
                       ("t2t_vit_19", "81.9_T2T_ViT_19.pth.tar"), ("t2t_vit_24", "82.3_T2T_ViT_24.pth.tar"),
                       ("t2t_vit_t_14", "81.7_T2T_ViTt_14.pth.tar"), ("t2t_vit_t_19", "82.4_T2T_ViTt_19.pth.tar"),
                       ("t2t_vit_t_24", "82.6_T2T_ViTt_24.pth.tar"))
})


def _create(variant: str, pretrained: bool, **kwargs) -> T2TViT:
    return build_model_with_cfg(T2TViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


register_variants(__name__, _create, {
    name: dict(tokens_type=tokens, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=ratio)
    for name, tokens, width, depth, heads, ratio in (
        ("t2t_vit_7", "performer", 256, 7, 4, 2.0), ("t2t_vit_10", "performer", 256, 10, 4, 2.0),
        ("t2t_vit_12", "performer", 256, 12, 4, 2.0), ("t2t_vit_14", "performer", 384, 14, 6, 3.0),
        ("t2t_vit_19", "performer", 448, 19, 7, 3.0), ("t2t_vit_24", "performer", 512, 24, 8, 3.0),
        ("t2t_vit_t_14", "transformer", 384, 14, 6, 3.0), ("t2t_vit_t_19", "transformer", 448, 19, 7, 3.0),
        ("t2t_vit_t_24", "transformer", 512, 24, 8, 3.0))
})
