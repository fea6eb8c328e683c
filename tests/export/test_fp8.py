"""fp8 matrix products (export/fp8.py), checked on the CPU, where PyTorch emulates torch._scaled_mm: the
quantization's error bound, the product against the same mathematics spelled out in float32, and which layers
switch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitserve.export.fp8 import E4M3_MAX, Fp8Linear, dequantize_rows, quantize_rows, use_fp8
from vitserve.models.build import build_model
from vitserve.models.catalogue import SPECS


def _rows_of_every_magnitude(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Random rows scaled from 1e-4 to 1e3: a scale shared by all rows would flush the small ones to zero."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * torch.logspace(-4, 3, rows).unsqueeze(1)


def test_quantize_rows_within_e4m3_precision():
    x = _rows_of_every_magnitude(32, 64)
    x[3] = 0.0  # an all-zero row must not divide by zero
    values, scale = quantize_rows(x)
    assert values.dtype == torch.float8_e4m3fn and scale.shape == (32, 1) and scale.dtype == torch.float32
    assert (values.float().abs().amax(1)[torch.arange(32) != 3] == E4M3_MAX).all()  # each row's range used fully
    error = (dequantize_rows(values, scale) - x).abs()
    # 3 mantissa bits: relative rounding error at most 2^-4; below e4m3's normal range, half its subnormal step
    assert (error <= x.abs() / 16 + scale * 2.0**-10).all()
    assert (dequantize_rows(values, scale)[3] == 0).all()


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_fp8_linear_is_the_scaled_product(out_dtype):
    """Fp8Linear == dequantized input @ dequantized weight^T + bias, the scales row by row and channel by channel:
    a transposed or swapped scale, or a missing bias, breaks it (the weight's rows span 7 orders of magnitude)."""
    linear = nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.copy_(_rows_of_every_magnitude(48, 64, seed=1))
    layer = Fp8Linear(linear.to(out_dtype))
    x = _rows_of_every_magnitude(2 * 5, 64, seed=2).reshape(2, 5, 64).to(out_dtype)
    y = layer(x)
    assert y.shape == (2, 5, 48) and y.dtype == out_dtype
    xq, xs = quantize_rows(x.reshape(-1, 64))
    expected = dequantize_rows(xq, xs) @ dequantize_rows(layer.weight, layer.weight_scale.t()).t() + layer.bias.float()
    tolerance = 1e-5 if out_dtype == torch.float32 else 2.0**-8  # the output's own rounding
    assert torch.allclose(y.reshape(-1, 48).float(), expected, rtol=tolerance, atol=1e-6)
    # and close to the exact product row by row, whatever the row's magnitude
    exact = x.reshape(-1, 64).float() @ linear.weight.float().t() + linear.bias.float()
    cosine = nn.functional.cosine_similarity(y.reshape(-1, 48).float(), exact, dim=1)
    assert cosine.min() > 0.99


def test_use_fp8_switches_the_blocks_not_the_classifier():
    model = build_model(SPECS["vit_s_16"], random_init=True).model.eval().to(torch.bfloat16)
    model.blocks[0].mlp.fc1 = nn.Linear(384, 1000).to(torch.bfloat16)  # 1000 is not a multiple of 16
    model.blocks[0].mlp.fc2 = nn.Linear(1000, 384).to(torch.bfloat16)
    x = torch.randn(2, 3, 224, 224, dtype=torch.bfloat16)
    with torch.no_grad():
        before = model(x).float()
        assert use_fp8(model) == 12 * 4 - 2  # qkv, proj, fc1, fc2 per block, less the two misfits
        after = model(x).float()
    assert type(model.get_classifier()) is nn.Linear
    assert type(model.blocks[0].mlp.fc1) is nn.Linear and type(model.blocks[1].mlp.fc1) is Fp8Linear
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float8_e4m3fn
    assert nn.functional.cosine_similarity(before, after, dim=1).min() > 0.98
    assert not torch.equal(before, after)  # it did change the arithmetic


def test_every_classifier_head_stays():
    """Distilled DeiT has two heads (timm's get_classifier() returns both); with 16 classes both would fit fp8's
    sizes, and both stay."""
    model = build_model(SPECS["deit_s_distilled"], random_init=True, num_classes=16).model.eval()
    assert use_fp8(model) == 12 * 4
    assert type(model.head) is nn.Linear and type(model.head_dist) is nn.Linear


@pytest.mark.parametrize("fast", [False, True])
def test_fast_accumulation_reaches_the_gemm(fast):
    """fast_accum is torch._scaled_mm's use_fast_accum in the exported graph (what AOTInductor compiles); the CPU
    emulation ignores it, so only the graph can show it."""
    model = nn.Sequential(nn.Linear(32, 16)).to(torch.bfloat16)
    assert use_fp8(model, fast_accum=fast) == 1
    layer = model[0]
    program = torch.export.export(layer, (torch.randn(4, 32, dtype=torch.bfloat16),))
    calls = [node for node in program.graph.nodes if node.target == torch.ops.aten._scaled_mm.default]
    assert len(calls) == 1
    arguments = calls[0].normalized_arguments(program.graph_module, normalize_to_only_use_kwargs=True)
    assert arguments.kwargs["use_fast_accum"] is fast
    assert ("fast_accum=True" in repr(layer)) is fast
