"""Swin Transformer V2 (Liu et al., 2022): timm's swin_transformer_v2 and its CR implementation, both exported in
window order (models/rewrites/swinv2.py, swinv2_cr.py)."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = (
    imagenet("swinv2_t", "swinv2_tiny_window8_256", "ms_in1k", "Swin V2-T, window 8, 256 px", size=256),
    imagenet("swinv2_cr_t", "swinv2_cr_tiny_ns_224", "sw_in1k", "Swin V2-T, timm's CR implementation, 224 px"),
)
