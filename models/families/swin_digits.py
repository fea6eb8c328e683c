"""swin_digits: the small Swin that scripts/train_digits.py trains on scikit-learn's handwritten digits
(models/digits.py) and vitserve ships (models/assets/swin_digits/), so that every command runs offline."""

from __future__ import annotations

from typing import Any

from vitserve.artifact import Preprocess
from vitserve.models.spec import ASSETS, ModelSpec

# 32x32 input, patch 2, window 6 -> stage 1 is 16x16 tokens padded to 18x18 (shifted + padded windows),
# stage 2 is 8x8 padded to 12x12, stage 3 (4x4) fits in one window (no shift). Every rewrite case in one model.
DIGITS_TIMM_KWARGS: dict[str, Any] = dict(
    img_size=32, patch_size=2, window_size=6, embed_dim=48, depths=(2, 2, 2), num_heads=(2, 4, 8), num_classes=10
)

VARIANTS = (
    ModelSpec(
        "swin_digits",
        "swin_tiny_patch4_window7_224",
        Preprocess((3, 32, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1.0, "bicubic"),
        num_classes=10,
        labels=str(ASSETS / "swin_digits" / "labels.txt"),
        timm_kwargs=DIGITS_TIMM_KWARGS,
        bundled_weights=ASSETS / "swin_digits" / "model.safetensors",
        description="Swin (32 px, window 6, 3 stages) trained on scikit-learn digits; ships with vitserve",
    ),
)
