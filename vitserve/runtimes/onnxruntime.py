"""The `onnxruntime` runtime: the artifact's ONNX model in onnxruntime, on the CPU, or on an NVIDIA GPU through
onnxruntime-gpu's CUDA or TensorRT execution provider (`--device`)."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np

from vitserve.errors import ArtifactError
from vitserve.runtimes.base import Runtime

log = logging.getLogger(__name__)

# What each --device asks onnxruntime for, best first; CPU always closes the list as the fallback.
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def choose_providers(device: str, available: list[str]) -> list[str]:
    """Execution providers for `device`: 'auto' takes CUDA when onnxruntime-gpu sees a GPU, else the CPU."""
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    wanted = PROVIDERS[device]
    if wanted[0] not in available:
        raise ArtifactError(f"--device {device} needs onnxruntime's {wanted[0]}, which this installation lacks "
                            f"(available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu")
    return [p for p in wanted if p in available]


# The library onnxruntime-gpu loads for each GPU provider (beside its Python extension, in onnxruntime/capi).
PROVIDER_LIBRARIES = {"CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
                      "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so"}


def onnxruntime_build() -> tuple[str, str]:
    """The installed onnxruntime's version and the CUDA version its GPU build is made for: ('1.31.1', '13.0'); the
    CUDA version is '' for onnxruntime's CPU build."""
    from onnxruntime.capi import build_and_package_info as info

    return info.__version__, getattr(info, "cuda_version", "")


def cuda_build_problem(runtime: str, build: tuple[str, str] | None = None) -> str:
    """Why onnxruntime (`build`: its version and CUDA version, as onnxruntime_build() gives; the installed one by
    default) cannot run on CUDA libraries of version `runtime` ('13.1.1'); '' when it can: a GPU build for the same
    major version (the libraries' file names carry it: libcudart.so.13) and a minor version no later than the
    libraries' (a build may call what later ones added). The GPU image's build checks its base image's CUDA."""
    version, built = build or onnxruntime_build()
    if not built:
        return "the onnxruntime installed is its CPU build: install onnxruntime-gpu (the serve-gpu extra) alone"
    have, need = (tuple(int(part) for part in v.split(".")[:2]) for v in (runtime, built))
    if have[0] != need[0] or have < need:
        return (f"onnxruntime-gpu {version} is built for CUDA {built} and cannot run on CUDA "
                f"{runtime}'s libraries: install an onnxruntime-gpu built for CUDA {have[0]}.x (PyPI's 1.27 and later "
                "are built for CUDA 13, 1.21 to 1.26 for CUDA 12), or use CUDA libraries of its version")
    return ""


def provider_problem(provider: str, capi: Path, cuda_version: str = "") -> str:
    """Why onnxruntime's library for `provider` cannot load, when the reason is a shared library the system lacks:
    the loader's own words, naming the first library missing (libcudart.so.13, libcudnn.so.9, libnvinfer.so.10,
    ...), and the CUDA version the installed onnxruntime-gpu was built for (`cuda_version`). '' when the library
    loads, or fails for another reason (no GPU, say), which onnxruntime's own log then tells."""
    library = capi / PROVIDER_LIBRARIES.get(provider, "-")
    if not library.is_file():
        return ""
    try:
        ctypes.CDLL(str(library))
    except OSError as e:
        if "cannot open shared object file" not in str(e):
            return ""
        major = cuda_version.split(".")[0]
        needs = [f"CUDA {major}'s runtime" if major else "the CUDA runtime", "cuBLAS", "cuDNN 9"]
        needs += ["TensorRT 10"] if provider == "TensorrtExecutionProvider" else []
        built = f"this onnxruntime-gpu is built for CUDA {cuda_version} and" if cuda_version else "it"
        return (f"{library.name} does not load ({e}); {built} needs {', '.join(needs[:-1])} and {needs[-1]} on the "
                "library path (vitserve's GPU image has them)")
    return ""


def check_providers(device: str, wanted: list[str], active: list[str], problem: str = "") -> list[str]:
    """onnxruntime falls back to the CPU, with only a log line, when a GPU provider cannot start (no GPU, CUDA or
    TensorRT libraries missing). A device asked for by name must really be used; 'auto' accepts the fallback.
    `problem`: why the provider could not start, where known (provider_problem)."""
    if active and active[0] != wanted[0]:
        why = problem or "no GPU visible, or its CUDA/TensorRT libraries are missing"
        if device != "auto":
            raise ArtifactError(f"--device {device}: onnxruntime could not start {wanted[0]}: {why}. It would run on "
                                f"{active[0]}: use --device cpu, or fix the GPU set-up")
        log.warning("onnxruntime could not start %s (%s); serving on %s", wanted[0], why, active[0])
    return active



def session(path: Path, device: str = "cpu", threads: int | None = None):
    """An onnxruntime session on the ONNX file `path` with the providers for `device` (choose_providers), and the
    providers it really uses (check_providers): (session, providers). ArtifactError for an unreadable file."""
    import onnxruntime as ort

    wanted = choose_providers(device, ort.get_available_providers())
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        loaded = ort.InferenceSession(str(path), options, providers=wanted)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise ArtifactError(f"onnxruntime cannot load {path}: {e}") from e
    active, problem = loaded.get_providers(), ""
    if active[0] != wanted[0]:  # the loader's reason, which onnxruntime only logs
        problem = provider_problem(wanted[0], Path(ort.__file__).parent / "capi", onnxruntime_build()[1])
    return loaded, check_providers(device, wanted, active, problem)


class OnnxRuntime(Runtime):
    """The artifact's ONNX model in onnxruntime."""

    name = "onnxruntime"
    library = "onnxruntime"

    def __init__(self, artifact_dir: str | Path, *, threads: int | None = None, device: str = "cpu",
                 precision: str = "auto"):
        super().__init__(artifact_dir)
        self.session, self.providers = session(self.model_path, device, threads)
        self.description = f"onnxruntime {self.providers[0]}"
        if self.manifest.package.get("dtype") == "fp16" and self.providers[0] == "CPUExecutionProvider":
            log.warning("%s computes in fp16, which onnxruntime's CPU kernels run slower than fp32: it is meant for "
                        "the CUDA or TensorRT providers (onnxruntime-gpu); on a CPU serve the fp32 export",
                        self.directory)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run([self.manifest.output.name], {self.manifest.input.name: batch})
        return logits
