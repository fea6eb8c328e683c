"""CSWin Transformer (Dong et al., CVPR 2022), microsoft/CSWin-Transformer's models (models/architectures/cswin.py):
cross-shaped stripe windows (half the heads in vertical stripes, half in horizontal ones) with a convolutional
positional encoding of the values; the official eval transform (crop 0.9, bicubic)."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = tuple(
    imagenet(f"cswin_{size[0]}", f"cswin_{size}_224", "in1k", f"CSWin-{size[0].upper()}, {params} params")
    for size, params in (("tiny", "23M"), ("small", "35M"), ("base", "78M"))
)
