"""fp8 matrix products for the torch artifact's deploy form (`vitserve export --format torch --dtype fp8`).

A transformer classifier spends most of its time in the Linear layers of its blocks (qkv, output projection, MLP).
On GPUs with fp8 tensor cores (compute capability 8.9 and up: L4, L40, H100, H200) those products run at twice the
fp16 rate. `use_fp8` replaces each such Linear by `Fp8Linear`:

- its weight stored once as float8 e4m3 with one float32 scale per output channel (the channel's largest |weight|
  maps to e4m3's largest value, 448);
- its input quantized on every call, one scale per row (per token), from the row's largest |value|;
- the product by `torch._scaled_mm` (float32 accumulation; both scales and the bias applied to the result) in the
  model's precision, bfloat16 (the precision every fp8 GEMM path in PyTorch can write).

`fast_accum=True` (`torch._scaled_mm`'s `use_fast_accum`) lets the GEMM keep its sums in the tensor cores' own
accumulator, which for fp8 products on Hopper keeps fewer bits than float32, instead of moving partial sums into
float32 at intervals: less exact, meant to be faster. Off by default; `benchmarks/gpu_swin.py`'s fp8 section times
both. The CPU emulation ignores it.

Everything else (LayerNorm, softmax, GELU, the residual stream, the classifier) stays in bfloat16. Under
torch.compile / AOTInductor the per-row quantization is fused into the kernel that produces the Linear's input
(LayerNorm, GELU), so the activations cross memory in fp8 as well.
On the CPU PyTorch emulates fp8 (slower than bf16): there fp8 serves to check a checkpoint's accuracy, not speed.
"""

from __future__ import annotations

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448.0
MIN_CAPABILITY = (8, 9)  # fp8 tensor cores: Ada (8.9), Hopper (9.0) and later
ALIGNMENT = 16  # fp8 GEMMs need both dimensions of the weight in multiples of 16


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> its e4m3 values (M, K) and float32 scales (M, 1), x ~= values * scales row by row."""
    scale = (x.abs().amax(dim=-1, keepdim=True).float() / E4M3_MAX).clamp(min=1e-12)  # an all-zero row: any scale
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def dequantize_rows(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return values.float() * scale


class Fp8Linear(nn.Module):
    """y = x @ W^T + b with W and x in e4m3 (per output channel / per row scales), y in x's dtype."""

    def __init__(self, linear: nn.Linear, fast_accum: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.fast_accum = fast_accum
        weight, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight", weight)  # (out, in) e4m3
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out) float32
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        values, scale = quantize_rows(rows)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        in_gemm = bias if x.dtype != torch.float32 else None  # CUDA's fp8 GEMMs add a bias to 16-bit outputs only
        y = torch._scaled_mm(values, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, bias=in_gemm,
                             out_dtype=x.dtype, use_fast_accum=self.fast_accum)
        if bias is not None and in_gemm is None:
            y = y + bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
                + (", fast_accum=True" if self.fast_accum else ""))


def classifiers(model: nn.Module) -> list[nn.Module]:
    """timm's `get_classifier()`: one module, or a tuple of them (distilled DeiT: the head and the distillation
    head)."""
    if not hasattr(model, "get_classifier"):
        return []
    heads = model.get_classifier()
    return list(heads) if isinstance(heads, (tuple, list)) else [heads]


def eligible(linear: nn.Module, kept: list[nn.Module]) -> bool:
    return (isinstance(linear, nn.Linear) and not any(linear is k for k in kept)
            and linear.in_features % ALIGNMENT == 0 and linear.out_features % ALIGNMENT == 0)


def use_fp8(model: nn.Module, fast_accum: bool = False) -> int:
    """Replaces the model's Linear layers by Fp8Linear, in place; returns how many. Kept in their precision: the
    classifiers (`classifiers()`: their logits are the output, and each is one small product) and layers whose
    sizes are not multiples of 16. Call it after the model has its device and precision (bfloat16): `.to(dtype)`
    would turn the e4m3 weights back into bfloat16. `fast_accum`: see the module's docstring."""
    kept = classifiers(model)
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if eligible(child, kept):
                setattr(parent, name, Fp8Linear(child, fast_accum))
                count += 1
    return count
