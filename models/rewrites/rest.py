"""Deploy form of ResT: the instance norm over each attention map (B, heads, N, M) as means taken in two stages,
over the M keys and then over the N queries.

ONNX writes InstanceNorm2d as one InstanceNormalization, whose mean and variance onnxruntime accumulates over all
N x M entries at once (784 x 49 in a 224 px ResT's second stage), one long float32 sum; PyTorch sums in blocks. On
sharp softmax maps that rounding is 20 times PyTorch's (8.7e-5 against 3e-6 from the float64 result, docs/models.md),
and the normalisation and the network carry it to the logits. The mean of the per-row means is the same mean (every
row has M entries), and each of its sums is short.
"""

from __future__ import annotations

import torch
from torch import nn

REWRITE_NAME = "rest-map-norm-two-stage"


class TwoStageMapNorm(nn.Module):
    """InstanceNorm2d without learned parameters or running statistics, its means over rows, then over columns."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        centred = maps - maps.mean(dim=-1, keepdim=True).mean(dim=-2, keepdim=True)
        variance = centred.square().mean(dim=-1, keepdim=True).mean(dim=-2, keepdim=True)
        return centred / torch.sqrt(variance + self.eps)


def rewrite(model: nn.Module) -> int:
    """Gives every mixing attention of `model` (in place; pass a copy) the two-stage map norm; returns how many."""
    from vitserve.models.architectures.rest import EfficientAttention

    count = 0
    for module in model.modules():
        if isinstance(module, EfficientAttention) and module.apply_transform:
            norm = module.transform_norm
            assert not (norm.affine or norm.track_running_stats)  # the official one: nothing learned
            module.transform_norm = TwoStageMapNorm(norm.eps)
            count += 1
    return count
