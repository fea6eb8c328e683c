"""Deploy rewrites: which families have one, and preparing a copy of a model for export."""

from __future__ import annotations

import copy

from torch import nn

from vitserve.models.rewrites import rest, swin, swinv2, swinv2_cr, volo

# module of the model class (timm's, or models/architectures/) -> (rewrite name, function that rewrites it in place)
REWRITES = {
    "timm.models.swin_transformer": (swin.REWRITE_NAME, swin.rewrite),
    "timm.models.swin_transformer_v2": (swinv2.REWRITE_NAME, swinv2.rewrite),
    "timm.models.swin_transformer_v2_cr": (swinv2_cr.REWRITE_NAME, swinv2_cr.rewrite),
    "timm.models.volo": (volo.REWRITE_NAME, volo.rewrite),
    "vitserve.models.architectures.rest": (rest.REWRITE_NAME, rest.rewrite),
}


def explicit_attention(model: nn.Module) -> int:
    """Switches timm attention modules to their explicit path (q @ k^T, softmax, @ v); returns how many.

    timm calls F.scaled_dot_product_attention where it can. ONNX opset 18 has no attention op, so the exporter
    spells SDPA out in the same primitive ops anyway, but its SDPA translation takes 4-D tensors only and Twins'
    locally grouped attention passes 5-D ones. timm's explicit path is the same mathematics and exports everywhere.
    """
    count = 0
    for module in model.modules():
        if getattr(module, "fused_attn", False):
            module.fused_attn = False
            count += 1
    return count


def deploy_copy(model: nn.Module, rewrite: bool = True, explicit: bool = True) -> tuple[nn.Module, str | None]:
    """A copy of `model` prepared for export, and the name of the rewrite applied (None: no rewrite).

    With `explicit` (for ONNX) the copy uses explicit attention; without it (torch.export: AOTInductor keeps
    scaled_dot_product_attention as one fused attention kernel, where the explicit form writes the whole attention
    matrix to memory and reads it back) timm's attention stays as it is. With `rewrite`, families listed in
    REWRITES also get their export-friendly form. The original model is never modified: it stays the reference
    the export is verified against.
    """
    deploy = copy.deepcopy(model).eval()
    if explicit:
        explicit_attention(deploy)
    entry = REWRITES.get(type(model).__module__)
    if not rewrite or entry is None:
        return deploy, None
    name, apply = entry
    return deploy, (name if apply(deploy) else None)
