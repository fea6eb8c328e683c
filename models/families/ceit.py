"""CeiT (Yuan et al., ICCV 2021), coeusguo/ceit's models (models/architectures/ceit.py): a convolution stem,
locally-enhanced feed-forwards, and a last attention over every block's class token; the official eval transform
(DeiT's: crop 0.875, bicubic)."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = tuple(
    imagenet(f"ceit_{size[0]}", f"ceit_{size}_patch16_224", "in1k", f"CeiT-{size[0].upper()}, {params} params",
             crop_pct=0.875)
    for size, params in (("tiny", "6.4M"), ("small", "24M"), ("base", "94M"))
)
