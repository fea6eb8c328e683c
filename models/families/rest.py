"""ResT (Zhang and Yang, NeurIPS 2021), wofmanaf/ResT's ResTv1 models (models/architectures/rest.py): four stages of
efficient self-attention (keys and values from a shrunk map, attention maps mixed across heads and
instance-normalised), pixel-attention positions; the eval transform ResTv1 was released with (crop 0.875, bicubic)."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = tuple(
    imagenet(f"rest_{size}", f"rest_{size}", "in1k", f"ResT-{title}, {params} params", crop_pct=0.875)
    for size, title, params in (("lite", "Lite", "11M"), ("small", "S", "14M"), ("base", "B", "30M"),
                                ("large", "L", "52M"))
)
