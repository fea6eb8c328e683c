"""Closed-loop load on `vitserve serve` over loopback: batching on vs off, against the raw backend, side by side.

    python benchmarks/serve_load.py ARTIFACT [--concurrency 1,8,32] [--seconds 10] [--max-batch-size 8]

For each server mode (dynamic batching with --max-batch-size, and batching off = --max-batch-size 1) a fresh
`vitserve serve` process is started on 127.0.0.1; N clients each send one image, wait for the answer and send the
next (closed loop) for a fixed time. The clients are `wrk` (Debian package `wrk`; a light C load generator) when it
is installed, else Python threads with httpx, which take noticeably more of the machine's CPU. Printed per row:
throughput (images/s), p50 and p99 latency. Beside them, the raw backend in this process (onnxruntime on
preprocessed tensors, no HTTP, no decode) at batch 1 and at --max-batch-size, and the decode + preprocess time of
the image: the server's ceiling and its overhead. Everything is bounded (--seconds per row) and stays on 127.0.0.1.
The load generator shares the machine with the server, so on few cores it takes CPU time from it; the ratios are
measured under that same condition.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from vitserve.artifact import read_manifest
from vitserve.server.backends import OnnxRuntimeBackend
from vitserve.server.preprocess import decode_image, transform

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifact: Path, max_batch_size: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "vitserve", "serve", str(artifact), "--port", str(port),
            "--max-batch-size", str(max_batch_size), "--max-queue", "1024"]
    if threads:
        args += ["--threads", str(threads)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


WRK_SCRIPT = """
local f = io.open(os.getenv("VITSERVE_BENCH_IMAGE"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
wrk.headers["Content-Type"] = "image/jpeg"
f:close()
"""
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def wrk_loop(url: str, image: bytes, concurrency: int, seconds: float) -> tuple[float, dict[str, float], int]:
    """(requests/s, {"p50", "p99"} in s, non-2xx count) measured by wrk with `concurrency` connections."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "image").write_bytes(image)
        (Path(tmp) / "post.lua").write_text(WRK_SCRIPT)
        out = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "--latency", "--timeout", "60s",
             "-s", str(Path(tmp) / "post.lua"), f"{url}/classify?top_k=1"],
            capture_output=True, text=True, check=True, env={**os.environ, "VITSERVE_BENCH_IMAGE": f"{tmp}/image"},
        ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = {}
    for q in ("50", "99"):
        value, unit = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s|m)", out).groups()
        latency[f"p{q}"] = float(value) * UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rate, latency, int(errors.group(1)) if errors else 0


def closed_loop(url: str, image: bytes, concurrency: int, seconds: float) -> tuple[float, list[float], int]:
    """(images/s, latencies in s, errors) for `concurrency` client threads sending one image at a time."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        nonlocal errors
        with httpx.Client(timeout=60) as c:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                r = c.post(f"{url}/classify?top_k=1", content=image, headers={"content-type": "image/png"})
                elapsed = time.perf_counter() - started
                with lock:
                    if r.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors += 1

    began = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(latencies) / (time.perf_counter() - began), latencies, errors


def http_round_trip_ms(url: str, count: int = 200) -> float:
    """p50 of GET /healthz: what HTTP and this client cost on their own."""
    times = []
    with httpx.Client(timeout=10) as c:
        for _ in range(count):
            started = time.perf_counter()
            c.get(f"{url}/healthz")
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def server_overhead_ms(url: str, image: bytes, count: int = 100) -> float:
    """p50 of the server's own total minus decode minus inference (its timings_ms): queueing and handling."""
    values = []
    with httpx.Client(timeout=10) as c:
        for _ in range(count):
            t = c.post(f"{url}/classify?top_k=1", content=image, headers={"content-type": "image/png"}).json()
            t = t["timings_ms"]
            values.append(t["total"] - t["decode"] - t["inference"])
    return statistics.median(values)


def raw_throughput(backend: OnnxRuntimeBackend, x: np.ndarray, seconds: float) -> float:
    backend(x)
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        backend(x)
        count += len(x)
    return count / (time.perf_counter() - began)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--image", type=Path, default=None, help="image to send (default: a 35 KB JPEG photo)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="server inference threads (default: all)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    manifest = read_manifest(args.artifact)
    if args.image is not None:
        image = args.image.read_bytes()
    else:
        import io

        import skimage.data
        from PIL import Image

        buf = io.BytesIO()  # a 451x300 photograph as a camera or browser would send it
        Image.fromarray(skimage.data.chelsea()).save(buf, format="JPEG", quality=90)
        image = buf.getvalue()

    decode_times = []
    for _ in range(20):
        started = time.perf_counter()
        pixels = transform(decode_image(image), manifest.preprocess)
        decode_times.append(time.perf_counter() - started)
    decode_ms = statistics.median(decode_times) * 1e3

    # the raw backend is measured before and after the server rows, and averaged: the machine's speed drifts
    backend = OnnxRuntimeBackend(args.artifact, threads=args.threads)
    raw_sizes = sorted({1, args.max_batch_size})
    raw_before = {b: raw_throughput(backend, np.repeat(pixels[None], b, axis=0), args.seconds / 2) for b in raw_sizes}
    rows = []
    overhead: dict[str, float] = {}
    for label, batch in ((f"batching on (max {args.max_batch_size})", args.max_batch_size), ("batching off", 1)):
        proc, url = start_server(args.artifact, batch, args.threads)
        try:
            if batch > 1:
                overhead = {"http": http_round_trip_ms(url), "server": server_overhead_ms(url, image)}
            for c in levels:
                if shutil.which("wrk"):
                    ips, lat, errors = wrk_loop(url, image, c, args.seconds)
                    rows.append((label, c, ips, lat["p50"] * 1e3, lat["p99"] * 1e3, errors))
                else:
                    ips, lat, errors = closed_loop(url, image, c, args.seconds)
                    rows.append((label, c, ips, percentile(lat, 0.5) * 1e3, percentile(lat, 0.99) * 1e3, errors))
                print(f"  {label:<24} c={c:<3} {ips:8.1f} img/s  p50 {rows[-1][3]:7.1f} ms  p99 {rows[-1][4]:7.1f} ms"
                      f"  errors {errors}", flush=True)
        finally:
            proc.terminate()
            proc.wait(60)

    raw_after = {b: raw_throughput(backend, np.repeat(pixels[None], b, axis=0), args.seconds / 2) for b in raw_sizes}
    raw = {b: (raw_before[b] + raw_after[b]) / 2 for b in raw_sizes}
    raw_b1_ms = 1e3 / raw[1]

    client = "wrk" if shutil.which("wrk") else "httpx threads"
    print(f"\n{manifest.name}: {os.cpu_count()} cores, load from {client}; image {len(image)} bytes, "
          f"decode + preprocess {decode_ms:.2f} ms; raw backend (no HTTP, mean of before/after): "
          + ", ".join(f"b{b} {raw[b]:.1f} img/s ({raw_before[b]:.1f}/{raw_after[b]:.1f})" for b in raw_sizes))
    best_raw = max(raw.values())
    print("\n| server | concurrency | img/s | vs raw backend (best batch) | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for label, c, ips, p50, p99, errors in rows:
        print(f"| {label} | {c} | {ips:.1f} | {ips / best_raw:.0%} | {p50:.1f} | {p99:.1f} | {errors} |")
    c1 = [r for r in rows if r[1] == 1 and r[0].startswith("batching on")]
    if c1:
        added = c1[0][3] - decode_ms - raw_b1_ms
        print(f"\nconcurrency 1, batching on: p50 {c1[0][3]:.2f} ms = decode {decode_ms:.2f} + raw inference "
              f"{raw_b1_ms:.2f} + {added:.2f} ms added; of that, an empty HTTP round trip (GET /healthz, this "
              f"client) is {overhead['http']:.2f} ms and the server's own queueing and handling (p50 of total - "
              f"decode - inference in its timings) {overhead['server']:.2f} ms")


if __name__ == "__main__":
    main()
