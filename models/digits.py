"""The data behind `swin_digits`: scikit-learn's handwritten digits (8x8, 16 grey levels), as 32x32 RGB images.

Both the training script (scripts/train_digits.py) and the tests take images from here, so the held-out split
the shipped weights are judged on is the one they were never trained on.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIZE = 32
SEED = 0
TEST_FRACTION = 0.2


def digit_image(pixels: np.ndarray) -> Image.Image:
    """One 8x8 digit (values 0..16) -> 32x32 RGB image, white strokes on black, upscaled bicubically."""
    grey = Image.fromarray(np.round(pixels.reshape(8, 8) * (255.0 / 16.0)).astype(np.uint8), mode="L")
    return grey.resize((SIZE, SIZE), Image.Resampling.BICUBIC).convert("RGB")


def load_split() -> tuple[list[Image.Image], np.ndarray, list[Image.Image], np.ndarray]:
    """(train images, train labels, held-out images, held-out labels), stratified, always the same split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx_train, idx_test = train_test_split(
        np.arange(len(digits.target)), test_size=TEST_FRACTION, random_state=SEED, stratify=digits.target
    )
    images = [digit_image(p) for p in digits.data]
    return ([images[i] for i in idx_train], digits.target[idx_train],
            [images[i] for i in idx_test], digits.target[idx_test])
