"""What every runtime is: an artifact in, a callable (N, C, H, W) float32 -> (N, classes) float32 logits out."""

from __future__ import annotations

import abc
import importlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vitserve import proof
from vitserve.artifact import Manifest, read_manifest
from vitserve.errors import ArtifactError


class Runtime(abc.ABC):
    """A loaded artifact. Subclasses set `name` (the registry's) and, in __init__, `description`; every runtime
    is safe to call from several threads.

    Attributes:
        directory: the artifact folder.
        manifest: its manifest.
        description: what runs it, for logs ("onnxruntime CPUExecutionProvider").
        batches_in_flight: how many batches the server runs at once by default (2 where one batch's host work
            overlaps another's on the GPU, else 1).
    """

    name: ClassVar[str]
    library: ClassVar[str]  # the Python package that runs it (its version goes into verification reports)
    batches_in_flight: int = 1
    description: str = ""

    def __init__(self, artifact_dir: str | Path):
        from vitserve.runtimes import check_runs

        self.directory = Path(artifact_dir)
        self.manifest: Manifest = read_manifest(self.directory)
        check_runs(self.name, self.manifest, self.directory)

    def version(self) -> str:
        """The runtime library and its version: "onnxruntime 1.32.0"."""
        return f"{self.library} {importlib.import_module(self.library).__version__}"

    @property
    def computes_in(self) -> str:
        """The precision the model computes in here ("fp32", "fp16", "bf16", "fp8" or "int8"), which picks the gate
        its proof is held to (vitserve.proof): an int8 artifact's, or the dtype it was exported in."""
        return "int8" if self.manifest.quantization else self.manifest.package.get("dtype", "fp32")

    @property
    def model_path(self) -> Path:
        return self.directory / self.manifest.model_file

    @abc.abstractmethod
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, num_classes) float32 logits, N at most the manifest's max_batch."""

    # Decoding on the runtime's own device (the torch runtime): the server hands it encoded files instead of pixels.
    on_gpu: bool = False  # runs on a GPU: decoding there is the default (--decode auto)

    def decode_on_device(self, max_pixels: int | None) -> None:
        """From now on run_encoded takes encoded files (images over `max_pixels` refused); ArtifactError where this
        runtime cannot decode."""
        raise self._no_decoding()

    def run_encoded(self, items: list) -> list:
        """Encoded image files (bytes) or preprocessed (C, H, W) float32 arrays -> per item its logits, or the
        RequestError that keeps it from being classified (after decode_on_device); ArtifactError where this runtime
        cannot decode."""
        raise self._no_decoding()

    def _no_decoding(self) -> ArtifactError:
        return ArtifactError(f"the {self.name} runtime does not decode images on its device; --decode device needs "
                             "the torch runtime (an artifact of export --format torch)")

    def check_proof(self) -> dict[str, Any] | None:
        """The artifact's proof (vitserve.proof) run here and gated at the precision this computes in: the report,
        with `passed` and, when not, `reason`; None for an artifact written before proofs were."""
        entry = self.manifest.proof
        if not entry:
            return None
        inputs, references = proof.read(self.directory, entry)
        outputs = proof.run(self, inputs, self.manifest.max_batch)
        report = proof.worst({name: proof.compare(references[name], outputs[name]) for name in references})
        dtype = self.computes_in
        report.update(runtime=self.description, dtype=dtype)
        if dtype == "int8":  # per input set, the cosine its quantization reached there less a margin
            floors = entry["int8_min_cosine"]
            failures = [f"{name}: {failed}" for name, figures in report["inputs"].items()
                        if (failed := proof.gate(figures, dtype, None,
                                                 min_cosine=max(0.0, floors[name] - proof.INT8_MARGIN)))]
            report["passed"] = not failures
            failed = "; ".join(failures) or None
        else:
            failed = proof.gate(report, dtype, entry.get("atol"))
        if failed:
            sets = ", ".join(f"{count} {name}" for name, count in entry["inputs"].items())
            report["reason"] = (f"the artifact's proof ({sets} images) does not give the fp32 model's answers in "
                                f"{self.description}: {failed}")
        return report

    def reserve(self, calls: int) -> None:
        """Makes now whatever each of `calls` calls at once keeps of its own (OpenVINO's infer requests, a CUDA
        graph's pinned buffers), so that no call makes it while serving. Nothing, for most runtimes."""
        return None
