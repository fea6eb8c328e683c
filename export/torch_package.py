"""`vitserve export --format torch`: an AOTInductor package (model.pt2) for serving with PyTorch.

The deploy form of the model (window-order Swin, and on CUDA the fused window-attention kernel) is wrapped so
the package takes and returns float32 whatever precision it computes in, exported with torch.export (dynamic batch
1..max_batch) and compiled ahead of time by AOTInductor for one device and precision. The batch buckets are the
batch sizes the server warms and, on CUDA, captures a CUDA graph for; a batch is padded up to the next bucket.

The package is verified against the fp32 PyTorch model like every export: at fp32 by the same |logit difference|
tolerance as ONNX; at fp16/bf16 by the lowest cosine similarity of the logits (the difference itself scales with
the logits), with max |difference| and top-1 agreement reported.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitserve.errors import ExportError, VerificationError

PACKAGE_NAME = "model.pt2"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIN_COSINE = {"fp16": 0.999, "bf16": 0.99}  # fp32 uses the export's atol


@dataclass(frozen=True)
class TorchOptions:
    device: str = "cuda"  # cuda or cpu
    dtype: str = "fp16"  # fp16, bf16 or fp32
    batch_buckets: tuple[int, ...] = ()  # default: 1, 8, 32 and max_batch, within max_batch


def default_buckets(max_batch: int) -> tuple[int, ...]:
    return tuple(sorted({b for b in (1, 8, 32) if b < max_batch} | {max_batch}))


def check_options(options: TorchOptions, max_batch: int) -> tuple[int, ...]:
    """The batch buckets to use; ExportError for a device, precision or bucket that cannot work here."""
    if options.device not in ("cuda", "cpu"):
        raise ExportError(f"unknown --device {options.device!r}; choose cuda or cpu")
    if options.dtype not in DTYPES:
        raise ExportError(f"unknown --dtype {options.dtype!r}; choose one of {', '.join(DTYPES)}")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise ExportError("--format torch --device cuda needs a CUDA GPU, and none is visible; "
                          "use --device cpu (fp32 or bf16), or export on the GPU machine")
    if options.device == "cpu" and options.dtype == "fp16":
        raise ExportError("fp16 on the CPU is slow and inexact in PyTorch; use --dtype bf16 or fp32 with --device cpu")
    buckets = tuple(sorted(set(options.batch_buckets))) or default_buckets(max_batch)
    if buckets[0] < 1 or buckets[-1] > max_batch:
        raise ExportError(f"--batch-buckets must lie within 1..--max-batch {max_batch}, got {list(buckets)}")
    if buckets[-1] != max_batch:
        buckets = (*buckets, max_batch)  # every batch the server may form must fit a bucket
    return buckets


class Float32Boundary(nn.Module):
    """float32 in, float32 out, `dtype` inside: the artifact's interface stays that of every other format."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def compile_package(deploy: nn.Module, input_size: tuple[int, int, int], path: Path, options: TorchOptions,
                    max_batch: int) -> dict[str, Any]:
    """Writes the AOTInductor package to `path`; returns what the manifest records about it."""
    from vitserve.models.windows import use_fused_kernel

    device, dtype = torch.device(options.device), DTYPES[options.dtype]
    model = copy.deepcopy(deploy).to(device=device, dtype=dtype).eval()
    fused = use_fused_kernel(model) if device.type == "cuda" else 0
    wrapped = Float32Boundary(model, dtype).eval()
    example = torch.randn(min(2, max_batch), *input_size, device=device)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    started = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(wrapped, (example,), dynamic_shapes=({0: batch},))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return {"format": "aotinductor", "device": options.device, "dtype": options.dtype,
            "fused_window_attention_blocks": fused, "compile_seconds": round(time.perf_counter() - started, 1),
            "torch": torch.__version__}


def package_runner(path: Path, device: str) -> Callable[[np.ndarray], np.ndarray]:
    package = torch._inductor.aoti_load_package(str(path))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return package(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return run


def verify_package(path: Path, reference: nn.Module, preprocess, options: TorchOptions, *, atol: float,
                   max_batch: int) -> dict[str, Any]:
    """The package against the fp32 reference on the export's verification inputs; VerificationError below the
    gate (atol at fp32, MIN_COSINE otherwise)."""
    from vitserve.export.verify import compare, verification_inputs

    run = package_runner(path, options.device)
    photo_names, inputs = verification_inputs(preprocess)
    report: dict[str, Any] = {"runtime": f"torch {torch.__version__} aotinductor {options.device} {options.dtype}",
                              "photos": photo_names, "inputs": {}}
    for name, x in inputs.items():
        with torch.no_grad():
            ref = reference(x).numpy()
        got = np.concatenate([run(x[i:i + max_batch].numpy()) for i in range(0, len(x), max_batch)])
        report["inputs"][name] = compare(ref, got)
    stats = report["inputs"].values()
    report["max_abs_diff"] = max(s["max_abs_diff"] for s in stats)
    report["min_cosine"] = min(s["min_cosine"] for s in stats)
    report["top1_agreement"] = min(s["top1_agreement"] for s in stats)
    if options.dtype == "fp32":
        report["atol"] = atol
        report["passed"] = report["max_abs_diff"] <= atol
        gate = f"max |logit difference| {report['max_abs_diff']:.3g} > atol {atol:g}"
    else:
        report["min_cosine_required"] = MIN_COSINE[options.dtype]
        report["passed"] = report["min_cosine"] >= MIN_COSINE[options.dtype]
        gate = f"lowest logit cosine {report['min_cosine']:.5f} < {MIN_COSINE[options.dtype]}"
    if not report["passed"]:
        raise VerificationError(f"the {options.dtype} package does not match the PyTorch model: {gate} (top-1 "
                                f"agreement {report['top1_agreement']:.1%})", report)
    return report
