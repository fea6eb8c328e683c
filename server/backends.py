"""Inference backends: an artifact in, logits out. No torch here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitserve.artifact import Manifest, read_manifest
from vitserve.errors import ArtifactError

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


class OnnxRuntimeBackend:
    """The artifact's model.onnx in onnxruntime."""

    name = "onnxruntime"

    def __init__(self, artifact_dir: str | Path, threads: int | None = None, device: str = "cpu"):
        import onnxruntime as ort

        self.directory = Path(artifact_dir)
        self.manifest: Manifest = read_manifest(self.directory)
        self.providers = choose_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.directory / self.manifest.model_file), options,
                                                providers=self.providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise ArtifactError(f"onnxruntime cannot load {self.directory / self.manifest.model_file}: {e}") from e

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, num_classes) logits."""
        (logits,) = self.session.run([self.manifest.output.name], {self.manifest.input.name: batch})
        return logits


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
