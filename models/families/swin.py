"""Swin Transformer (Liu et al., 2021), timm's swin_transformer: shifted windows, exported in window order
(models/rewrites/swin.py)."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = (
    imagenet("swin_t", "swin_tiny_patch4_window7_224", "ms_in1k", "Swin-T, 28M params"),
    imagenet("swin_s", "swin_small_patch4_window7_224", "ms_in22k_ft_in1k", "Swin-S, 50M params"),
    imagenet("swin_b", "swin_base_patch4_window7_224", "ms_in22k_ft_in1k", "Swin-B, 88M params"),
)
