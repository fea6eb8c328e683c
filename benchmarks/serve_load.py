"""Closed-loop load on `vitserve serve` over loopback: batching on vs off, against the raw backend, side by side.

    python benchmarks/serve_load.py ARTIFACT [--concurrency 1,8,32] [--seconds 10] [--max-batch-size 8]
                                             [--batches-in-flight 1,2]

For each server mode (dynamic batching with --max-batch-size, once per --batches-in-flight value, and batching
off = --max-batch-size 1) a fresh
`vitserve serve` process is started on 127.0.0.1; N clients each send one image, wait for the answer and send the
next (closed loop) for a fixed time. The clients are `wrk` (Debian package `wrk`; a light C load generator) when it
is installed, else Python threads with httpx, which take noticeably more of the machine's CPU. Each load window is
followed by a window of the raw backend in this process (onnxruntime on preprocessed tensors, no HTTP, no decode)
at the server's batch size; a row's ratio is the median over --rounds such pairs. Printed per row: throughput
(images/s), the raw rate, the ratio, p50 and p99 latency; and the decode + preprocess time of the image.
Everything is bounded (--seconds per window) and stays on 127.0.0.1. The load generator shares the machine with
the server, so on few cores it takes CPU time from it; the ratios are measured under that same condition.
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
from vitserve.preprocess import decode_image, transform
from vitserve.runtimes.onnxruntime import OnnxRuntime

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifact: Path, max_batch_size: int, threads: int | None, max_wait_ms: float,
                 extra: tuple[str, ...] = (), max_queue: int = 1024, log: Path | None = None,
                 ready_timeout_s: float = 120) -> tuple[subprocess.Popen, str]:
    """`vitserve serve` on a free port of 127.0.0.1 (and `extra` flags), once ready: (process, its URL); its output
    appended to `log` (default: discarded)."""
    port = free_port()
    args = [sys.executable, "-m", "vitserve", "serve", str(artifact), "--port", str(port),
            "--max-batch-size", str(max_batch_size), "--max-queue", str(max_queue), "--max-wait-ms", str(max_wait_ms),
            *extra]
    if threads:
        args += ["--threads", str(threads)]
    output = open(log, "a") if log else subprocess.DEVNULL
    proc = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited{f'; see {log}' if log else ''}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become ready within {ready_timeout_s:.0f} s")


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


def raw_throughput(backend: OnnxRuntime, x: np.ndarray, seconds: float) -> float:
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
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one load window")
    parser.add_argument("--rounds", type=int, default=3, help="load + raw window pairs per row")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="server inference threads (default: all)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's --max-wait-ms (default 5)")
    parser.add_argument("--batches-in-flight", default="1",
                        help="the batching server's --batches-in-flight, a row set per value (default 1)")
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

    # Side by side: every load window is followed by a raw-backend window of the same batch size, and each row's
    # ratio is the median of those pairs, so the machine's drift cancels out.
    backend = OnnxRuntime(args.artifact, threads=args.threads)
    rows = []
    overhead: dict[str, float] = {}
    load = "wrk" if shutil.which("wrk") else "httpx threads"
    in_flight = [int(n) for n in args.batches_in_flight.split(",")]
    modes = [(f"batching on (max {args.max_batch_size}"
              f"{f', {n} in flight' if in_flight != [1] else ''})", args.max_batch_size, n) for n in in_flight]
    for label, batch, n in [*modes, ("batching off", 1, 1)]:
        x = np.repeat(pixels[None], batch, axis=0)
        proc, url = start_server(args.artifact, batch, args.threads, args.max_wait_ms,
                                 ("--batches-in-flight", str(n)))
        try:
            if batch > 1 and not overhead:
                overhead = {"http": http_round_trip_ms(url), "server": server_overhead_ms(url, image)}
            for c in levels:
                rates, raws, p50s, p99s, errors = [], [], [], [], 0
                for _ in range(args.rounds):
                    if load == "wrk":
                        ips, lat, errs = wrk_loop(url, image, c, args.seconds)
                        p50, p99 = lat["p50"], lat["p99"]
                    else:
                        ips, lats, errs = closed_loop(url, image, c, args.seconds)
                        p50, p99 = percentile(lats, 0.5), percentile(lats, 0.99)
                    rates.append(ips)
                    time.sleep(1.5 * p99)  # requests still in flight when the load stopped finish first
                    raws.append(raw_throughput(backend, x, args.seconds / 2))
                    p50s.append(p50 * 1e3)
                    p99s.append(p99 * 1e3)
                    errors += errs
                ratio = statistics.median(r / w for r, w in zip(rates, raws))
                rows.append((label, c, statistics.median(rates), statistics.median(raws), ratio,
                             statistics.median(p50s), max(p99s), errors))
                print(f"  {label:<24} c={c:<3} {rows[-1][2]:8.1f} img/s  raw b{batch} {rows[-1][3]:6.1f}  "
                      f"ratio {ratio:.0%}  p50 {rows[-1][5]:7.1f} ms  errors {errors}", flush=True)
        finally:
            proc.terminate()
            proc.wait(60)

    print(f"\n{manifest.name}: {os.cpu_count()} cores, load from {load}, {args.rounds} rounds of {args.seconds:g} s, "
          f"--max-wait-ms {args.max_wait_ms:g}; image {len(image)} bytes, decode + preprocess {decode_ms:.2f} ms")
    print("\n| server | concurrency | img/s | raw backend img/s (same batch) | server / raw | p50 ms | p99 ms "
          "| errors |")
    print("|---|---|---|---|---|---|---|---|")
    for label, c, ips, raw, ratio, p50, p99, errors in rows:
        print(f"| {label} | {c} | {ips:.1f} | {raw:.1f} | {ratio:.0%} | {p50:.1f} | {p99:.1f} | {errors} |")
    c1 = [r for r in rows if r[1] == 1 and r[0].startswith("batching on")]
    if c1 and overhead:
        print(f"\nconcurrency 1: beyond decode and inference, a request pays the server's own queueing and handling "
              f"(p50 of total - decode - inference in its timings_ms) {overhead['server']:.2f} ms and an empty HTTP "
              f"round trip (GET /healthz) {overhead['http']:.2f} ms")

if __name__ == "__main__":
    main()
