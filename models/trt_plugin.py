"""The fused window-attention kernel as TensorRT plugins (TensorRT 10's `tensorrt.plugin`, quickly deployable plugins).

Importing this module registers `vitserve::WindowAttention` and `vitserve::CosineWindowAttention`, the ops that
`vitserve.export.tensorrt.export_plugin_onnx` writes in place of each window attention. TensorRT's ONNX parser
finds them by op type and the node's `plugin_namespace` attribute; the engine builder and the runtime that loads
the engine both need them registered (the server's TensorRT backend imports this module).

The implementation launches the same Triton kernel as the PyTorch op (`vitserve.models.window_attention`) on
the stream TensorRT gives it, reading and writing TensorRT's buffers in place through the CUDA array interface.
Needs TensorRT >= 10.7, torch and triton, and a GPU.
"""

# No `from __future__ import annotations`: tensorrt.plugin reads the type hints as objects.
from typing import Tuple  # noqa: UP035

import tensorrt.plugin as trtp
import torch

from vitserve.models.window_attention import triton_window_attention


@trtp.register("vitserve::WindowAttention")
def _plain_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, bias: trtp.TensorDesc,
                scale: float) -> trtp.TensorDesc:
    return q.like()


@trtp.register("vitserve::CosineWindowAttention")
def _cosine_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, bias: trtp.TensorDesc,
                 logit_scale: trtp.TensorDesc, scale: float) -> trtp.TensorDesc:
    return q.like()


def _run(inputs, logit_scale, scale: float, outputs, stream: int) -> None:
    q, k, v, bias = (torch.as_tensor(t, device="cuda") for t in inputs)
    logit = None if logit_scale is None else torch.as_tensor(logit_scale, device="cuda")
    out = torch.as_tensor(outputs[0], device="cuda")
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        out.copy_(triton_window_attention(q, k, v, bias, logit, scale))


@trtp.impl("vitserve::WindowAttention")
def _plain_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, bias: trtp.Tensor, scale: float,
                outputs: Tuple[trtp.Tensor], stream: int) -> None:  # noqa: UP006
    _run((q, k, v, bias), None, scale, outputs, stream)


@trtp.impl("vitserve::CosineWindowAttention")
def _cosine_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, bias: trtp.Tensor, logit_scale: trtp.Tensor,
                 scale: float, outputs: Tuple[trtp.Tensor], stream: int) -> None:  # noqa: UP006
    _run((q, k, v, bias), logit_scale, scale, outputs, stream)
