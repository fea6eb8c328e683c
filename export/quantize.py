"""`vitserve quantize`: an fp32 artifact -> an int8 artifact, admitted only through an accuracy gate.

Two methods:
  - onnxruntime: static QDQ quantization (onnxruntime.quantization.quantize_static), int8 weights per channel,
    uint8 activations calibrated on the given images (MinMax). Only MatMul / Gemm / Conv are quantized: LayerNorm,
    Softmax, GELU and the residual adds stay float, and so does the classifier head (the last MatMul/Gemm).
    Weights use 7 bits of the 8 (reduce_range): on x86 CPUs without VNNI, onnxruntime's uint8 x int8 kernels add
    products in pairs into 16 bits, which full-range weights overflow. Such a CPU may be the one that serves the
    artifact even where the one that quantized it has VNNI (on an AVX2-only CPU, swin_digits' int8 model agreed
    with fp32 on 91.7 % of the held-out digits with 8-bit weights, 100 % with 7-bit).
  - openvino: NNCF post-training quantization with its transformer preset (which keeps LayerNorm, Softmax and
    similar in float), saved as an OpenVINO IR (model.xml / model.bin).

Two gates, and below either the command fails and writes nothing:
  - accuracy: the int8 model against the fp32 artifact on held-out images (never used for calibration): top-1
    agreement and, when the images sit in folders named after the artifact's labels, accuracy of both; at least
    `min_agreement`. For OpenVINO the fp32 model at bf16 inference precision is evaluated the same way (where the
    CPU computes bf16) and reported beside it.
  - speed: int8 against fp32 in the same runtime on this machine, calls interleaved in one run; int8 at least
    `min_speedup` times as fast. Whether int8 pays depends on the CPU (on an AVX2 CPU without VNNI, OpenVINO's int8
    Swin-T ran at 0.35 times fp32's speed), so the measurement and the CPU it was made on are recorded.
The figures go into the new artifact's manifest under "quantization".
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitserve import machine, proof, runtimes
from vitserve.artifact import (
    LABELS_NAME,
    Manifest,
    check_files,
    check_output_dir,
    install_artifact,
    read_labels,
    read_manifest,
    write_manifest,
)
from vitserve.errors import VitServeError
from vitserve.preprocess import decode_image, find_images, transform
from vitserve.runtimes.openvino import cpu_supports_bf16

METHODS = ("onnxruntime", "openvino")
SPEED_ROUNDS = 15  # interleaved fp32 and int8 calls timed by the speed gate, after two of each to warm up
SPEED_BATCH = 8  # at most; the artifact's max_batch where smaller


class QuantizationGateError(VitServeError):
    """The int8 model disagrees with the fp32 model more than the gate allows."""


class SpeedGateError(QuantizationGateError):
    """The int8 model is not enough faster than the fp32 model on this machine."""


@dataclass
class ImageSet:
    paths: list[Path]
    pixels: np.ndarray  # N, C, H, W
    labels: np.ndarray | None  # class index per image, when every image's folder names a class


def load_images(paths: list[Path], manifest: Manifest, labels: list[str], what: str) -> ImageSet:
    """Decodes and preprocesses like the server; unreadable files are skipped, none readable is an error."""
    from tqdm import tqdm

    kept, arrays = [], []
    for path in tqdm(paths, desc=f"images for {what}", unit="img", leave=False):
        try:
            arrays.append(transform(decode_image(path.read_bytes()), manifest.preprocess))
            kept.append(path)
        except (OSError, VitServeError):
            continue
    if not arrays:
        raise VitServeError(f"no readable images for {what} (looked at {len(paths)} files)")
    index = {name: i for i, name in enumerate(labels)}
    classes = [index.get(p.parent.name) for p in kept]
    known = None if any(c is None for c in classes) else np.array(classes)
    return ImageSet(kept, np.stack(arrays), known)


def run_batched(model: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def evaluate(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    ref_top1, top1 = reference.argmax(1), candidate.argmax(1)
    report: dict[str, Any] = {"images": len(ref_top1), "top1_agreement": float((ref_top1 == top1).mean()),
                              "max_abs_logit_diff": float(np.abs(reference - candidate).max())}
    if labels is not None:
        report["fp32_accuracy"] = float((ref_top1 == labels).mean())
        report["accuracy"] = float((top1 == labels).mean())
        report["accuracy_drop_points"] = 100 * (report["fp32_accuracy"] - report["accuracy"])
    return report


def time_against_fp32(fp32: Callable[[np.ndarray], np.ndarray], int8: Callable[[np.ndarray], np.ndarray],
                      x: np.ndarray, rounds: int = SPEED_ROUNDS) -> dict[str, Any]:
    """Median milliseconds per call of each on the batch `x`, the calls interleaved (machine.time_interleaved: which
    goes first alternates per round), so that both see the same machine load; `speedup` is fp32's time over
    int8's."""
    fp32_times, int8_times = machine.time_interleaved([fp32, int8], x, rounds)
    fp32_ms, int8_ms = (statistics.median(times) * 1e3 for times in (fp32_times, int8_times))
    return {"batch": len(x), "rounds": rounds, "fp32_ms": round(fp32_ms, 3), "int8_ms": round(int8_ms, 3),
            "speedup": round(fp32_ms / int8_ms, 3)}


def _head_nodes(model) -> list[str]:
    """Names of the MatMul / Gemm nodes that compute the graph output (the classifier), walking back from it."""
    producers = {out: node for node in model.graph.node for out in node.output}
    frontier = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while frontier:
        node = producers.get(frontier.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("MatMul", "Gemm"):
            return [node.name]
        frontier.extend(node.input)
    return []


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over preprocessed batches."""

    def __init__(self, input_name: str, pixels: np.ndarray, batch: int):
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [{input_name: pixels[i:i + batch]} for i in range(0, len(pixels), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _quantize_onnxruntime(source: Path, target: Path, manifest: Manifest, calib: np.ndarray) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    head = _head_nodes(onnx.load(str(source), load_external_data=False))
    quantize_static(
        str(source), str(target), _CalibrationReader(manifest.input.name, calib, 8),
        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "Conv"], nodes_to_exclude=head,
        calibrate_method=CalibrationMethod.MinMax, reduce_range=True,
    )
    return {"method": "onnxruntime static QDQ, int8 weights per channel (7-bit range), uint8 activations (MinMax)",
            "kept_float": ["LayerNormalization", "Softmax", "GELU", "residual adds", *head]}


def _quantize_openvino(source: Path, target: Path, manifest: Manifest, calib: np.ndarray) -> dict[str, Any]:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(source)
    dataset = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
    quantized = nncf.quantize(model, dataset, subset_size=len(calib), model_type=nncf.ModelType.TRANSFORMER)
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    return {"method": "OpenVINO NNCF post-training quantization, transformer preset"}


def quantize_artifact(
    artifact: Path,
    calib_dir: Path,
    out: Path,
    *,
    method: str = "onnxruntime",
    samples: int = 300,
    eval_dir: Path | None = None,
    min_agreement: float = 0.99,
    min_speedup: float = 1.1,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Writes the int8 artifact to `out` and returns its quantization report; QuantizationGateError below the
    accuracy gate, SpeedGateError below the speed gate (`min_speedup` 0: timed and recorded, never refused)."""
    if method not in METHODS:
        raise VitServeError(f"unknown quantization backend {method!r}; choose one of {', '.join(METHODS)}")
    if samples < 1:
        raise VitServeError(f"--samples must be at least 1, got {samples}")
    if min_speedup < 0:
        raise VitServeError(f"--min-speedup must be 0 or more, got {min_speedup}")
    manifest = read_manifest(artifact)
    check_files(artifact, manifest)
    if not manifest.model_file.endswith(".onnx") or manifest.package.get("dtype", "fp32") != "fp32":
        what = manifest.package.get("dtype", manifest.model_file)
        raise VitServeError(f"{artifact} is not an fp32 ONNX artifact ({what}); quantize the fp32 artifact that "
                            "`vitserve export` writes without --dtype")
    labels = read_labels(artifact / manifest.labels_file)
    check_output_dir(out)
    files = find_images(calib_dir)
    random.Random(0).shuffle(files)
    if eval_dir is None:  # hold out a quarter of the calibration folder for the gate
        held = max(1, len(files) // 4)
        eval_files, files = files[:held], files[held:]
    else:
        eval_files = find_images(eval_dir)
    progress(f"reading {min(samples, len(files))} calibration images from {calib_dir}")
    calib = load_images(files[:samples], manifest, labels, f"calibration in {calib_dir}")
    progress(f"reading {len(eval_files)} held-out images for the accuracy gate")
    held_out = load_images(eval_files, manifest, labels, "the accuracy gate")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model_file = "model.onnx" if method == "onnxruntime" else "model.xml"
        progress(f"quantizing with {method} on {len(calib.pixels)} images")
        quantize = _quantize_onnxruntime if method == "onnxruntime" else _quantize_openvino
        details = quantize(artifact / manifest.model_file, tmp / model_file, manifest, calib.pixels)
        shutil.copy(artifact / manifest.labels_file, tmp / LABELS_NAME)
        if manifest.proof:
            shutil.copy(artifact / manifest.proof["file"], tmp / manifest.proof["file"])
        q_manifest = Manifest(**{**manifest.__dict__, "model_file": model_file, "labels_file": LABELS_NAME})
        write_manifest(tmp, q_manifest)

        progress("evaluating int8 against fp32 on the held-out images")
        batch = manifest.max_batch
        fp32_backend = runtimes.load(artifact, "onnxruntime", device="cpu")
        fp32 = run_batched(fp32_backend, held_out.pixels, batch)
        int8_backend = runtimes.load(tmp, method, device="cpu", precision="f32")
        report: dict[str, Any] = {
            **details, "backend": method, "calibration_images": len(calib.pixels), "min_agreement": min_agreement,
            "int8": evaluate(fp32, run_batched(int8_backend, held_out.pixels, batch), held_out.labels),
        }
        if method == "openvino" and cpu_supports_bf16():
            bf16 = runtimes.load(artifact, "openvino", precision="bf16")
            report["bf16"] = evaluate(fp32, run_batched(bf16, held_out.pixels, batch), held_out.labels)
        agreement = report["int8"]["top1_agreement"]
        progress("  int8: top-1 agreement {:.2%}{}".format(agreement, "" if held_out.labels is None else
                 f", accuracy {report['int8']['accuracy']:.2%} (fp32 {report['int8']['fp32_accuracy']:.2%})"))
        if "bf16" in report:
            progress(f"  bf16: top-1 agreement {report['bf16']['top1_agreement']:.2%}")
        if agreement < min_agreement:
            raise QuantizationGateError(
                f"int8 top-1 agreement with fp32 is {agreement:.2%} on {len(held_out.pixels)} held-out images, "
                f"below the gate of {min_agreement:.2%}; nothing was written. Try more --samples, the other "
                "--backend, or keep the fp32 artifact.")

        progress(f"timing int8 against fp32 in {method} on this machine")
        fp32_same_runtime = fp32_backend if method == "onnxruntime" else \
            runtimes.load(artifact, method, device="cpu", precision="f32")
        batch_x = np.resize(held_out.pixels, (min(SPEED_BATCH, batch), *held_out.pixels.shape[1:]))
        speed = {**time_against_fp32(fp32_same_runtime, int8_backend, batch_x), "min_speedup": min_speedup,
                 **machine.describe()}
        report["speed"] = speed
        timing = (f"fp32 {speed['fp32_ms']:.1f} ms, int8 {speed['int8_ms']:.1f} ms per batch of {speed['batch']} "
                  f"(medians of {speed['rounds']} interleaved calls each)")
        progress(f"  int8 runs at {speed['speedup']:.2f}x fp32's speed: {timing}")
        if speed["speedup"] < min_speedup:
            raise SpeedGateError(
                f"int8 runs at {speed['speedup']:.2f}x the speed of fp32 in {method} on this CPU "
                f"({machine.summary()}): {timing}, below --min-speedup {min_speedup:g}; nothing was written. Serve "
                "the fp32 artifact here (int8 pays on CPUs with VNNI or AMX), or pass --min-speedup 0 to write the "
                "int8 artifact anyway.")
        if manifest.proof:  # what int8 gives on the proof's inputs: the floor a server holds this artifact to
            inputs, references = proof.read(artifact, manifest.proof)
            outputs = proof.run(int8_backend, inputs, batch)
            q_manifest.proof = {**manifest.proof, "dtype": "int8", "atol": None, "int8_min_cosine": {
                name: round(proof.compare(references[name], outputs[name])["min_cosine"], 6) for name in references}}
        q_manifest.quantization = report
        write_manifest(tmp, q_manifest)
        install_artifact(tmp, out)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
