"""The GPU benchmark's dry run on the CPU: every step of benchmarks/gpu_swin.py (the script a lent GPU runs, with
minutes to spare and no second try) goes through on swin_digits, so a broken step shows here first."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import OFFLINE_ENV, ROOT


def _errors(node):
    """Every {"error": ...} the steps recorded, anywhere in the result."""
    if isinstance(node, dict):
        if "error" in node:
            yield node["error"]
        for value in node.values():
            yield from _errors(value)
    elif isinstance(node, list):
        for value in node:
            yield from _errors(value)


def _device_run_dry(tmp_path: Path, **settings: str) -> Path:
    """benchmarks/device_run.sh with DRY_RUN=1 and `settings` in its environment; the folder of its results."""
    out = tmp_path / "out"
    env = {**os.environ, **OFFLINE_ENV, "DRY_RUN": "1", "OUT": str(out), **settings,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_run.sh")], capture_output=True, text=True,
                          env=env, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.slow(minutes=10)  # compiles
def test_device_script_dry_run_on_the_cpu(tmp_path):
    """benchmarks/device_run.sh (the one command a lent GPU runs, with minutes to spare and no second try) with
    DRY_RUN=1 and time for every step: benchmarks/aoti_load_probe.py in the background beside the kernel tests (only
    collected here), the artifacts exported ahead, then every section of benchmarks/gpu_swin.py on swin_digits, so
    that a broken step shows here first. The ViT and DeiT processes (swin_digits again here) are narrowed to the
    section that takes the artifact exported ahead and to one that does not."""
    out = _device_run_dry(tmp_path, TOTAL_S="1500", VIT_SECTIONS="package", DEIT_SECTIONS="eager")
    files = sorted(path.name for path in out.iterdir())
    # eight files at most come back: the served figures take the place of the probe's package
    assert len(files) <= 8 and {"probe.txt", "kernel_tests.txt", "gpu_swin.log", "gpu_serve.json",
                                "gpu_swin-swin.json", "gpu_swin-vit.json", "gpu_swin-deit.json",
                                "gpu_swin-gemm.json"} == set(files), files
    log = (out / "gpu_swin.log").read_text()
    for name in ("probe", "swin", "serve", "vit", "deit", "gemm"):
        assert f"{name}: exit 0" in log, log[-3000:]

    # the probe: it compiles its package and every case loads and runs it (the cases differ in how; a crash on a
    # GPU shows which way of loading avoids it)
    probe = (out / "probe.txt").read_text()
    assert "wrapper.so" in probe and "ldd " in probe and "probe-small.pt2" in probe

    # the served benchmark, on the Swin torch artifact the swin process exported, its images decoded by the runtime
    served = json.loads((out / "gpu_serve.json").read_text())
    assert "images decoded on cpu" in served["server_backend"] and served["decode"] == "device"
    assert [(r["images_per_request"], r["concurrency"]) for r in served["rows"]] == [(1, 1), (1, 2), (4, 1), (4, 2)]
    assert all(r["errors"] == 0 and r["requests"] > 0 and r["vs_model_alone"] > 0 and r["p99_ms"] >= r["p50_ms"]
               for r in served["rows"]), served["rows"]
    assert served["model_alone"]["batch"] == 4 and served["single_request"]["p50_ms"] > 0
    assert 50_000 < served["jpeg_bytes_mean"] < 200_000  # ImageNet-like photographs
    for case in ("plain", "runner", "ld-debug", "inductor-first"):
        assert f"{case} (" in probe
    assert probe.count("ran: output (3, 10)") == 4, probe[-3000:]
    assert "same-process: loaded and ran, output (3, 10)" in probe
    assert probe.rstrip().endswith("summary: plain=ran runner=ran ld-debug=ran inductor-first=ran same-process=ran")

    tests = (out / "kernel_tests.txt").read_text()
    assert "collected" in tests and "test_kernels.py tests/runtimes/test_tensorrt_runtime.py" in tests
    assert "test_cuda_fp16_package_with_cuda_graphs tests/export/test_torch_package.py::test_cuda_fp8_package: " \
           "exit 0" in tests  # the package tests, last (PACKAGE_TESTS=last)
    # the artifacts exported once, ahead of the timings (the package sections' and the fp8 one the GEMM process
    # times), and each section took its own from there
    assert "export ahead (swin_digits,swin_digits:fp8): exit 0" in log, log[-3000:]
    assert "swin_digits-fp8: export exited with 0" in log and "exported ahead: swin_digits-bf16" in log, log[-3000:]
    assert "exporting: " not in log, log[-3000:]

    swin = json.loads((out / "gpu_swin-swin.json").read_text())
    assert swin["device"] == "cpu (dry run)" and "not_run" not in swin
    assert not list(_errors(swin)), list(_errors(swin))  # a failing step is recorded, not raised
    assert [row["tokens"] for row in swin["kernel_correctness"]] == [49, 49, 64, 64, 144, 144, 256, 256]
    for key in ("attention_stage1_b4_ms", "attention_w12_stage1_b4_ms"):
        assert set(swin[key]) == {"stock ops", "sdpa with bias mask", "fused kernel", "fused kernel, packed"}
    eager = swin["eager_bf16"]["swin_digits"]
    assert {row["runner"] for row in eager} == {"timm eager", "rewrite eager", "rewrite + fused kernel (split) eager",
                                                "rewrite + fused kernel (packed) eager"}
    assert {row["batch"] for row in eager} == {1, 4}
    assert [row["batch"] for row in swin["compiled_bf16_default"]["swin_digits"]] == [4]
    deploy = swin["deploy_compiled_bf16_reduce-overhead"]["swin_digits"]
    assert [(row["runner"], row["batch"]) for row in deploy] == [
        ("vitserve deploy form + torch.compile (reduce-overhead)", 4)]
    export, *rows = swin["torch_artifact_bf16"]["swin_digits"]
    assert export["runner"] == "export" and export["min_cosine"] >= 0.99 and export["cuda_graphs"] is False
    timed = [(row["runner"], row["batch"]) for row in rows if "ms" in row]
    assert timed == [(f"vitserve torch artifact, {how}", batch) for batch in (1, 4)
                     for how in ("plain call (no CUDA graphs)", "call from numpy")]
    profile = rows[-1]
    assert profile["batch"] == 4 and profile["kernels"] and all(k["ms"] >= 0 for k in profile["kernels"])

    vit = json.loads((out / "gpu_swin-vit.json").read_text())
    assert "torch_artifact_bf16" in vit and "eager_bf16" not in vit, vit
    assert not list(_errors(vit)), list(_errors(vit))
    deit = json.loads((out / "gpu_swin-deit.json").read_text())
    assert "eager_bf16" in deit and "torch_artifact_bf16" not in deit and not list(_errors(deit)), deit

    gemm = json.loads((out / "gpu_swin-gemm.json").read_text())  # its two models are swin_digits twice: once here
    assert gemm["not_run"] == ["autotune: --max-autotune exports for --device cuda only"], gemm
    assert not list(_errors(gemm)), list(_errors(gemm))
    export, *rows = gemm["torch_artifact_fp8"]["swin_digits"]
    assert export["dtype"] == "fp8" and export["min_cosine"] >= 0.98 and {row["batch"] for row in rows} == {1, 4}
    fp8 = gemm["fp8_compiled_reduce-overhead"]["swin_digits"]
    assert [(row["runner"], row["batch"]) for row in fp8] == [
        (f"vitserve deploy form, {dtype} + torch.compile (reduce-overhead)", 4) for dtype in ("bf16", "fp8",
                                                                                           "fp8 (fast accumulation)")]
    tuned = gemm["deploy_compiled_bf16_max-autotune"]["swin_digits"]
    assert [(row["runner"], row["batch"]) for row in tuned] == [
        ("vitserve deploy form + torch.compile (max-autotune)", 4)]
    assert log.count("fp8_compiled_reduce-overhead swin_digits") == 1, log[-3000:]


@pytest.mark.slow(minutes=2)  # four processes start
def test_device_script_narrowed_run(tmp_path):
    """device_run.sh narrowed to what a session still has to measure: no probe (the artifact steps would run), no
    kernel tests, chosen sections per benchmark process (none: the process is not started; no package section:
    nothing exported ahead) and options for all of them; the CUDA package tests first."""
    out = _device_run_dry(tmp_path, TOTAL_S="900", PROBE="0", KERNEL_TESTS="0", SWIN_SECTIONS="eager",
                          VIT_SECTIONS="", DEIT_SECTIONS="eager", GEMM_SECTIONS="", GPU_SWIN_ARGS="--batches 1",
                          PACKAGE_TESTS="first")
    tests = (out / "kernel_tests.txt").read_text()  # no kernel tests; the CUDA package tests first, and only then
    assert not (out / "probe.txt").exists() and "test_kernels" not in tests
    ran = re.findall(r"test_cuda_fp16_package_with_cuda_graphs tests/export/test_torch_package.py::"
                     r"test_cuda_fp8_package: exit 0 after (\d+) s", tests)
    assert len(ran) == 1, tests
    log = (out / "gpu_swin.log").read_text()
    assert "probe: not run" in log and "swin: exit 0" in log and "deit: exit 0" in log and "export ahead" not in log
    assert int(ran[0]) <= int(re.search(r"swin: exit 0 after (\d+) s", log).group(1))
    for name in ("vit", "gemm"):
        assert f"{name}: not run, no sections" in log, log[-3000:]
    for name, model in (("swin", "swin_digits"), ("deit", "swin_digits")):
        result = json.loads((out / f"gpu_swin-{name}.json").read_text())
        assert "eager_bf16" in result and "compiled_bf16_default" not in result, result
        assert {row["batch"] for row in result["eager_bf16"][model]} == {1}  # GPU_SWIN_ARGS, in both processes
        assert not list(_errors(result)), result


def test_decode_benchmark_runs():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode.py"), "--rounds", "1"],
                          capture_output=True, text=True, env={**os.environ, **OFFLINE_ENV}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if " MP " in line]
    assert len(rows) == 9 and all("1000x750" in row for row in rows[:3])


@pytest.mark.slow  # a live server
def test_protocols_benchmark_runs(digits_artifact):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "protocols.py"), str(digits_artifact),
                           "--rounds", "2", "--seconds", "0.2", "--concurrency", "2", "--threads", "1"],
                          capture_output=True, text=True, env={**os.environ, **OFFLINE_ENV}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ")[0] for line in done.stdout.splitlines() if line.startswith("| ") and "x |" in line]
    assert rows == ["| POST /classify (httpx)", "| V2 REST (tritonclient.http)", "| V2 gRPC (tritonclient.grpc)",
                    "| V2 REST (tritonclient.http)", "| V2 gRPC (tritonclient.grpc)"], done.stdout


@pytest.mark.slow  # a live server
def test_bulk_benchmark_runs(digits_artifact):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bulk.py"), str(digits_artifact), "--images",
                           "16", "--rounds", "1", "--per-request", "4", "--concurrency", "2"],
                          capture_output=True, text=True, env={**os.environ, **OFFLINE_ENV}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ")[0] for line in done.stdout.splitlines() if line.startswith("| ") and "x |" in line]
    assert rows == ["| vitserve classify --out (bulk)", "| vitserve serve, POST /classify (4 per request, 2 clients)",
                    "| plain loop, one image at a time"], done.stdout


# the runs whose tables README and docs/ show: benchmarks/results/ files, one run (one card) each
README_RUNS = [("gpu_swin_h200.json", "gpu_swin_h200_cudagraphs.json"),
               ("gpu_swin_h100-2026-11-27-swin.json", "gpu_swin_h100-2026-11-27-vit.json",
                "gpu_swin_h100-2026-11-27-deit.json"),
               ("gpu_swin_h100-2026-11-27-artifact-swin.json", "gpu_swin_h100-2026-11-27-artifact-vit.json")]


def _gpu_table(*files: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_table.py"),
                           *(str(ROOT / "benchmarks" / "results" / f) for f in files)],
                          capture_output=True, text=True, timeout=60)


def test_readme_gpu_tables_are_the_runs_json():
    """Every GPU timing table in README and docs/ is rows that benchmarks/gpu_table.py prints for one run's JSON
    files (bold aside): a number typed by hand, or a row of another run, fails here. docs/gpu.md shows every run."""
    tables = {run: set(_gpu_table(*run).stdout.splitlines()) for run in README_RUNS}

    def gpu_tables(path) -> list[list[str]]:
        text = path.read_text().replace("**", "")
        return [block.splitlines() for block in text.split("\n\n")
                if block.startswith("| NVIDIA ") and "images/s (batch-1 ms)" in block.splitlines()[0]]

    in_gpu_doc = gpu_tables(ROOT / "docs" / "gpu.md")
    assert len(in_gpu_doc) == len(README_RUNS), [rows[0] for rows in in_gpu_doc]
    found = [*in_gpu_doc, *gpu_tables(ROOT / "README.md")]
    assert len(found) > len(in_gpu_doc), "README's headline GPU table is missing"
    for rows in found:
        assert any(set(rows) <= printed for printed in tables.values()), rows


def test_gpu_table_refuses_mixed_cards_and_doubled_rows():
    mixed = _gpu_table("gpu_swin_h100-2026-11-27-deit.json", "gpu_swin_h200.json")
    assert mixed.returncode != 0 and "one card a table" in mixed.stderr
    doubled = _gpu_table("gpu_swin_h100-2026-11-27-artifact-vit.json", "gpu_swin_h100-2026-11-27-artifact-vit-2.json")
    assert doubled.returncode != 0 and "ViT-B/16, timm eager at batch 1 is in more than one file" in doubled.stderr
