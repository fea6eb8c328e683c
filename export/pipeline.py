"""`vitserve export`: model -> deploy rewrite -> the format's file -> verification -> artifact directory.

The pipeline does not know formats: it asks the one named by `--format` (export/formats/) to check its options,
build its file into a staging folder and verify it, then writes labels and manifest and moves the folder into place.
The staging folder sits beside the target and is renamed into place only when the verification passed: a failed
export never leaves a half-written artifact behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitserve.artifact import (
    LABELS_NAME,
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
    import torch
    from torch import nn

    from vitserve.export.formats import Built
    from vitserve.export.torch_package import TorchOptions
    from vitserve.models.build import BuiltModel

log = logging.getLogger(__name__)

PROOF_IMAGES = 2  # of each kind, random and photograph, kept in the artifact's proof


@dataclass
class ExportOptions:
    out: Path
    max_batch: int = DEFAULT_MAX_BATCH
    opset: int = DEFAULT_OPSET
    rewrite: bool = True
    atol: float = DEFAULT_ATOL
    format: str = "onnx"  # a name in export.formats.FORMATS
    # --format torch and tensorrt: device, precision, batch buckets, compile settings (export/torch_package.py)
    torch_options: TorchOptions | None = None
    dtype: str = "fp32"  # format "onnx": "fp16" writes the model in fp16 (LayerNorm float32, float32 in and out)


@dataclass
class Job:
    """One export in progress: what every format's build and verification reads, and the staging folder."""

    built: BuiltModel
    deploy: nn.Module  # the rewritten copy of built.model that is exported; built.model stays the reference
    options: ExportOptions
    folder: Path  # the staging folder: the artifact as it will be, once verified
    rewrite: str | None
    progress: Callable[[str], None]
    buckets: tuple[int, ...] | None = None  # the batch buckets (torch and tensorrt)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def preprocess(self):
        return self.built.spec.preprocess

    @cached_property
    def verification_inputs(self) -> tuple[list[str], dict[str, torch.Tensor]]:
        """The photographs' names and the input sets (verify.verification_inputs), made once per export."""
        from vitserve.export.verify import verification_inputs

        return verification_inputs(self.preprocess)

    def manifest(self, result: Built, verification: dict[str, Any] | None = None) -> Manifest:
        from vitserve.export.onnx import INPUT_NAME, OUTPUT_NAME

        built, options = self.built, self.options
        C, H, W = self.preprocess.input_size
        return Manifest(
            name=built.spec.name,
            architecture=built.spec.timm_name,
            family=type(built.model).__module__.rsplit(".", 1)[-1],
            input=TensorSpec(INPUT_NAME, (-1, C, H, W)),
            output=TensorSpec(OUTPUT_NAME, (-1, built.num_classes)),
            max_batch=options.max_batch,
            preprocess=self.preprocess,
            num_classes=built.num_classes,
            model_file=result.model_file,
            rewrite=self.rewrite,
            opset=options.opset if result.opset else None,
            package=result.package,
            weights={**built.weights, **({"timm_kwargs": _plain(built.timm_kwargs)} if built.timm_kwargs else {})},
            graph=result.graph,
            verification=verification or {},
            versions=self.versions,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    def stage(self, result: Built) -> None:
        """Labels and a manifest (no verification yet) beside the built file, so that the staging folder is an
        artifact that vitserve.runtimes loads as the server will load the finished one."""
        write_labels(self.folder / LABELS_NAME, self.built.labels)
        write_manifest(self.folder, self.manifest(result))

    def verify(self, result: Built, *, child: str | None = None) -> dict[str, Any]:
        """The staged artifact run by the runtime that serves it against the fp32 reference model, gated at the
        result's precision; the report, or VerificationError with it. With `child` (what runs there, for errors:
        "PyTorch running the package") the runtime runs in a fresh process (verify.outputs_in_child)."""
        from vitserve.export.verify import RUNTIME_KEY, check_outputs, outputs_in_child, run_artifact
        from vitserve.proof import gate

        self.stage(result)
        photo_names, inputs = self.verification_inputs
        arrays = {name: x.numpy() for name, x in inputs.items()}
        if child:
            args = [str(self.folder), result.runtime, "--device", result.device, "--precision", result.precision]
            outputs = outputs_in_child("vitserve.export.verify", args, arrays, what=child)
            runtime = str(outputs.pop(RUNTIME_KEY))
        else:
            outputs, runtime = run_artifact(self.folder, result.runtime, arrays, device=result.device,
                                            precision=result.precision)
        report: dict[str, Any] = {"runtime": runtime, "photos": photo_names, **result.report}
        report.update(check_outputs(outputs, self.built.model, inputs))
        failed = gate(report, result.dtype, self.options.atol)
        if failed:
            raise VerificationError(f"the {result.what} does not match the PyTorch model: {failed}", report)
        return report

    def write_proof(self, result: Built) -> dict[str, Any]:
        """Two of the verification's random images and two of its photographs, with the fp32 reference model's
        logits for them, into the artifact (vitserve.proof; the inputs as float16, the logits computed from exactly
        those values); the manifest's `proof` entry."""
        import torch

        from vitserve import proof

        inputs = self.verification_inputs[1]
        stored = {name: inputs[name][:PROOF_IMAGES].half().float() for name in ("random", "photos")}
        with torch.no_grad():
            references = {name: self.built.model(x).numpy() for name, x in stored.items()}
        return proof.write(self.folder, {name: x.numpy() for name, x in stored.items()}, references,
                           reference="the fp32 PyTorch model, before any rewrite", dtype=result.dtype,
                           atol=self.options.atol if result.dtype == "fp32" else None)


def export_artifact(built: BuiltModel, options: ExportOptions, progress: Callable[[str], None] = log.info) -> Manifest:
    """Exports a BuiltModel (vitserve.models.build) to `options.out` in `options.format`; returns the manifest
    written there. Raises VerificationError (artifact not written) when the export does not match the model."""
    from vitserve.export.formats import get_format
    from vitserve.models import rewrites

    if options.max_batch < 1:
        raise ExportError(f"--max-batch must be at least 1, got {options.max_batch}")
    fmt = get_format(options.format)
    buckets = fmt.check(options)
    out = Path(options.out)
    check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        deploy, rewrite = rewrites.deploy_copy(built.model, rewrite=options.rewrite,
                                               explicit=fmt.explicit_attention)
        progress(f"rewrite: {rewrite or 'none for this architecture'}" if options.rewrite else
                 "rewrite: skipped (--no-rewrite)")
        job = Job(built, deploy, options, staging, rewrite, progress, buckets, _versions())
        try:
            result = fmt.build(job)
            report = fmt.verify(job, result)
        except VerificationError as e:  # whatever the format: the report goes beside --out
            failed = out.parent / f"{out.name}.failed-verification.json"
            failed.write_text(json.dumps(e.report, indent=2) + "\n")
            raise VerificationError(f"{e} Full report: {failed}", e.report) from e
        manifest = job.manifest(result, report)
        manifest.proof = job.write_proof(result)
        write_labels(staging / LABELS_NAME, built.labels)
        write_manifest(staging, manifest)
        install_artifact(staging, out)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
