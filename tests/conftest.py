"""Shared fixtures. Everything runs offline: random-init or the bundled swin_digits weights, never the hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A port nothing listens on: the hub is "unreachable" at once, on any machine, without waiting for DNS.
OFFLINE_ENV = {"HF_ENDPOINT": "http://127.0.0.1:9", "VITSERVE_HUB_TIMEOUT": "1"}


MAX_WORKERS = 4  # each worker exports its own copy of the session's artifacts and runs torch on every core


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject.toml's default): a worker per core, at most MAX_WORKERS."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def pytest_collection_modifyitems(config, items) -> None:
    """Longest first: the slow tests that say how long they take (`@pytest.mark.slow(minutes=N)`), then the other
    slow ones, then the rest, each in collection order. Each worker takes the next test as it finishes one (xdist's
    loadgroup keeps this order, groups first), so the long ones start at once and the short ones fill the end,
    instead of one long test running alone at the end while the other workers wait."""
    def minutes(item) -> float:
        slow = item.get_closest_marker("slow")
        return 0 if slow is None else slow.kwargs.get("minutes", 0.5)

    items.sort(key=minutes, reverse=True)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m vitserve ARGS` in a fresh process; returns the completed process (never raises)."""
    full_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    return subprocess.run([sys.executable, "-m", "vitserve", *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=900)


def run_cli_here(*args: str) -> subprocess.CompletedProcess:
    """`vitserve ARGS` in this process (main(), its output captured): for errors found before a model is built or
    loaded, without a fresh process's imports. Returns what run_cli returns."""
    import contextlib
    import io

    from vitserve.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return subprocess.CompletedProcess(["vitserve", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def digits_artifact(tmp_path_factory) -> Path:
    """swin_digits exported once (with the rewrite) for every test that needs an artifact."""
    from vitserve.export.pipeline import ExportOptions, export_artifact
    from vitserve.models.build import build_model
    from vitserve.models.catalogue import SPECS

    out = tmp_path_factory.mktemp("artifacts") / "swin_digits"
    export_artifact(build_model(SPECS["swin_digits"]), ExportOptions(out=out, max_batch=64), progress=lambda m: None)
    return out


@pytest.fixture(scope="session")
def drifting_artifact(digits_artifact, tmp_path_factory) -> Path:
    """The digits artifact carrying the proof of the same network with every weight moved by 1 % of its size (its
    checksums rewritten to match): every runtime answers unlike that proof's reference logits, as a runtime that
    computes differently would; beyond fp32's atol, within bf16's cosine gate."""
    import shutil

    import torch

    from vitserve import proof
    from vitserve.artifact import read_manifest, write_manifest
    from vitserve.models.build import build_model
    from vitserve.models.catalogue import SPECS

    folder = tmp_path_factory.mktemp("drifting") / "swin_digits"
    shutil.copytree(digits_artifact, folder)
    manifest = read_manifest(folder)
    inputs, _ = proof.read(folder, manifest.proof)
    model = build_model(SPECS["swin_digits"]).model
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.01 * torch.randn(p.shape, generator=generator))
        references = {name: model(torch.from_numpy(x)).numpy() for name, x in inputs.items()}
    kept = {k: v for k, v in manifest.proof.items() if k not in ("file", "inputs")}
    manifest.proof = proof.write(folder, inputs, references, **kept)
    write_manifest(folder, manifest)
    return folder
