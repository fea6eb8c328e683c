"""Classifying many images into a file (`vitserve classify ARTIFACT SRC... --out FILE`): results stream to the file
one line per image as batches finish, an unreadable image becomes a line with its error instead of stopping the
run, the next batch is decoded while the model runs the current one (at most two batches in memory), and an
interrupted run continues with `resume`: the images already in the file are skipped, each image ends up in it once.

FILE.jsonl is written as it goes. FILE.parquet (needs pyarrow) is streamed to FILE.parquet.partial.jsonl, which
`resume` continues, and written from it once every image is done. The model is any callable (N, C, H, W) ->
(N, classes) logits (a runtime of vitserve.runtimes); nothing here imports one.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from vitserve.artifact import Manifest
from vitserve.errors import VitServeError
from vitserve.preprocess import IMAGE_SUFFIXES, decode_image, draft_side, find_images, transform
from vitserve.scores import softmax, top_k

LIST_SUFFIXES = (".txt", ".lst")  # a file naming one image per line
FORMATS = (".jsonl", ".parquet")


def expand_sources(sources: Iterable[str]) -> list[Path]:
    """Image files from `sources`: files, folders (every image under them, any depth), glob patterns, and list files
    (.txt / .lst, one path per line, relative to the list's folder). In the order given, each path once."""
    paths: list[Path] = []
    for source in sources:
        path = Path(source)
        if any(c in source for c in "*?[") and not path.exists():
            matched = sorted(Path(p) for p in glob.glob(source, recursive=True))
            paths.extend(p for p in matched if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_dir():
            paths.extend(find_images(path))
        elif path.suffix.lower() in LIST_SUFFIXES:
            if not path.is_file():
                raise VitServeError(f"list file {path} does not exist")
            lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
            paths.extend(path.parent / line for line in lines if line and not line.startswith("#"))
        else:
            paths.append(path)  # a file that is not there is reported as that image's error
    return list(dict.fromkeys(paths))


def stream_path(out: Path) -> Path:
    """Where results stream to: FILE.jsonl itself; FILE.parquet.partial.jsonl for parquet."""
    return out if out.suffix == ".jsonl" else out.with_name(out.name + ".partial.jsonl")


def done_paths(stream: Path) -> set[str]:
    """The images a previous run already wrote to `stream`. A last line cut short by an interruption is removed
    from the file (its image is classified again)."""
    if not stream.is_file():
        return set()
    data = stream.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # a line without its newline: written in part when the run stopped
        with open(stream, "r+b") as f:
            f.truncate(end)
    done = set()
    for line in data[:end].splitlines():
        if line.strip():
            done.add(json.loads(line)["path"])
    return done


class Progress:
    """One line on stderr, redrawn at most twice a second: images done of the total, rate, time left."""

    def __init__(self, total: int, skipped: int, stream: TextIO = sys.stderr):
        self.total, self.skipped, self.stream = total, skipped, stream
        self.done, self.errors = 0, 0
        self.started = self.shown = time.monotonic()

    def update(self, images: int, errors: int) -> None:
        self.done += images
        self.errors += errors
        now = time.monotonic()
        if now - self.shown >= 0.5 or self.done == self.total:
            self.shown = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta = f"{left:.0f} s left" if left != float("inf") else "-"
            self.stream.write(f"\r{self.done}/{self.total} images ({self.skipped} done before), "
                              f"{rate:.1f} images/s, {eta}, {self.errors} unreadable ")
            self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _decode(paths: list[Path], manifest: Manifest, min_side: int | None,
            pool: ThreadPoolExecutor) -> tuple[list[Path], np.ndarray | None, list[tuple[Path, str]]]:
    """(paths decoded, their pixels, (path, error) for those that could not be read)."""
    def one(path: Path) -> np.ndarray | str:
        try:
            return transform(decode_image(path.read_bytes(), min_side=min_side), manifest.preprocess)
        except (OSError, VitServeError) as e:
            return f"{type(e).__name__}: {e}" if isinstance(e, OSError) else str(e)

    read, pixels, errors = [], [], []
    for path, result in zip(paths, pool.map(one, paths)):
        if isinstance(result, str):
            errors.append((path, result))
        else:
            read.append(path)
            pixels.append(result)
    return read, (np.stack(pixels) if pixels else None), errors


def _batches(paths: list[Path], size: int, decode: Callable) -> Iterator[tuple]:
    """Decoded batches, the next one decoding in the background while the caller runs the current one."""
    with ThreadPoolExecutor(max_workers=1) as ahead:
        pending = None
        for start in range(0, len(paths), size):
            following = ahead.submit(decode, paths[start:start + size])
            if pending is not None:
                yield pending.result()
            pending = following
        if pending is not None:
            yield pending.result()


def classify_to_file(model: Callable[[np.ndarray], np.ndarray], manifest: Manifest, labels: list[str],
                     paths: list[Path], out: Path, *, k: int = 5, resume: bool = False, batch: int | None = None,
                     fast_jpeg: bool = False, workers: int | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Classifies `paths` into `out` (.jsonl or .parquet) here; returns {"images", "skipped", "errors", "out"}."""
    size = batch or manifest.max_batch
    if not 1 <= size <= manifest.max_batch:
        raise VitServeError(f"--batch {size}: the artifact runs 1 to {manifest.max_batch} images at a time")
    min_side = draft_side(manifest.preprocess) if fast_jpeg else None

    def produce(todo: list[Path]) -> Iterator[list[dict[str, Any]]]:
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for read, pixels, failed in _batches(todo, size, lambda chunk: _decode(chunk, manifest, min_side, pool)):
                rows = [{"path": str(p), "error": message} for p, message in failed]
                if pixels is not None:
                    rows += [{"path": str(path), "top_k": classes}
                             for path, classes in zip(read, top_k(softmax(model(pixels)), labels, k))]
                yield rows

    return write_results(out, paths, produce, resume=resume, show_progress=show_progress)


def check_out(out: Path, resume: bool) -> None:
    """VitServeError for an --out that cannot be written as asked (before any model is loaded)."""
    if out.suffix not in FORMATS:
        raise VitServeError(f"--out {out}: write .jsonl or .parquet")
    if out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise VitServeError("--out FILE.parquet needs pyarrow: pip install pyarrow (or write .jsonl)") from e
    stream = stream_path(out)
    if not resume and (stream.exists() or out.exists()):
        raise VitServeError(f"{stream if stream.exists() else out} exists: pass --resume to continue it, or remove "
                            "it to start again")


def write_results(out: Path, paths: list[Path], produce: Callable[[list[Path]], Iterable[list[dict[str, Any]]]],
                  *, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """The rows `produce` gives for the images of `paths` not yet in `out` (with `resume`), appended to the
    stream file as each group arrives; then the parquet file, for .parquet. Returns the summary."""
    check_out(out, resume)
    stream = stream_path(out)
    done = done_paths(stream) if resume else set()
    todo = [p for p in paths if str(p) not in done]
    progress = Progress(len(todo), len(paths) - len(todo)) if show_progress else None
    errors = 0
    stream.parent.mkdir(parents=True, exist_ok=True)
    with open(stream, "a") as f:
        for rows in produce(todo):
            f.write("".join(json.dumps(row) + "\n" for row in rows))
            f.flush()
            failed = sum("error" in row for row in rows)
            errors += failed
            if progress:
                progress.update(len(rows), failed)
    if progress:
        progress.close()
    if out.suffix == ".parquet":
        _write_parquet(stream, out)
        stream.unlink()
    return {"images": len(todo), "skipped": len(paths) - len(todo), "errors": errors, "out": str(out)}


def _write_parquet(stream: Path, out: Path) -> None:
    """The streamed lines as a parquet table: path, labels, indices, scores (lists, best first), error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in stream.read_text().splitlines() if line.strip()]
    table = pa.table({
        "path": [r["path"] for r in rows],
        "labels": [[c["label"] for c in r.get("top_k", [])] for r in rows],
        "indices": [[c["index"] for c in r.get("top_k", [])] for r in rows],
        "scores": [[c["score"] for c in r.get("top_k", [])] for r in rows],
        "error": [r.get("error") for r in rows],
    })
    partial = out.with_name(out.name + ".writing")
    pq.write_table(table, partial)
    partial.replace(out)
