"""Reduced-precision copies of a deploy form for export: float32 at the edges, fp16 or bf16 inside, LayerNorm in
float32. The fp16 ONNX artifact (for onnxruntime's CUDA and TensorRT providers), the TensorRT plugin ONNX and the
AOTInductor package keep the interface of every other format: float32 pixels in, float32 logits out."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class Float32Boundary(nn.Module):
    """float32 in, float32 out, `dtype` inside: the artifact's interface stays that of every other format."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


class Float32LayerNorm(nn.Module):
    """A LayerNorm that computes in float32 whatever its input's dtype, with float32 affine parameters."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.normalized_shape, self.eps = tuple(norm.normalized_shape), norm.eps
        self.weight = None if norm.weight is None else nn.Parameter(norm.weight.detach().float())
        self.bias = None if norm.bias is None else nn.Parameter(norm.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


def mixed_precision(deploy: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of the deploy form with float32 in and out (Float32Boundary), `dtype` inside, except LayerNorm
    (statistics over up to 1024 channels: computed in float32) and the window attention's bias and logit scale
    (float32: the bias holds the -100 of the shift mask, and the plugin's schema says so)."""
    from vitserve.models.rewrites.windows import WindowOrderAttention

    model = copy.deepcopy(deploy).eval().to(dtype)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, Float32LayerNorm(child))
    for module in model.modules():
        if isinstance(module, WindowOrderAttention):
            module.bias = module.bias.float()
            if module.logit_scale is not None:
                module.logit_scale = module.logit_scale.float()
    return Float32Boundary(model, dtype).eval()
