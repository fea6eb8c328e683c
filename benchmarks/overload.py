"""Overload on `vitserve serve` over loopback: offered load at a multiple of the measured capacity.

    python benchmarks/overload.py [ARTIFACT] [--multiple 3] [--seconds 60] [--rounds 1] [--threads N] [--json FILE]

Without ARTIFACT, the bundled swin_digits model is exported to a temporary folder first. Steps, all bounded:
  1. start `vitserve serve` on 127.0.0.1 (a fresh process; its resident memory is read from /proc);
  2. capacity: closed loop, 2 x max-batch-size clients each sending one image and waiting, for --capacity-seconds;
  3. overload: open loop -- requests are sent on a fixed schedule at --multiple x capacity for --seconds, whatever
     the answers (latency counts from the scheduled send time, so a slow server cannot slow the load down);
     at most --max-in-flight requests are outstanding, beyond which a scheduled request is counted as skipped;
     with --rounds N, N such windows in a row on the same server, memory read after each (a leak grows memory in
     every round; a high-water mark -- more connections open at once in one round than before -- is a single step);
  4. after the load: memory again, /readyz and one good request.
Printed: the statuses, lost requests (transport errors: no HTTP answer), latency of the accepted ones, whether
each accepted one was answered within the server's deadline (by the server's own time from the request's arrival,
its Server-Timing header: the client's clock also counts the time a new connection waits to be accepted, which an
overloaded server leaves in the kernel's queue), resident memory before/peak/after, health afterwards.
Exit status 1 when an invariant fails: a status other than 200/503/504, a lost request, an accepted request past
its deadline, memory growth of 20 % or more over the whole run, with three rounds or more memory that grew by
1.5 % or more in every round after the first (a steady leak; one step up is a high-water mark), or an unhealthy
server afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
IMAGE = (ROOT / "examples" / "digit_3.png").read_bytes()
ALLOWED = {200, 503, 504}
LEAK_PER_ROUND = 0.015  # memory growth per round that, repeated in every round after the first, reads as a leak
# The server checks the deadline once the answer is there and then writes the response; Server-Timing is taken at
# the response's start, so it may exceed the deadline by the time to encode the answer, never by more.
RESPONSE_GRACE_MS = 50


@dataclass
class Report:
    capacity_rps: float
    offered_rps: float
    achieved_rps: float
    seconds: float
    sent: int = 0
    skipped: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    accepted_p50_ms: float | None = None
    accepted_p99_ms: float | None = None
    accepted_max_service_ms: float | None = None  # the client's clock, from the actual send
    accepted_max_server_ms: float | None = None  # the server's own (Server-Timing), from the request's arrival
    deadline_ms: float = 0
    accepted_past_deadline: int = 0
    rss_before_mb: float = 0
    rss_peak_mb: float = 0
    rss_after_mb: float = 0
    rss_after_each_round_mb: list[float] = field(default_factory=list)
    healthy_after: bool = False

    @property
    def memory_growth(self) -> float:
        return self.rss_after_mb / self.rss_before_mb - 1

    @property
    def growth_each_round(self) -> list[float]:
        """Memory growth of each round over the round before it (from the second round on)."""
        rounds = self.rss_after_each_round_mb
        return [after / before - 1 for before, after in zip(rounds, rounds[1:])]

    def failures(self) -> list[str]:
        problems = []
        other = {s: n for s, n in self.statuses.items() if int(s) not in ALLOWED}
        if other:
            problems.append(f"statuses other than 200/503/504: {other}")
        if self.lost:
            problems.append(f"{self.lost} requests lost (no HTTP answer)")
        if self.accepted_past_deadline:
            problems.append(f"{self.accepted_past_deadline} accepted requests finished past the deadline")
        if self.memory_growth >= 0.20:
            problems.append(f"resident memory grew {self.memory_growth:.1%}")
        steps = self.growth_each_round
        if len(steps) >= 2 and min(steps) >= LEAK_PER_ROUND:
            problems.append("resident memory grew in every round after the first: "
                            + ", ".join(f"{step:+.1%}" for step in steps))
        if not self.healthy_after:
            problems.append("the server was not healthy afterwards")
        return problems


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class MemoryWatch(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self._done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.25):
            self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def classify_request(port: int, image: bytes = IMAGE) -> bytes:
    """A complete POST /classify request (multipart, one image), built once and sent many times."""
    boundary = "vitserveoverload"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class LightClient:
    """HTTP/1.1 over asyncio streams with a keep-alive pool: a small fraction of httpx's CPU per request, so
    that one client process can offer several times the server's capacity on the same machine."""

    def __init__(self, port: int):
        self.port = port
        self.payload = classify_request(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bool]:
        writer.write(self.payload)
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionResetError("closed before answering")
        status, length, close, server_ms = int(status_line.split()[1]), 0, False, None
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
            elif name.lower() == "server-timing" and "dur=" in value:
                server_ms = float(value.split("dur=")[1].split(";")[0].split(",")[0])
        await reader.readexactly(length)
        return status, close, server_ms

    async def post(self) -> tuple[int, float | None]:
        """The status of one POST /classify and the server's time for it (Server-Timing, ms); raises OSError /
        IncompleteReadError when no answer came."""
        reused = bool(self.idle)
        reader, writer = self.idle.pop() if reused else await asyncio.open_connection("127.0.0.1", self.port)
        try:
            status, close, server_ms = await self._exchange(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            writer.close()
            if not reused:
                raise
            # a pooled connection the server had closed while idle: the request never reached it; resend
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            status, close, server_ms = await self._exchange(reader, writer)
        if close:
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status, server_ms

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def measure_capacity(port: int, clients: int, seconds: float) -> float:
    done = 0
    stop_at = time.monotonic() + seconds
    http = LightClient(port)

    async def client() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            status, _ = await http.post()  # awaited first: `done += await ...` would read `done` before the wait
            done += status == 200

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - started
    http.close()
    return done / elapsed


async def open_loop(port: int, rate: float, seconds: float, max_in_flight: int, deadline_s: float,
                    report: Report) -> list[float]:
    """One overload window; adds its counts to `report` and returns the accepted requests' latencies (s)."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter(report.statuses)
    sent_before = report.sent
    in_flight = 0
    http = LightClient(port)

    async def one(scheduled: float) -> None:
        nonlocal in_flight
        sent = time.monotonic()
        try:
            status, server_ms = await http.post()
        except (OSError, asyncio.IncompleteReadError):
            report.lost += 1
            return
        finally:
            in_flight -= 1
        finished = time.monotonic()
        statuses[str(status)] += 1
        if status == 200:
            latencies.append(finished - scheduled)
            report.accepted_max_service_ms = max(report.accepted_max_service_ms or 0, (finished - sent) * 1e3)
            server_ms = float("inf") if server_ms is None else server_ms  # no Server-Timing: nothing proves it
            report.accepted_max_server_ms = max(report.accepted_max_server_ms or 0, server_ms)
            report.accepted_past_deadline += server_ms > deadline_s * 1e3 + RESPONSE_GRACE_MS

    tasks = []
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight >= max_in_flight:
            report.skipped += 1
            continue
        in_flight += 1
        report.sent += 1
        tasks.append(asyncio.create_task(one(scheduled)))
    report.achieved_rps = min(report.achieved_rps or float("inf"), (report.sent - sent_before) /
                              (time.monotonic() - start))
    await asyncio.gather(*tasks)
    http.close()
    report.statuses = dict(sorted(statuses.items()))
    return latencies


def run_overload(artifact: Path, *, multiple: float = 3.0, seconds: float = 60.0, capacity_seconds: float = 10.0,
                 threads: int | None = None, max_batch_size: int = 8, timeout_ms: float = 2000,
                 max_queue: int = 64, max_in_flight: int = 2048, rounds: int = 1, log=print) -> Report:
    sys.path.insert(0, str(ROOT))
    from tests.live_server import Server

    args = ["--max-batch-size", str(max_batch_size), "--timeout-ms", str(timeout_ms), "--max-queue", str(max_queue)]
    if threads:
        args += ["--threads", str(threads)]
    server = Server(artifact, *args)
    try:
        server.wait_ready(timeout_s=300)
        capacity = asyncio.run(measure_capacity(server.port, 2 * max_batch_size, capacity_seconds))
        log(f"capacity (closed loop, {2 * max_batch_size} clients, {capacity_seconds:g}s): {capacity:.0f} images/s")
        report = Report(capacity_rps=capacity, offered_rps=multiple * capacity, achieved_rps=0, seconds=seconds,
                        deadline_ms=timeout_ms)
        report.rss_before_mb = rss_mb(server.proc.pid)
        watch = MemoryWatch(server.proc.pid)
        watch.start()
        latencies: list[float] = []
        for r in range(rounds):
            log(f"overload {r + 1}/{rounds}: {report.offered_rps:.0f} requests/s ({multiple:g} x capacity) for "
                f"{seconds:g}s ...")
            latencies += asyncio.run(open_loop(server.port, report.offered_rps, seconds, max_in_flight,
                                               timeout_ms / 1e3, report))
            time.sleep(2)  # let the last batches and buffers settle
            report.rss_after_each_round_mb.append(rss_mb(server.proc.pid))
        report.rss_peak_mb = max(watch.stop(), rss_mb(server.proc.pid))
        report.rss_after_mb = report.rss_after_each_round_mb[-1]
        if latencies:
            latencies.sort()
            report.accepted_p50_ms = statistics.median(latencies) * 1e3
            report.accepted_p99_ms = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3
        ready = httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
        good = httpx.post(f"{server.url}/classify", files={"file": ("x.png", IMAGE)}, timeout=30)
        report.healthy_after = ready and good.status_code == 200
    finally:
        server.stop()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", nargs="?", help="artifact directory (default: swin_digits, exported here)")
    parser.add_argument("--multiple", type=float, default=3.0, help="offered load / capacity (default 3)")
    parser.add_argument("--seconds", type=float, default=60.0, help="overload duration (default 60)")
    parser.add_argument("--capacity-seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None, help="server inference threads (default: all cores)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--timeout-ms", type=float, default=2000, help="the server's deadline (default 2000)")
    parser.add_argument("--max-queue", type=int, default=64, help="the server's queue bound (default 64)")
    parser.add_argument("--rounds", type=int, default=1, help="overload windows in a row on the same server, memory "
                        "read after each (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(args.artifact) if args.artifact else Path(tmp) / "swin_digits"
        if not args.artifact:
            print("exporting swin_digits ...", flush=True)
            subprocess.run([sys.executable, "-m", "vitserve", "export", "swin_digits", "--out", str(artifact)],
                           check=True, capture_output=True)
        report = run_overload(artifact, multiple=args.multiple, seconds=args.seconds,
                              capacity_seconds=args.capacity_seconds, threads=args.threads,
                              max_batch_size=args.max_batch_size, timeout_ms=args.timeout_ms,
                              max_queue=args.max_queue, rounds=args.rounds)
    print(f"sent {report.sent} at {report.achieved_rps:.0f}/s or more (target {report.offered_rps:.0f}/s), "
          f"skipped by the client's in-flight bound: {report.skipped}")
    print(f"statuses: {report.statuses}; lost: {report.lost}")
    if report.accepted_p50_ms is not None:
        print(f"accepted: p50 {report.accepted_p50_ms:.0f} ms, p99 {report.accepted_p99_ms:.0f} ms from the scheduled "
              f"send; slowest {report.accepted_max_service_ms:.0f} ms from the actual send, "
              f"{report.accepted_max_server_ms:.0f} ms by the server's clock; past the {report.deadline_ms:.0f} ms "
              f"deadline: {report.accepted_past_deadline}")
    print(f"resident memory: {report.rss_before_mb:.0f} MB before, {report.rss_peak_mb:.0f} MB peak, "
          f"{report.rss_after_mb:.0f} MB after ({report.memory_growth:+.1%}); after each round: "
          f"{', '.join(f'{m:.0f}' for m in report.rss_after_each_round_mb)} MB")
    print(f"healthy afterwards: {report.healthy_after}")
    if args.json:
        Path(args.json).write_text(json.dumps({**asdict(report), "memory_growth": report.memory_growth,
                                               "growth_each_round": report.growth_each_round}, indent=2))
    problems = report.failures()
    for problem in problems:
        print(f"FAIL: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
