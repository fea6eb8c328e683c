"""The fused window-attention op: reference mathematics, the Triton kernel in Triton's CPU interpreter (small
shapes), and on CUDA at full size in fp16 / bf16 (skipped without a GPU)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from vitserve.models.window_attention import reference, window_attention

HAS_TRITON = importlib.util.find_spec("triton") is not None

INTERPRETER_CHECK = """
import torch
from vitserve.models.window_attention import reference, triton_window_attention
torch.manual_seed(0)
worst = 0.0
for cosine in (False, True):
    for B, nW, nH, N, D, nwb in [(2, 4, 3, 49, 32, 4), (1, 2, 2, 64, 16, 1), (2, 3, 2, 9, 8, 3)]:
        q, k, v = (torch.randn(B * nW, nH, N, D) for _ in range(3))
        bias = torch.randn(nwb, nH, N, N)
        bias[..., 0, 1:5] = -100.0  # a shift mask's entries
        scale = torch.rand(nH) * 10 if cosine else None
        out = triton_window_attention(q, k, v, bias, scale, 0.17)
        worst = max(worst, (reference(q, k, v, bias, scale, 0.17) - out).abs().max().item())
        if not cosine and N == 49:  # a permuted bias must be caught
            wrong = triton_window_attention(q, k, v, bias.transpose(-2, -1).contiguous(), None, 0.17)
            assert (reference(q, k, v, bias, None, 0.17) - wrong).abs().max().item() > 1e-2
print(worst)
"""


def _naive(q, k, v, bias, logit_scale, scale):
    """Window by window, head by head: the plainest statement of the op."""
    out = torch.empty_like(q)
    for w in range(q.shape[0]):
        for h in range(q.shape[1]):
            if logit_scale is not None:
                s = torch.nn.functional.normalize(q[w, h], dim=-1) @ torch.nn.functional.normalize(k[w, h], dim=-1).T
                s = s * logit_scale[h]
            else:
                s = (q[w, h] @ k[w, h].T) * scale
            out[w, h] = (s + bias[w % bias.shape[0], h]).softmax(-1) @ v[w, h]
    return out


@pytest.mark.parametrize("cosine", [False, True])
def test_reference_equals_naive_loops(cosine):
    torch.manual_seed(0)
    q, k, v = (torch.randn(6, 2, 49, 8) for _ in range(3))
    bias = torch.randn(3, 2, 49, 49)
    scale = torch.rand(2) * 5 if cosine else None
    assert (reference(q, k, v, bias, scale, 0.3) - _naive(q, k, v, bias, scale, 0.3)).abs().max() < 1e-5
    assert (window_attention(q, k, v, bias, scale, 0.3) - _naive(q, k, v, bias, scale, 0.3)).abs().max() < 1e-5


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kernel_in_interpreter():
    result = subprocess.run([sys.executable, "-c", INTERPRETER_CHECK], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5


def test_fake_kernel_matches_real_layout():
    """torch.compile trusts the fake kernel's strides; a transposed (non-contiguous) q must still give contiguous."""
    q = torch.randn(4, 6, 2, 8).transpose(1, 2)  # 4, 2, 6, 8, non-contiguous
    k, v = torch.randn(4, 2, 6, 8), torch.randn(4, 2, 6, 8)
    bias = torch.randn(2, 2, 6, 6)
    torch.library.opcheck(window_attention, (q, k, v, bias, None, 0.5))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = window_attention(mode.from_tensor(q), mode.from_tensor(k), mode.from_tensor(v),
                                mode.from_tensor(bias), None, 0.5)
    assert fake.is_contiguous()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cosine", [False, True])
def test_cuda_kernel_full_size(dtype, cosine):
    torch.manual_seed(0)
    windows, heads, n, d = 64 * 64, 3, 49 if not cosine else 64, 32  # Swin-T stage 1 at batch 64 / Swin V2
    q, k, v = (torch.randn(windows, heads, n, d, device="cuda", dtype=dtype) for _ in range(3))
    bias = torch.randn(64, heads, n, n, device="cuda")
    scale = torch.rand(heads, device="cuda") * 10 if cosine else None
    expected = reference(q.float(), k.float(), v.float(), bias, scale, 0.177)
    got = window_attention(q, k, v, bias, scale, 0.177)
    assert got.dtype == dtype
    assert (got.float() - expected).abs().max().item() < (2e-2 if dtype == torch.bfloat16 else 5e-3)
