"""int8 artifacts of the trained swin_digits model through the accuracy gate, on its held-out split."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from tests.conftest import run_cli, run_cli_here
from vitserve import machine
from vitserve.errors import VitServeError
from vitserve.export.quantize import (
    QuantizationGateError,
    SpeedGateError,
    evaluate,
    quantize_artifact,
    time_against_fp32,
)
from vitserve.models.digits import load_split
from vitserve.runtimes import load as load_backend
from vitserve.runtimes.openvino import cpu_supports_bf16


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory):
    """calib/<label>/*.png from the training split, heldout/<label>/*.png from the held-out split."""
    root = tmp_path_factory.mktemp("digits")
    train_images, train_labels, test_images, test_labels = load_split()
    for name, images, labels in (("calib", train_images[:400], train_labels), ("heldout", test_images, test_labels)):
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / name / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{i}.png")
    return root


@pytest.mark.slow  # quantization and its gate
@pytest.mark.parametrize("method", ["onnxruntime", "openvino"])
def test_int8_passes_the_gate_within_half_a_point(tmp_path, digits_artifact, digit_folders, method):
    out = tmp_path / f"int8-{method}"
    report = quantize_artifact(digits_artifact, digit_folders / "calib", out, method=method, samples=200,
                               eval_dir=digit_folders / "heldout", min_speedup=0, progress=lambda m: None)
    int8 = report["int8"]
    assert int8["images"] == 360
    assert int8["top1_agreement"] >= 0.99
    assert int8["accuracy_drop_points"] <= 0.5
    manifest = json.loads((out / "vitserve.json").read_text())
    assert manifest["quantization"]["int8"] == int8
    speed = manifest["quantization"]["speed"]  # timed, not gated (whether int8 pays here depends on the CPU)
    assert speed["batch"] == 8 and speed["rounds"] == 15 and speed["fp32_ms"] > 0 and speed["int8_ms"] > 0
    assert speed["speedup"] == pytest.approx(speed["fp32_ms"] / speed["int8_ms"], rel=1e-2)
    assert speed["min_speedup"] == 0 and speed["cpu"] and speed["machine"] and isinstance(speed["isa"], list)
    assert manifest["model_file"] == ("model.onnx" if method == "onnxruntime" else "model.xml")
    backend = load_backend(out, method, precision="f32")  # the int8 artifact serves
    assert backend(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)
    if method == "openvino" and cpu_supports_bf16():
        assert report["bf16"]["accuracy_drop_points"] <= 0.3
    if method == "onnxruntime":  # 7-bit weights, which CPUs without VNNI add up without overflow
        import onnx
        from onnx import numpy_helper

        weights = [numpy_helper.to_array(t) for t in onnx.load(str(out / "model.onnx")).graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
        assert len(weights) == 27 and all(np.abs(w.astype(np.int32)).max() <= 64 for w in weights)  # 26 + the stem
        assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) >= 63


def test_gate_refuses_and_writes_nothing(tmp_path, digits_artifact, digit_folders, monkeypatch):
    import vitserve.export.quantize as q

    real = q.evaluate
    monkeypatch.setattr(q, "evaluate", lambda ref, cand, labels: {**real(ref, cand, labels), "top1_agreement": 0.5})
    out = tmp_path / "refused"
    with pytest.raises(QuantizationGateError, match="below the gate of 99.00%"):
        quantize_artifact(digits_artifact, digit_folders / "calib", out, samples=50,
                          eval_dir=digit_folders / "heldout", progress=lambda m: None)
    assert not out.exists() and not any(p.name.startswith(".refused") for p in tmp_path.iterdir())


@pytest.mark.slow  # a quantization
def test_speed_gate_refuses_and_writes_nothing(tmp_path, digits_artifact, digit_folders):
    """An int8 model that passes the accuracy gate but not the speed gate: refused, with both timings, the ratio and
    the CPU in the message, and nothing written."""
    out = tmp_path / "slow"
    with pytest.raises(SpeedGateError) as refused:
        quantize_artifact(digits_artifact, digit_folders / "calib", out, samples=50, eval_dir=digit_folders / "heldout",
                          min_speedup=1000, progress=lambda m: None)
    message = str(refused.value)
    assert re.search(r"int8 runs at [\d.]+x the speed of fp32 in onnxruntime on this CPU \(.*\): fp32 [\d.]+ ms, "
                     r"int8 [\d.]+ ms per batch of 8 \(medians of 15 interleaved calls each\), below --min-speedup "
                     r"1000; nothing was written", message), message
    assert machine.cpu_name() in message and "--min-speedup 0" in message
    assert not out.exists() and not any(p.name.startswith(".slow") for p in tmp_path.iterdir())
    with pytest.raises(VitServeError, match="--min-speedup must be 0 or more"):
        quantize_artifact(digits_artifact, digit_folders / "calib", out, min_speedup=-1, progress=lambda m: None)


def test_speed_is_timed_interleaved_and_the_ratio_points_the_right_way():
    """The faster of two runners gets the ratio above 1 (fp32's median over int8's), both see the same input, and
    calls alternate in which goes first."""
    calls = []

    def runner(name, seconds):
        def run(x):
            calls.append((name, x.shape))
            time.sleep(seconds)
        return run

    x = np.zeros((4, 3, 8, 8), np.float32)
    speed = time_against_fp32(runner("fp32", 0.02), runner("int8", 0.002), x, rounds=4)
    assert speed["speedup"] > 2 and speed["batch"] == 4 and speed["rounds"] == 4
    assert speed["fp32_ms"] >= 20 and speed["int8_ms"] >= 2
    assert {shape for _, shape in calls} == {(4, 3, 8, 8)} and len(calls) == 2 * (2 + 4)
    assert [name for name, _ in calls[4:]] == ["fp32", "int8", "int8", "fp32", "fp32", "int8", "int8", "fp32"]
    assert time_against_fp32(runner("fp32", 0.002), runner("int8", 0.02), x, rounds=2)["speedup"] < 0.5


def test_evaluate_counts_agreement_and_accuracy():
    ref = np.array([[2.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    cand = np.array([[2.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    report = evaluate(ref, cand, np.array([0, 1, 1]))
    assert report["top1_agreement"] == pytest.approx(2 / 3)
    assert report["fp32_accuracy"] == pytest.approx(2 / 3) and report["accuracy"] == pytest.approx(1 / 3)


def test_bad_inputs(tmp_path, digits_artifact, digit_folders):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(VitServeError, match="no readable images"):
        quantize_artifact(digits_artifact, empty, tmp_path / "o", eval_dir=digit_folders / "heldout",
                          progress=lambda m: None)
    with pytest.raises(VitServeError, match="not a directory"):
        quantize_artifact(digits_artifact, tmp_path / "missing", tmp_path / "o", progress=lambda m: None)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "vitserve.json").write_text("{ not json")
    with pytest.raises(VitServeError, match="cannot read"):
        quantize_artifact(corrupt, digit_folders / "calib", tmp_path / "o", progress=lambda m: None)


def test_cli_quantize(tmp_path, digits_artifact, digit_folders):
    out = tmp_path / "cli-int8"
    result = run_cli("quantize", str(digits_artifact), "--calib", str(digit_folders / "calib"), "--samples", "100",
                     "--out", str(out), "--min-speedup", "0")
    assert result.returncode == 0, result.stderr
    assert "top-1 agreement" in result.stdout and "x fp32's speed here" in result.stdout
    assert (out / "model.onnx").is_file()
    # the int8 artifact timed beside the fp32 one, in the same rounds
    result = run_cli("bench", str(digits_artifact), "--also", str(out), "--backends", "onnxruntime", "--no-eager",
                     "--batch-sizes", "2", "--rounds", "2", "--out", str(tmp_path / "bench"))
    assert result.returncode == 0, result.stderr
    runners = {r["runner"] for r in json.loads((tmp_path / "bench" / "bench.json").read_text())["results"]}
    assert runners == {"onnxruntime f32", "onnxruntime int8 (cli-int8)"}
    result = run_cli_here("bench", str(digits_artifact), "--also", str(tmp_path), "--no-eager")
    assert result.returncode == 1 and "vitserve.json" in result.stderr and "Traceback" not in result.stderr
    result = run_cli_here("quantize", str(digits_artifact), "--calib", str(tmp_path / "nothing"))
    assert result.returncode == 1 and "not a directory" in result.stderr and "Traceback" not in result.stderr
