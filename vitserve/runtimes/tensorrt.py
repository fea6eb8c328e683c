"""The `tensorrt` runtime: a TensorRT engine (`vitserve export --format tensorrt`) on an NVIDIA GPU, without torch.

Needs the `tensorrt` Python package of the version that built the engine (an engine runs only on the TensorRT
version and GPU architecture it was built for; the manifest records both) and `cuda-bindings` for the CUDA
runtime calls: device and page-locked host buffers, one stream. The engine holds the window-attention plugin's
kernel as PTX, so neither vitserve's plugin code nor triton is needed to run it.

Per batch: copy into a page-locked input buffer, upload on the stream, pick the optimization profile that holds the
batch, enqueue the engine, download into a page-locked output buffer, wait for the stream. Buffers are allocated
once, for the largest batch the profiles take.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

from vitserve.artifact import Profile, profile_for
from vitserve.errors import ArtifactError
from vitserve.runtimes.base import Runtime


def install_hint(tensorrt_version: str = "") -> str:
    """How to install what the backend needs, naming the TensorRT version that built the engine when known."""
    pin = f"=={tensorrt_version}" if tensorrt_version else ""
    return (f"pip install --extra-index-url https://pypi.nvidia.com 'tensorrt-cu12{pin}' 'cuda-bindings>=12.6,<13' "
            "(tensorrt-cu13 and cuda-bindings 13 with a CUDA 13 driver; an engine runs only on the TensorRT that "
            "built it)")


class Cuda:
    """The few CUDA runtime calls the backend needs (cuda-bindings), each checked: an error raises RuntimeError
    with CUDA's own name for it, and no usable driver or GPU raises ArtifactError."""

    def __init__(self):
        try:
            from cuda.bindings import runtime
        except ImportError as e:
            raise ArtifactError(f"the tensorrt backend needs cuda-bindings: {install_hint()}") from e
        self.rt = runtime
        err, count = runtime.cudaGetDeviceCount()
        if err != runtime.cudaError_t.cudaSuccess or count == 0:
            reason = "no GPU is visible" if err == runtime.cudaError_t.cudaSuccess else self.error_name(err)
            raise ArtifactError(f"a TensorRT engine runs on an NVIDIA GPU, and CUDA cannot reach one ({reason}); "
                                "with cudaErrorInsufficientDriver, the driver is older than the CUDA version of "
                                "cuda-bindings: install the cuda-bindings major version the driver supports")

    def error_name(self, err) -> str:
        return getattr(err, "name", str(err))

    def call(self, function: str, *args):
        """runtime.function(*args), its error checked; returns the result (None, one value or a tuple)."""
        err, *result = getattr(self.rt, function)(*args)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA {function} failed: {self.error_name(err)}")
        return None if not result else result[0] if len(result) == 1 else tuple(result)

    def compute_capability(self) -> str:
        device = self.call("cudaGetDevice")
        props = self.call("cudaGetDeviceProperties", device)
        return f"{props.major}.{props.minor}"

    def pinned(self, shape: tuple[int, ...]) -> tuple[int, np.ndarray]:
        """A page-locked float32 host buffer: (its address, a numpy view of it)."""
        nbytes = int(np.prod(shape)) * 4
        address = self.call("cudaMallocHost", nbytes)
        return address, np.frombuffer((ctypes.c_char * nbytes).from_address(address), np.float32).reshape(shape)

    def upload(self, device: int, host: int, nbytes: int, stream) -> None:
        self.call("cudaMemcpyAsync", device, host, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def download(self, host: int, device: int, nbytes: int, stream) -> None:
        self.call("cudaMemcpyAsync", host, device, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)


class EngineRunner:
    """A deserialized engine with one execution context; (N, C, H, W) float32 -> (N, classes) float32 for any N
    in the profiles' range. Calls are serialized (one context, one stream, one set of buffers)."""

    def __init__(self, engine: bytes, profiles: list[Profile], input_shape: tuple[int, int, int],
                 num_classes: int, input_name: str = "input", output_name: str = "logits", *, built_with: str = "",
                 built_for: str = ""):
        """`built_with` / `built_for`: the TensorRT version and compute capability the engine was built with and
        for (from the manifest), checked first, so that a mismatch is named rather than failing to deserialize."""
        try:
            import tensorrt as trt
        except ImportError as e:
            raise ArtifactError(f"the tensorrt backend needs TensorRT: {install_hint(built_with)}") from e
        if built_with and built_with != trt.__version__:
            raise ArtifactError(f"the engine was built by TensorRT {built_with} and this is TensorRT "
                                f"{trt.__version__}; an engine runs only on the version that built it: install "
                                f"tensorrt=={built_with} or export again with this one")
        self.cuda = Cuda()
        here = self.cuda.compute_capability()
        if built_for and built_for != here:
            raise ArtifactError(f"the engine was built for a GPU of compute capability {built_for} and this one "
                                f"is {here}; export it again on this kind of GPU")
        self.trt_version = trt.__version__
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine)
        if self.engine is None:
            raise ArtifactError("TensorRT could not load the engine (built for another GPU?); export it again "
                                "on this machine")
        self.context = self.engine.create_execution_context()
        self.profiles, self.input_name, self.output_name = profiles, input_name, output_name
        self.max_batch = max(p.max for p in profiles)
        self.stream = self.cuda.call("cudaStreamCreateWithFlags", self.cuda.rt.cudaStreamNonBlocking)
        self.host_in, self.x = self.cuda.pinned((self.max_batch, *input_shape))
        self.host_out, self.y = self.cuda.pinned((self.max_batch, num_classes))
        self.device_in = self.cuda.call("cudaMalloc", self.x.nbytes)
        self.device_out = self.cuda.call("cudaMalloc", self.y.nbytes)
        self.profile = -1
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"batch {n} is outside the engine's range 1..{self.max_batch}")
        with self._lock:
            stream = int(self.stream)
            self.x[:n] = batch
            self.cuda.upload(self.device_in, self.host_in, self.x[:n].nbytes, self.stream)
            profile = profile_for(self.profiles, n)
            if profile != self.profile:
                self.context.set_optimization_profile_async(profile, stream)
                self.profile = profile
            self.context.set_input_shape(self.input_name, (n, *self.x.shape[1:]))
            self.context.set_tensor_address(self.input_name, self.device_in)
            self.context.set_tensor_address(self.output_name, self.device_out)
            if not self.context.execute_async_v3(stream):
                raise RuntimeError("TensorRT could not enqueue the engine (see its log)")
            self.cuda.download(self.host_out, self.device_out, self.y[:n].nbytes, self.stream)
            self.cuda.call("cudaStreamSynchronize", self.stream)
            return self.y[:n].copy()


class TensorRTRuntime(Runtime):
    """An artifact written by `vitserve export --format tensorrt`."""

    name = "tensorrt"  # batches_in_flight 1: EngineRunner serializes calls, one set of buffers
    library = "tensorrt"

    def __init__(self, artifact_dir: str | Path, *, threads: int | None = None, device: str = "auto",
                 precision: str = "auto"):
        super().__init__(artifact_dir)
        if device not in ("auto", "cuda", "tensorrt"):
            raise ArtifactError(f"a TensorRT engine runs on an NVIDIA GPU; --device {device} does not apply")
        package = self.manifest.package
        profiles = [Profile(**p) for p in package["profiles"]]
        self.runner = EngineRunner(self.model_path.read_bytes(), profiles, tuple(self.manifest.input.shape[1:]),
                                   self.manifest.num_classes, self.manifest.input.name, self.manifest.output.name,
                                   built_with=package.get("tensorrt", ""),
                                   built_for=package.get("compute_capability", ""))
        self.description = (f"TensorRT {self.runner.trt_version} {package.get('dtype', 'fp16')}, "
                            f"{len(profiles)} optimization profiles")

    @property
    def computes_in(self) -> str:
        return self.manifest.package.get("dtype", "fp16")  # engines built before the dtype was recorded: fp16

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.runner(batch)
