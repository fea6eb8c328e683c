"""Many images, three ways, in one run: `vitserve classify --out` (bulk), the server over HTTP, a plain loop.

    python benchmarks/bulk.py ARTIFACT [--images 64] [--per-request 8] [--concurrency 4] [--rounds 3]
                              [--backend onnxruntime]

- bulk: vitserve.bulk.classify_to_file, as `vitserve classify ARTIFACT FOLDER --out FILE.jsonl` runs it (batches
  of the artifact's max_batch, the next batch decoded on every core while the model runs the current one);
- server: one `vitserve serve ARTIFACT` process on 127.0.0.1, --concurrency client threads posting --per-request
  images per POST /classify until all are done (the clients share the machine with the server);
- loop: what a script does by hand: read, decode, preprocess and run one image at a time.

All three use the same runtime (--backend; the comparison is of the pipelines around it) and the same images: JPEGs
of about 500x375 made from scikit-image's photographs. The ways take turns for --rounds rounds (the order
alternating); each figure is the median images/s over the rounds, with the ratio to the plain loop.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import skimage.data
from PIL import Image
from serve_load import start_server

from vitserve import machine, runtimes
from vitserve.artifact import read_labels
from vitserve.bulk import classify_to_file
from vitserve.preprocess import decode_image, transform
from vitserve.scores import softmax, top_k

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field")


def make_images(folder: Path, count: int) -> list[Path]:
    """`count` JPEGs of about 500x375 (quality 90), cycling through the photographs."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((500, 375)) for name in PHOTOS]
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        photos[i % len(photos)].save(path, quality=90 - i % 5)  # not byte-identical files
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--per-request", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="onnxruntime")
    args = parser.parse_args()

    model = runtimes.load(args.artifact, args.backend, device="cpu" if args.backend == "onnxruntime" else "auto")
    manifest = model.manifest
    labels = read_labels(args.artifact / manifest.labels_file)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp) / "images", args.images)
        server, url = start_server(args.artifact, manifest.max_batch, None, 5.0, ("--backend", args.backend))
        try:
            def bulk() -> None:
                out = Path(tmp) / "bulk.jsonl"
                out.unlink(missing_ok=True)
                classify_to_file(model, manifest, labels, paths, out, show_progress=False)

            def over_http() -> None:
                todo = [paths[i:i + args.per_request] for i in range(0, len(paths), args.per_request)]
                lock = threading.Lock()

                def client() -> None:
                    with httpx.Client(timeout=300) as http:
                        while True:
                            with lock:
                                if not todo:
                                    return
                                chunk = todo.pop()
                            files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in chunk]
                            response = http.post(f"{url}/classify", files=files)
                            response.raise_for_status()

                threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()

            def plain_loop() -> None:
                for path in paths:
                    x = transform(decode_image(path.read_bytes()), manifest.preprocess)
                    top_k(softmax(model(x[None])), labels, 5)

            ways = {"vitserve classify --out (bulk)": bulk,
                    f"vitserve serve, POST /classify ({args.per_request} per request, {args.concurrency} clients)":
                        over_http,
                    "plain loop, one image at a time": plain_loop}
            plain_loop()  # warm-up
            rates: dict[str, list[float]] = {name: [] for name in ways}
            names = list(ways)
            for r in range(args.rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    started = time.perf_counter()
                    ways[name]()
                    rates[name].append(len(paths) / (time.perf_counter() - started))
        finally:
            server.terminate()
            server.wait()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    loop = medians["plain loop, one image at a time"]
    print(f"{manifest.name} ({model.description}), {args.images} JPEGs of 500x375, {machine.summary()}, median of "
          f"{args.rounds} rounds\n")
    print("| way | images/s | vs the plain loop |\n|---|---|---|")
    for name, rate in medians.items():
        print(f"| {name} | {rate:.1f} | {rate / loop:.2f}x |")


if __name__ == "__main__":
    main()
