"""Bulk classification past one machine, on Ray Data (`pip install 'vitserve[ray]'`; not in the serving image).

`Classifier` is a callable class for `Dataset.map_batches`: each Ray worker loads the artifact once (the runtime
`--backend auto --precision auto` chooses on that worker's machine, or the one named) and classifies batches with
the same decoding and eval transform as `vitserve serve` and `vitserve classify`::

    import ray
    from vitserve.ray import Classifier

    ds = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)   # or ray.data.read_images(...)
    results = ds.map_batches(Classifier, fn_constructor_args=("artifacts/swin_t",), concurrency=4, batch_size=32)

From encoded files (`read_binary_files`: columns `bytes` and `path`) the pixels are exactly those of the other
paths; from `read_images` (column `image`, decoded by Ray) they are the same for images without EXIF rotation.
Output columns: `path`, `top_k` (JSON, as `classify --out` writes it) and `error` (None, or why the file could not
be read). `vitserve classify ... --out FILE --ray [ADDRESS]` runs this on a cluster and writes FILE as the local
run does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vitserve import runtimes
from vitserve.artifact import read_labels
from vitserve.errors import VitServeError
from vitserve.preprocess import decode_image, transform
from vitserve.scores import softmax, top_k


class Classifier:
    """An artifact's classifier for Ray Data's map_batches (one per worker)."""

    def __init__(self, artifact: str, top_k: int = 5, backend: str = runtimes.AUTO,
                 precision: str = runtimes.AUTO):
        from vitserve.runtimes.choose import load_local

        self.model, _ = load_local(artifact, backend, precision)
        self.manifest = self.model.manifest
        self.labels = read_labels(Path(artifact) / self.manifest.labels_file)
        self.k = top_k

    def _pixels(self, batch: dict[str, Any], i: int) -> np.ndarray:
        if "bytes" in batch:
            return transform(decode_image(bytes(batch["bytes"][i])), self.manifest.preprocess)
        from PIL import Image

        return transform(Image.fromarray(np.asarray(batch["image"][i])).convert("RGB"), self.manifest.preprocess)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        count = len(batch["bytes"] if "bytes" in batch else batch["image"])
        paths = [str(p) for p in batch["path"]] if "path" in batch else [""] * count
        pixels, read, errors = [], [], [None] * count
        for i in range(count):
            try:
                pixels.append(self._pixels(batch, i))
                read.append(i)
            except (OSError, VitServeError, ValueError) as e:
                errors[i] = str(e)
        classes: list[str | None] = [None] * count
        for start in range(0, len(read), self.manifest.max_batch):
            chunk = read[start:start + self.manifest.max_batch]
            scores = softmax(self.model(np.stack(pixels[start:start + len(chunk)])))
            for i, row in zip(chunk, top_k(scores, self.labels, self.k)):
                classes[i] = json.dumps(row)
        return {"path": paths, "top_k": classes, "error": errors}


def classify_on_ray(artifact: str, paths: list[Path], *, k: int, batch: int, address: str | None,
                    concurrency: int | None = None, backend: str = runtimes.AUTO, precision: str = runtimes.AUTO,
                    group: int = 256) -> Iterator[list[dict[str, Any]]]:
    """Rows as `classify --out` writes them ({"path", "top_k"} or {"path", "error"}), in groups of `group`,
    computed by `concurrency` Ray workers, each a Classifier with `backend` and `precision` (default: one per two
    CPUs of the cluster), on the cluster at `address` (None: a Ray instance started here). The workers share the
    cluster's CPUs but one, which reads the files. A path Ray cannot read is a row with its error."""
    try:
        import ray
    except ImportError as e:
        raise VitServeError("--ray needs Ray Data: pip install 'vitserve[ray]'") from e
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    cpus = ray.cluster_resources().get("CPU", 1)
    workers = concurrency or max(1, int(cpus) // 2)
    ds = ray.data.read_binary_files([str(p) for p in paths], include_paths=True, ignore_missing_paths=True)
    results = ds.map_batches(Classifier, fn_constructor_args=(str(artifact), k, backend, precision),
                             concurrency=workers, batch_size=batch, num_cpus=max(0.25, (cpus - 1) / workers))
    missing = {str(p) for p in paths}
    rows: list[dict[str, Any]] = []
    for row in results.iter_rows():
        missing.discard(row["path"])
        rows.append({"path": row["path"], "error": row["error"]} if row["error"] is not None else
                    {"path": row["path"], "top_k": json.loads(row["top_k"])})
        if len(rows) >= group:
            yield rows
            rows = []
    rows += [{"path": path, "error": "no such file"} for path in sorted(missing)]
    if rows:
        yield rows
