"""`vitserve classify ARTIFACT IMAGE...`: classify image files with an artifact, without a server. The artifact's
proof is re-run first, as the server does, and a runtime that fails it is an error."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitserve import runtimes
from vitserve.cli.common import FAST_JPEG_HELP
from vitserve.errors import VitServeError


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from vitserve.artifact import read_labels
    from vitserve.preprocess import IMAGE_SUFFIXES, decode_image, draft_side, find_images, transform
    from vitserve.scores import softmax, top_k

    if args.backend == runtimes.AUTO and args.precision == runtimes.AUTO:
        from vitserve.runtimes.choose import choose

        model, choice = choose(args.artifact, local=True)
        print(f"backend: {choice['chosen']}, {choice['why']}", file=sys.stderr)
        if choice["proof"] is not None and not choice["proof"]["passed"]:
            raise VitServeError(choice["proof"]["reason"])
    else:
        name = runtimes.resolve(args.artifact, args.backend)
        model = runtimes.load(args.artifact, name, precision=args.precision,
                              device=runtimes.info(name).local_device)
        report = model.check_proof()
        if report is not None and not report["passed"]:
            raise VitServeError(report["reason"])
    manifest = model.manifest
    labels = read_labels(Path(args.artifact) / manifest.labels_file)
    paths = [p for given in map(Path, args.images) for p in (find_images(given) if given.is_dir() else [given])]
    if not paths:
        raise VitServeError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(args.images)}")
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


def add(sub) -> None:
    p = sub.add_parser("classify", help="classify image files with an artifact, without a server")
    p.add_argument("artifact", help="artifact directory written by `vitserve export`")
    p.add_argument("images", nargs="+", help="image files, or folders of them (searched to any depth)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--backend", default="auto", choices=[runtimes.AUTO, *runtimes.NAMES],
                   help="default auto: with --precision auto, the fastest backend and precision here that runs the "
                   "artifact and passes its proof; else the backend the artifact was exported for")
    p.add_argument("--precision", default="auto", choices=runtimes.PRECISIONS, help="openvino only")
    p.add_argument("--fast-jpeg", action="store_true", help=FAST_JPEG_HELP)
    p.set_defaults(func=run)
