"""The `torch` runtime: an AOTInductor package (model.pt2, `vitserve export --format torch`) run by PyTorch.

The package was compiled for one device and precision and takes float32 in, float32 out. A batch is padded up to
the smallest batch bucket that holds it; on CUDA each bucket gets a CUDA graph, captured when the bucket first runs
(the server warms every batch size it can form before /readyz turns 200). Before anything is loaded, the machine
the package was compiled for is checked against this one (check_machine). The manifest's `package.loader` says how
it loads: PyTorch's package loader, or AOTInductor's container runner where that loader failed at export.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
import threading
import weakref
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitserve.errors import ArtifactError
from vitserve.pool import Pool
from vitserve.runtimes.base import Runtime

log = logging.getLogger(__name__)

LOADERS = ("package", "runner")  # PyTorch's package loader (load_package), or ContainerRunner
MODEL_FOLDER = "data/aotinductor/model/"  # inside the package: the compiled model and its kernels
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# --dtype -> the precision the model computes in; fp8: the blocks' Linear layers in fp8, the rest bf16
COMPUTE = DTYPES | {"fp8": torch.bfloat16}


def package_json(path: Path, ending: str) -> Any:
    """The JSON entry of the package's compiled model whose name ends with `ending`, or None (no such entry, or a
    package that cannot be read: loading it says why)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if MODEL_FOLDER in name and name.endswith(ending):
                    return json.loads(archive.read(name))
    except (zipfile.BadZipFile, OSError, ValueError):
        pass
    return None


def compiled_for(path: Path) -> dict[str, str]:
    """What AOTInductor recorded in the package about the machine it compiled the model for (the compiled model's
    metadata): AOTI_DEVICE_KEY ("cpu", "cuda"), AOTI_CPU_ISA (the host code's vector instructions, "AVX512
    AVX512_VNNI"), AOTI_COMPUTE_CAPABILITY (a CUDA package's GPU generation, major * 10 + minor: "90"), ...;
    {} for a package without it, or that cannot be read."""
    return package_json(path, "wrapper_metadata.json") or {}


def calls_fused_op(package: dict[str, Any]) -> bool:
    """Whether a package (the manifest's record of it) calls vitserve's fused window-attention op back through the
    dispatcher, so that the process running it must import the op (vitserve/kernels/window_attention.py): with Triton at
    export, the kernel is compiled into the package instead. A record without `dispatcher_calls` (an older
    package): whenever it has fused blocks."""
    calls = package.get("dispatcher_calls")
    if calls is None:
        return bool(package.get("fused_window_attention_blocks"))
    return any(call.startswith("vitserve::") for call in calls)


def cpu_vector_isa() -> set[str] | None:
    """This CPU's vector instruction sets as AOTInductor names them in a package ("avx2", "avx512", "avx512_vnni",
    "amx_tile"), read from the CPU itself, where PyTorch's own list (`valid_vec_isa_list`) also compiles a test
    program for each, which needs a C++ compiler that a serving machine need not have (PyTorch loads a package
    without one); None on other architectures, where no such reading is at hand."""
    from torch._inductor.cpu_vec_isa import x86_isa_checker

    return set(x86_isa_checker()) if platform.machine() in ("x86_64", "AMD64") else None


def check_machine(path: Path, device: torch.device) -> None:
    """ArtifactError, before anything is loaded, when this machine cannot run the package's compiled code: the
    host code (on every device) is compiled for the vector instructions of the CPU that compiled it, which stop a
    CPU without them with an illegal instruction; a CUDA package's kernels are machine code for one GPU generation,
    which no other loads. A package that does not record its machine passes, as does host code on a CPU that is not
    x86 (cpu_vector_isa)."""
    target = compiled_for(path)
    isa = target.get("AOTI_CPU_ISA", "")
    here = cpu_vector_isa()
    if isa and isa != "INVALID_VEC_ISA" and here is not None and not set(isa.lower().split()) <= here:
        has = " ".join(sorted(here)).upper() or "none of the vector extensions PyTorch uses"
        raise ArtifactError(f"{path} was compiled on a CPU with {isa} and its code uses those instructions; "
                            f"this CPU has {has}. Export it again on this kind of machine")
    capability = target.get("AOTI_COMPUTE_CAPABILITY", "")
    if device.type == "cuda" and capability.isdigit():
        major, minor = torch.cuda.get_device_capability(device)
        if capability != f"{major}{minor}":
            raise ArtifactError(f"{path}'s kernels were compiled for GPUs of compute capability {capability[:-1]}."
                                f"{capability[-1]}, and {torch.cuda.get_device_name(device)} is {major}.{minor}: "
                                "export it again on this kind of GPU")


def load_package(path: Path, run_single_threaded: bool = False):
    """The package's model as PyTorch's package loader loads it (the loader `torch._inductor.aoti_load_package`
    ends in), without the device check that aoti_load_package makes first. That check finds this CPU's vector
    extensions by compiling and running C++ test programs (about 5 s of a fresh process here), and where there is
    no C++ compiler it fails after the model has loaded, so that PyTorch loads the package a second time, warning
    that it is outdated. check_machine makes the same check from the CPU's own flags, without a compiler.
    `run_single_threaded`: no model pool (and its CUDA event queries, which a graph capture forbids). Like
    aoti_load_package, it refuses an archive of another format version than this PyTorch writes."""
    from torch._inductor.package.package import AOTICompiledModel
    from torch.export.pt2_archive._package import PT2ArchiveReader
    from torch.export.pt2_archive.constants import ARCHIVE_VERSION_VALUE

    with PT2ArchiveReader(str(path)) as archive:
        version = archive.archive_version()
    if str(version) != ARCHIVE_VERSION_VALUE:
        raise ArtifactError(f"{path} is a PyTorch package archive version {version}; PyTorch {torch.__version__} "
                            f"reads version {ARCHIVE_VERSION_VALUE}: export it again with this PyTorch")
    return AOTICompiledModel(torch._C._aoti.AOTIModelPackageLoader(str(path), "model", run_single_threaded, 1, -1))


class ContainerRunner:
    """The package's compiled model run by AOTInductor's container runner (`torch._C._aoti`) without PyTorch's
    package loader: the package's model folder unpacked into a temporary folder that lives as long as this object
    (the shared object, the kernels it loads on its first call, and the description of the calls it makes back into
    PyTorch's dispatcher, if any: dispatcher_calls), the shared object loaded as the package loader would load it.
    The weights must be inside the shared object (AOTInductor's default); a package that keeps them apart is
    refused. The runner's model pool queries a CUDA event on each call, and PyTorch's Python API gives it no
    single-threaded mode: no CUDA graphs. (N, ...) tensor -> (N, classes) tensor."""

    def __init__(self, path: Path, device: torch.device):
        self.folder = folder = Path(tempfile.mkdtemp(prefix="vitserve-aoti-"))
        weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                apart = [n for n in names if n.endswith(".blob") or "data/weights/" in n or "data/constants/" in n]
                if apart:
                    raise ArtifactError(f"{path} keeps its weights outside its compiled model ({apart[0]}); "
                                        "AOTInductor's container runner cannot load it")
                archive.extractall(folder, [n for n in names if MODEL_FOLDER in n])
        except (zipfile.BadZipFile, OSError) as e:
            raise ArtifactError(f"{path} is not a readable AOTInductor package: {e}") from e
        objects = sorted(folder.rglob("*.so"))
        if len(objects) != 1:
            raise ArtifactError(f"{path}: expected one compiled model (.so) in the package, found {len(objects)}")
        so = objects[0]
        if device.type == "cuda":
            self.runner = torch._C._aoti.AOTIModelContainerRunnerCuda(str(so), 1, str(device), str(so.parent))
        else:
            self.runner = torch._C._aoti.AOTIModelContainerRunnerCpu(str(so), 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner.run([x])[0]


class GraphBucket:
    """One batch bucket's CUDA graph and its buffers. The host's float32 batch is cast on the CPU to the precision
    the package computes in (`transfer_dtype`; the package's first operation casts its float32 input to it, so the
    values are the same) into pinned memory, copied from there to the graph's input (half the bytes of float32 for
    fp16/bf16, and a pinned copy runs at the bus's speed where a pageable one is staged by the driver), the graph
    replayed (its first kernel turns the input back into the float32 the package takes), and the logits copied back
    through pinned memory. Several threads may call it at once: each call casts into a pinned pair of buffers of
    its own, without `gpu_lock`, so that the cast overlaps the GPU's work on another call's batch; then, holding the
    lock, enqueues its copy in, the replay and its copy out on the one stream, and waits for them without it.
    Staging buffers for `calls` calls at once are allocated at capture, more when more calls come at once."""

    def __init__(self, model, size: int, input_shape: tuple[int, ...], device: torch.device,
                 transfer_dtype: torch.dtype, gpu_lock: threading.Lock, calls: int = 1):
        self.device_in = torch.zeros((size, *input_shape), device=device, dtype=transfer_dtype)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the graph: lazy initialisation must not be captured
                model(self.device_in.float())
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = model(self.device_in.float())  # .float() of a float32 input is the input itself
        self.gpu_lock = gpu_lock
        self.staging = Pool(self._new_staging)  # (host input, host output, done event) per concurrent call
        self.staging.reserve(calls)  # allocated now, at warm-up, rather than in a call while serving

    def _new_staging(self) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event]:
        return (torch.empty(self.device_in.shape, dtype=self.device_in.dtype, pin_memory=True),
                torch.empty(self.output.shape, dtype=self.output.dtype, pin_memory=True), torch.cuda.Event())

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        n = len(x)
        with self.staging.take() as (host_in, host_out, done):
            host_in[:n].copy_(x)  # the cast, on the CPU's threads
            return self._replay(host_in[:n], host_out, done)

    def on_device(self, x: torch.Tensor) -> np.ndarray:
        """The same for a batch already on the GPU (decoded there): copied into the graph's input on the device,
        nothing crossing the bus but the logits."""
        with self.staging.take() as (_, host_out, done):
            return self._replay(x, host_out, done)

    def _replay(self, x: torch.Tensor, host_out: torch.Tensor, done: torch.cuda.Event) -> np.ndarray:
        """`x` (pinned host memory, or the device) into the graph's input, the replay, the logits out."""
        n = len(x)
        # one stream: the copy in waits for the replay before it, which read the input (and, for a batch decoded
        # on the device, for the decode's kernels)
        with self.gpu_lock:
            self.device_in[:n].copy_(x, non_blocking=True)
            self.device_in[n:].zero_()
            self.graph.replay()
            host_out[:n].copy_(self.output[:n], non_blocking=True)  # before the next replay overwrites it
            done.record()
        done.synchronize()
        return host_out[:n].numpy().copy()


class PackageRunner:
    """A loaded package, run on batches padded up to the smallest batch bucket that holds them. On CUDA (unless
    `cuda_graphs` is False: plain calls of the package) each bucket gets a CUDA graph (GraphBucket) the first time
    it runs (the server warms every batch size it can form at start-up, so all are captured before /readyz turns
    200); later batches reach the bucket's input in `transfer_dtype` (the package's compute precision; float32 by
    default), replay the graph and read its output. `loader`: "package" (PyTorch's package loader) or "runner"
    (ContainerRunner: plain calls, whatever `cuda_graphs` says). (N, C, H, W) float32 -> (N, classes) float32."""

    def __init__(self, path: Path, device: str, buckets: list[int], input_shape: tuple[int, ...],
                 cuda_graphs: bool = True, loader: str = "package", transfer_dtype: torch.dtype = torch.float32):
        if loader not in LOADERS:
            raise ArtifactError(f"unknown package loader {loader!r}; this vitserve knows {', '.join(LOADERS)}")
        self.device = torch.device(device)
        self.buckets = sorted(buckets)
        self.input_shape = tuple(input_shape)
        self.loader = loader
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda" and loader == "package"
        self.transfer_dtype = transfer_dtype
        check_machine(path, self.device)
        try:
            if loader == "runner":
                self.model = ContainerRunner(path, self.device)
            else:
                # single-threaded: without the model pool's CUDA event queries, which a graph capture forbids
                # (this runner's lock already lets one call in at a time)
                self.model = load_package(path, run_single_threaded=self.cuda_graphs)
        except ArtifactError:
            raise
        except Exception as e:  # torch raises RuntimeError for packages from another version or machine
            raise ArtifactError(f"PyTorch cannot load {path}: {e}") from e
        self._graphs: dict[int, GraphBucket] = {}
        self._lock = threading.Lock()  # the GPU's work: captures, replays, plain calls
        self._calls = 1  # how many calls at once each bucket's graph holds staging buffers for (reserve)

    def bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise ArtifactError(f"a batch of {n} exceeds the package's largest bucket {self.buckets[-1]}")

    def graph(self, size: int) -> GraphBucket:
        """The bucket's CUDA graph, captured on first use (no other work on the GPU meanwhile)."""
        with self._lock:
            if size not in self._graphs:
                self._graphs[size] = GraphBucket(self.model, size, self.input_shape, self.device,
                                                 self.transfer_dtype, self._lock, self._calls)
                log.info("captured a CUDA graph for batch bucket %d", size)
            return self._graphs[size]

    def reserve(self, calls: int) -> None:
        """Staging buffers for `calls` calls at once in every bucket's graph, captured or to come, so that no call
        allocates pinned memory while serving (the server reserves for its batches in flight before warming)."""
        with self._lock:
            self._calls = max(self._calls, calls)
            graphs = list(self._graphs.values())
        for graph in graphs:
            graph.staging.reserve(calls)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Safe to call from several threads; with CUDA graphs one call's host work overlaps another's GPU work."""
        return self._run(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)), on_device=False)

    def run_on_device(self, x: torch.Tensor) -> np.ndarray:
        """A batch already on the package's device (N, C, H, W) -> logits on the host."""
        return self._run(x, on_device=True)

    def _run(self, x: torch.Tensor, on_device: bool) -> np.ndarray:
        n = len(x)
        size = self.bucket(n)
        with torch.no_grad():
            if self.cuda_graphs:
                graph = self.graph(size)
                return graph.on_device(x) if on_device else graph(x)
            if size != n:
                x = torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
            with self._lock:  # .float(): a batch decoded on the device comes in the compute precision
                return self.model(x.to(self.device).float())[:n].float().cpu().numpy()


class TorchRuntime(PackageRunner, Runtime):
    """An artifact written by `vitserve export --format torch`: the only runtime that needs torch to serve
    (`pip install 'vitserve[serve,torch]'`); imported only when chosen."""

    name = "torch"
    library = "torch"

    def __init__(self, artifact_dir: str | Path, *, threads: int | None = None, device: str = "auto",
                 precision: str = "auto"):
        Runtime.__init__(self, artifact_dir)
        package = self.manifest.package
        built_for = package["device"]
        if device not in ("auto", built_for):
            raise ArtifactError(f"this package was compiled for {built_for}; --device {device} cannot run it "
                                f"(export again with --format torch --device {device})")
        if built_for == "cuda" and not torch.cuda.is_available():
            raise ArtifactError("this package was compiled for CUDA and no CUDA GPU is visible")
        if threads:
            torch.set_num_threads(threads)
        if calls_fused_op(package):
            import vitserve.kernels.window_attention  # noqa: F401  (registers the op the package calls)
        PackageRunner.__init__(self, self.model_path, built_for, package["batch_buckets"],
                         self.manifest.input.shape[1:], cuda_graphs=package.get("cuda_graphs", True),
                         loader=package.get("loader", "package"), transfer_dtype=COMPUTE[package["dtype"]])
        self.batches_in_flight = 2 if self.cuda_graphs else 1  # GraphBucket overlaps two calls
        self.on_gpu = built_for == "cuda"
        self.preprocessor = None  # vitserve.runtimes.device_preprocess.DevicePreprocess, after decode_on_device
        self.description = (f"torch AOTInductor {built_for} {package['dtype']}"
                            f"{', container runner' if self.loader == 'runner' else ''}"
                            f"{', CUDA graphs' if self.cuda_graphs else ''} (buckets {self.buckets})")

    def decode_on_device(self, max_pixels: int | None) -> None:
        try:
            from vitserve.runtimes.device_preprocess import DevicePreprocess
        except ImportError as e:
            raise ArtifactError(f"decoding images on the device needs torchvision ({e}): pip install torchvision, "
                                "or serve with --decode cpu") from e

        self.preprocessor = DevicePreprocess(self.manifest.preprocess, self.device, self.transfer_dtype)
        self.max_pixels = max_pixels
        self.description += f", images decoded on {self.device.type}"

    def run_encoded(self, items: list) -> list:
        batch, failures = self.preprocessor(items, self.max_pixels)
        logits = self.run_on_device(batch)
        return [row if failure is None else failure for row, failure in zip(logits, failures)]
