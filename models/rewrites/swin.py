"""Deploy form of timm's Swin Transformer (v1): stages run in window order (see windows.py)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from vitserve.models.rewrites.windows import WindowOrderBlock, convert_timm_block, rewrite_stages

REWRITE_NAME = "swin-window-order"


def convert_block(block: nn.Module) -> tuple[WindowOrderBlock, torch.Tensor]:
    """timm SwinTransformerBlock -> (WindowOrderBlock, its window order)."""
    attn = block.attn
    qkv = copy.deepcopy(attn.qkv)
    q_rows = qkv.out_features // 3
    with torch.no_grad():
        # timm computes q = (W_q x + b_q) * scale; fold the scale into W_q and b_q
        qkv.weight[:q_rows] *= attn.scale
        if qkv.bias is not None:
            qkv.bias[:q_rows] *= attn.scale
        bias = attn._get_rel_pos_bias()  # 1, nH, N, N
        return convert_timm_block(block, qkv, bias, post_norm=False)


def rewrite(model: nn.Module) -> int:
    """Swaps every SwinTransformerStage of `model` (in place; pass a copy) for its window-order form."""
    from timm.models.swin_transformer import PatchMerging, SwinTransformerStage

    return rewrite_stages(model, SwinTransformerStage, PatchMerging, convert_block, merge_norm_first=True)
