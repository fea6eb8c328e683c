"""Vision Transformer (Dosovitskiy et al., 2021), timm's vision_transformer with the AugReg weights."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = (
    imagenet("vit_b_16", "vit_base_patch16_224", "augreg2_in21k_ft_in1k", "ViT-B/16, 86M params", inception=True),
    imagenet("vit_s_16", "vit_small_patch16_224", "augreg_in21k_ft_in1k", "ViT-S/16, 22M params", inception=True),
)
