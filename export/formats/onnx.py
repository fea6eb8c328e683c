"""`--format onnx` (the default): model.onnx with a dynamic batch dimension, for onnxruntime, OpenVINO and Triton.

`--dtype fp16` writes the model in fp16 for onnxruntime's CUDA and TensorRT providers (tensor cores): weights and
activations fp16, every LayerNorm and Swin's attention bias float32, float32 in and out. Both are verified in
onnxruntime on the CPU (which runs fp16 too, slowly), fp16 by the logits' cosine like every reduced precision. An
fp32 export that fails its gate also gets the first block whose output diverges (verify.locate_divergence).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from vitserve.artifact import MODEL_NAME
from vitserve.errors import VerificationError
from vitserve.export.formats import Built, Format


class OnnxFormat(Format):
    name = "onnx"

    def check(self, options) -> None:
        if options.dtype not in ("fp32", "fp16"):
            super().check(options)  # the message that names what each format takes

    def build(self, job) -> Built:
        from vitserve.export.onnx import export_onnx, graph_stats

        options, path = job.options, job.folder / MODEL_NAME
        fp16 = options.dtype == "fp16"
        model = job.deploy
        if fp16:
            import torch

            from vitserve.export.precision import mixed_precision

            model = mixed_precision(job.deploy, torch.float16)
        started = time.perf_counter()
        job.progress(f"exporting ONNX{' in fp16' if fp16 else ''} (opset {options.opset}, batch "
                     f"1..{options.max_batch})")
        export_onnx(model, job.preprocess.input_size, path, max_batch=options.max_batch, opset=options.opset)
        stats = graph_stats(path)
        job.progress(f"  {stats['nodes']} nodes, {stats['file_bytes'] / 1e6:.1f} MB, "
                     f"{time.perf_counter() - started:.1f}s")
        if not fp16:
            return Built(MODEL_NAME, "onnxruntime", graph=stats, report={"atol": options.atol})
        package = {"dtype": "fp16", "float32_layer_norms": stats["op_counts"].get("LayerNormalization", 0)}
        return Built(MODEL_NAME, "onnxruntime", dtype="fp16", what="fp16 ONNX model", graph=stats, package=package)

    def verify(self, job, result: Built) -> dict[str, Any]:
        from vitserve.export.verify import locate_divergence

        job.progress(f"verifying against the fp32 PyTorch model on random inputs and photographs (onnxruntime, "
                     f"CPU{', fp16 model' if result.dtype == 'fp16' else ''})")
        # an fp16 model on onnxruntime's CPU kernels is what this check runs, not advice for serving
        runtime_log = logging.getLogger("vitserve.runtimes.onnxruntime")
        level = runtime_log.level
        runtime_log.setLevel(logging.ERROR)  # setLevel, not the attribute: it clears the loggers' cached levels
        try:
            report = job.verify(result)
        except VerificationError as e:
            if result.dtype != "fp32":
                raise
            report, inputs = e.report, job.verification_inputs[1]
            atol = job.options.atol
            worst = min(inputs, key=lambda n: report["inputs"][n]["min_cosine"]) if report["max_abs_diff"] <= atol \
                else max(inputs, key=lambda n: report["inputs"][n]["max_abs_diff"])
            report["first_divergence"] = locate_divergence(job.built.model, job.deploy, inputs[worst], atol=atol,
                                                           opset=job.options.opset)
            where = report["first_divergence"].get("summary", "no block-level divergence found")
            raise VerificationError(f"{e}. {where}", report) from e
        finally:
            runtime_log.setLevel(level)
        job.progress(f"  max |diff| {report['max_abs_diff']:.2e} (atol {job.options.atol:g}), top-1 agreement "
                     f"{report['top1_agreement']:.0%}, min cosine {report['min_cosine']:.6f}")
        return report

FORMAT = OnnxFormat()
