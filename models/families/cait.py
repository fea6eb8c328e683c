"""CaiT (Touvron et al., 2021), timm's cait: LayerScale, and class attention in the last blocks."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = (
    imagenet("cait_xxs24", "cait_xxs24_224", "fb_dist_in1k", "CaiT-XXS24, 12M params", crop_pct=1.0),
)
