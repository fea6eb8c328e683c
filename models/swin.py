"""Deploy form of timm's Swin Transformer (v1): stages run in window order (see windows.py)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from vitserve.models.windows import (
    WindowOrderAttention,
    WindowOrderBlock,
    block_attn_mask,
    padded_size,
    rewrite_stages,
    window_order,
)

REWRITE_NAME = "swin-window-order"


def convert_block(block: nn.Module) -> tuple[WindowOrderBlock, torch.Tensor]:
    """timm SwinTransformerBlock -> (WindowOrderBlock, its window order)."""
    resolution = tuple(block.input_resolution)
    window, shift = tuple(block.window_size), tuple(block.shift_size)
    attn = block.attn
    qkv = copy.deepcopy(attn.qkv)
    q_rows = qkv.out_features // 3
    with torch.no_grad():
        # timm computes q = (W_q x + b_q) * scale; fold the scale into W_q and b_q
        qkv.weight[:q_rows] *= attn.scale
        if qkv.bias is not None:
            qkv.bias[:q_rows] *= attn.scale
        bias = attn._get_rel_pos_bias()  # 1, nH, N, N
        mask = block_attn_mask(block)  # nW, N, N (0 / -100) or None
        if mask is not None:
            bias = bias + mask.unsqueeze(1)  # nW, nH, N, N
    Hp, Wp = padded_size(resolution, window)
    num_windows = (Hp // window[0]) * (Wp // window[1])
    order = window_order(resolution, window, shift)
    deploy_attn = WindowOrderAttention(qkv, attn.proj, attn.num_heads, num_windows, bias)
    return WindowOrderBlock(block.norm1, deploy_attn, block.norm2, block.mlp, order, resolution, False), order


def rewrite(model: nn.Module) -> int:
    """Swaps every SwinTransformerStage of `model` (in place; pass a copy) for its window-order form."""
    from timm.models.swin_transformer import PatchMerging, SwinTransformerStage

    return rewrite_stages(model, SwinTransformerStage, PatchMerging, convert_block, merge_norm_first=True)
