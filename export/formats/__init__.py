"""Artifact formats, one module each: what `vitserve export --format NAME` writes, and how it is verified.

A format is a `Format` subclass in its own module, named in FORMATS below. The pipeline (export/pipeline.py) calls,
in this order: `options()` (the command line's flags -> ExportOptions, refusing flags that do not apply),
`check()` (before anything is built: precision, batch buckets, libraries), `build()` (the file, into the staging
folder: a `Built`), `verify()` (by default: the staged artifact run by the runtime that serves it, against the
reference model; a format may check more). Adding a format: one module with its Format subclass, and its name here.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from vitserve.errors import ExportError

if TYPE_CHECKING:
    from pathlib import Path

    from vitserve.export.pipeline import ExportOptions, Job

FORMATS = {  # --format -> its module in this package
    "onnx": "onnx",
    "openvino": "openvino",
    "torch": "torch",
    "tensorrt": "tensorrt",
}


@dataclass
class Built:
    """What a format built, and how to verify it.

    Attributes:
        model_file: the file in the staging folder the manifest names.
        runtime: the runtime (vitserve.runtimes) that verifies it, and that `--backend auto` serves it with.
        dtype: the precision it computes in, which picks the verification gate (vitserve.proof.gate).
        what: names it in a failed verification: "the {what} does not match the PyTorch model".
        graph: statistics for the manifest (nodes, file size).
        package: the manifest's `package` record (device, dtype, buckets, ...).
        report: entries the verification report carries besides the comparison.
        opset: whether an ONNX graph was written, so that the manifest records the opset.
        device, precision: what the runtime is loaded with for the verification.
    """

    model_file: str
    runtime: str
    dtype: str = "fp32"
    what: str = "exported model"
    graph: dict[str, Any] = field(default_factory=dict)
    package: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    opset: bool = True
    device: str = "cpu"
    precision: str = "auto"


@dataclass(frozen=True)
class Flags:
    """`vitserve export`'s format-specific flags as given (None, (), False: not given)."""

    dtype: str | None = None
    device: str | None = None
    batch_buckets: tuple[int, ...] = ()
    max_autotune: bool = False
    no_cuda_graphs: bool = False


# Flags that only some formats take, with the words a refusal uses for them
FLAG_NAMES = {"device": "--device", "batch_buckets": "--batch-buckets", "max_autotune": "--max-autotune",
              "no_cuda_graphs": "--no-cuda-graphs"}
# ... and which of them a refusal names together (the GPU formats' device and batch settings)
FLAG_GROUPS = (("device", "batch_buckets"), ("max_autotune",), ("no_cuda_graphs",))


class Format(abc.ABC):
    """One artifact format. Subclasses set the class attributes and define build()."""

    name: ClassVar[str]
    explicit_attention: ClassVar[bool] = True  # export timm's attention as explicit ops (see models.rewrites)
    takes: ClassVar[tuple[str, ...]] = ()  # which FLAG_NAMES it takes

    def options(self, flags: Flags, out: Path, **common: Any) -> ExportOptions:
        """ExportOptions for this format from the command line's flags; ExportError for a flag it does not take.
        `common`: max_batch, opset, rewrite, atol."""
        from vitserve.export.pipeline import ExportOptions

        given = [n for n in FLAG_NAMES if getattr(flags, n) not in (None, (), False)]
        refused = [n for n in given if n not in self.takes]
        if refused:
            group = next(g for g in FLAG_GROUPS if refused[0] in g)
            takers = [name for name in FORMATS if all(n in get_format(name).takes for n in group)]
            words = " and ".join(FLAG_NAMES[n] for n in group)
            raise ExportError(f"{words} appl{'ies' if len(group) == 1 else 'y'} to --format "
                              f"{' and '.join(takers)} only")
        return ExportOptions(out=out, format=self.name, **common, **self.format_options(flags))

    def format_options(self, flags: Flags) -> dict[str, Any]:
        """ExportOptions' fields that this format's flags set."""
        return {"dtype": flags.dtype or "fp32"}

    def check(self, options: ExportOptions) -> tuple[int, ...] | None:
        """ExportError, before anything is built, for options this format cannot honour here; returns the batch
        buckets for formats that have them."""
        if options.dtype != "fp32":
            raise ExportError(f"--dtype {options.dtype} with --format {self.name}: an ONNX artifact is fp32 or fp16 "
                              "(for onnxruntime's CUDA and TensorRT providers), an OpenVINO IR fp32; bf16 and fp8 "
                              "are for --format torch")
        return None

    @abc.abstractmethod
    def build(self, job: Job) -> Built:
        """Writes the format's file(s) into job.folder."""

    def verify(self, job: Job, result: Built) -> dict[str, Any]:
        """The verification report (VerificationError below the gate): the staged artifact in its runtime."""
        return job.verify(result)


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ExportError(f"unknown --format {name!r}; choose {', '.join(FORMATS)}")
    module = importlib.import_module(f"{__name__}.{FORMATS[name]}")
    return module.FORMAT
