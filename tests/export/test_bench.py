"""`vitserve bench` on the small shipped model: every runner timed, the baseline in the same run, files written."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, run_cli_here


def test_bench_writes_json_and_chart(tmp_path, digits_artifact):
    out = tmp_path / "bench"
    result = run_cli("bench", str(digits_artifact), "--batch-sizes", "1,4", "--rounds", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    runners = {r["runner"] for r in report["results"]}
    assert {"timm eager (PyTorch)", "onnxruntime f32", "openvino f32"} <= runners
    assert {r["batch"] for r in report["results"]} == {1, 4}
    assert all(r["images_per_s"] > 0 and r["p90_ms"] >= r["median_ms"] * 0.999 for r in report["results"])
    assert all(r["vs_eager"] > 0 for r in report["results"])
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| timm eager (PyTorch) | 1 |" in result.stdout


def test_bench_rejects_bad_arguments(tmp_path):
    result = run_cli_here("bench", "swin_digits", "--batch-sizes", "1,x")
    assert result.returncode == 2 and "comma-separated integers" in result.stderr
    result = run_cli_here("bench", "swin_digits", "--backends", "tensorflow")
    assert result.returncode == 2 and "unknown tensorflow" in result.stderr


def test_eager_baseline_of_an_artifact_of_a_ported_architecture(tmp_path, digits_artifact):
    """The baseline of `vitserve bench ARTIFACT` for an architecture timm lacks is vitserve's port of it, built
    through the same registry as the export (models/architectures/)."""
    import shutil

    import numpy as np

    from vitserve.export.bench import eager_runner

    artifact = tmp_path / "lvvit"
    shutil.copytree(digits_artifact, artifact)
    manifest = json.loads((artifact / "vitserve.json").read_text())
    manifest["architecture"], manifest["weights"] = "lvvit_t", {"source": "random-init"}
    (artifact / "vitserve.json").write_text(json.dumps(manifest))
    logits = eager_runner(artifact, threads=1)(np.zeros((1, 3, 224, 224), dtype=np.float32))
    assert tuple(logits.shape) == (1, 10)


@pytest.mark.slow  # torch.compile
def test_peers_and_vitserves_choice_in_the_same_rounds(tmp_path, digits_artifact):
    """--peers: what a user would pick by hand for the same model, and the runtime `serve` chooses, timed beside the
    rest; the choice's ratio is to the fastest peer at each batch size, as the figures themselves give it."""
    out = tmp_path / "bench"
    result = run_cli("bench", str(digits_artifact), "--peers", "--no-eager", "--backends", "onnxruntime",
                     "--batch-sizes", "2", "--rounds", "2", "--out", str(out))  # one shape: one compile
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "bench.json").read_text())["results"]
    runners = {r["runner"] for r in results}
    assert {"peer: onnxruntime, plain export", "peer: torch.compile"} <= runners
    assert any(r.startswith("peer: OpenVINO from timm (") for r in runners)
    fastest = max((r for r in results if r["runner"].startswith("peer: ")), key=lambda r: r["images_per_s"])
    (auto,) = [r for r in results if r["runner"].startswith("vitserve auto (")]
    assert auto["fastest_peer"] == fastest["runner"]
    assert auto["vs_fastest_peer"] == pytest.approx(auto["images_per_s"] / fastest["images_per_s"])
    assert "the fastest peer |" in result.stdout


@pytest.mark.slow  # an export and an OpenVINO conversion
def test_the_peers_run_the_same_model(digits_artifact):
    """The peers are made from one timm model (random weights), so that the timings compare like with like:
    onnxruntime's plain export and OpenVINO's conversion (at its default precision, bf16 where the CPU has it) agree
    in direction. (torch.compile, which compiles at its first call, runs in the test above.)"""
    import numpy as np

    from vitserve.export.bench import peer_runners
    from vitserve.proof import compare

    peers = {name.split(" (")[0]: run for name, run in peer_runners(digits_artifact, None, max_batch=4).items()}
    assert set(peers) == {"peer: OpenVINO from timm", "peer: onnxruntime, plain export", "peer: torch.compile"}
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    plain = peers["peer: onnxruntime, plain export"](x)
    assert compare(plain, np.asarray(peers["peer: OpenVINO from timm"](x)))["min_cosine"] > 0.99
