"""The artifact: what `vitserve export` writes and `vitserve serve` reads.

An artifact is a directory::

    model.onnx      the graph, batch dimension dynamic (1..max_batch); or model.xml + model.bin (OpenVINO IR),
                    or model.pt2 (AOTInductor package, `--format torch`), or model.engine (TensorRT)
    labels.txt      one class name per line, line i = class index i
    proof.npz       a few inputs and the fp32 model's answers, which a server re-runs before serving
    vitserve.json   the manifest below, with the size and SHA-256 of every other file (`files`)

Only the standard library is used here: the server reads manifests without torch or onnx.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitserve.errors import ArtifactError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "vitserve.json"
MODEL_NAME = "model.onnx"
LABELS_NAME = "labels.txt"
CROP_MODES = ("center", "squash", "border")  # timm's eval transform's


@dataclass(frozen=True)
class Preprocess:
    """The eval transform a model was trained with (timm's eval transform, with the checkpoint's crop mode).

    With scale = floor(size / crop_pct): `crop_mode` "center" resizes the shorter side to scale and center-crops to
    `input_size`; "squash" resizes both sides to scale (the aspect ratio is not kept) and center-crops; "border"
    resizes the longer side to scale and center-crops or pads with the mean colour. Then scale to [0, 1],
    normalize with `mean` / `std`; channels first, RGB.
    """

    input_size: tuple[int, int, int]  # C, H, W
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    crop_mode: str = "center"

    def __post_init__(self):
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"unknown crop_mode {self.crop_mode!r}: one of {', '.join(CROP_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(
            input_size=tuple(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            crop_pct=float(d["crop_pct"]),
            interpolation=str(d["interpolation"]),
            crop_mode=str(d.get("crop_mode", "center")),  # manifests written before crop modes were recorded
        )


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. A -1 in `shape` is the dynamic batch dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class Profile:
    """A TensorRT optimization profile of a `--format tensorrt` artifact: batch sizes min..max, tuned for opt."""

    min: int
    opt: int
    max: int


def profile_for(profiles: list[Profile], batch: int) -> int:
    """Index of the profile that runs `batch` (the first that holds it)."""
    for i, p in enumerate(profiles):
        if p.min <= batch <= p.max:
            return i
    raise ValueError(f"batch {batch} is outside every optimization profile")


@dataclass
class Manifest:
    """vitserve.json. Written once by the exporter; the server trusts nothing else about the model."""

    name: str
    architecture: str
    family: str
    input: TensorSpec
    output: TensorSpec
    max_batch: int
    preprocess: Preprocess
    num_classes: int
    labels_file: str = LABELS_NAME
    model_file: str = MODEL_NAME
    rewrite: str | None = None
    opset: int | None = None
    weights: dict[str, Any] = field(default_factory=dict)
    graph: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    # proof.npz: a few inputs and the fp32 model's logits, re-run by a server before it serves (vitserve.proof);
    # empty in artifacts written before vitserve kept one
    proof: dict[str, Any] = field(default_factory=dict)
    # --format torch / tensorrt: device, dtype, batch buckets, ...; an fp16 ONNX: dtype
    package: dict[str, Any] = field(default_factory=dict)
    # every file of the artifact but the manifest: name -> {"bytes": size, "sha256": hex digest}; write_manifest
    # records it, check_files compares (empty in artifacts written before vitserve recorded it)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["input"]["shape"] = list(self.input.shape)
        d["output"]["shape"] = list(self.output.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"artifact format_version {version!r} is not supported (this vitserve reads {FORMAT_VERSION}); "
                "re-export the model with this version of vitserve"
            )
        try:
            fields = dict(d)
            fields["input"] = TensorSpec(d["input"]["name"], tuple(d["input"]["shape"]), d["input"]["dtype"])
            fields["output"] = TensorSpec(d["output"]["name"], tuple(d["output"]["shape"]), d["output"]["dtype"])
            fields["preprocess"] = Preprocess.from_dict(d["preprocess"])
            return cls(**fields)
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"manifest is malformed ({type(e).__name__}: {e}); re-export the model") from e


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Writes the manifest of a finished artifact folder; `manifest.files` becomes the record of every other file in
    it (size and SHA-256), what check_files compares with later."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    manifest.files = {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)}
                      for f in sorted(directory.iterdir()) if f.is_file() and f.name != MANIFEST_NAME}
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path


def check_files(directory: str | Path, manifest: Manifest) -> None:
    """ArtifactError unless every file the manifest records is in `directory` with the size and SHA-256 the export
    recorded: the model served is the model that was verified, not one changed or copied incompletely since."""
    directory = Path(directory)
    if not manifest.files:
        log.warning("%s was written by a vitserve that did not record its files' checksums; they are not checked "
                    "(export it again to have them checked)", directory)
        return
    for name, record in manifest.files.items():
        path = directory / name
        fix = "copy the whole artifact folder again, or export it again"
        if not path.is_file():
            raise ArtifactError(f"{directory} has no {name}, which its export wrote; {fix}")
        size = path.stat().st_size
        if size != record["bytes"]:
            raise ArtifactError(f"{path} has {size} bytes where its export wrote {record['bytes']}: it was changed "
                                f"or copied incompletely; {fix}")
        if sha256(path) != record["sha256"]:
            raise ArtifactError(f"{path} is not the file its export wrote and verified (its SHA-256 differs from "
                                f"the manifest's); {fix}")


def read_manifest(directory: str | Path) -> Manifest:
    """Reads and checks an artifact directory's manifest; raises ArtifactError saying what is wrong."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    try:
        if not directory.is_dir():
            raise ArtifactError(f"{directory} is not a directory; pass the folder `vitserve export` wrote")
        if not path.is_file():
            raise ArtifactError(f"{directory} has no {MANIFEST_NAME}; is it an artifact written by `vitserve export`?")
        data = json.loads(path.read_text())
    except PermissionError as e:
        raise ArtifactError(f"cannot read {e.filename or path}: permission denied for uid {os.getuid()}; make the "
                            f"artifact readable (chmod -R a+rX {directory})") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} does not hold a JSON object")
    manifest = Manifest.from_dict(data)
    if not (directory / manifest.model_file).is_file():
        raise ArtifactError(f"{directory} has no {manifest.model_file}; the artifact is incomplete, re-export it")
    return manifest


def check_output_dir(out: Path) -> None:
    """Refuses to write an artifact over a folder that holds something else."""
    if out.exists() and not (out / MANIFEST_NAME).is_file() and any(out.iterdir()):
        raise ArtifactError(f"{out} exists and is not a vitserve artifact; choose another output folder or empty it")


def install_artifact(src: Path, dst: Path) -> None:
    """Moves a finished artifact folder into place; an artifact already at dst is replaced only after that.

    The temporary folder was private (mode 0700); the artifact gets the permissions of a folder made with the
    process's umask, so a server running as another user (a container's non-root user) can read it.
    """
    umask = os.umask(0)
    os.umask(umask)
    src.chmod(0o777 & ~umask)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_labels(path: Path, labels: list[str]) -> None:
    path.write_text("".join(label.replace("\n", " ") + "\n" for label in labels))


def read_labels(path: str | Path) -> list[str]:
    """One label per line; trailing blank lines are ignored, blank lines inside are kept as empty labels."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    while lines and lines[-1].strip() == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]
