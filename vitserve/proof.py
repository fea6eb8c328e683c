"""Proof that travels with an artifact: a few inputs and the fp32 model's answers to them, re-run where it serves.

`vitserve export` writes `proof.npz` into every artifact: two random images and two photographs, as the model's
input tensors (float16, which the reference answers were computed from, so that nothing is lost in storing them),
and the logits the original fp32 PyTorch model gives them. The manifest's `proof` entry says what is there and the
file's SHA-256 is in `files` like every other file's. Before a server calls its model ready, `Runtime.check_proof`
(vitserve/runtimes/base.py) runs the inputs through the runtime, device and precision that will serve, and holds the
answers to the gate of the precision it computes in: the one the export's verification applied (`gate`; fp32: max
|logit difference| within the export's atol and cosine 0.99999; fp16, bf16, fp8: the logits' cosine), or for an int8
artifact the cosine its quantization reached on each set of these inputs, less a margin. A runtime upgrade or a
device that computes differently shows here, before any request.

The comparison and the gate are the export's (export/verify.py uses them); only numpy is needed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PROOF_NAME = "proof.npz"
INPUT_PREFIX, REFERENCE_PREFIX = "input.", "reference."

# Every precision is gated on the logits' direction, which does not depend on their scale. fp32 is also held to
# atol; the difference alone proves nothing where the logits themselves are smaller than atol (timm starts some
# classifiers near zero: a random-init LeViT-128S's logits stay below 1e-4, so logits of zeros would pass).
MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999, "bf16": 0.99, "fp8": 0.98}
# An int8 model's logits on random images are far from fp32's (swin_digits: cosine 0.57, photographs 0.99) and
# depend on its calibration; its gate, per input set, is the lowest cosine `vitserve quantize` measured on that set
# of the proof's inputs, less this margin
INT8_MARGIN = 0.01


def compare(reference: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Logits `got` against `reference`, (N, classes) each: max and mean |difference|, the lowest cosine of an
    image's two logit vectors, the share of images whose top class agrees."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    out = got.reshape(len(got), -1).astype(np.float64)
    diff = np.abs(ref - out)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    both_zero = (np.abs(ref).max(1) == 0) & (np.abs(out).max(1) == 0)  # the same answer, with no direction
    cosine = np.where(both_zero, 1.0, (ref * out).sum(1) / np.maximum(norms, 1e-300))
    return {
        "batch": len(ref),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "min_cosine": float(cosine.min()),
        "top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean()),
    }


def worst(per_input: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """compare()'s reports for several input sets -> each figure at its worst, beside them under "inputs"."""
    stats = per_input.values()
    return {"inputs": per_input, "max_abs_diff": max(s["max_abs_diff"] for s in stats),
            "min_cosine": min(s["min_cosine"] for s in stats),
            "top1_agreement": min(s["top1_agreement"] for s in stats)}


def gate(report: dict[str, Any], dtype: str, atol: float | None, min_cosine: float | None = None) -> str | None:
    """Marks a worst() report passed or not for a model computing in `dtype` (lowest logit cosine at least
    `min_cosine`, by default MIN_COSINE[dtype]; fp32 also max |logit difference| <= atol, reduced precision not, as
    its difference scales with the logits); returns what failed, or None."""
    failures = []
    if dtype == "fp32" and atol is not None:
        report["atol"] = atol
        if report["max_abs_diff"] > atol:
            failures.append(f"max |logit difference| {report['max_abs_diff']:.3g} > atol {atol:g}")
    required = MIN_COSINE[dtype] if min_cosine is None else min_cosine
    report["min_cosine_required"] = required
    if report["min_cosine"] < required:
        failures.append(f"lowest logit cosine {report['min_cosine']:.6f} < {required:g}")
    report["passed"] = not failures
    return None if report["passed"] else f"{'; '.join(failures)} (top-1 agreement {report['top1_agreement']:.1%})"


def write(folder: Path, inputs: dict[str, np.ndarray], references: dict[str, np.ndarray], **record: Any) -> dict:
    """Saves `inputs` (float16) and `references` (float32 logits), by input set name, as folder/proof.npz; returns
    the manifest's `proof` entry: the file, the sets and their sizes, and `record` (atol, ...)."""
    arrays = {**{INPUT_PREFIX + name: x.astype(np.float16) for name, x in inputs.items()},
              **{REFERENCE_PREFIX + name: y.astype(np.float32) for name, y in references.items()}}
    np.savez_compressed(Path(folder) / PROOF_NAME, **arrays)
    return {"file": PROOF_NAME, "inputs": {name: len(x) for name, x in inputs.items()}, **record}


def read(folder: Path, entry: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The proof's inputs (as float32) and reference logits, by input set name."""
    with np.load(Path(folder) / entry["file"]) as saved:
        inputs = {k.removeprefix(INPUT_PREFIX): saved[k].astype(np.float32) for k in saved.files
                  if k.startswith(INPUT_PREFIX)}
        references = {k.removeprefix(REFERENCE_PREFIX): saved[k] for k in saved.files
                      if k.startswith(REFERENCE_PREFIX)}
    return inputs, references


def run(model, inputs: dict[str, np.ndarray], max_batch: int) -> dict[str, np.ndarray]:
    """Every input set through `model` (a runtime), at most max_batch images per call (as the server's batches),
    the outputs concatenated: the export's verification and the proof at load both run artifacts this way."""
    return {name: np.concatenate([model(x[i:i + max_batch]) for i in range(0, len(x), max_batch)])
            for name, x in inputs.items()}
