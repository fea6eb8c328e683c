"""MViT v2 (Li et al., 2022), timm's mvitv2: multiscale pooling attention with decomposed relative positions."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = (
    imagenet("mvitv2_t", "mvitv2_tiny", "fb_in1k", "MViT v2-T, 24M params"),
)
