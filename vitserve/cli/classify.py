"""`vitserve classify ARTIFACT SRC...`: classify image files with an artifact, without a server: printed, or with
`--out FILE.jsonl|.parquet` streamed to a file that `--resume` continues (vitserve/bulk.py). The artifact's proof is
re-run first, as the server does, and a runtime that fails it is an error."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

from vitserve import runtimes
from vitserve.cli.common import FAST_JPEG_HELP
from vitserve.errors import VitServeError


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from vitserve.artifact import read_labels
    from vitserve.bulk import check_out, classify_to_file, expand_sources, write_results
    from vitserve.preprocess import IMAGE_SUFFIXES, decode_image, draft_side, transform
    from vitserve.scores import softmax, top_k

    if (args.resume or args.batch or args.ray is not None) and not args.out:
        raise VitServeError("--resume, --batch and --ray go with --out FILE")
    if args.out:
        check_out(Path(args.out), args.resume)
    if args.ray is not None:
        from vitserve.ray import classify_on_ray

        paths = expand_sources(args.images)
        rows = partial(classify_on_ray, args.artifact, k=args.top_k, batch=args.batch or 32,
                       address=args.ray or None, concurrency=args.workers, backend=args.backend,
                       precision=args.precision)
        return _summary(write_results(Path(args.out), paths, rows, resume=args.resume))
    from vitserve.runtimes.choose import load_local

    model, choice = load_local(args.artifact, args.backend, args.precision)
    if choice:
        print(f"backend: {choice['chosen']}, {choice['why']}", file=sys.stderr)
    manifest = model.manifest
    labels = read_labels(Path(args.artifact) / manifest.labels_file)
    paths = expand_sources(args.images)
    if not paths:
        raise VitServeError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(args.images)}")
    if args.out:
        return _summary(classify_to_file(model, manifest, labels, paths, Path(args.out), k=args.top_k,
                                         resume=args.resume, batch=args.batch, fast_jpeg=args.fast_jpeg))

    min_side = draft_side(manifest.preprocess) if args.fast_jpeg else None

    def read(path: Path) -> np.ndarray:
        try:
            return transform(decode_image(path.read_bytes(), min_side=min_side), manifest.preprocess)
        except (OSError, VitServeError) as e:
            raise VitServeError(f"cannot read image {path}: {e}") from e

    results = []  # one batch at a time in memory, printed as it is done
    for start in range(0, len(paths), manifest.max_batch):
        chunk = paths[start:start + manifest.max_batch]
        classes = top_k(softmax(model(np.stack([read(p) for p in chunk]))), labels, args.top_k)
        results.extend({"image": str(p), "top_k": c} for p, c in zip(chunk, classes))
        if not args.json:
            for path, image_classes in zip(chunk, classes):
                print(f"{path}:")
                for c in image_classes:
                    print(f"  {c['score']:7.2%}  {c['label']} ({c['index']})")
    if args.json:
        print(json.dumps({"model": manifest.name, "results": results}, indent=2))
    return 0


def _summary(summary: dict) -> int:
    skipped = f", {summary['skipped']} were there already" if summary["skipped"] else ""
    print(f"wrote {summary['images']} images to {summary['out']} ({summary['errors']} unreadable{skipped})")
    return 0


def add(sub) -> None:
    p = sub.add_parser("classify", help="classify image files with an artifact, without a server")
    p.add_argument("artifact", help="artifact directory written by `vitserve export`")
    p.add_argument("images", nargs="+", metavar="SRC", help="image files, folders of them (searched to any depth), "
                   "glob patterns ('photos/**/*.jpg'), or list files (.txt, .lst: one path per line)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--backend", default="auto", choices=[runtimes.AUTO, *runtimes.NAMES],
                   help="default auto: with --precision auto, the fastest backend and precision here that runs the "
                   "artifact and passes its proof; else the backend the artifact was exported for")
    p.add_argument("--precision", default="auto", choices=runtimes.PRECISIONS, help="openvino only")
    p.add_argument("--fast-jpeg", action="store_true", help=FAST_JPEG_HELP)
    p.add_argument("--out", metavar="FILE", help="stream the results to FILE.jsonl or FILE.parquet (pyarrow), one "
                   "row per image, unreadable images as rows with their error, progress on stderr")
    p.add_argument("--resume", action="store_true", help="with --out: continue an interrupted run, skipping the "
                   "images already in FILE")
    p.add_argument("--batch", type=int, metavar="N", help="with --out: images per model call (default: the "
                   "artifact's max_batch; with --ray, 32 per Ray batch)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="with --out: classify on a Ray cluster "
                   "(ADDRESS, e.g. ray://head:10001; none: a Ray instance started here), each worker loading the "
                   "artifact once (vitserve.ray.Classifier); needs 'vitserve[ray]'")
    p.add_argument("--workers", type=int, metavar="N", help="with --ray: Ray workers (default: one per two CPUs)")
    p.set_defaults(func=run)
