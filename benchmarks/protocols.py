"""The same server through each of its protocols, side by side: POST /classify, KServe V2 over REST (binary
tensors) and KServe V2 over gRPC.

    python benchmarks/protocols.py ARTIFACT [--rounds 200] [--concurrency 8] [--seconds 3] [--threads N]

One `vitserve serve ARTIFACT --grpc-port P` process on 127.0.0.1. Two payloads: a JPEG photograph as encoded
bytes (the server decodes and preprocesses it), and the preprocessed FP32 tensor (`pixel_values`; /classify does
not take one). Clients are the official ones: tritonclient.http (binary tensor extension) and tritonclient.grpc;
httpx for /classify. Latency: one request at a time, the protocols taking turns every round (median ms over
--rounds). Throughput: --concurrency client threads per protocol in a closed loop, windows of --seconds taking
turns, median images/s over 3 windows each. Clients run on the same machine as the server and take CPU from it, the
same for every protocol. Ratios are to V2 REST.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import skimage.data
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from serve_load import free_port, start_server
from timing import side_by_side

from vitserve.artifact import read_manifest
from vitserve.preprocess import decode_image, transform


def callers(url: str, grpc_url: str, name: str, payload: str, photo: bytes,
            pixels: np.ndarray) -> dict[str, Callable[[], Callable[[], None]]]:
    """protocol -> a factory of one client's request function (each thread makes its own client)."""

    def rest():
        client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)

        def call():
            client.infer(name, [_tensor(httpclient, payload, photo, pixels)])
        return call

    def grpc():
        client = grpcclient.InferenceServerClient(grpc_url)

        def call():
            client.infer(name, [_tensor(grpcclient, payload, photo, pixels)], client_timeout=60)
        return call

    def classify():
        client = httpx.Client(timeout=60)

        def call():
            response = client.post(f"{url}/classify?top_k=1", content=photo, headers={"content-type": "image/jpeg"})
            response.raise_for_status()
        return call

    made = {"V2 REST (tritonclient.http)": rest, "V2 gRPC (tritonclient.grpc)": grpc}
    if payload == "images":
        made = {"POST /classify (httpx)": classify, **made}
    return made


def _tensor(module, payload: str, photo: bytes, pixels: np.ndarray):
    if payload == "images":
        tensor = module.InferInput("images", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([photo], dtype=np.object_))
    else:
        tensor = module.InferInput("pixel_values", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
    return tensor


def throughput(make: Callable[[], Callable[[], None]], concurrency: int, seconds: float) -> float:
    """Requests per second of `concurrency` threads, each calling its own client in a closed loop."""
    calls = [make() for _ in range(concurrency)]
    counts = [0] * concurrency
    stop_at = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop_at:
            calls[i]()
            counts[i] += 1

    began = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None, help="the server's inference threads")
    args = parser.parse_args()

    manifest = read_manifest(args.artifact)
    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buf, format="JPEG", quality=90)
    photo = buf.getvalue()
    pixels = transform(decode_image(photo), manifest.preprocess)[None]
    grpc_port = free_port()
    proc, url = start_server(args.artifact, 8, args.threads, 5.0, ("--grpc-port", str(grpc_port)))
    print(f"{manifest.name}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores; photo "
          f"{len(photo) // 1024} KB JPEG, pixel_values {pixels.nbytes // 1024} KB")
    try:
        for payload in ("images", "pixel_values"):
            made = callers(url, f"127.0.0.1:{grpc_port}", manifest.name, payload, photo, pixels)
            latency = side_by_side({label: make() for label, make in made.items()}, args.rounds)
            rates: dict[str, list[float]] = {label: [] for label in made}
            for window in range(3):
                for label in made if window % 2 == 0 else list(made)[::-1]:
                    rates[label].append(throughput(made[label], args.concurrency, args.seconds))
            rate = {label: statistics.median(r) for label, r in rates.items()}
            base = "V2 REST (tritonclient.http)"
            print(f"\n{payload}: latency at concurrency 1 (median of {args.rounds}), images/s at concurrency "
                  f"{args.concurrency}\n")
            print("| protocol | ms | speed vs REST | images/s | vs REST |\n|---|---|---|---|---|")
            for label in made:
                print(f"| {label} | {latency[label]:.2f} | {latency[base] / latency[label]:.2f}x | "
                      f"{rate[label]:.1f} | {rate[label] / rate[base]:.2f}x |")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
