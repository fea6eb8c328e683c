"""`vitserve export`: model -> deploy rewrite -> ONNX -> verification -> artifact directory.

The artifact is assembled in a temporary directory beside the target and renamed into place only when the
verification passed: a failed export never leaves a half-written artifact behind.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from vitserve.artifact import (
    LABELS_NAME,
    MODEL_NAME,
    Manifest,
    TensorSpec,
    check_output_dir,
    install_artifact,
    write_labels,
    write_manifest,
)
from vitserve.config import DEFAULT_ATOL, DEFAULT_MAX_BATCH, DEFAULT_OPSET
from vitserve.errors import ExportError, VerificationError

if TYPE_CHECKING:
    from vitserve.export.torch_package import TorchOptions

log = logging.getLogger(__name__)


@dataclass
class ExportOptions:
    out: Path
    max_batch: int = DEFAULT_MAX_BATCH
    opset: int = DEFAULT_OPSET
    rewrite: bool = True
    atol: float = DEFAULT_ATOL
    format: str = "onnx"  # or "openvino": the verified ONNX converted to an OpenVINO IR, verified again;
    # "torch": an AOTInductor package for the device and precision in `torch_options`; "tensorrt": a TensorRT
    # engine with the window-attention plugin, one optimization profile per bucket of `torch_options`
    torch_options: TorchOptions | None = None
    dtype: str = "fp32"  # format "onnx": "fp16" writes the model in fp16 (LayerNorm float32, float32 in and out)


def export_artifact(built, options: ExportOptions, progress: Callable[[str], None] = log.info) -> Manifest:
    """Exports a BuiltModel (vitserve.models.build) to `options.out`; returns the manifest written there.

    Raises VerificationError (artifact not written) when the export does not match the model.
    """
    from vitserve.export.onnx import INPUT_NAME, OUTPUT_NAME
    from vitserve.export.torch_package import TorchOptions, check_options
    from vitserve.models.rewrite import deploy_copy

    if options.max_batch < 1:
        raise ExportError(f"--max-batch must be at least 1, got {options.max_batch}")
    if options.format not in ("onnx", "openvino", "torch", "tensorrt"):
        raise ExportError(f"unknown --format {options.format!r}; choose onnx, openvino, torch or tensorrt")
    if options.dtype not in ("fp32", "fp16") or (options.dtype == "fp16" and options.format != "onnx"):
        raise ExportError(f"--dtype {options.dtype} with --format {options.format}: an ONNX artifact is fp32 or fp16 "
                          "(for onnxruntime's CUDA and TensorRT providers), an OpenVINO IR fp32; bf16 and fp8 are "
                          "for --format torch")
    torch_options = options.torch_options or TorchOptions()
    if options.format == "tensorrt" and torch_options.dtype == "fp8":
        raise ExportError("--dtype fp8 applies to --format torch; a TensorRT engine is built in fp16, bf16 or fp32")
    if options.format == "tensorrt":
        from vitserve.export.tensorrt import require_tensorrt

        require_tensorrt()
    buckets = check_options(torch_options, options.max_batch) if options.format in ("torch", "tensorrt") else None
    out = Path(options.out)
    check_output_dir(out)
    spec = built.spec
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        deploy, rewrite = deploy_copy(built.model, rewrite=options.rewrite, explicit=options.format != "torch")
        if options.rewrite:
            progress(f"rewrite: {rewrite or 'none for this architecture'}")
        else:
            progress("rewrite: skipped (--no-rewrite)")

        package: dict = {}
        try:
            if options.format == "torch":
                model_file, stats, report, package = _to_torch(tmp, built, deploy, options, torch_options, buckets,
                                                               progress)
            elif options.format == "tensorrt":
                model_file, stats, report, package = _to_tensorrt(tmp, built, deploy, options, torch_options.dtype,
                                                                   buckets, progress)
            elif options.dtype == "fp16":
                model_file, stats, report, package = _to_onnx_fp16(tmp, built, deploy, options, progress)
            else:
                model_file, stats, report = _to_onnx(tmp, built, deploy, options, progress)
                if options.format == "openvino":
                    model_file, report = _to_openvino(tmp, built, deploy, options, report, progress)
        except VerificationError as e:  # whatever the format: the report goes beside --out
            failed = out.parent / f"{out.name}.failed-verification.json"
            failed.write_text(_json(e.report))
            raise VerificationError(f"{e} Full report: {failed}", e.report) from e

        write_labels(tmp / LABELS_NAME, built.labels)
        C, H, W = spec.preprocess.input_size
        manifest = Manifest(
            name=spec.name,
            architecture=spec.timm_name,
            family=type(built.model).__module__.rsplit(".", 1)[-1],
            input=TensorSpec(INPUT_NAME, (-1, C, H, W)),
            output=TensorSpec(OUTPUT_NAME, (-1, built.num_classes)),
            max_batch=options.max_batch,
            preprocess=spec.preprocess,
            num_classes=built.num_classes,
            model_file=model_file,
            rewrite=rewrite,
            opset=options.opset if options.format != "torch" else None,
            package=package,
            weights={**built.weights, **({"timm_kwargs": _plain(built.timm_kwargs)} if built.timm_kwargs else {})},
            graph=stats,
            verification=report,
            versions=_versions(),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        write_manifest(tmp, manifest)
        install_artifact(tmp, out)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _to_onnx(tmp: Path, built, deploy, options: ExportOptions, progress):
    """model.onnx, its graph statistics and its verification report."""
    from vitserve.export.onnx import export_onnx, graph_stats
    from vitserve.export.verify import verify_export

    spec = built.spec
    started = time.perf_counter()
    progress(f"exporting ONNX (opset {options.opset}, batch 1..{options.max_batch})")
    export_onnx(deploy, spec.preprocess.input_size, tmp / MODEL_NAME, max_batch=options.max_batch,
                opset=options.opset)
    stats = graph_stats(tmp / MODEL_NAME)
    progress(f"  {stats['nodes']} nodes, {stats['file_bytes'] / 1e6:.1f} MB, {time.perf_counter() - started:.1f}s")
    progress("verifying against PyTorch on random inputs and photographs")
    report = verify_export(tmp / MODEL_NAME, built.model, deploy, spec.preprocess, atol=options.atol,
                           max_batch=options.max_batch, opset=options.opset)
    progress(f"  max |diff| {report['max_abs_diff']:.2e} (atol {options.atol:g}), "
             f"top-1 agreement {report['top1_agreement']:.0%}, min cosine {report['min_cosine']:.6f}")
    return MODEL_NAME, stats, report


def _to_onnx_fp16(tmp: Path, built, deploy, options: ExportOptions, progress):
    """model.onnx in fp16 for onnxruntime's CUDA and TensorRT providers (tensor cores): weights and activations
    fp16, every LayerNorm and Swin's attention bias float32, float32 in and out; checked in onnxruntime on the CPU
    (which runs fp16 too, slowly) against the fp32 model, gated like every fp16 artifact on the logits' cosine."""
    import torch

    from vitserve.export.onnx import INPUT_NAME, export_onnx, graph_stats
    from vitserve.export.precision import mixed_precision
    from vitserve.export.verify import check_runner, in_chunks, precision_gate, verification_inputs

    spec = built.spec
    started = time.perf_counter()
    progress(f"exporting ONNX in fp16 (opset {options.opset}, batch 1..{options.max_batch})")
    export_onnx(mixed_precision(deploy, torch.float16), spec.preprocess.input_size, tmp / MODEL_NAME,
                max_batch=options.max_batch, opset=options.opset)
    stats = graph_stats(tmp / MODEL_NAME)
    progress(f"  {stats['nodes']} nodes, {stats['file_bytes'] / 1e6:.1f} MB, {time.perf_counter() - started:.1f}s")
    progress("verifying against the fp32 PyTorch model on random inputs and photographs (onnxruntime, CPU)")
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp / MODEL_NAME), providers=["CPUExecutionProvider"])
    _, inputs = verification_inputs(spec.preprocess)
    report = {"runtime": f"onnxruntime {ort.__version__} CPU, fp16 model"}
    report.update(check_runner(in_chunks(lambda x: session.run(None, {INPUT_NAME: x})[0], options.max_batch),
                               built.model, inputs))
    failed = precision_gate(report, "fp16", options.atol)
    if failed:
        raise VerificationError(f"the fp16 ONNX model does not match the model: {failed}", report)
    progress(f"  min cosine {report['min_cosine']:.6f}, max |diff| {report['max_abs_diff']:.2e}, "
             f"top-1 agreement {report['top1_agreement']:.0%}")
    package = {"dtype": "fp16", "float32_layer_norms": stats["op_counts"].get("LayerNormalization", 0)}
    return MODEL_NAME, stats, report, package


def _to_torch(tmp: Path, built, deploy, options: ExportOptions, torch_options: TorchOptions,
              buckets: tuple[int, ...], progress):
    """model.pt2 (AOTInductor) for the device and precision asked for, verified against the fp32 model."""
    from vitserve.export.torch_package import PACKAGE_NAME, calls_fused_op, compile_package, verify_package

    spec = built.spec
    progress(f"compiling an AOTInductor package ({torch_options.device}, {torch_options.dtype}, batch "
             f"1..{options.max_batch}, buckets {', '.join(map(str, buckets))}); this takes a minute or more")
    package = compile_package(deploy, spec.preprocess.input_size, tmp / PACKAGE_NAME, torch_options,
                              options.max_batch)
    package["batch_buckets"] = list(buckets)
    if package["fp8_linear_layers"]:
        progress(f"  {package['fp8_linear_layers']} Linear layers in fp8"
                 + ("; on the CPU PyTorch emulates fp8, slower than bf16: this package shows fp8's accuracy, not "
                    "its speed" if torch_options.device == "cpu" else ""))
    progress(f"  {package['compile_seconds']:.0f}s; verifying against the fp32 PyTorch model")
    report = verify_package(tmp / PACKAGE_NAME, built.model, spec.preprocess, torch_options, atol=options.atol,
                            max_batch=options.max_batch, buckets=buckets,
                            fused=calls_fused_op(package))
    package["loader"] = report["loader"]  # the way it passed is the way the server loads it
    if report["loader"] == "runner":
        package["cuda_graphs"] = False
        progress(f"  PyTorch's package loader failed ({report['package_loader_failure']}); verified and served "
                 "through AOTInductor's container runner, plain calls")
    progress(f"  max |diff| {report['max_abs_diff']:.2e}, min cosine {report['min_cosine']:.6f}, "
             f"top-1 agreement {report['top1_agreement']:.0%}")
    stats = {"file_bytes": (tmp / PACKAGE_NAME).stat().st_size}
    return PACKAGE_NAME, stats, report, package


def _to_tensorrt(tmp: Path, built, deploy, options: ExportOptions, dtype: str, buckets: tuple[int, ...],
                 progress):
    """model.onnx with the plugin nodes in the engine's precision (checked on the CPU with the kernel's
    reference), then model.engine (strongly typed, one optimization profile per bucket), checked against the fp32
    model on the GPU."""
    from vitserve.export.onnx import INPUT_NAME, OUTPUT_NAME
    from vitserve.export.tensorrt import (
        ENGINE_NAME,
        build_engine,
        export_plugin_onnx,
        optimization_profiles,
        reference_evaluator,
    )
    from vitserve.export.verify import check_runner, in_chunks, precision_gate, verification_inputs
    from vitserve.server.tensorrt_engine import EngineRunner

    spec = built.spec
    progress(f"exporting ONNX in {dtype} with the window-attention plugin nodes")
    plugin = export_plugin_onnx(deploy, spec.preprocess.input_size, tmp / MODEL_NAME, max_batch=options.max_batch,
                                opset=options.opset, dtype=dtype)
    evaluator = reference_evaluator(tmp / MODEL_NAME)
    _, inputs = verification_inputs(spec.preprocess)
    onnx_check = check_runner(lambda x: evaluator.run(None, {INPUT_NAME: x})[0], built.model,
                              {"single_photo": inputs["single_photo"]})
    failed = precision_gate(onnx_check, dtype, options.atol)
    if failed:
        raise VerificationError(f"the {dtype} plugin ONNX does not match the model: {failed}", onnx_check)
    progress(f"  {plugin['plugin_nodes']} plugin nodes, {plugin['float32_layer_norms']} float32 LayerNorms; logit "
             f"cosine {onnx_check['min_cosine']:.5f} (kernel reference, CPU)")
    profiles = optimization_profiles(buckets, options.max_batch)
    progress(f"building the TensorRT engine ({dtype}, {len(profiles)} optimization profiles)")
    package = build_engine(tmp / MODEL_NAME, tmp / ENGINE_NAME, input_name=INPUT_NAME,
                           input_shape=spec.preprocess.input_size, profiles=profiles)
    package.update(plugin, plugin_onnx_check=onnx_check)
    run = EngineRunner((tmp / ENGINE_NAME).read_bytes(), profiles, spec.preprocess.input_size, built.num_classes,
                       INPUT_NAME, OUTPUT_NAME)
    report = {"runtime": f"tensorrt {package['tensorrt']} {dtype}"}
    report.update(check_runner(in_chunks(run, options.max_batch), built.model, inputs))
    failed = precision_gate(report, dtype, options.atol)
    if failed:
        raise VerificationError(f"the {dtype} TensorRT engine does not match the model: {failed}", report)
    (tmp / MODEL_NAME).unlink()  # the engine is the artifact; the plugin ONNX can be rebuilt from the model
    return ENGINE_NAME, {"file_bytes": (tmp / ENGINE_NAME).stat().st_size}, report, package


def _to_openvino(tmp: Path, built, deploy, options: ExportOptions, onnx_report: dict, progress):
    """Converts the verified model.onnx to an OpenVINO IR (model.xml + model.bin), verifies it, drops the ONNX."""
    from vitserve.export.verify import verify_export

    try:
        import openvino as ov
    except ImportError as e:
        raise ExportError("--format openvino needs the openvino package: pip install 'vitserve[openvino]'") from e
    progress("converting to an OpenVINO IR and verifying it against PyTorch")
    ov.save_model(ov.convert_model(str(tmp / MODEL_NAME)), str(tmp / "model.xml"), compress_to_fp16=False)
    report = verify_export(tmp / "model.xml", built.model, deploy, built.spec.preprocess, atol=options.atol,
                           max_batch=options.max_batch, opset=options.opset)
    progress(f"  IR max |diff| {report['max_abs_diff']:.2e}, top-1 agreement {report['top1_agreement']:.0%}")
    (tmp / MODEL_NAME).unlink()
    return "model.xml", {**report, "onnx_before_conversion": onnx_report}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import timm
    import torch

    import vitserve

    return {"vitserve": vitserve.__version__, "torch": torch.__version__, "timm": timm.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _json(data) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"
