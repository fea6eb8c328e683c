"""Deploy rewrites: which families have one, and applying it to a copy of a model."""

from __future__ import annotations

import copy

from torch import nn

from vitserve.models import swin, swinv2

# timm module of the model class -> (rewrite name, function that rewrites a model in place)
REWRITES = {
    "timm.models.swin_transformer": (swin.REWRITE_NAME, swin.rewrite),
    "timm.models.swin_transformer_v2": (swinv2.REWRITE_NAME, swinv2.rewrite),
}


def rewrite_name_for(model: nn.Module) -> str | None:
    entry = REWRITES.get(type(model).__module__)
    return entry[0] if entry else None


def deploy_copy(model: nn.Module) -> tuple[nn.Module, str | None]:
    """A copy of `model` in its export-friendly form, and the rewrite's name (None: the copy is unchanged).

    The original model is never modified: it stays the reference the export is verified against.
    """
    deploy = copy.deepcopy(model).eval()
    entry = REWRITES.get(type(model).__module__)
    if entry is None:
        return deploy, None
    name, rewrite = entry
    return deploy, (name if rewrite(deploy) else None)
