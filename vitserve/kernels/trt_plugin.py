"""The fused window-attention kernel as TensorRT plugins (TensorRT's `tensorrt.plugin`, quickly deployable plugins),
compiled ahead of time.

Importing this module registers `vitserve::WindowAttention` and `vitserve::CosineWindowAttention`, the ops that
`vitserve.export.tensorrt.export_plugin_onnx` writes in place of each window attention (each node carries
`plugin_namespace` = "vitserve" and `aot` = 1, so TensorRT's ONNX parser picks these plugins' ahead-of-time
implementation). While the engine is built, TensorRT calls `_plain_aot` / `_cosine_aot` once per plugin node with
the node's tensor descriptions; they compile the Triton kernel of `vitserve.kernels.window_attention` to PTX for this
GPU and these dtypes and return it with its launch: one program per (window, head) and block of query rows, the
window count symbolic in the batch. TensorRT stores the PTX in the engine and launches it itself: running the
engine needs neither Python nor this module (trtexec, Triton's TensorRT backend and `vitserve serve --backend
tensorrt` load it alike). Building needs TensorRT >= 10.9, triton, torch (the kernel's module imports it) and a
GPU.
"""

# No `from __future__ import annotations`: tensorrt.plugin reads the type hints as objects.
from typing import Tuple  # noqa: UP035

import tensorrt as trt
import tensorrt.plugin as trtp

from vitserve.kernels.window_attention import compile_kernel, launch_arguments, loadable_ptx_version

DTYPES = {trt.float16: "fp16", trt.bfloat16: "bf16", trt.float32: "fp32"}
AotResult = Tuple[str, str, trtp.KernelLaunchParams, trtp.SymIntExprs]  # noqa: UP006


@trtp.register("vitserve::WindowAttention")
def _plain_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, bias: trtp.TensorDesc,
                scale: float) -> trtp.TensorDesc:
    return q.like()


@trtp.register("vitserve::CosineWindowAttention")
def _cosine_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, bias: trtp.TensorDesc,
                 logit_scale: trtp.TensorDesc, scale: float) -> trtp.TensorDesc:
    return q.like()


def _dtype(desc: trtp.TensorDesc, name: str) -> str:
    if desc.dtype not in DTYPES:
        raise ValueError(f"window attention: {name} is {desc.dtype}; the kernel takes float16, bfloat16 or float32")
    return DTYPES[desc.dtype]


def _constant(dim: trtp.ShapeExpr, name: str) -> int:
    if dim.is_fake or not dim.is_constant:
        raise ValueError(f"window attention: the {name} must be fixed when the engine is built")
    return dim.constant_value()


def _aot(q: trtp.TensorDesc, bias: trtp.TensorDesc, logit_scale, scale: float) -> AotResult:
    import triton

    arch = triton.runtime.driver.active.get_current_target().arch
    shape = [q.shape_expr[i] for i in range(4)]  # windows (= batch * windows per image: symbolic), heads, ...
    kernel = compile_kernel(
        dtype=_dtype(q, "q"), bias_dtype=_dtype(bias, "the bias"),
        logit_dtype=None if logit_scale is None else _dtype(logit_scale, "the logit scale"), scale=scale,
        tokens=_constant(shape[2], "window area"), head_dim=_constant(shape[3], "head dimension"),
        arch=arch, ptx_version=loadable_ptx_version(arch))
    programs, scalars = launch_arguments(shape, bias.shape_expr[0], kernel.query_blocks)
    launch = trtp.KernelLaunchParams()
    launch.grid_x = programs
    launch.block_x = kernel.threads
    launch.shared_mem = kernel.shared
    scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in scalars])
    return kernel.name, kernel.ptx, launch, scalars


@trtp.aot_impl("vitserve::WindowAttention")
def _plain_aot(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, bias: trtp.TensorDesc, scale: float,
               outputs: Tuple[trtp.TensorDesc], tactic: int) -> AotResult:  # noqa: UP006
    return _aot(q, bias, None, scale)


@trtp.aot_impl("vitserve::CosineWindowAttention")
def _cosine_aot(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, bias: trtp.TensorDesc,
                logit_scale: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc],  # noqa: UP006
                tactic: int) -> AotResult:
    return _aot(q, bias, logit_scale, 1.0)
