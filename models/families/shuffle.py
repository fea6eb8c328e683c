"""Shuffle Transformer (Huang et al., 2021), mulinmeng/Shuffle-Transformer's models (models/architectures/
shuffle.py): Swin-like stages whose every second block attends within spatially shuffled windows (a reshape, no
roll), with a depthwise convolution between neighbouring windows; the official eval transform (crop 0.875,
bicubic)."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = tuple(
    imagenet(f"shuffle_{size[0]}", f"shuffle_vit_{size}_patch4_window7_224", "in1k",
             f"Shuffle-{size[0].upper()}, {params} params", crop_pct=0.875)
    for size, params in (("tiny", "28M"), ("small", "50M"), ("base", "88M"))
)
