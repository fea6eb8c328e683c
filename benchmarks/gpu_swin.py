"""GPU check of the fused window-attention kernel and of Swin-T, ViT-B/16, DeiT-S throughput, in one run.

    python benchmarks/gpu_swin.py --out results.json [--budget-s 420] [--sections ...]
    python benchmarks/gpu_swin.py --device cpu --models swin_digits --batches 1,4 --compile-batches 4 --out x.json
    python benchmarks/gpu_swin.py --export-ahead MODEL[:DTYPE],... --workdir DIR   (then the runs with --workdir DIR)

The second is a dry run of every step on the CPU (bfloat16; the fused op runs its reference there, and a CPU
package has no CUDA graphs): it checks the script, it measures nothing worth reporting (the test suite runs it).

Steps, each written to the JSON file as soon as it is done; a step that would start after --budget-s seconds is
listed under "not_run" instead (a run cut short keeps what it measured):
  correctness  the kernel at full size (Swin-T stage 1 at batch 64; Swin V2 cosine, 64-token windows; the tiled
               form at 144 tokens and, cosine, 256) in fp16 and bf16 against the float32 reference: max |error|;
  attention    window attention alone at Swin-T stage-1 shapes, batch 256: stock ops vs
               scaled_dot_product_attention with the bias as mask vs the fused kernel (q, k, v apart, and packed:
               from the qkv projection's output to the output projection's input); the same at Swin-B's stage-1
               shapes at 384 px (12x12 windows, 144 tokens: the kernel's tiled form);
then per model (Swin-T, ViT-B/16, DeiT-S), so that every model has all its rows before the next starts:
  eager        fp16, batch 1 / 64 / 256: timm eager; for Swin also the window-order rewrite, and the rewrite with
               the fused kernel in either layout (split: q, k, v copied apart and the output back; packed: none);
  compile      torch.compile of timm's model at --compile-batches, --compile-mode (default; reduce-overhead for
               CUDA graphs);
  deploy       torch.compile (reduce-overhead: CUDA graphs) at the largest and smallest of --compile-batches
               of the form the torch artifact exports (Swin: window order, packed fused kernel; others: timm's
               model, its scaled_dot_product_attention kept): the artifact's kernels compiled just in time, what
               the artifact should reach;
  package      vitserve's torch artifact: `vitserve export --format torch` (AOTInductor, fp16, the fused kernel for
               Swin, buckets 1 / 64 / 256) in a process of its own (or beforehand, by --export-ahead MODEL into
               the same --workdir), then loaded by the server's torch backend
               (as the export recorded: PyTorch's package loader, or where that fails the container runner, plain
               calls); CUDA-graph replay alone, whole calls from numpy as the server runs them (the batch cast to
               fp16 into pinned memory, copied to the GPU, the logits copied back), the same from two threads at
               once (the server's two batches in flight: one call's host work overlapping the other's on the GPU),
               and the same graph called with the float32 batch copied from pageable memory; if that export
               fails, the same with --no-cuda-graphs (plain package calls; not tried again for later models once
               it failed too, nor when PyTorch crashed loading the package);
  profile      (first model) the kernels that take the most GPU time in the artifact's batch-256 CUDA graph under
               torch.profiler (name, share, calls): what to optimize next;
and last, for the first two models (what the GEMMs can still give), first for both
  fp8-package  the torch artifact exported with --dtype fp8 (the blocks' Linear layers in fp8: export/fp8.py;
               e4m3, per-row / per-channel scales; the rest bf16; fp8 tensor cores, GPUs of compute capability 8.9
               and up), timed as under package (or exported beforehand: --export-ahead MODEL:fp8);
then for each
  fp8          the deploy form under torch.compile (reduce-overhead) in bf16 at the largest compile batch, with
               the Linear layers in fp8 at the largest and smallest, and in fp8 with fast accumulation
               (torch._scaled_mm's use_fast_accum) at the largest;
  deploy-autotune  the deploy form under torch.compile(mode="max-autotune") at the largest compile batch;
  autotune     the torch artifact compiled with --max-autotune (Inductor's GEMM autotuning; CUDA only).
Once PyTorch has crashed loading one model's package (it then would for any), package, fp8-package and autotune
are not run for the models after it.
Random weights; CUDA events around whole forward passes; median of the timed iterations. --batches (default
1,64,256) sets the batch sizes, the artifact's buckets and the attention-alone batch (the largest).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import timm
import torch
from torch.profiler import ProfilerActivity

from vitserve.export.torch_package import to_precision
from vitserve.kernels.window_attention import reference, window_attention, window_attention_packed
from vitserve.models.build import build_model
from vitserve.models.catalogue import resolve
from vitserve.models.rewrites import deploy_copy
from vitserve.models.rewrites.windows import use_fused_kernel

STARTED = time.monotonic()
DEVICE = "cuda"  # set once by main(): cuda, or cpu for a dry run
DTYPE = torch.float16  # the models' and the attention's precision: fp16 on CUDA, bfloat16 on the CPU
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def device_ms(fn, iters: int = 20, warmup: int = 5) -> float:
    """Median milliseconds of `fn`: CUDA events around each call on CUDA; on the CPU (the dry run, which only checks
    that each step runs) the wall clock of one call after one warm-up."""
    if DEVICE != "cuda":
        iters, warmup = 1, 1
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if DEVICE != "cuda":
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1e3)
            continue
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_correctness() -> list[dict]:
    rows = []
    torch.manual_seed(0)
    # Swin-T stage 1 at batch 64, Swin V2's 8x8 windows (whole windows); 12x12 and Swin V2's 16x16 (tiled)
    for cosine, n, windows, bias_windows in ((False, 49, 64 * 64, 64), (True, 64, 64 * 16, 16),
                                             (False, 144, 64 * 16, 64), (True, 256, 16 * 16, 16)):
        windows = windows if DEVICE == "cuda" else windows // 16  # the dry run: a batch of 4, not 64
        for dtype in (torch.float16, torch.bfloat16):
            q, k, v = (torch.randn(windows, 3, n, 32, device=DEVICE, dtype=dtype) for _ in range(3))
            bias = torch.randn(bias_windows, 3, n, n, device=DEVICE)
            bias[::2, :, 0, 1:9] = -100.0
            scale = torch.rand(3, device=DEVICE) * 10 if cosine else None
            expected = reference(q.float(), k.float(), v.float(), bias, scale, 0.177)
            got = window_attention(q, k, v, bias, scale, 0.177)
            rows.append({"cosine": cosine, "tokens": n, "windows": windows, "dtype": str(dtype),
                         "max_abs_error": (got.float() - expected).abs().max().item(),
                         "fp32_reference_max_abs": expected.abs().max().item()})
    return rows


def attention_alone(batch: int, n: int = 49, heads: int = 3) -> dict:
    """64 windows of n tokens per image: Swin-T's stage 1 (7x7 windows, 3 heads), or Swin-B's at 384 px (12x12,
    4 heads)."""
    windows, d = batch * 64, 32
    q, k, v = (torch.randn(windows, heads, n, d, device=DEVICE, dtype=DTYPE) for _ in range(3))
    bias = torch.randn(64, heads, n, n, device=DEVICE)
    bias16 = bias.to(DTYPE)

    def stock():
        s = (q @ k.transpose(-2, -1)).view(batch, 64, heads, n, n) + bias16
        return s.softmax(-1).view(windows, heads, n, n) @ v

    mask = bias16.unsqueeze(0).expand(batch, -1, -1, -1, -1).reshape(windows, heads, n, n)

    def sdpa():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)

    def fused():
        return window_attention(q, k, v, bias, None, 1.0)

    qkv = torch.randn(windows, n, 3 * heads * d, device=DEVICE, dtype=DTYPE)

    def packed():  # from the qkv projection's layout to the output projection's
        return window_attention_packed(qkv, bias, None, 1.0, heads)

    iters, warmup = 50, 5
    runners = (("stock ops", stock), ("sdpa with bias mask", sdpa), ("fused kernel", fused),
               ("fused kernel, packed", packed))
    return {name: device_ms(fn, iters, warmup) for name, fn in runners}


def timm_model(name: str) -> torch.nn.Module:
    """The timm model behind a vitserve alias or timm name, random weights."""
    return build_model(resolve(name), random_init=True).model.eval()


def input_size(name: str) -> int:
    return resolve(name).preprocess.input_size[1]


def variants(name: str) -> dict[str, torch.nn.Module]:
    model = timm_model(name)
    out = {"timm eager": model}
    if resolve(name).timm_name.startswith("swin"):
        out["rewrite eager"], _ = deploy_copy(model)
        for layout in ("split", "packed"):
            fused, _ = deploy_copy(model)
            use_fused_kernel(fused, layout)
            out[f"rewrite + fused kernel ({layout}) eager"] = fused
    return {k: m.to(device=DEVICE, dtype=DTYPE) for k, m in out.items()}


def throughput(models: dict[str, torch.nn.Module], size: int, batches: list[int]) -> list[dict]:
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, size, size, device=DEVICE, dtype=DTYPE)
        for label, model in models.items():
            with torch.inference_mode():
                ms = device_ms(lambda m=model, x=x: m(x), iters=10 if batch > 64 else 20)
            rows.append({"runner": label, "batch": batch, "ms": ms, "images_per_s": batch * 1000 / ms})
            print(f"  {label:<34} b{batch:<4} {ms:8.2f} ms  {batch * 1000 / ms:9.0f} img/s", flush=True)
    return rows


def top_kernels(fn, activity, device_time: str = "device_time_total", top: int = 15) -> list[dict]:
    """The events of one call of `fn` (after a warm-up) that take the most self time on `activity`: name, ms,
    share of the total, count."""
    from torch.profiler import profile

    fn()
    with profile(activities=[activity]) as prof:
        fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if getattr(e, f"self_{device_time}", 0) > 0]
    total = sum(getattr(e, f"self_{device_time}") for e in events)
    events.sort(key=lambda e: getattr(e, f"self_{device_time}"), reverse=True)
    return [{"kernel": e.key[:120], "ms": getattr(e, f"self_{device_time}") / 1e3,
             "share": getattr(e, f"self_{device_time}") / total, "calls": e.count} for e in events[:top]]


PROFILED = {"cuda": (ProfilerActivity.CUDA, "device_time_total"), "cpu": (ProfilerActivity.CPU, "cpu_time_total")}


class LoadCrash(RuntimeError):
    """PyTorch crashed loading the package, before any call: plain calls (--no-cuda-graphs) would not help."""


def float32_pageable(graph, x) -> np.ndarray:
    """A call of the artifact's CUDA graph (GraphBucket) with the copies done the plain way, for comparison with
    its own: the float32 batch copied from pageable memory, cast on the GPU, the logits copied back to pageable
    memory."""
    graph.device_in.copy_(torch.from_numpy(x).to(DEVICE))
    graph.graph.replay()
    return graph.output.cpu().numpy()


def concurrent_calls_ms(backend, x, callers: int, calls: int = 10) -> float:
    """Milliseconds a batch when `callers` threads call the backend at once, `calls` times each, as the server's
    batcher does with that many batches in flight (one call's host work overlapping another's on the GPU). The
    pinned buffers each concurrent call needs are reserved first, as the server reserves them before warming."""
    backend.reserve(callers)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(callers) as pool:
        for done in [pool.submit(lambda: [backend(x) for _ in range(calls)]) for _ in range(callers)]:
            done.result()
    return (time.perf_counter() - started) * 1e3 / (callers * calls)


def export_command(name: str, batches: list[int], artifact: Path, dtype: str, max_autotune: bool = False,
                   cuda_graphs: bool = True) -> list[str]:
    """`vitserve export --format torch` as a user would run it, buckets and largest batch from --batches."""
    command = [sys.executable, "-m", "vitserve", "export", name, "--random-init", "--format", "torch",
               "--device", DEVICE, "--dtype", dtype, "--max-batch", str(max(batches)),
               "--batch-buckets", ",".join(map(str, batches)), "--out", str(artifact)]
    return command + (["--max-autotune"] if max_autotune else []) + ([] if cuda_graphs else ["--no-cuda-graphs"])


def artifact_dir(workdir: Path, name: str, dtype: str, max_autotune: bool = False, cuda_graphs: bool = True) -> Path:
    """Where the package section keeps the artifact exported with these options (--export-ahead's: the defaults)."""
    return workdir / f"{name}-{dtype}{'-autotune' if max_autotune else ''}{'' if cuda_graphs else '-no-graphs'}"


def export_ahead(artifacts: list[str], batches: list[int], workdir: Path) -> None:
    """--export-ahead: the exports the package and fp8-package sections time, all at once in processes of their
    own, before any timing (an export is compiling and starting processes on the CPU, then verifying in a fresh
    process: minutes each on the H100 machine, whose 16 cores run them side by side). `artifacts`: MODEL (in the
    run's precision, for package) or MODEL:DTYPE (e.g. MODEL:fp8, for fp8-package). Each one's output and exit
    status are kept beside its artifact, where those sections find them instead of exporting again."""
    workdir.mkdir(parents=True, exist_ok=True)
    running = []
    for spec in dict.fromkeys(artifacts):
        name, _, dtype = spec.partition(":")
        dtype = dtype or DTYPE_NAMES[DTYPE]
        artifact = artifact_dir(workdir, name, dtype)
        output = beside(artifact, "log").open("w")
        running.append((artifact, output, subprocess.Popen(
            export_command(name, batches, artifact, dtype), stdout=output, stderr=subprocess.STDOUT)))
        log(f"exporting {artifact.name}")
    for artifact, output, process in running:
        code = process.wait()
        output.close()
        beside(artifact, "exit").write_text(f"{code}\n")
        log(f"{artifact.name}: export exited with {code}")


def beside(artifact: Path, extension: str) -> Path:
    """A file next to the artifact's folder: its export's output (log) and exit status (exit), --export-ahead's."""
    return artifact.parent / f"{artifact.name}.{extension}"


def export(command: list[str], artifact: Path) -> tuple[int, str]:
    """Runs the export; or, where --export-ahead ran it, its exit status and output."""
    if beside(artifact, "exit").exists():
        log(f"exported ahead: {artifact.name}")
        return int(beside(artifact, "exit").read_text()), beside(artifact, "log").read_text()
    log("exporting: " + " ".join(command[1:]))
    exported = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return exported.returncode, exported.stdout


def torch_artifact(name: str, batches: list[int], workdir: Path, profile_batch: int | None = None,
                   max_autotune: bool = False, cuda_graphs: bool = True, dtype: str | None = None) -> list[dict]:
    """Exported by the CLI in a process of its own, as a user would (or ahead, by --export-ahead), then loaded here
    like the server loads it. `dtype`: the export's --dtype (default the run's precision)."""
    from vitserve.runtimes.torch_package import TorchRuntime

    dtype = dtype or DTYPE_NAMES[DTYPE]
    artifact = artifact_dir(workdir, name, dtype, max_autotune, cuda_graphs)
    code, output = export(export_command(name, batches, artifact, dtype, max_autotune, cuda_graphs), artifact)
    print(output, end="", flush=True)
    log(f"export exited with {code}")
    if code != 0:
        if "in aoti_load_package" in output:  # the crash's Python stack, from the export's error
            raise LoadCrash(f"vitserve export exited with {code}: PyTorch crashed loading the "
                            "package (its output is in the log above)")
        raise RuntimeError(f"vitserve export exited with {code} (its output is in the log above)")
    backend = TorchRuntime(artifact)
    log(f"loaded: {backend.description}")
    if backend.buckets != sorted(batches):
        raise RuntimeError(f"the artifact's buckets {backend.buckets} are not --batches {sorted(batches)}")
    manifest = backend.manifest
    rows = [{"runner": "export", "dtype": dtype, "compile_s": manifest.package["compile_seconds"],
             "max_autotune": max_autotune,
             "loader": backend.loader, "cuda_graphs": backend.cuda_graphs,
             "min_cosine": manifest.verification["min_cosine"],
             "max_abs_diff": manifest.verification["max_abs_diff"]}]
    on_device = "graph replay" if backend.cuda_graphs else "plain call (no CUDA graphs)"
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, *manifest.input.shape[1:]), dtype=np.float32)
        backend(x)  # warms the bucket (captures its CUDA graph)
        log(f"b{batch} warm")
        timed = {}
        if backend.cuda_graphs:
            graph = backend.graph(batch)
            run_on_device = graph.graph.replay
            timed["call, float32 copied from pageable memory"] = functools.partial(float32_pageable, graph, x)
        else:
            run_on_device = functools.partial(backend.model, torch.from_numpy(x).to(DEVICE))
        timed["call from numpy"] = functools.partial(backend, x)
        rows_ms = [(f"vitserve torch artifact, {on_device}", device_ms(run_on_device, iters=10 if batch > 64 else 20))]
        for what, call in timed.items():
            call()
            calls = []
            for _ in range(10 if DEVICE == "cuda" else 1):
                started = time.perf_counter()
                call()
                calls.append((time.perf_counter() - started) * 1e3)
            rows_ms.append((f"vitserve torch artifact, {what}", statistics.median(calls)))
        if backend.batches_in_flight > 1:
            rows_ms.append((f"vitserve torch artifact, calls from numpy, {backend.batches_in_flight} at once",
                            concurrent_calls_ms(backend, x, backend.batches_in_flight)))
        for label, ms in rows_ms:
            rows.append({"runner": label, "batch": batch, "ms": ms, "images_per_s": batch * 1000 / ms})
            print(f"  {label:<42} b{batch:<4} {ms:8.2f} ms  {batch * 1000 / ms:9.0f} img/s", flush=True)
        if batch == profile_batch:
            try:
                kernels = top_kernels(run_on_device, *PROFILED[DEVICE])
            except Exception as e:  # a profiler that cannot trace graph replays must not cost the rest of the run
                kernels = [{"error": repr(e)}]
            rows.append({"runner": f"{on_device}, top kernels", "batch": batch, "kernels": kernels})
            for k in kernels:
                print(f"    {k}", flush=True)
    return rows


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.0f} s] {message}", flush=True)


def compiled(name: str, batches: list[int], mode: str, deploy: bool = False, dtype: str | None = None,
             fast_accum: bool = False) -> list[dict]:
    """torch.compile, one compilation per batch size (static shapes, as a server would warm), of timm's model or
    (deploy) of the form vitserve's torch artifact exports on CUDA: for Swin the window-order rewrite with the
    packed fused kernel, other models as they are. `dtype` (deploy form only; default the run's precision): fp16,
    bf16, or fp8 (the blocks' Linear layers in fp8, the rest bf16, as `--dtype fp8` exports it; `fast_accum`: their
    GEMMs with fast accumulation, export/fp8.py)."""
    model = timm_model(name)  # not variants(): only the model compiled here
    if deploy:
        model, _ = deploy_copy(model, explicit=False)  # as the artifact: timm's fused attention where it has one
        use_fused_kernel(model)  # no-op for models without window attention
    to_precision(model, DEVICE, dtype or DTYPE_NAMES[DTYPE], fast_accum)  # as the torch artifact's export does
    label = (f"{'vitserve deploy form' if deploy else 'timm'}{f', {dtype}' if dtype else ''}"
             f"{' (fast accumulation)' if fast_accum else ''} + torch.compile ({mode})")
    rows = []
    for batch in batches:
        torch._dynamo.reset()
        rows += throughput({label: torch.compile(model, mode=mode)}, input_size(name), [batch])
    torch._dynamo.reset()
    return rows


def main() -> None:
    global DEVICE, DTYPE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="the results' JSON file (required unless --export-ahead)")
    parser.add_argument("--export-ahead", metavar="MODEL[:DTYPE],...", help="only export these artifacts (as the "
                        "package section, or with :fp8 as fp8-package, exports them), all at once, into --workdir, "
                        "for later runs with the same --workdir")
    parser.add_argument("--budget-s", type=float, default=420, help="start no new step after this many seconds")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a dry run of every step")
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--compile-batches", default="256,64,1")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode, e.g. reduce-overhead "
                        "(CUDA graphs)")
    parser.add_argument("--sections", default="correctness,attention,eager,compile,deploy,package,profile,"
                        "fp8,fp8-package,deploy-autotune,autotune")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vitserve-gpu-artifacts"))
    parser.add_argument("--models", default="swin_tiny_patch4_window7_224,vit_base_patch16_224,deit_small_patch16_224")
    args = parser.parse_args()
    DEVICE, DTYPE = args.device, torch.float16 if args.device == "cuda" else torch.bfloat16
    if args.export_ahead:
        export_ahead(args.export_ahead.split(","), [int(b) for b in args.batches.split(",")], args.workdir)
        return
    if args.out is None:
        parser.error("--out is required")
    torch.backends.cuda.matmul.allow_tf32 = True
    result: dict = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run)",
                    "torch": torch.__version__, "timm": timm.__version__, "budget_s": args.budget_s}
    sections = set(args.sections.split(","))
    if DEVICE == "cpu" and "autotune" in sections:  # `vitserve export --max-autotune` refuses the CPU
        sections.discard("autotune")
        result["not_run"] = ["autotune: --max-autotune exports for --device cuda only"]
    models = list(dict.fromkeys(args.models.split(",")))  # a model named twice is measured once
    batches = [int(b) for b in args.batches.split(",")]
    compile_batches = [int(b) for b in args.compile_batches.split(",")]
    largest, smallest = max(compile_batches), min(compile_batches)
    precision = DTYPE_NAMES[DTYPE]

    def step(section: str, key: str, name: str | None, fn) -> None:
        """Runs one measurement if its section is chosen and the budget lasts; saves the JSON after each."""
        if section not in sections:
            return
        if time.monotonic() - STARTED > args.budget_s:
            result.setdefault("not_run", []).append(f"{key} {name or ''}".strip())
            log(f"budget of {args.budget_s:.0f} s reached: {key} {name or ''} not run")
        else:
            log(f"{key} {name or ''}")
            try:
                value = fn()
            except Exception as e:  # one failing step must not cost the others their measurements
                traceback.print_exc()
                value = {"error": f"{type(e).__name__}: {e}"[:8000]}
            if name is None:
                result[key] = value
            else:
                result.setdefault(key, {})[name] = value
            result["elapsed_s"] = round(time.monotonic() - STARTED)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    step("correctness", "kernel_correctness", None, kernel_correctness)
    step("attention", f"attention_stage1_b{max(batches)}_ms", None, lambda: attention_alone(max(batches)))
    step("attention", f"attention_w12_stage1_b{max(batches)}_ms", None,
         lambda: attention_alone(max(batches), n=144, heads=4))
    package_key = f"torch_artifact_{precision}"

    def leave_out_once_crashed(names: set[str], when: str) -> None:
        """Drops the chosen sections among `names` (they load a package) once PyTorch has crashed loading an
        earlier model's package: it would for any package."""
        dropped = sorted(names & sections)
        if dropped and any("LoadCrash" in str(rows) for rows in result.get(package_key, {}).values()):
            sections.difference_update(dropped)
            why = f"{', '.join(dropped)} {when}: PyTorch crashed loading an earlier model's package"
            result.setdefault("not_run", []).append(why)
            log(f"not run: {why}")

    for name in models:  # per model: eager, torch.compile, the artifact -- a run cut short keeps whole models
        profile_batch = max(batches) if "profile" in sections and name == models[0] else None
        step("eager", f"eager_{precision}", name, lambda n=name: throughput(variants(n), input_size(n), batches))
        step("compile", f"compiled_{precision}_{args.compile_mode}", name,
             lambda n=name: compiled(n, compile_batches, args.compile_mode))
        step("deploy", f"deploy_compiled_{precision}_reduce-overhead", name,  # the batches the goals name
             lambda n=name: compiled(n, sorted({largest, smallest}, reverse=True), "reduce-overhead", deploy=True))
        leave_out_once_crashed({"package", "fp8-package", "autotune"}, f"from {name} on")
        step("package", package_key, name,
             lambda n=name, p=profile_batch: torch_artifact(n, batches, args.workdir, profile_batch=p))
        plain = result.get(f"{package_key}_no_cuda_graphs", {})
        failed_plain = any("error" in rows for rows in plain.values())
        outcome = result.get(package_key, {}).get(name, [])  # its rows, or {"error": ...}
        if DEVICE == "cuda" and "error" in outcome and not failed_plain and "LoadCrash" not in outcome["error"]:
            # then the plain calls, unless they failed as well for an earlier model or loading itself crashed
            step("package", f"{package_key}_no_cuda_graphs", name,
                 lambda n=name, p=profile_batch: torch_artifact(n, batches, args.workdir, profile_batch=p,
                                                                cuda_graphs=False))
    for name in models[:2]:  # then, while the budget lasts, what the GEMMs can still give: first the fp8 artifacts
        # (where --export-ahead exported them, only their timing is left)
        leave_out_once_crashed({"fp8-package"}, f"for {name}")
        step("fp8-package", "torch_artifact_fp8", name,
             lambda n=name: torch_artifact(n, batches, args.workdir, dtype="fp8"))
    for name in models[:2]:  # then fp8 against bf16 in the deploy form, compiled with CUDA graphs, at the largest
        # and smallest compile batch, and fp8 with fast accumulation at the largest; Inductor's GEMM autotuning (its
        # Triton GEMMs fuse the bias, GELU and residual adds the library GEMMs leave to separate kernels), in the
        # deploy form at the largest batch, and in the artifact
        step("fp8", "fp8_compiled_reduce-overhead", name,
             lambda n=name: compiled(n, [largest], "reduce-overhead", deploy=True, dtype="bf16")
             + compiled(n, sorted({largest, smallest}, reverse=True), "reduce-overhead", deploy=True, dtype="fp8")
             + compiled(n, [largest], "reduce-overhead", deploy=True, dtype="fp8", fast_accum=True))
        step("deploy-autotune", f"deploy_compiled_{precision}_max-autotune", name,
             lambda n=name: compiled(n, [largest], "max-autotune", deploy=True))
        leave_out_once_crashed({"autotune"}, f"for {name}")
        step("autotune", f"{package_key}_max_autotune", name,
             lambda n=name: torch_artifact(n, batches, args.workdir, max_autotune=True))
    log("done")


if __name__ == "__main__":
    main()
