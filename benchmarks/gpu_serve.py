"""Served throughput on a GPU machine: JPEGs in over HTTP, labels out, against the model's own throughput, one run.

    python benchmarks/gpu_serve.py ARTIFACT [--backend torch] [--decode device|cpu] [--images-per-request 1,16,64]
                                            [--concurrency 1,4,16] [--seconds 10] [--processes 8] [--out DIR]
    python benchmarks/gpu_serve.py ARTIFACT --device cpu --backend onnxruntime --decode cpu ...   # the dry run

Starts `vitserve serve ARTIFACT` (--max-batch-size: the artifact's largest batch up to 256) on 127.0.0.1 and drives it
from client processes on the same machine (closed loop: each client thread posts a multipart /classify with K
ImageNet-like JPEGs, 500x375 and about 90 KB, made from the test photographs, waits for the answer and posts the
next) for every K in --images-per-request and every concurrency (client threads in all, spread over --processes
processes). Per row: images/s end to end, request p50 and p99, the server's CPU use (cores, from /proc) and the
clients', and where the server's time went (from its /metrics: decode + preprocess per request, wait for a batch,
batch compute, the rest: HTTP, parsing, answering). Beside each row, the model alone in this process at the
server's batch size on random pixels (the runtime's own call: a CUDA graph replay for a torch package), timed in a
window of its own after the load window, and the ratio served / model. Then a single 1-image request's latency
(p50 of --single requests, one at a time). Results go to DIR/gpu_serve.json (DIR: --out, else $OUT, else
./gpu-serve-results) with the machine, versions and settings.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def photographs(count: int) -> list[bytes]:
    """ImageNet-like JPEGs (500x375, about 90 KB) cut from the test photographs, `count` different ones."""
    import skimage.data
    from PIL import Image

    sources = [getattr(skimage.data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")]
    out = []
    for i in range(count):
        image = Image.fromarray(sources[i % len(sources)]).convert("RGB")
        w, h = image.size
        crop = 0.8 + 0.2 * ((i // len(sources)) % 3) / 2  # a different window of the photograph each round
        box = (int(w * (1 - crop) / 2), int(h * (1 - crop) / 2), int(w * (1 + crop) / 2), int(h * (1 + crop) / 2))
        image = image.crop(box).resize((500, 375) if w >= h else (375, 500))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=95, subsampling=0)  # 4:4:4: about 90 KB each at 500x375
        out.append(buffer.getvalue())
    return out


def start(artifact: Path, args: argparse.Namespace, batch: int) -> tuple[subprocess.Popen, str]:
    # here, not at the top: the client processes import this module and need none of serve_load's imports
    from serve_load import start_server  # benchmarks/serve_load.py, beside this script

    extra = ("--backend", args.backend, "--decode", args.decode, "--max-images", str(max(args.images_per_request)),
             "--timeout-ms", "120000", "--max-body-mb", "256")
    return start_server(artifact, batch, None, 5.0, extra, max_queue=100_000,
                        log=args.log or Path(args.out) / "server.log", ready_timeout_s=args.start_timeout)


def _client_process(url: str, blobs: list[bytes], per_request: int, threads: int, seconds: float, queue) -> None:
    """`threads` closed-loop clients for `seconds`: puts (latencies, errors, cpu seconds) on `queue`."""
    import httpx

    latencies: list[float] = []
    errors = [0]
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()

    def client(offset: int) -> None:
        i = offset
        with httpx.Client(timeout=120) as c:
            while time.perf_counter() < stop_at:
                files = [("file", (f"{j}.jpg", blobs[(i + j) % len(blobs)], "image/jpeg")) for j in range(per_request)]
                i += per_request
                started = time.perf_counter()
                try:
                    ok = c.post(f"{url}/classify", params={"top_k": 1}, files=files).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors[0] += 1

    cpu = time.process_time()
    workers = [threading.Thread(target=client, args=(k * 7,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put((latencies, errors[0], time.process_time() - cpu))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metrics(url: str) -> dict[str, float]:
    """Sums and counts of the server's histograms (every model and version together)."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for name, labels, value in re.findall(r"^(vitserve_\w+_(?:sum|count))(\{[^}]*\})? ([0-9.e+-]+)$", text, re.M):
        if name.startswith("vitserve_request_seconds") and 'route="/classify"' not in labels:
            continue  # health checks and these /metrics calls
        totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def load_window(url: str, pid: int, blobs: list[bytes], per_request: int, concurrency: int,
                args: argparse.Namespace) -> dict:
    processes = max(1, min(args.processes, concurrency))
    spread = [concurrency // processes + (1 if k < concurrency % processes else 0) for k in range(processes)]
    queue = mp.get_context("spawn").Queue()
    before, cpu_before = _metrics(url), _cpu_seconds(pid)
    started = time.perf_counter()
    procs = [mp.get_context("spawn").Process(target=_client_process, args=(url, blobs, per_request, n, args.seconds,
                                                                          queue)) for n in spread]
    for p in procs:
        p.start()
    results = [queue.get(timeout=args.seconds + 300) for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - started
    after, cpu_after = _metrics(url), _cpu_seconds(pid)
    latencies = sorted(x for r in results for x in r[0])
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    requests = max(delta.get("vitserve_decode_seconds_count", 0.0), 1.0)
    batches = max(delta.get("vitserve_inference_seconds_count", 0.0), 1.0)
    images = len(latencies) * per_request
    row = {
        "images_per_request": per_request, "concurrency": concurrency, "client_processes": processes,
        "requests": len(latencies), "errors": sum(r[1] for r in results),
        "images_per_s": images / wall,
        "p50_ms": 1e3 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None,
        "server_cores": (cpu_after - cpu_before) / wall,
        "client_cores": sum(r[2] for r in results) / wall,
        "server_ms_per_request": {
            "decode": 1e3 * delta.get("vitserve_decode_seconds_sum", 0.0) / requests,
            "queue_wait_per_image": 1e3 * delta.get("vitserve_queue_wait_seconds_sum", 0.0)
            / max(delta.get("vitserve_queue_wait_seconds_count", 0.0), 1.0),
            "total": 1e3 * delta.get("vitserve_request_seconds_sum", 0.0)
            / max(delta.get("vitserve_request_seconds_count", 0.0), 1.0),
        },
        "batches": delta.get("vitserve_inference_seconds_count", 0.0),
        "mean_batch_size": delta.get("vitserve_batch_size_sum", 0.0) / batches,
        "batch_compute_ms": 1e3 * delta.get("vitserve_inference_seconds_sum", 0.0) / batches,
    }
    return row


def model_alone(artifact: Path, backend: str, batch: int, seconds: float) -> dict:
    """The runtime's own throughput at `batch` on random pixels, in this process (calls back to back)."""
    from vitserve import runtimes

    runtime = runtimes.load(artifact, backend)
    x = np.random.default_rng(0).standard_normal((batch, *runtime.manifest.input.shape[1:]), dtype=np.float32)
    for _ in range(3):
        runtime(x)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        runtime(x)
        calls += 1
    elapsed = time.perf_counter() - started
    return {"batch": batch, "images_per_s": calls * batch / elapsed, "ms_per_batch": 1e3 * elapsed / calls,
            "runtime": runtime.description}


def single_request(url: str, blob: bytes, count: int) -> dict:
    import httpx

    times = []
    with httpx.Client(timeout=60) as c:
        for _ in range(count + 5):
            started = time.perf_counter()
            response = c.post(f"{url}/classify", params={"top_k": 1}, content=blob,
                              headers={"content-type": "image/jpeg"})
            times.append(time.perf_counter() - started)
            response.raise_for_status()
    times = sorted(times[5:])
    return {"requests": count, "p50_ms": 1e3 * statistics.median(times),
            "p99_ms": 1e3 * times[min(len(times) - 1, int(len(times) * 0.99))]}


def machine(args: argparse.Namespace) -> dict:
    from vitserve import __version__
    from vitserve.machine import describe

    info = {"vitserve": __version__, "python": platform.python_version(), "cpu": describe(),
            "cores": os.cpu_count(), "device": args.device}
    try:
        import torch

        info["torch"] = torch.__version__
        if args.device == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="recorded with the results; the "
                        "artifact decides where the model runs")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--decode", choices=["auto", "cpu", "device"], default="auto")
    parser.add_argument("--images-per-request", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=10.0, help="per load window, and per model-alone window")
    parser.add_argument("--processes", type=int, default=8, help="client processes at most")
    parser.add_argument("--single", type=int, default=200, help="1-image requests one at a time, for their p50")
    parser.add_argument("--max-batch-size", type=int, default=None, help="default: the artifact's largest, <= 256")
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-serve-results"))
    parser.add_argument("--log", type=Path, default=None, help="the server's output (default: OUT/server.log)")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)

    from vitserve.artifact import read_manifest

    batch = args.max_batch_size or min(read_manifest(args.artifact).max_batch, 256)
    blobs = photographs(32)
    results = {"command": " ".join(["python", "benchmarks/gpu_serve.py", *(argv or sys.argv[1:])]),
               "machine": machine(args), "artifact": str(args.artifact), "backend": args.backend,
               "decode": args.decode, "server_max_batch_size": batch, "seconds": args.seconds,
               "jpeg_bytes_mean": int(np.mean([len(b) for b in blobs])), "rows": []}
    server, url = start(args.artifact, args, batch)
    try:
        import httpx

        results["server_backend"] = httpx.get(f"{url}/readyz").json().get("backend")
        results["single_request"] = single_request(url, blobs[0], args.single)
        print(f"1-image request, one at a time: p50 {results['single_request']['p50_ms']:.2f} ms", flush=True)
        for per_request in args.images_per_request:
            for concurrency in args.concurrency:
                row = load_window(url, server.pid, blobs, per_request, concurrency, args)
                results["rows"].append(row)
                print(f"K={per_request:3d} c={concurrency:3d}: {row['images_per_s']:9.1f} images/s, p50 "
                      f"{row['p50_ms'] or float('nan'):8.2f} ms, p99 {row['p99_ms'] or float('nan'):8.2f} ms, "
                      f"server {row['server_cores']:.2f} cores, mean batch {row['mean_batch_size']:.1f}, "
                      f"errors {row['errors']}", flush=True)
    finally:
        server.terminate()
        server.wait(60)
    alone = model_alone(args.artifact, args.backend, batch, args.seconds)
    results["model_alone"] = alone
    for row in results["rows"]:
        row["vs_model_alone"] = row["images_per_s"] / alone["images_per_s"]
    print(f"model alone at batch {batch}: {alone['images_per_s']:.1f} images/s ({alone['runtime']}); served / model: "
          + ", ".join(f"K={r['images_per_request']} c={r['concurrency']} {r['vs_model_alone']:.2f}"
                      for r in results["rows"]), flush=True)
    (Path(args.out) / "gpu_serve.json").write_text(json.dumps(results, indent=1))
    return 0 if all(r["errors"] == 0 for r in results["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
