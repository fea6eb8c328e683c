"""Deploy form of timm's Swin Transformer V2: stages run in window order (see windows.py).

Swin V2 differs from Swin in three ways the rewrite keeps: post-norm blocks, cosine attention with a learned
per-head logit scale (clamped at log(100), then exp), and a continuous position bias from a small MLP over
log-spaced coordinates, squashed by 16 * sigmoid. At a fixed window size the last two are constants, evaluated
once here exactly as timm evaluates them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vitserve.models.rewrites.windows import WindowOrderBlock, convert_timm_block, rewrite_stages

REWRITE_NAME = "swinv2-window-order"


def _qkv_linear(attn: nn.Module) -> nn.Linear:
    """timm keeps q_bias / v_bias beside a bias-free qkv Linear (k has no bias); merge them into one Linear."""
    dim_in, dim_out = attn.qkv.in_features, attn.qkv.out_features
    linear = nn.Linear(dim_in, dim_out, bias=attn.q_bias is not None)
    with torch.no_grad():
        linear.weight.copy_(attn.qkv.weight)
        if attn.q_bias is not None:
            linear.bias.copy_(torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))
    return linear


def _position_bias(attn: nn.Module, window_area: int) -> torch.Tensor:
    table = attn.cpb_mlp(attn.relative_coords_table).view(-1, attn.num_heads)
    bias = table[attn.relative_position_index.view(-1)].view(window_area, window_area, -1)  # N, N, nH
    return (16 * torch.sigmoid(bias.permute(2, 0, 1).contiguous())).unsqueeze(0)  # 1, nH, N, N


def convert_block(block: nn.Module) -> tuple[WindowOrderBlock, torch.Tensor]:
    """timm SwinTransformerV2Block -> (WindowOrderBlock, its window order)."""
    attn = block.attn
    with torch.no_grad():
        logit_scale = torch.clamp(attn.logit_scale, max=math.log(1.0 / 0.01)).exp()  # nH, 1, 1
        bias = _position_bias(attn, block.window_size[0] * block.window_size[1])  # 1, nH, N, N
        return convert_timm_block(block, _qkv_linear(attn), bias, post_norm=True, logit_scale=logit_scale)


def rewrite(model: nn.Module) -> int:
    """Swaps every SwinTransformerV2Stage of `model` (in place; pass a copy) for its window-order form."""
    from timm.models.swin_transformer_v2 import PatchMerging, SwinTransformerV2Stage

    return rewrite_stages(model, SwinTransformerV2Stage, PatchMerging, convert_block, merge_norm_first=False)
