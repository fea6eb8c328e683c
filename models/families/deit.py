"""DeiT (Touvron et al., 2021): ViTs trained on ImageNet-1k alone, and the variant with a distillation token."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = (
    imagenet("deit_t", "deit_tiny_patch16_224", "fb_in1k", "DeiT-Ti, 5M params"),
    imagenet("deit_s", "deit_small_patch16_224", "fb_in1k", "DeiT-S, 22M params"),
    imagenet("deit_b", "deit_base_patch16_224", "fb_in1k", "DeiT-B, 86M params"),
    imagenet("deit_s_distilled", "deit_small_distilled_patch16_224", "fb_in1k", "DeiT-S with distillation token"),
)
