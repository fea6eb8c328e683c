"""Runtimes: the code that runs an artifact, one module each, and the one registry that names them.

The server, `vitserve classify`, `bench`, `quantize` and the export's own verification all run an artifact through
`load()`, so the code that proves an artifact is the code that serves it. A runtime is what `--backend` names.

Adding a runtime: a module here with a `Runtime` subclass (see base.py), and one `RuntimeInfo` in RUNTIMES below.
The CLI's choices, the server's settings, the KServe V2 metadata, the Triton repository writer and `bench` read
this table. Only the standard library is imported here; a runtime's module (and its library: onnxruntime,
OpenVINO, torch, TensorRT) is imported when that runtime is loaded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vitserve.artifact import Manifest, check_files, read_manifest
from vitserve.errors import ArtifactError

if TYPE_CHECKING:
    from vitserve.runtimes.base import Runtime

AUTO = "auto"


@dataclass(frozen=True)
class RuntimeInfo:
    """What the rest of vitserve needs to know about a runtime without importing it.

    Attributes:
        name: the `--backend` name.
        module: vitserve.runtimes.<module>, holding `cls`; imported only when the runtime is loaded.
        cls: the Runtime subclass in `module`.
        runs: the model files it runs, by suffix; the first is the one it is the default (`auto`) for.
        devices: `--device` values it takes besides auto.
        precisions: `--precision` values it takes besides auto.
        platform: the KServe V2 metadata's platform (Triton's name where Triton has one).
        triton_backend: Triton's backend for the model file (config.pbtxt); None where Triton has none.
        companions: suffixes of files that belong to the model file (an OpenVINO IR's weights).
        local_device: the device for running an artifact outside the server (classify, bench, quantize).
    """

    name: str
    module: str
    cls: str
    runs: tuple[str, ...]
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    platform: str
    triton_backend: str | None
    companions: tuple[str, ...] = ()
    local_device: str = AUTO

    def can_run(self, manifest: Manifest) -> bool:
        return Path(manifest.model_file).suffix in self.runs


RUNTIMES: dict[str, RuntimeInfo] = {info.name: info for info in (
    RuntimeInfo("onnxruntime", "onnxruntime", "OnnxRuntime", runs=(".onnx",), devices=("cpu", "cuda", "tensorrt"),
                precisions=("f32",), platform="onnxruntime_onnx", triton_backend="onnxruntime", local_device="cpu"),
    RuntimeInfo("openvino", "openvino", "OpenVINORuntime", runs=(".xml", ".onnx"), devices=("cpu",),
                precisions=("f32", "bf16"), platform="openvino", triton_backend="openvino", companions=(".bin",)),
    RuntimeInfo("torch", "torch_package", "TorchRuntime", runs=(".pt2",), devices=("cpu", "cuda"),
                precisions=("f32",), platform="pytorch_aotinductor", triton_backend=None),
    RuntimeInfo("tensorrt", "tensorrt", "TensorRTRuntime", runs=(".engine",), devices=("cuda", "tensorrt"),
                precisions=("f32",), platform="tensorrt_plan", triton_backend="tensorrt"),
)}

NAMES = tuple(RUNTIMES)
DEVICES = (AUTO, *dict.fromkeys(d for info in RUNTIMES.values() for d in info.devices))
PRECISIONS = (AUTO, *dict.fromkeys(p for info in RUNTIMES.values() for p in info.precisions))


def info(name: str) -> RuntimeInfo:
    """The registry's entry for `name`; ArtifactError naming the choices for an unknown one."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ArtifactError(f"unknown backend {name!r}; choose auto or one of {', '.join(NAMES)}") from None


def made_for(manifest: Manifest) -> RuntimeInfo:
    """The runtime the artifact was exported for (`--backend auto`): the first whose `runs` starts with the model
    file's suffix (onnxruntime for model.onnx, openvino for an OpenVINO IR, torch for model.pt2, tensorrt for an
    engine)."""
    suffix = Path(manifest.model_file).suffix
    return next((i for i in RUNTIMES.values() if i.runs[0] == suffix), RUNTIMES["onnxruntime"])


def resolve(artifact_dir: str | Path, name: str = AUTO) -> str:
    """`name`, or for auto the runtime the artifact was exported for."""
    return made_for(read_manifest(artifact_dir)).name if name == AUTO else info(name).name


def check_runs(name: str, manifest: Manifest, directory: str | Path) -> None:
    """ArtifactError naming the backend to use when runtime `name` cannot run the artifact's model file."""
    if not info(name).can_run(manifest):
        raise ArtifactError(f"{directory} holds {manifest.model_file}, which the {name} backend cannot run; "
                            f"serve it with --backend {made_for(manifest).name} (or auto, the default)")


def check_choice(name: str, device: str, precision: str) -> None:
    """ArtifactError for a device or precision that runtime `name` does not take, naming the runtimes that do."""
    entry = info(name)
    if device != AUTO and device not in entry.devices:
        if device not in DEVICES:
            raise ArtifactError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        raise ArtifactError(f"the {name} backend runs on {' or '.join(entry.devices)}; --device {device} does not "
                            f"apply (it is for --backend {' or '.join(_taking('devices', device))})")
    if precision != AUTO and precision not in entry.precisions:
        if precision not in PRECISIONS:
            raise ArtifactError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        raise ArtifactError(f"the {name} backend runs artifacts at their own precision; --precision {precision} "
                            f"needs --backend {' or '.join(_taking('precisions', precision))} (or an artifact "
                            "exported at that precision: `vitserve export --dtype`)")


def _taking(field: str, value: str) -> list[str]:
    return [i.name for i in RUNTIMES.values() if value in getattr(i, field)]


def load(artifact_dir: str | Path, name: str = AUTO, *, threads: int | None = None, device: str = AUTO,
         precision: str = AUTO) -> Runtime:
    """The runtime `name` (or auto: the one the artifact was exported for) on an artifact. ArtifactError when it
    cannot run it, or when the artifact's files are not those its export wrote and verified (check_files)."""
    manifest = read_manifest(artifact_dir)
    check_files(artifact_dir, manifest)
    name = made_for(manifest).name if name == AUTO else info(name).name
    check_runs(name, manifest, artifact_dir)
    check_choice(name, device, precision)
    entry = RUNTIMES[name]
    module = importlib.import_module(f"{__name__}.{entry.module}")
    return getattr(module, entry.cls)(artifact_dir, threads=threads, device=device, precision=precision)
