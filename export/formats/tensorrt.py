"""`--format tensorrt`: a TensorRT engine (model.engine) with the window-attention plugin (export/tensorrt.py),
served by the `tensorrt` runtime. Before the engine is built, the plugin ONNX it is built from is checked on the
CPU with the kernel's PyTorch reference; the engine is then verified on the GPU by the runtime that serves it."""

from __future__ import annotations

from typing import Any

from vitserve.artifact import MODEL_NAME
from vitserve.errors import ExportError, VerificationError
from vitserve.export.formats import Built, Flags, Format


class TensorRTFormat(Format):
    name = "tensorrt"
    takes = ("device", "batch_buckets")

    def format_options(self, flags: Flags) -> dict[str, Any]:
        from vitserve.export.torch_package import TorchOptions

        if flags.device not in (None, "cuda"):
            raise ExportError("--format tensorrt builds an engine for the GPU; --device does not apply")
        return {"torch_options": TorchOptions(dtype=flags.dtype or "fp16", batch_buckets=tuple(flags.batch_buckets))}

    def check(self, options) -> tuple[int, ...]:
        from vitserve.export.tensorrt import require_tensorrt
        from vitserve.export.torch_package import TorchOptions, check_options

        super().check(options)
        torch_options = options.torch_options or TorchOptions()
        if torch_options.dtype == "fp8":
            raise ExportError("--dtype fp8 applies to --format torch; a TensorRT engine is built in fp16, bf16 or "
                              "fp32")
        require_tensorrt()
        return check_options(torch_options, options.max_batch)

    def build(self, job) -> Built:
        from vitserve.export.onnx import INPUT_NAME
        from vitserve.export.tensorrt import (
            ENGINE_NAME,
            build_engine,
            export_plugin_onnx,
            optimization_profiles,
            reference_evaluator,
        )
        from vitserve.export.verify import check_runner
        from vitserve.proof import gate

        options, folder = job.options, job.folder
        dtype = options.torch_options.dtype if options.torch_options else "fp16"
        job.progress(f"exporting ONNX in {dtype} with the window-attention plugin nodes")
        plugin = export_plugin_onnx(job.deploy, job.preprocess.input_size, folder / MODEL_NAME,
                                    max_batch=options.max_batch, opset=options.opset, dtype=dtype)
        evaluator = reference_evaluator(folder / MODEL_NAME)
        inputs = job.verification_inputs[1]
        onnx_check = check_runner(lambda x: evaluator.run(None, {INPUT_NAME: x})[0], job.built.model,
                                  {"single_photo": inputs["single_photo"]})
        failed = gate(onnx_check, dtype, options.atol)
        if failed:
            raise VerificationError(f"the {dtype} plugin ONNX does not match the model: {failed}", onnx_check)
        job.progress(f"  {plugin['plugin_nodes']} plugin nodes, {plugin['float32_layer_norms']} float32 LayerNorms; "
                     f"logit cosine {onnx_check['min_cosine']:.5f} (kernel reference, CPU)")
        profiles = optimization_profiles(job.buckets, options.max_batch)
        job.progress(f"building the TensorRT engine ({dtype}, {len(profiles)} optimization profiles)")
        package = build_engine(folder / MODEL_NAME, folder / ENGINE_NAME, input_name=INPUT_NAME,
                               input_shape=job.preprocess.input_size, profiles=profiles)
        package.update(plugin, plugin_onnx_check=onnx_check)
        (folder / MODEL_NAME).unlink()  # the engine is the artifact; the plugin ONNX can be rebuilt from the model
        return Built(ENGINE_NAME, "tensorrt", dtype=dtype, what=f"{dtype} TensorRT engine",
                     graph={"file_bytes": (folder / ENGINE_NAME).stat().st_size}, package=package, device="auto")


FORMAT = TensorRTFormat()
