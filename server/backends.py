"""Inference backends: an artifact in, logits out. No torch here.

Every backend is a callable (N, C, H, W) float32 -> (N, classes) logits with a `manifest`, a `description`, its
`name` (as in --backend) and `batches_in_flight`, how many batches the server runs on it at once by default (2
where one batch's host work overlaps another's on the GPU; every backend is safe to call from several threads).
A backend that keeps something per concurrent call (OpenVINO's infer requests, a CUDA graph's pinned buffers) has
`reserve(calls)`, which the server calls with its batches in flight before warming up.
onnxruntime runs `model.onnx`; OpenVINO (optional extra `openvino`) runs `model.onnx` or an OpenVINO IR
(`model.xml`, written by `vitserve export --format openvino` and by OpenVINO quantization).
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np

from vitserve.artifact import Manifest, backend_for, check_files, read_manifest, read_manifest_for
from vitserve.errors import ArtifactError
from vitserve.pool import Pool

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


BACKENDS = ("onnxruntime", "openvino", "torch", "tensorrt")
PRECISIONS = ("auto", "f32", "bf16")


def resolve_backend(artifact_dir: str | Path, backend: str = "auto") -> str:
    """`backend`, or for "auto" the one the artifact was exported for: onnxruntime for model.onnx, openvino for an
    OpenVINO IR, torch for an AOTInductor package, tensorrt for an engine."""
    return backend_for(read_manifest(artifact_dir)) if backend == "auto" else backend


def local_device(backend: str) -> str:
    """The --device for running an artifact on this machine outside the server (classify, bench): the CPU for
    onnxruntime, whatever GPU its provider might find; a torch package or an engine where it was made for."""
    return "cpu" if backend == "onnxruntime" else "auto"


def load_backend(artifact_dir: str | Path, backend: str = "auto", *, threads: int | None = None,
                 device: str = "auto", precision: str = "auto"):
    """The named backend (or "auto": see resolve_backend) on an artifact; ArtifactError when it cannot run it, or
    when the artifact's files are not those its export wrote and verified (check_files)."""
    check_files(artifact_dir, read_manifest(artifact_dir))
    backend = resolve_backend(artifact_dir, backend)
    if backend == "onnxruntime":
        if precision not in ("auto", "f32"):
            raise ArtifactError(f"onnxruntime runs artifacts at their own precision; --precision {precision} "
                                "needs --backend openvino")
        return OnnxRuntimeBackend(artifact_dir, threads=threads, device=device)
    if backend == "openvino":
        return OpenVINOBackend(artifact_dir, threads=threads, precision=precision)
    if backend == "torch":
        if precision not in ("auto", "f32"):
            raise ArtifactError(f"a torch package runs at the precision it was compiled for; --precision "
                                f"{precision} does not apply (export with --format torch --dtype ...)")
        from vitserve.export.torch_package import TorchBackend  # imports torch: only when chosen

        return TorchBackend(artifact_dir, threads=threads, device=device)
    if backend == "tensorrt":
        from vitserve.server.tensorrt_engine import TensorRTBackend  # TensorRT + cuda-bindings: only when chosen

        return TensorRTBackend(artifact_dir, threads=threads, device=device)
    raise ArtifactError(f"unknown backend {backend!r}; choose auto or one of {', '.join(BACKENDS)}")


class OnnxRuntimeBackend:
    """The artifact's ONNX model in onnxruntime."""

    name = "onnxruntime"
    batches_in_flight = 1

    def __init__(self, artifact_dir: str | Path, threads: int | None = None, device: str = "cpu"):
        import onnxruntime as ort

        self.directory = Path(artifact_dir)
        self.manifest: Manifest = read_manifest_for(self.directory, "onnxruntime")
        wanted = choose_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.directory / self.manifest.model_file), options,
                                                providers=wanted)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise ArtifactError(f"onnxruntime cannot load {self.directory / self.manifest.model_file}: {e}") from e
        active, problem = self.session.get_providers(), ""
        if active[0] != wanted[0]:  # the loader's reason, which onnxruntime only logs
            problem = provider_problem(wanted[0], Path(ort.__file__).parent / "capi", onnxruntime_build()[1])
        self.providers = check_providers(device, wanted, active, problem)
        self.description = f"onnxruntime {self.providers[0]}"
        if self.manifest.package.get("dtype") == "fp16" and self.providers[0] == "CPUExecutionProvider":
            log.warning("%s computes in fp16, which onnxruntime's CPU kernels run slower than fp32: it is meant for "
                        "the CUDA or TensorRT providers (onnxruntime-gpu); on a CPU serve the fp32 export",
                        self.directory)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, num_classes) logits."""
        (logits,) = self.session.run([self.manifest.output.name], {self.manifest.input.name: batch})
        return logits


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can compute in bf16 here (AVX512_BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_precision(precision: str) -> str:
    """'auto' -> 'bf16' where the CPU computes bf16 natively, else 'f32'. ArtifactError for bf16 without it."""
    if precision not in PRECISIONS:
        raise ArtifactError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    supported = cpu_supports_bf16()
    if precision == "bf16" and not supported:
        raise ArtifactError("--precision bf16 needs a CPU with AVX512_BF16 or AMX, which this one lacks; "
                            "use --precision f32")
    if precision == "auto":
        return "bf16" if supported else "f32"
    return precision


class OpenVINOBackend:
    """The artifact's model (ONNX or OpenVINO IR) compiled by OpenVINO for the CPU, in f32 or bf16."""

    name = "openvino"
    batches_in_flight = 1

    def __init__(self, artifact_dir: str | Path, threads: int | None = None, precision: str = "auto"):
        try:
            import openvino as ov
        except ImportError as e:
            raise ArtifactError("the openvino backend needs the `openvino` package: pip install "
                                "'vitserve[openvino]'") from e
        self.directory = Path(artifact_dir)
        self.manifest: Manifest = read_manifest_for(self.directory, "openvino")
        self.precision = resolve_precision(precision)
        config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(self.directory / self.manifest.model_file), "CPU",
                                               config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own for unreadable models
            raise ArtifactError(f"OpenVINO cannot load {self.directory / self.manifest.model_file}: {e}") from e
        self._requests = Pool(self.compiled.create_infer_request)  # an infer request runs one call at a time
        self.description = f"openvino CPU {self.precision}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, num_classes) logits."""
        with self._requests.take() as request:
            result = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
            return np.array(result[self.compiled.output(0)], dtype=np.float32)

    def reserve(self, calls: int) -> None:
        """An infer request for each of `calls` calls at once, made now rather than in a call while serving."""
        self._requests.reserve(calls)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[list[dict]]:
    """Per row, the k most probable classes as {label, index, score}, best first."""
    k = max(1, min(k, probs.shape[-1]))
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [[{"label": labels[i], "index": int(i), "score": float(row[i])} for i in idx]
            for row, idx in zip(probs, order)]
