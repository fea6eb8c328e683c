"""Fused window attention: one kernel for softmax(q k^T * scale + bias) v over every window and head.

Swin spends its GPU time in many small attentions (49 or 64 tokens per window) whose score matrices are written
and read back several times by the stock ops (matmul, add bias, add mask, softmax, matmul). This kernel keeps one
window-head in registers from q, k, v to the output: scores, the constant bias (relative position bias + shift
mask, as built by windows.py), softmax and the product with v in one pass, fp16/bf16 in, fp32 accumulation. The
cosine variant (Swin V2) normalizes q and k and multiplies by a per-head logit scale.

    window_attention(q, k, v, bias, logit_scale, scale) -> out
      q, k, v, out: (B * nW, nH, N, D), windows of one image consecutive (index b * nW + w)
      bias: (nW or 1, nH, N, N), any float dtype (read as float32), added to the scores of window w % nW
      logit_scale: (nH,) float32 for cosine attention, else None; scale: multiplies the plain scores

It is a PyTorch custom op (`torch.ops.vitserve.window_attention`): the reference implementation below runs on any
device (and is what the tests compare with); on CUDA the Triton kernel runs. torch.compile and AOTInductor keep it
in the graph as one op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # triton ships with CUDA builds of torch; CPU-only installs have no kernel, only the reference
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
              logit_scale: torch.Tensor | None, scale: float) -> torch.Tensor:
    """The exact mathematics, computed in float32, returned in q's dtype."""
    windows, heads, n, _ = q.shape
    qf, kf, vf = q.float(), k.float(), v.float()
    if logit_scale is not None:
        scores = F.normalize(qf, dim=-1) @ F.normalize(kf, dim=-1).transpose(-2, -1)
        scores = scores * logit_scale.float().view(1, heads, 1, 1)
    else:
        scores = (qf @ kf.transpose(-2, -1)) * scale
    nwb = bias.shape[0]
    scores = scores.view(-1, nwb, heads, n, n) + bias.float().unsqueeze(0)  # B, nW, nH, N, N
    out = scores.softmax(dim=-1).view(windows, heads, n, n) @ vf
    return out.to(q.dtype)


@torch.library.custom_op("vitserve::window_attention", mutates_args=())
def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                     logit_scale: torch.Tensor | None, scale: float) -> torch.Tensor:
    return reference(q, k, v, bias, logit_scale, scale)


@window_attention.register_fake
def _(q, k, v, bias, logit_scale, scale):
    return q.new_empty(q.shape)  # contiguous, like both implementations' outputs


if triton is not None:

    @triton.jit
    def _window_attention_kernel(
        q_ptr, k_ptr, v_ptr, bias_ptr, logit_ptr, out_ptr,
        heads, n, d, bias_windows, scale,
        COSINE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid = tl.program_id(0)  # one program per (window, head)
        head = pid % heads
        window = pid // heads
        rows = tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < n
        tile_ok = row_ok[:, None] & (cols[None, :] < d)
        base = pid * n * d
        offsets = base + rows[:, None] * d + cols[None, :]
        q = tl.load(q_ptr + offsets, mask=tile_ok, other=0.0)
        k = tl.load(k_ptr + offsets, mask=tile_ok, other=0.0)
        v = tl.load(v_ptr + offsets, mask=tile_ok, other=0.0)
        if COSINE:  # normalize in fp32, like F.normalize (eps 1e-12)
            qf = q.to(tl.float32)
            kf = k.to(tl.float32)
            qf = qf / tl.maximum(tl.sqrt(tl.sum(qf * qf, axis=1)), 1e-12)[:, None]
            kf = kf / tl.maximum(tl.sqrt(tl.sum(kf * kf, axis=1)), 1e-12)[:, None]
            scores = tl.dot(qf, tl.trans(kf), input_precision="ieee")
            scores = scores * tl.load(logit_ptr + head)
        else:
            scores = tl.dot(q, tl.trans(k)) * scale  # fp32 accumulation
        bias_base = ((window % bias_windows) * heads + head) * n * n
        pair_ok = row_ok[:, None] & (rows[None, :] < n)
        bias = tl.load(bias_ptr + bias_base + rows[:, None] * n + rows[None, :], mask=pair_ok, other=0.0)
        bias = bias.to(tl.float32)
        scores = tl.where(rows[None, :] < n, scores + bias, float("-inf"))
        scores = scores - tl.max(scores, axis=1)[:, None]
        p = tl.exp(scores)
        p = p / tl.sum(p, axis=1)[:, None]
        out = tl.dot(p.to(v.dtype), v)
        tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=tile_ok)

    def triton_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                                logit_scale: torch.Tensor | None, scale: float) -> torch.Tensor:
        """Launches the kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)."""
        windows, heads, n, d = q.shape
        q, k, v, bias = q.contiguous(), k.contiguous(), v.contiguous(), bias.contiguous()
        out = torch.empty_like(q)
        cosine = logit_scale is not None
        logit = logit_scale.contiguous().float().view(-1) if cosine else bias  # unused pointer when not cosine
        block_n = max(16, triton.next_power_of_2(n))
        block_d = max(16, triton.next_power_of_2(d))
        _window_attention_kernel[(windows * heads,)](
            q, k, v, bias, logit, out, heads, n, d, bias.shape[0], float(scale),
            COSINE=cosine, BLOCK_N=block_n, BLOCK_D=block_d,
        )
        return out

    @window_attention.register_kernel("cuda")
    def _(q, k, v, bias, logit_scale, scale):
        return triton_window_attention(q, k, v, bias, logit_scale, scale)
