"""Deploy form of timm's Swin Transformer V2 CR (`swinv2_cr_*`): stages run in window order (see windows.py).

A second Swin V2 implementation in timm (after Christoph Reich's), not weight-compatible with `swinv2_*`. Its
blocks are the same mathematics as Swin V2's (post-norm, cosine attention with a per-head logit scale clamped at
log(100), a continuous position bias from a small MLP over log-spaced coordinates), with these differences the
rewrite keeps: the position bias is the MLP's raw output (no 16 * sigmoid), the qkv Linear has an ordinary bias,
some blocks end with an extra LayerNorm on the main branch (`norm3`), and stages take and return (B, C, H, W).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vitserve.models.rewrites.windows import WindowOrderBlock, convert_timm_block, rewrite_stages

REWRITE_NAME = "swinv2-cr-window-order"


def _position_bias(attn: nn.Module) -> torch.Tensor:
    """timm's `_relative_positional_encodings`: (1, nH, N, N), a constant at a fixed window size."""
    return attn._relative_positional_encodings()


def convert_block(block: nn.Module) -> tuple[WindowOrderBlock, torch.Tensor]:
    """timm SwinTransformerV2CrBlock -> (WindowOrderBlock, its window order)."""
    attn = block.attn
    with torch.no_grad():
        logit_scale = torch.clamp(attn.logit_scale, max=math.log(1.0 / 0.01)).exp().view(-1, 1, 1)  # nH, 1, 1
        return convert_timm_block(block, attn.qkv, _position_bias(attn), post_norm=True, logit_scale=logit_scale)


def rewrite(model: nn.Module) -> int:
    """Swaps every SwinTransformerV2CrStage of `model` (in place; pass a copy) for its window-order form."""
    from timm.models.swin_transformer_v2_cr import PatchMerging, SwinTransformerV2CrStage

    return rewrite_stages(model, SwinTransformerV2CrStage, PatchMerging, convert_block, merge_norm_first=True,
                          stages="stages", channels_first=True)
