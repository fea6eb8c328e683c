"""LV-ViT (Jiang et al., NeurIPS 2021), zihangJiang/TokenLabeling's models (models/architectures/lvvit.py): a ViT
with a convolution stem whose eval head adds half the largest patch-token prediction to the class token's; the
official eval transform (crop 0.9, 1.0 for LV-ViT-M; bicubic). The 384 and 448 px checkpoints: --img-size."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = (
    imagenet("lvvit_t", "lvvit_t", "in1k", "LV-ViT-T, 8.5M params"),
    imagenet("lvvit_s", "lvvit_s", "in1k", "LV-ViT-S, 26M params"),
    imagenet("lvvit_m", "lvvit_m", "in1k", "LV-ViT-M, 56M params", crop_pct=1.0),
)
