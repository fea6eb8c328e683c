"""The `openvino` runtime (optional extra `openvino`): the artifact's model, ONNX or an OpenVINO IR (`model.xml`,
written by `vitserve export --format openvino` and by OpenVINO quantization), compiled by OpenVINO for the CPU in
f32 or bf16 (`--precision`; auto: bf16 where the CPU computes it natively)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitserve.errors import ArtifactError
from vitserve.pool import Pool
from vitserve.runtimes.base import Runtime


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can compute in bf16 here (AVX512_BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_precision(precision: str) -> str:
    """'auto' -> 'bf16' where the CPU computes bf16 natively, else 'f32'. ArtifactError for bf16 without it."""
    if precision not in ("auto", "f32", "bf16"):
        raise ArtifactError(f"unknown precision {precision!r}; choose one of auto, f32, bf16")
    supported = cpu_supports_bf16()
    if precision == "bf16" and not supported:
        raise ArtifactError("--precision bf16 needs a CPU with AVX512_BF16 or AMX, which this one lacks; "
                            "use --precision f32")
    if precision == "auto":
        return "bf16" if supported else "f32"
    return precision


class OpenVINORuntime(Runtime):
    """The artifact's model (ONNX or OpenVINO IR) compiled by OpenVINO for the CPU, in f32 or bf16."""

    name = "openvino"
    library = "openvino"

    def __init__(self, artifact_dir: str | Path, *, threads: int | None = None, device: str = "auto",
                 precision: str = "auto"):
        try:
            import openvino as ov
        except ImportError as e:
            raise ArtifactError("the openvino backend needs the `openvino` package: pip install "
                                "'vitserve[openvino]'") from e
        super().__init__(artifact_dir)
        self.precision = resolve_precision(precision)
        config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(self.model_path), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own for unreadable models
            raise ArtifactError(f"OpenVINO cannot load {self.model_path}: {e}") from e
        self._requests = Pool(self.compiled.create_infer_request)  # an infer request runs one call at a time
        self.description = f"openvino CPU {self.precision}"

    @property
    def computes_in(self) -> str:
        exported = super().computes_in
        return "bf16" if self.precision == "bf16" and exported == "fp32" else exported

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._requests.take() as request:
            result = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
            return np.array(result[self.compiled.output(0)], dtype=np.float32)

    def reserve(self, calls: int) -> None:
        """An infer request for each of `calls` calls at once, made now rather than in a call while serving."""
        self._requests.reserve(calls)
