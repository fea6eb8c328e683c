"""TensorRT artifacts: the window attention as a plugin node, optimization profiles per batch bucket, the engine.

1. `export_plugin_onnx` exports the GPU deploy form of a rewritten Swin (every window attention a call of the
   `vitserve::window_attention` op) so that each call becomes ONE ONNX node, `WindowAttention` (Swin) or
   `CosineWindowAttention` (Swin V2, with the logit-scale input), in domain "vitserve", with the attributes
   `scale`, `plugin_namespace` = "vitserve" and `aot` = 1. TensorRT's ONNX parser does not know the op and looks
   for a plugin of that name in that namespace: the ones `vitserve.kernels.trt_plugin` registers with
   `tensorrt.plugin`, whose ahead-of-time implementation compiles the Triton kernel of
   `vitserve.kernels.window_attention` to PTX that the engine keeps. The schemas are registered with onnx, so the
   file passes onnx's checker.
   The file carries its own precision, as TensorRT's strongly typed networks require (TensorRT 11 has no other
   kind): float32 in and out, activations and weights in fp16 (or bf16), LayerNorm computed in float32, the
   attention's bias and logit scale float32 (the kernel accumulates in float32 and does its softmax in float32).
2. `optimization_profiles` turns the batch buckets into TensorRT optimization profiles: one per bucket, covering
   the batch sizes above the previous bucket, tuned for the bucket itself.
3. `build_engine` builds a strongly typed TensorRT engine (10.9 or later) from that ONNX file, one optimization
   profile per bucket. It needs TensorRT, triton and a GPU.
4. The engine is checked at export, and served, by `vitserve.runtimes.tensorrt` (TensorRT and the CUDA runtime
   bindings, no torch), each batch in the profile of the smallest bucket that holds it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from vitserve.artifact import Profile
from vitserve.errors import ExportError

log = logging.getLogger(__name__)

DOMAIN = "vitserve"
PLAIN_OP, COSINE_OP = "WindowAttention", "CosineWindowAttention"
ENGINE_NAME = "model.engine"


def register_onnx_schemas() -> None:
    """The plugin ops' schemas, so that onnx (checker, shape inference) understands the exported file."""
    import onnx
    from onnx.defs import OpSchema

    float_types = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    for name, extra in ((PLAIN_OP, []), (COSINE_OP, [("logit_scale", "per-head logit scale (Swin V2), (heads,)")])):
        if onnx.defs.has(name, DOMAIN):
            continue
        inputs = [OpSchema.FormalParameter(n, "T", d) for n, d in (
            ("q", "queries (windows, heads, tokens, head_dim)"), ("k", "keys, same shape"),
            ("v", "values, same shape"))]
        inputs.append(OpSchema.FormalParameter("bias", "tensor(float)", "relative-position bias + shift mask, "
                                               "(bias_windows, heads, tokens, tokens); window w uses w % bias_windows"))
        inputs += [OpSchema.FormalParameter(n, "tensor(float)", d) for n, d in extra]
        onnx.defs.register_schema(OpSchema(
            name, DOMAIN, 1,
            doc="softmax(q k^T * scale + bias) v per window and head, one kernel (vitserve's window attention)",
            inputs=inputs,
            outputs=[OpSchema.FormalParameter("out", "T", "same shape as q")],
            type_constraints=[("T", float_types, "activations")],
            attributes=[OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "multiplies q k^T (plain attention)"),
                        OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace"),
                        OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version"),
                        OpSchema.Attribute("aot", OpSchema.AttrType.INT, "1: TensorRT uses the plugin's ahead-of-time "
                                           "implementation")],
        ))


def _translation():
    import onnxscript

    register_onnx_schemas()
    plugin = onnxscript.values.Opset(DOMAIN, 1)

    def window_attention(q, k, v, bias, logit_scale=None, scale: float = 1.0):
        if logit_scale is None:
            return plugin.WindowAttention(q, k, v, bias, scale=scale, plugin_namespace=DOMAIN, plugin_version="1",
                                          aot=1)
        return plugin.CosineWindowAttention(q, k, v, bias, logit_scale, scale=scale, plugin_namespace=DOMAIN,
                                            plugin_version="1", aot=1)

    return window_attention


def export_plugin_onnx(deploy, input_size: tuple[int, int, int], path: Path, *, max_batch: int, opset: int,
                       dtype: str = "fp16") -> dict:
    """Writes the deploy form in `dtype` (mixed_precision) with each window attention as one plugin node;
    returns {"plugin_nodes", "dtype", "float32_layer_norms"}.

    ExportError when the model has no window attention to replace (not a rewritten Swin / Swin V2)."""
    import onnx

    from vitserve.export.onnx import export_onnx
    from vitserve.export.precision import mixed_precision
    from vitserve.kernels import window_attention  # noqa: F401  (registers torch.ops.vitserve.window_attention)
    from vitserve.models.rewrites.windows import use_fused_kernel
    from vitserve.runtimes.torch_package import DTYPES

    model = mixed_precision(deploy, DTYPES[dtype])
    if not use_fused_kernel(model, layout="split"):  # the plugin node takes q, k, v
        raise ExportError("the TensorRT plugin replaces Swin's window attention; this model has none (export it "
                          "with --format onnx and build the engine with TensorRT's own layers)")
    export_onnx(model, input_size, path, max_batch=max_batch, opset=opset,
                custom_translation_table={torch.ops.vitserve.window_attention.default: _translation()})
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    return {"plugin_nodes": sum(node.domain == DOMAIN for node in graph.graph.node), "dtype": dtype,
            "float32_layer_norms": sum(node.op_type == "LayerNormalization" for node in graph.graph.node)}


def optimization_profiles(buckets: list[int] | tuple[int, ...], max_batch: int) -> list[Profile]:
    """One profile per bucket: batches above the previous bucket up to this one, tuned for this one."""
    sizes = sorted(set(buckets) | {max_batch})
    if sizes[0] < 1 or sizes[-1] > max_batch:
        raise ExportError(f"batch buckets must lie within 1..{max_batch}, got {sorted(set(buckets))}")
    profiles, low = [], 1
    for size in sizes:
        profiles.append(Profile(min=low, opt=size, max=size))
        low = size + 1
    return profiles


def require_tensorrt():
    """The `tensorrt` module, when everything --format tensorrt needs is installed: TensorRT with ahead-of-time
    plugins, and cuda-bindings for the runner that checks the engine. ExportError naming what is missing, so that
    an export fails at its start, not after the engine is built."""
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as e:
        raise ExportError("--format tensorrt needs TensorRT 10.9 or later (pip install tensorrt-cu12; its libraries "
                          "come from pypi.nvidia.com) and an NVIDIA GPU; neither is needed for --format onnx, "
                          "openvino or torch") from e
    if not hasattr(trtp, "aot_impl"):
        raise ExportError(f"TensorRT {trt.__version__} has no ahead-of-time plugins (tensorrt.plugin.aot_impl); "
                          "install a newer TensorRT")
    try:
        from cuda.bindings import runtime  # noqa: F401
    except ImportError as e:
        raise ExportError("--format tensorrt checks the engine with the tensorrt backend, which needs "
                          "cuda-bindings: pip install cuda-bindings (the major version of your CUDA driver)") from e
    return trt


def build_engine(onnx_path: Path, engine_path: Path, *, input_name: str, input_shape: tuple[int, int, int],
                 profiles: list[Profile], workspace_gb: float = 4.0) -> dict:
    """Builds and writes a strongly typed engine (the precision is the ONNX file's); returns what the manifest
    records. ExportError without what require_tensorrt checks, or without a GPU."""
    trt = require_tensorrt()
    import vitserve.kernels.trt_plugin  # noqa: F401  (registers the window-attention plugins)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # TensorRT 11: always
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for p in profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, (p.min, *input_shape), (p.opt, *input_shape), (p.max, *input_shape))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT failed to build the engine (see its log above)")
    engine_path.write_bytes(bytes(serialized))
    major, minor = torch.cuda.get_device_capability()
    return {"format": "tensorrt", "tensorrt": trt.__version__, "compute_capability": f"{major}.{minor}",
            "gpu": torch.cuda.get_device_name(), "strongly_typed": True,
            "window_attention": "ahead-of-time PTX plugin", "profiles": [vars(p) for p in profiles]}


def reference_evaluator(path: Path):
    """onnx's reference evaluator for the plugin ONNX file, the plugin ops computed by the PyTorch reference of the
    kernel: the file can be checked against the model on any CPU, before (or without) TensorRT."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    from vitserve.kernels.window_attention import reference

    class WindowAttention(OpRun):
        op_domain = DOMAIN

        def _run(self, q, k, v, bias, logit_scale=None, scale=1.0, plugin_namespace=None, plugin_version=None,
                 aot=None):
            t = [torch.from_numpy(np.array(a)) for a in (q, k, v, bias)]
            ls = None if logit_scale is None else torch.from_numpy(np.array(logit_scale))
            return (reference(*t, ls, scale).numpy(),)

    class CosineWindowAttention(WindowAttention):
        pass

    return ReferenceEvaluator(str(path), new_ops=[WindowAttention, CosineWindowAttention])
