"""Twins (Chu et al., 2021), timm's twins: locally grouped and global sub-sampled attention (SVT), or PVT-style
attention with conditional position encodings (PCPVT)."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = (
    imagenet("twins_svt_s", "twins_svt_small", "in1k", "Twins-SVT-S, 24M params"),
    imagenet("twins_pcpvt_s", "twins_pcpvt_small", "in1k", "Twins-PCPVT-S, 24M params"),
)
