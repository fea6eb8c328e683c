"""The `tensorrt` backend: a TensorRT 10 engine (`vitserve export --format tensorrt`) with the window-attention
plugins. Needs TensorRT, torch (buffers, and the plugins' Triton kernel) and a GPU; imported only when asked for.

Each batch runs in the optimization profile built for the smallest batch bucket that holds it (the engine has
one per bucket); input and output live in torch CUDA tensors whose addresses are handed to the execution context.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from vitserve.artifact import Manifest, Profile, profile_for, read_manifest
from vitserve.errors import ArtifactError
from vitserve.server.backends import check_model_format


class EngineRunner:
    """A deserialized engine with one execution context; (N, C, H, W) float32 -> (N, classes) float32."""

    def __init__(self, engine: bytes, profiles, input_name: str, num_classes: int, output_name: str = "logits"):
        import tensorrt as trt
        import torch

        import vitserve.models.trt_plugin  # noqa: F401  (the engine calls the window-attention plugins)

        self.torch, self.trt_version = torch, trt.__version__
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise ArtifactError("TensorRT could not load the engine (built by another TensorRT version or for "
                                "another GPU?); export it again on this machine")
        self.context = self.engine.create_execution_context()
        self.profiles = profiles
        self.input_name, self.output_name, self.num_classes = input_name, output_name, num_classes
        self.stream = torch.cuda.Stream()
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with self._lock, torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).cuda(non_blocking=True)
            y = torch.empty((len(batch), self.num_classes), device="cuda", dtype=torch.float32)
            self.context.set_optimization_profile_async(profile_for(self.profiles, len(batch)),
                                                        self.stream.cuda_stream)
            self.context.set_input_shape(self.input_name, tuple(x.shape))
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            self.context.set_tensor_address(self.output_name, y.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            return y.cpu().numpy()  # waits for the stream


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, artifact_dir: str | Path, threads: int | None = None, device: str = "auto"):
        try:
            import tensorrt  # noqa: F401
            import torch
        except ImportError as e:
            raise ArtifactError("the tensorrt backend needs TensorRT 10 and PyTorch with CUDA: pip install "
                                "'vitserve[serve,torch]' tensorrt-cu12") from e
        self.directory = Path(artifact_dir)
        self.manifest: Manifest = read_manifest(self.directory)
        check_model_format(self.directory, self.manifest, "tensorrt", (".engine",))
        if device not in ("auto", "cuda", "tensorrt") or not torch.cuda.is_available():
            raise ArtifactError("a TensorRT engine runs on an NVIDIA GPU, and none is visible")
        profiles = [Profile(**p) for p in self.manifest.package["profiles"]]
        self.runner = EngineRunner((self.directory / self.manifest.model_file).read_bytes(), profiles,
                                   self.manifest.input.name, self.manifest.num_classes, self.manifest.output.name)
        self.description = f"TensorRT {self.runner.trt_version} fp16, {len(profiles)} optimization profiles"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.runner(batch)
