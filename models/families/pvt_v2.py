"""PVT v2 (Wang et al., 2022), timm's pvt_v2: a pyramid with spatial-reduction attention."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = (
    imagenet("pvt_v2_b0", "pvt_v2_b0", "in1k", "PVT v2-B0, 3.7M params"),
)
