"""Deploy form of timm's VOLO: outlook attention's unfold and fold as slices and shifted sums (folds.py)."""

from __future__ import annotations

import math
import types

import torch
from torch import nn

from vitserve.models.rewrites.folds import fold, unfold

REWRITE_NAME = "volo-fold-slices"


def outlook_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's OutlookAttention.forward in eval mode (no dropout), its unfold and fold in plain ops. x: (B, H, W, C)."""
    b, height, width, c = x.shape
    k, heads = attn.kernel_size, attn.num_heads
    h, w = math.ceil(height / attn.stride), math.ceil(width / attn.stride)
    v = unfold(attn.v(x).permute(0, 3, 1, 2), k, attn.padding, attn.stride)  # B, C*k*k, h*w
    v = v.reshape(b, heads, c // heads, k * k, h * w).permute(0, 1, 4, 3, 2)  # B, heads, h*w, k*k, C/heads
    weights = attn.attn(attn.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
    weights = weights.reshape(b, h * w, heads, k * k, k * k).permute(0, 2, 1, 3, 4)  # B, heads, h*w, k*k, k*k
    weights = (weights * attn.scale).softmax(dim=-1)
    out = (weights @ v).permute(0, 1, 4, 3, 2).reshape(b, c * k * k, h * w)
    out = fold(out, (height, width), k, attn.padding, attn.stride)
    return attn.proj(out.permute(0, 2, 3, 1))


def rewrite(model: nn.Module) -> int:
    """Gives every OutlookAttention of `model` (in place; pass a copy) the plain-op forward; returns how many."""
    from timm.models.volo import OutlookAttention

    count = 0
    for module in model.modules():
        if type(module) is OutlookAttention:
            module.forward = types.MethodType(outlook_attention, module)  # same parameters, same names
            count += 1
    return count
