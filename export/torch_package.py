"""`vitserve export --format torch`: an AOTInductor package (model.pt2) for serving with PyTorch.

The deploy form of the model (window-order Swin, and on CUDA the fused window-attention kernel) is wrapped so
the package takes and returns float32 whatever precision it computes in, exported with torch.export (dynamic batch
1..max_batch) and compiled ahead of time by AOTInductor for one device and precision. The batch buckets are the
batch sizes the server warms and, on CUDA, captures a CUDA graph for; a batch is padded up to the next bucket.

The package is verified against the fp32 PyTorch model like every export (export/formats/torch.py), run by the
`torch` runtime that serves it (vitserve/runtimes/torch_package.py) in a fresh Python process.
"""

from __future__ import annotations

import copy
import logging
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitserve.errors import ExportError
from vitserve.export import fp8, toolchain
from vitserve.export.precision import Float32Boundary
from vitserve.runtimes.torch_package import COMPUTE, MODEL_FOLDER, package_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchOptions:
    device: str = "cuda"  # cuda or cpu
    dtype: str = "fp16"  # fp16, bf16, fp32, or fp8 (fp8 matrix products, bf16 elsewhere)
    batch_buckets: tuple[int, ...] = ()  # default: 1, 8, 32 and max_batch, within max_batch
    max_autotune: bool = False  # Inductor benchmarks GEMM kernels (its own, with fused epilogues, and the library's)
    cuda_graphs: bool = True  # CUDA: verified and served with a CUDA graph per bucket; False: plain calls
    freezing: bool = True  # CPU: the weights compiled in as constants (Inductor's freezing); not on CUDA


def default_buckets(max_batch: int) -> tuple[int, ...]:
    return tuple(sorted({b for b in (1, 8, 32) if b < max_batch} | {max_batch}))


def check_options(options: TorchOptions, max_batch: int) -> tuple[int, ...]:
    """The batch buckets to use; ExportError for a device, precision or bucket that cannot work here."""
    if options.device not in ("cuda", "cpu"):
        raise ExportError(f"unknown --device {options.device!r}; choose cuda or cpu")
    if options.dtype not in COMPUTE:
        raise ExportError(f"unknown --dtype {options.dtype!r}; choose one of {', '.join(COMPUTE)}")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise ExportError("--format torch --device cuda needs a CUDA GPU, and none is visible; "
                          "use --device cpu (fp32 or bf16), or export on the GPU machine")
    if options.device == "cuda" and options.dtype == "fp8":
        capability = torch.cuda.get_device_capability()
        if capability < fp8.MIN_CAPABILITY:
            raise ExportError(f"--dtype fp8 needs fp8 tensor cores (compute capability "
                              f"{'.'.join(map(str, fp8.MIN_CAPABILITY))} or later: L4, L40, H100, H200); "
                              f"{torch.cuda.get_device_name()} has {'.'.join(map(str, capability))}. "
                              "Use --dtype fp16 or bf16")
    if options.device == "cpu" and not options.cuda_graphs:
        raise ExportError("--no-cuda-graphs applies to --device cuda (a CPU package never uses CUDA graphs)")
    if options.device == "cpu" and options.max_autotune:
        # seen with PyTorch 2.14: a batched product tuned between ATen and the C++ template kept the tuning batch's
        # size for one operand in the compiled code, so the package failed at every other batch size
        raise ExportError("--max-autotune applies to --device cuda: on the CPU, Inductor's GEMM autotuning under a "
                          "dynamic batch can compile a package that fails at batch sizes other than the largest")
    if options.device == "cpu" and options.dtype == "fp16":
        raise ExportError("fp16 on the CPU is slow and inexact in PyTorch; use --dtype bf16 or fp32 with --device cpu")
    buckets = tuple(sorted(set(options.batch_buckets))) or default_buckets(max_batch)
    if buckets[0] < 1 or buckets[-1] > max_batch:
        raise ExportError(f"--batch-buckets must lie within 1..--max-batch {max_batch}, got {list(buckets)}")
    if buckets[-1] != max_batch:
        buckets = (*buckets, max_batch)  # every batch the server may form must fit a bucket
    return buckets


def to_precision(model: nn.Module, device: torch.device | str, dtype: str, fast_accum: bool = False) -> int:
    """Moves `model`, in place, to `device` in the precision `--dtype dtype` computes in (COMPUTE); for fp8 then
    replaces its eligible Linear layers by fp8 ones (export/fp8.py; `fast_accum` as there) -- after `.to()`, which
    would turn their e4m3 weights back into bfloat16. Returns how many layers are in fp8."""
    model.to(device=device, dtype=COMPUTE[dtype])
    return fp8.use_fp8(model, fast_accum) if dtype == "fp8" else 0


def compile_package(deploy: nn.Module, input_size: tuple[int, int, int], path: Path, options: TorchOptions,
                    max_batch: int) -> dict[str, Any]:
    """Writes the AOTInductor package to `path`; returns what the manifest records about it."""
    from vitserve.models.rewrites.windows import use_fused_kernel

    device, dtype = torch.device(options.device), COMPUTE[options.dtype]
    model = copy.deepcopy(deploy).eval()
    fp8_layers = to_precision(model, device, options.dtype)
    fused = use_fused_kernel(model) if device.type == "cuda" else 0
    if options.dtype == "fp8" and not fp8_layers:
        raise ExportError("--dtype fp8: this model has no Linear layer fp8 can compute (sizes in multiples of "
                          f"{fp8.ALIGNMENT}, the classifier apart); use --dtype bf16")
    wrapped = Float32Boundary(model, dtype).eval()
    # The batch dimension stays dynamic; the example's batch is the size Inductor tunes its kernels for (its
    # size hint), so it is the largest, the batch that throughput depends on.
    example = torch.randn(max_batch, *input_size, device=device)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    link = toolchain.inductor_configs()  # the shared libstdc++ where the compiler would copy it in
    configs = {"max_autotune": True} if options.max_autotune else {}
    # Freezing treats the weights as constants: Inductor prepacks them into the layout oneDNN's matrix products
    # read and folds what depends on them alone; on the CPU 1.08-1.22x (benchmarks/cpu_freezing.py). Not used on
    # CUDA, where it has not been measured.
    freezing = device.type == "cpu" and options.freezing
    if freezing:
        configs["freezing"] = True
    started = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(wrapped, (example,), dynamic_shapes=({0: batch},))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs | link)
    if link:
        check_shared_libstdcxx(path)
    return {"format": "aotinductor", "device": options.device, "dtype": options.dtype,
            "max_autotune": options.max_autotune, "cuda_graphs": device.type == "cuda" and options.cuda_graphs,
            "freezing": freezing,
            "fused_window_attention_blocks": fused, "dispatcher_calls": dispatcher_calls(path),
            "fp8_linear_layers": fp8_layers,
            "libstdcxx_linked_explicitly": bool(link),
            "compile_seconds": round(time.perf_counter() - started, 1), "torch": torch.__version__}


def check_shared_libstdcxx(path: Path) -> None:
    """ExportError unless the package's shared object needs the shared libstdc++ (see export/toolchain.py)."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(".so") and MODEL_FOLDER in name:
                needed = toolchain.needed_libraries(archive.read(name))
                if toolchain.LIBSTDCXX not in needed:
                    raise ExportError(
                        f"the C++ compiler ({toolchain.compiler()}) links libstdc++ into shared objects statically, "
                        f"and {name} still does not need {toolchain.LIBSTDCXX} after asking for it (it needs "
                        f"{', '.join(needed)}): PyTorch would crash loading it. Point $CXX at a compiler that links "
                        "libstdc++ as a shared library.")




def dispatcher_calls(path: Path) -> list[str]:
    """The ops the package's compiled model calls back through PyTorch's dispatcher rather than running compiled
    code of its own (AOTInductor's description of those calls), sorted, without repeats: a custom op that
    AOTInductor cannot see into ("mylib::op"). The process that runs the package must have registered them."""
    calls = package_json(path, "wrapper.json") or {}
    return sorted({entry["node"]["target"] for entry in calls.get("nodes", [])})
