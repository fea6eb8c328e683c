"""The `torch` backend: an AOTInductor package (`vitserve export --format torch`) run by PyTorch.

This is the one backend that needs torch in the serving install (`pip install 'vitserve[serve,torch]'`); it is
imported only when asked for, so the other backends keep the server free of torch.

A batch is padded up to the smallest batch bucket declared at export that holds it. On CUDA, each bucket gets a
CUDA graph the first time it runs (the server warms every batch size it can form at start-up, so they are all
captured before /readyz turns 200): later batches copy into the bucket's static input, replay the graph and read
the static output, without launching kernels one by one.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from vitserve.artifact import Manifest, read_manifest
from vitserve.errors import ArtifactError
from vitserve.server.backends import check_model_format

log = logging.getLogger(__name__)


class TorchBackend:
    name = "torch"

    def __init__(self, artifact_dir: str | Path, threads: int | None = None, device: str = "auto",
                 cuda_graphs: bool = True):
        try:
            import torch
        except ImportError as e:
            raise ArtifactError("the torch backend needs PyTorch: pip install 'vitserve[serve,torch]'") from e
        self.torch = torch
        self.directory = Path(artifact_dir)
        self.manifest: Manifest = read_manifest(self.directory)
        check_model_format(self.directory, self.manifest, "torch", (".pt2",))
        package = self.manifest.package
        built_for = package["device"]
        if device not in ("auto", built_for):
            raise ArtifactError(f"this package was compiled for {built_for}; --device {device} cannot run it "
                                f"(export again with --format torch --device {device})")
        if built_for == "cuda" and not torch.cuda.is_available():
            raise ArtifactError("this package was compiled for CUDA and no CUDA GPU is visible")
        if threads:
            torch.set_num_threads(threads)
        if package.get("fused_window_attention_blocks"):
            import vitserve.models.window_attention  # noqa: F401  (registers the kernel the package calls)
        self.device = torch.device(built_for)
        self.buckets = sorted(package["batch_buckets"])
        try:
            self.model = torch._inductor.aoti_load_package(str(self.directory / self.manifest.model_file))
        except Exception as e:  # torch raises RuntimeError for packages from another version or machine
            raise ArtifactError(f"PyTorch cannot load {self.directory / self.manifest.model_file}: {e}") from e
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[int, tuple] = {}  # bucket -> (graph, static input, static output)
        self._lock = threading.Lock()
        self.description = (f"torch AOTInductor {built_for} {package['dtype']}"
                            f"{', CUDA graphs' if self.cuda_graphs else ''} (buckets {self.buckets})")

    def bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise ArtifactError(f"a batch of {n} exceeds the package's largest bucket {self.buckets[-1]}")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, num_classes) float32 logits."""
        torch = self.torch
        n = len(batch)
        size = self.bucket(n)
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.no_grad(), self._lock:
            if self.cuda_graphs:
                graph, static_in, static_out = self._graphs.get(size) or self._capture(size)
                static_in[:n].copy_(x, non_blocking=False)
                static_in[n:].zero_()
                graph.replay()
                return static_out[:n].float().cpu().numpy()
            if size != n:
                x = torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
            return self.model(x.to(self.device))[:n].float().cpu().numpy()

    def _capture(self, size: int) -> tuple:
        torch = self.torch
        static_in = torch.zeros((size, *self.manifest.input.shape[1:]), device=self.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the graph: lazy initialisation must not be captured
                self.model(static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.model(static_in)
        self._graphs[size] = (graph, static_in, static_out)
        log.info("captured a CUDA graph for batch bucket %d", size)
        return self._graphs[size]
