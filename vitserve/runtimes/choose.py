"""`--backend auto --precision auto`: the fastest runtime and precision that runs the artifact here and passes its
proof, found by a short timing at load.

Which runner is fastest depends on the machine (on an AVX2 CPU onnxruntime or OpenVINO f32, whichever the model
suits; where the CPU computes bf16, usually OpenVINO bf16), so nothing is assumed: every (runtime, precision) of
the registry that can run the artifact's model file is loaded, its proof re-run (Runtime.check_proof), and those
that pass are timed on the same batch, calls interleaved, medians compared. Only the chosen one stays loaded. An
artifact that one runtime alone runs (a torch package, a TensorRT engine) gets that one, untimed.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from vitserve.artifact import read_manifest
from vitserve.errors import ArtifactError, VitServeError
from vitserve.machine import time_interleaved
from vitserve.runtimes import AUTO, RUNTIMES, info, load, made_for, resolve
from vitserve.runtimes.base import Runtime

log = logging.getLogger(__name__)

BATCH = 8  # at most: the artifact's max_batch where smaller
WARM_CALLS, ROUNDS = 2, 5


def candidates(artifact_dir: str | Path) -> list[tuple[str, str]]:
    """Every (runtime, precision) the registry offers for the artifact's model file, the one it was exported for
    first."""
    manifest = read_manifest(artifact_dir)
    first = made_for(manifest)
    ordered = [first, *(info for info in RUNTIMES.values() if info is not first)]
    return [(info.name, precision) for info in ordered if info.can_run(manifest) for precision in info.precisions]


def choose(artifact_dir: str | Path, *, threads: int | None = None, device: str = AUTO, local: bool = False,
           batch: int = BATCH, rounds: int = ROUNDS) -> tuple[Runtime, dict[str, Any]]:
    """The chosen runtime, and the choice: {"chosen", "why", "candidates": [per (runtime, precision): its timing, or
    why it was left out], "proof": the chosen one's proof report}. `local`: each runtime on its device for running
    outside the server (RuntimeInfo.local_device) instead of `device`. When none passes its proof, the runtime the
    artifact was exported for is returned with its failing proof (the server then refuses it, saying why)."""
    pairs = candidates(artifact_dir)
    rows: list[dict[str, Any]] = []
    passing: list[tuple[Runtime, dict[str, Any] | None, dict[str, Any]]] = []
    failing: list[tuple[Runtime, dict[str, Any]]] = []
    for name, precision in pairs:
        row: dict[str, Any] = {"backend": name, "precision": precision}
        rows.append(row)
        try:
            runtime = load(artifact_dir, name, threads=threads, precision=precision,
                           device=RUNTIMES[name].local_device if local else device)
        except ArtifactError as e:
            if len(pairs) == 1:
                raise
            row["left_out"] = str(e)
            continue
        row["description"] = runtime.description
        report = runtime.check_proof()
        row["proof"] = "none" if report is None else "passed" if report["passed"] else "failed"
        if report is not None and not report["passed"]:
            row["left_out"] = report["reason"]
            failing.append((runtime, report))
            continue
        passing.append((runtime, report, row))
    if not passing:
        if not failing:  # nothing loaded: the exported-for runtime's own error
            load(artifact_dir, pairs[0][0], threads=threads, device=device)
        runtime, report = failing[0]
        return runtime, {"chosen": runtime.description, "why": "no runtime passed the artifact's proof here",
                         "candidates": rows, "proof": report}
    if len(passing) == 1:
        runtime, report, row = passing[0]
        why = ("the only runtime for its model file" if len(pairs) == 1 else
               "the only one of the runtimes here that ran the artifact and passed its proof")
        return runtime, {"chosen": runtime.description, "why": why, "candidates": rows, "proof": report}

    manifest = passing[0][0].manifest
    size = min(batch, manifest.max_batch)
    x = np.random.default_rng(0).standard_normal((size, *manifest.input.shape[1:]), dtype=np.float32)
    times = time_interleaved([runtime for runtime, _, _ in passing], x, rounds, WARM_CALLS)
    for (_, _, row), seconds in zip(passing, times):
        row["ms"] = round(statistics.median(seconds) * 1e3, 3)
    best = min(range(len(passing)), key=lambda i: passing[i][2]["ms"])
    runtime, report, row = passing[best]
    others = ", ".join(f"{r['description']} {r['ms']:.1f} ms" for i, (_, _, r) in enumerate(passing) if i != best)
    why = (f"the fastest of {len(passing)} runtimes that ran the artifact and passed its proof here: {row['ms']:.1f} "
           f"ms per batch of {size} (median of {rounds} interleaved calls), against {others}")
    return runtime, {"chosen": runtime.description, "why": why, "batch": size, "rounds": rounds, "candidates": rows,
                     "proof": report}


def load_local(artifact_dir: str | Path, backend: str = AUTO,
               precision: str = AUTO) -> tuple[Runtime, dict[str, Any] | None]:
    """A runtime for running the artifact outside the server (`vitserve classify`, a Ray worker): with `backend` and
    `precision` both auto the one `choose` picks, else the one named on its local device; its proof held, a failing
    one a VitServeError with the proof's reason. Returns the runtime and the choice (None for a named backend)."""
    if backend == AUTO and precision == AUTO:
        runtime, choice = choose(artifact_dir, local=True)
        report = choice["proof"]
    else:
        name = resolve(artifact_dir, backend)
        runtime, choice = load(artifact_dir, name, precision=precision, device=info(name).local_device), None
        report = runtime.check_proof()
    if report is not None and not report["passed"]:
        raise VitServeError(report["reason"])
    return runtime, choice
