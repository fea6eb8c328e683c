"""`vitserve bench`: every backend x precision x batch size, with timm eager as the baseline, in one run.

Runners take turns within every round (the order rotates each round), so a machine that slows down mid-run slows
all of them alike; each figure is the median (and p90) over the rounds. Writes bench.json and bench.png (images/s
per runner and batch size) to the output directory and prints a table with the ratios against timm eager.

With `peers`, the runners a user would otherwise pick by hand for the same model join the same rounds (OpenVINO
converted from the timm model and compiled with its defaults, onnxruntime on a plain torch.onnx.export of it,
torch.compile with its defaults), and so does the runtime `--backend auto --precision auto` chooses for the
artifact here ("vitserve auto"), whose ratio to the fastest peer is reported: what choosing buys, or costs.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vitserve import machine, runtimes
from vitserve.artifact import read_manifest
from vitserve.errors import ArtifactError
from vitserve.runtimes.openvino import cpu_supports_bf16

TORCH_DTYPES = {"f32": "fp32", "bf16": "bf16"}  # --precisions -> the CPU torch package's --dtype


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def eager_runner(artifact: Path, threads: int | None) -> Callable[[np.ndarray], Any]:
    """timm's own model for the artifact's architecture, or vitserve's port where timm lacks it (random weights:
    speed does not depend on them)."""
    import torch

    model = _timm_model(read_manifest(artifact))
    if threads:
        torch.set_num_threads(threads)

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def peer_runners(artifact: Path, threads: int | None, max_batch: int) -> dict[str, Callable[[np.ndarray], Any]]:
    """What a user would run by hand for the artifact's architecture (timm's model, random weights), each with its
    library's defaults: OpenVINO converted from PyTorch, onnxruntime on a plain torch.onnx.export (no rewrite),
    torch.compile."""
    import tempfile

    import onnxruntime
    import openvino as ov
    import torch

    from vitserve.export.onnx import export_onnx

    manifest = read_manifest(artifact)
    model = _timm_model(manifest)
    shape = tuple(manifest.input.shape[1:])
    if threads:
        torch.set_num_threads(threads)
    runners: dict[str, Callable[[np.ndarray], Any]] = {}

    core = ov.Core()
    with torch.no_grad():
        converted = ov.convert_model(model, example_input=torch.zeros(2, *shape))
    converted.reshape([-1, *shape])
    compiled = core.compile_model(converted, "CPU", {"INFERENCE_NUM_THREADS": threads} if threads else {})
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    runners[f"peer: OpenVINO from timm ({precision.get_type_name()})"] = lambda x: compiled(x)[0]

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plain.onnx"
        export_onnx(model, shape, path, max_batch=max_batch, opset=18)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    runners["peer: onnxruntime, plain export"] = lambda x: session.run(None, {name: x})[0]

    compiled_model = torch.compile(model)

    def run_compiled(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return compiled_model(torch.from_numpy(x))

    runners["peer: torch.compile"] = run_compiled
    return runners


def auto_runner(artifact: Path, threads: int | None) -> tuple[str, Callable[[np.ndarray], Any]]:
    """The runtime `vitserve serve` (--backend auto --precision auto) chooses for the artifact on this machine."""
    from vitserve.runtimes.choose import choose

    runtime, choice = choose(artifact, threads=threads, local=True)
    return f"vitserve auto ({choice['chosen']})", runtime


def _timm_model(manifest):
    from vitserve.models.architectures import registered_timm

    kwargs = dict(manifest.weights.get("timm_kwargs") or {}, num_classes=manifest.num_classes)
    return registered_timm().create_model(manifest.architecture, pretrained=False, **kwargs).eval()


def artifact_runner(artifact: Path, threads: int | None) -> tuple[str, Callable[[np.ndarray], Any]]:
    """An artifact in the backend it was made for (`--backend auto`): an int8 one from `vitserve quantize`, an
    OpenVINO IR, a torch package (on the device it was compiled for)."""
    manifest = read_manifest(artifact)
    runtime = runtimes.made_for(manifest)
    backend = runtime.name
    model = runtimes.load(artifact, backend, threads=threads, device=runtime.local_device)
    if manifest.quantization:
        precision = "int8"
    elif backend == "openvino":
        precision = model.precision
    else:
        precision = manifest.package.get("dtype", "f32")
    return f"{backend} {precision} ({artifact.name})", model


def export_for_bench(spec, out: Path, backends: list[str], precisions: list[str], batch_sizes: list[int],
                     progress: Callable[[str], None]) -> tuple[Path, list[Path]]:
    """A model name's artifacts, with random weights (speed does not depend on them): the ONNX artifact, and with
    "torch" among `backends` a CPU torch package per precision (compiled for this machine, every batch size a
    bucket, so that none is padded to a larger one). Returns the artifact and the packages."""
    from vitserve.export.pipeline import ExportOptions, export_artifact
    from vitserve.models.build import build_model

    built = build_model(spec, random_init=True)
    artifact = out / "artifact"
    progress(f"exporting {spec.name} with random weights to {artifact}")
    export_artifact(built, ExportOptions(out=artifact, max_batch=max(batch_sizes)), progress=progress)
    packages = []
    if "torch" in backends:
        for precision in precisions:
            if precision == "bf16" and not cpu_supports_bf16():
                continue
            dtype = TORCH_DTYPES[precision]
            package = out / f"artifact-torch-{dtype}"
            progress(f"exporting {spec.name} with random weights to {package} (--format torch --dtype {dtype})")
            export_cpu_package(built, package, dtype, batch_sizes, progress=progress)
            packages.append(package)
    return artifact, packages


def export_cpu_package(built, out: Path, dtype: str, batch_sizes: list[int], *, freezing: bool = True,
                       progress: Callable[[str], None] = lambda message: None) -> None:
    """`built` exported to a CPU torch package at `out` for timing: every batch size a bucket (none padded to a
    larger one), --max-batch the largest."""
    from vitserve.export.pipeline import ExportOptions, export_artifact
    from vitserve.export.torch_package import TorchOptions

    torch_options = TorchOptions(device="cpu", dtype=dtype, batch_buckets=tuple(batch_sizes), freezing=freezing)
    export_artifact(built, ExportOptions(out=out, max_batch=max(batch_sizes), format="torch",
                                         torch_options=torch_options), progress=progress)


def runners_for(artifact: Path, backends: list[str], precisions: list[str], threads: int | None,
                eager: bool, also: list[Path] = (), peers: bool = False,
                max_batch: int = 1) -> dict[str, Callable[[np.ndarray], Any]]:
    """timm eager, the artifact in each of `backends` x `precisions` that can run it (in the backend it was made
    for when none of them can: a torch package), each `also` artifact in its own backend, and with `peers` the
    peers and vitserve's own choice (peer_runners, auto_runner)."""
    runners: dict[str, Callable[[np.ndarray], Any]] = {}
    if eager:
        runners["timm eager (PyTorch)"] = eager_runner(artifact, threads)
    if peers:
        runners.update(peer_runners(artifact, threads, max_batch))
        label, model = auto_runner(artifact, threads)
        runners[label] = model
    manifest = read_manifest(artifact)
    able = [b for b in backends if runtimes.info(b).can_run(manifest)]  # onnxruntime cannot run an OpenVINO IR
    if not able or "torch" in able:  # its own backend; a torch package runs at the precision it was compiled for
        label, model = artifact_runner(artifact, threads)
        runners[label] = model
    for backend in (b for b in able if b != "torch"):
        for precision in precisions:
            if backend == "onnxruntime" and precision != "f32":
                continue  # onnxruntime runs the artifact at its own precision
            if precision == "bf16" and not cpu_supports_bf16():
                continue
            model = runtimes.load(artifact, backend, threads=threads, device="cpu", precision=precision)
            runners[f"{backend} {precision}"] = model
    shape = manifest.input.shape
    for extra in also:
        extra_shape = read_manifest(extra).input.shape
        if extra_shape != shape:
            raise ArtifactError(f"{extra} takes input {extra_shape}, {artifact} {shape}: "
                                "--also needs artifacts of the same model")
        label, model = artifact_runner(Path(extra), threads)
        runners[label] = model
    return runners


def bench_artifact(
    artifact: Path,
    out: Path,
    *,
    backends: list[str],
    precisions: list[str],
    batch_sizes: list[int],
    rounds: int = 10,
    threads: int | None = None,
    eager: bool = True,
    also: list[Path] = (),
    peers: bool = False,
) -> dict[str, Any]:
    from tqdm import tqdm

    manifest = read_manifest(artifact)
    runners = runners_for(artifact, backends, precisions, threads, eager, also, peers, max(batch_sizes))
    shape = manifest.input.shape[1:]
    times: dict[tuple[str, int], list[float]] = {}
    with tqdm(total=len(batch_sizes) * rounds * len(runners), desc="bench", unit="run") as bar:
        for batch in batch_sizes:
            x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
            for run in runners.values():  # warm-up
                run(x)
            names = list(runners)
            for r in range(rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    started = time.perf_counter()
                    runners[name](x)
                    times.setdefault((name, batch), []).append(time.perf_counter() - started)
                    bar.update()
    results = []
    for (name, batch), values in times.items():
        median = statistics.median(values)
        results.append({"runner": name, "batch": batch, "median_ms": median * 1e3,
                        "p90_ms": _percentile(values, 0.9) * 1e3, "images_per_s": batch / median})
    baseline = {r["batch"]: r["images_per_s"] for r in results if r["runner"].startswith("timm eager")}
    for r in results:
        if r["batch"] in baseline:
            r["vs_eager"] = r["images_per_s"] / baseline[r["batch"]]
    for batch in {r["batch"] for r in results}:  # vitserve's choice against the fastest peer
        peer = max((r for r in results if r["batch"] == batch and r["runner"].startswith("peer: ")),
                   key=lambda r: r["images_per_s"], default=None)
        for r in results:
            if peer is not None and r["batch"] == batch and r["runner"].startswith("vitserve auto"):
                r["vs_fastest_peer"] = r["images_per_s"] / peer["images_per_s"]
                r["fastest_peer"] = peer["runner"]
    report = {"model": manifest.name, "architecture": manifest.architecture, "artifact": str(artifact),
              "machine": machine.summary(), "threads": threads, "rounds": rounds,
              "results": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    _chart(report, out / "bench.png")
    return report


def _chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    runners = list(dict.fromkeys(r["runner"] for r in results))
    batches = sorted({r["batch"] for r in results})
    width = 0.8 / len(runners)
    fig, ax = plt.subplots(figsize=(max(6, 2 * len(batches) + 2), 4))
    for i, runner in enumerate(runners):
        values = [next((r["images_per_s"] for r in results if r["runner"] == runner and r["batch"] == b), 0)
                  for b in batches]
        ax.bar([j + i * width for j in range(len(batches))], values, width, label=runner)
    ax.set_xticks([j + width * (len(runners) - 1) / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
    ax.set_ylabel("images / s")
    ax.set_title(f"{report['model']} ({report['architecture']}) on {report['machine']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(report: dict[str, Any]) -> str:
    rows = ["| runner | batch | median ms | p90 ms | images/s | vs timm eager |", "|---|---|---|---|---|---|"]
    for r in sorted(report["results"], key=lambda r: (r["batch"], r["runner"])):
        ratio = f"{r['vs_eager']:.2f}x" if "vs_eager" in r else "-"
        if "vs_fastest_peer" in r:
            ratio += f", {r['vs_fastest_peer']:.2f}x the fastest peer"
        rows.append(f"| {r['runner']} | {r['batch']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
                    f"{r['images_per_s']:.1f} | {ratio} |")
    return "\n".join(rows)
