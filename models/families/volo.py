"""VOLO (Yuan et al., 2021), timm's volo, which loads sail-sg/volo's released checkpoints as they are: outlook
attention (attention weights over each 3x3 neighbourhood, made from the centre token alone) in the first stage,
transformer blocks after it, two class-attention blocks at the end; the eval head adds half the largest auxiliary
token prediction to the class token's. Deploy form: models/rewrites/volo.py."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = tuple(
    imagenet(f"volo_d{depth}", f"volo_d{depth}_224", "sail_in1k", f"VOLO-D{depth}, {params} params", crop_pct=0.96)
    for depth, params in ((1, "27M"), (2, "59M"), (3, "86M"), (4, "193M"), (5, "296M"))
)
