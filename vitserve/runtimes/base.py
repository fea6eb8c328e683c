"""What every runtime is: an artifact in, a callable (N, C, H, W) float32 -> (N, classes) float32 logits out."""

from __future__ import annotations

import abc
import importlib
from pathlib import Path
from typing import ClassVar

import numpy as np

from vitserve.artifact import Manifest, read_manifest


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
    def model_path(self) -> Path:
        return self.directory / self.manifest.model_file

    @abc.abstractmethod
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, num_classes) float32 logits, N at most the manifest's max_batch."""

    def reserve(self, calls: int) -> None:
        """Makes now whatever each of `calls` calls at once keeps of its own (OpenVINO's infer requests, a CUDA
        graph's pinned buffers), so that no call makes it while serving. Nothing, for most runtimes."""
        return None
