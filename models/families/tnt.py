"""TNT (Han et al., 2021), timm's tnt: transformers over pixels inside each patch and over the patches."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = (
    imagenet("tnt_s", "tnt_s_patch16_224", "in1k", "TNT-S, 24M params", inception=True),
)
