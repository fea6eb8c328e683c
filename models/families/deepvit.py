"""DeepViT (Zhou et al., 2021), zhoudaquan/dvit_repo's models (models/architectures/deepvit.py): re-attention
(attention maps mixed across heads) in the deeper blocks, a convolution stem; the official eval transform (crop 0.9,
bicubic, mean and std 0.5)."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = (
    imagenet("deepvit_s", "deepvit_s", "in1k", "DeepViT-S (16 blocks), 27M params", inception=True),
    imagenet("deepvit_l", "deepvit_l", "in1k", "DeepViT-L (32 blocks), 59M params", inception=True),
)
