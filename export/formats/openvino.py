"""`--format openvino`: an OpenVINO IR (model.xml + model.bin) for `--backend openvino` and Triton's openvino
backend. The ONNX export is verified first, then converted and verified again in OpenVINO at f32; the ONNX file is
not kept."""

from __future__ import annotations

from typing import Any

from vitserve.artifact import MODEL_NAME
from vitserve.errors import ExportError
from vitserve.export.formats import Built, Format
from vitserve.export.formats.onnx import FORMAT as ONNX

IR_NAME = "model.xml"


class OpenVINOFormat(Format):
    name = "openvino"

    def build(self, job) -> Built:
        try:
            import openvino as ov
        except ImportError as e:
            raise ExportError("--format openvino needs the openvino package: pip install 'vitserve[openvino]'") from e
        onnx = ONNX.build(job)
        onnx_report = ONNX.verify(job, onnx)
        job.progress("converting to an OpenVINO IR and verifying it against PyTorch")
        ov.save_model(ov.convert_model(str(job.folder / MODEL_NAME)), str(job.folder / IR_NAME),
                      compress_to_fp16=False)
        (job.folder / MODEL_NAME).unlink()
        return Built(IR_NAME, "openvino", graph=onnx.graph, precision="f32",
                     report={"atol": job.options.atol, "onnx_before_conversion": onnx_report})

    def verify(self, job, result: Built) -> dict[str, Any]:
        report = job.verify(result)
        job.progress(f"  IR max |diff| {report['max_abs_diff']:.2e}, top-1 agreement {report['top1_agreement']:.0%}")
        return report


FORMAT = OpenVINOFormat()
