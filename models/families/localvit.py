"""LocalViT (Li et al., IROS 2023), ofsoundof/LocalViT's DeiT-based models (models/architectures/localvit.py): the
token MLP replaced by depthwise convolutions with a squeeze-and-excitation gate on the patch tokens; the official
eval transform (DeiT's: crop 0.875, bicubic)."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = (
    imagenet("localvit_t", "localvit_tiny_mlp4_act3_r192", "in1k", "LocalViT-T, 5.9M params", crop_pct=0.875),
    imagenet("localvit_t_se4", "localvit_tiny_mlp4_act3_r4", "in1k",
             "LocalViT-T-SE4 (the gate reduced 4x), 9.4M params", crop_pct=0.875),
    imagenet("localvit_s", "localvit_small_mlp4_act3_r384", "in1k", "LocalViT-S, 22.4M params", crop_pct=0.875),
)
