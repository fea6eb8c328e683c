"""Bulk classification (vitserve/bulk.py, `vitserve classify ... --out FILE`): sources expanded, every image once in
the file with the server's answer or its error, an interrupted run continued by --resume."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ROOT, run_cli, run_cli_here
from vitserve import runtimes
from vitserve.artifact import read_labels
from vitserve.bulk import classify_to_file, done_paths, expand_sources
from vitserve.errors import VitServeError
from vitserve.server.app import create_app
from vitserve.server.settings import Settings

EXAMPLES = ROOT / "examples"


@pytest.fixture
def images(tmp_path):
    """30 digit images in nested folders, and one file that is not an image."""
    folder = tmp_path / "images"
    for i in range(30):
        target = folder / f"set{i % 3}" / f"digit_{i:02d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLES / f"digit_{i % 10}.png", target)
    (folder / "set0" / "broken.png").write_bytes(b"not a png")
    return folder


def test_sources_are_files_folders_globs_and_lists(images, tmp_path):
    listed = tmp_path / "list.txt"
    listed.write_text("# two of them\nimages/set1/digit_01.png\n\nimages/set2/digit_02.png\n")
    paths = expand_sources([str(images / "set0" / "digit_00.png"), str(images / "set1" / "*.png"), str(listed),
                            str(images / "set2"), str(tmp_path / "missing.png")])
    assert paths[0] == images / "set0" / "digit_00.png"
    assert paths[1:11] == sorted((images / "set1").glob("*.png"))
    assert images / "set2" / "digit_02.png" in paths and paths.count(images / "set1" / "digit_01.png") == 1
    assert paths[-1] == tmp_path / "missing.png"  # reported as its image's error, not skipped
    assert len(paths) == 1 + 10 + 1 + 9 + 1  # set2's digit_02 came from the list already
    with pytest.raises(VitServeError, match="list file .* does not exist"):
        expand_sources([str(tmp_path / "none.txt")])


def _run(artifact, paths, out, **kwargs):
    model = runtimes.load(artifact, "onnxruntime")
    labels = read_labels(artifact / model.manifest.labels_file)
    return classify_to_file(model, model.manifest, labels, paths, out, show_progress=False, **kwargs)


def test_every_image_once_with_the_servers_answer_or_its_error(digits_artifact, images, tmp_path):
    paths = expand_sources([str(images)])
    out = tmp_path / "results.jsonl"
    summary = _run(digits_artifact, paths, out, k=3, batch=4)
    assert summary == {"images": 31, "skipped": 0, "errors": 1, "out": str(out)}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == sorted(map(str, paths))
    (broken,) = [r for r in rows if "error" in r]
    assert broken["path"].endswith("broken.png") and "not a readable image" in broken["error"]
    with TestClient(create_app(Settings(artifact=digits_artifact, backend="onnxruntime"))) as client:
        for row in rows[:6]:
            if "top_k" in row:
                served = client.post("/classify?top_k=3", content=open(row["path"], "rb").read(),
                                     headers={"content-type": "image/png"}).json()["results"][0]["predictions"]
                assert [c["index"] for c in row["top_k"]] == [c["index"] for c in served]
                assert [c["score"] for c in row["top_k"]] == pytest.approx([c["score"] for c in served], abs=1e-6)
    with pytest.raises(VitServeError, match="exists: pass --resume"):
        _run(digits_artifact, paths, out)


def test_resume_after_a_cut_line_classifies_the_rest_once(digits_artifact, images, tmp_path):
    paths = expand_sources([str(images)])
    out = tmp_path / "results.jsonl"
    _run(digits_artifact, paths, out, batch=8)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:10]) + lines[10][:25])  # stopped while writing line 11
    assert len(done_paths(out)) == 10 and out.read_text().count("\n") == 10  # the cut line is dropped
    out.write_text("".join(lines[:10]) + lines[10][:25])
    summary = _run(digits_artifact, paths, out, resume=True, batch=8)
    assert summary["skipped"] == 10 and summary["images"] == 21
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == sorted(map(str, paths))


def test_parquet_has_a_row_per_image(digits_artifact, images, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "results.parquet"
    _run(digits_artifact, expand_sources([str(images)]), out, k=2)
    table = pq.read_table(out).to_pydict()
    assert set(table) == {"path", "labels", "indices", "scores", "error"} and len(table["path"]) == 31
    assert sum(e is not None for e in table["error"]) == 1
    assert all(len(s) == 2 and s[0] >= s[1] for s, e in zip(table["scores"], table["error"]) if e is None)
    assert not (tmp_path / "results.parquet.partial.jsonl").exists()


def test_cli_options_that_need_out(digits_artifact):
    result = run_cli_here("classify", str(digits_artifact), str(EXAMPLES), "--resume")
    assert result.returncode == 1 and "--resume, --batch and --ray go with --out FILE" in result.stderr
    result = run_cli_here("classify", str(digits_artifact), str(EXAMPLES), "--out", "x.csv")
    assert result.returncode == 1 and "write .jsonl or .parquet" in result.stderr


@pytest.mark.slow  # a process killed midway and run again
def test_killed_midway_and_resumed_every_image_once(digits_artifact, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1500):
        shutil.copy(EXAMPLES / f"digit_{i % 10}.png", folder / f"{i:04d}.png")
    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "vitserve", "classify", str(digits_artifact), str(folder), "--out", str(out),
               "--backend", "onnxruntime", "--batch", "16"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while (not out.exists() or out.read_text().count("\n") < 100) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = out.read_text().count("\n")
    assert 100 <= written < 1500, written  # stopped midway
    result = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{written} were there already" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1500 and len({r["path"] for r in rows}) == 1500
    assert all(r["top_k"][0]["label"] == r["path"][-5] for r in rows)  # 0007.png is a 7


@pytest.mark.slow  # a Ray instance
def test_ray_gives_the_answers_of_the_local_run(digits_artifact, images, tmp_path):
    """`classify --ray` on a local Ray instance with 2 workers (vitserve.ray.Classifier in map_batches): every
    image once, the same labels and scores as the run in one process, the unreadable file and a missing one as
    rows with their errors."""
    sources = [str(images), str(tmp_path / "gone.png")]
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    common = ["--backend", "onnxruntime", "--top-k", "3"]
    result = run_cli("classify", str(digits_artifact), *sources, "--out", str(local), *common)
    assert result.returncode == 0, result.stderr
    result = run_cli("classify", str(digits_artifact), *sources, "--out", str(on_ray), "--ray", "--workers", "2",
                     "--batch", "8", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote 32 images" in result.stdout and "(2 unreadable)" in result.stdout

    def rows(path):
        return {r["path"]: r for r in map(json.loads, path.read_text().splitlines())}

    here, there = rows(local), rows(on_ray)
    assert set(here) == set(there) and len(there) == 32
    for path, row in here.items():
        if "error" in row:
            assert "error" in there[path]
        else:
            assert [c["index"] for c in there[path]["top_k"]] == [c["index"] for c in row["top_k"]]
            assert [c["score"] for c in there[path]["top_k"]] == pytest.approx([c["score"] for c in row["top_k"]],
                                                                               abs=1e-6)
