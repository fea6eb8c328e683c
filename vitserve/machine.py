"""What the CPU here is and which of the instruction sets that decide int8 and bf16 speed it has: recorded beside
every timing (`vitserve bench`, `vitserve quantize`'s speed gate), since the same artifact is fast on one CPU and
slow on the next; and how runners are timed against each other on it (time_interleaved)."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# /proc/cpuinfo flags that change which precision is fastest: AVX-512 and its VNNI (int8 dot products) and BF16,
# AVX-VNNI (VNNI on AVX2), AMX (int8 and bf16 tiles)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_name() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def isa_flags() -> list[str]:
    """The ISA_FLAGS this CPU reports, in that order (empty where /proc/cpuinfo is missing)."""
    flags: set[str] = set()
    for line in _cpuinfo():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return [flag for flag in ISA_FLAGS if flag in flags]


def describe() -> dict[str, object]:
    """The machine as recorded beside a measurement: architecture, CPU name, the flags above."""
    return {"machine": platform.machine(), "cpu": cpu_name(), "isa": isa_flags()}


def summary() -> str:
    """One line for messages: "x86_64, AMD EPYC (avx2 fma)"."""
    flags = " ".join(isa_flags()) or "no AVX2"
    return f"{platform.machine()}, {cpu_name()} ({flags})"


def time_interleaved(runners: Sequence[Callable], x, rounds: int, warm_calls: int = 2) -> list[list[float]]:
    """Seconds per call of each runner on `x`: `warm_calls` each first, then `rounds` rounds in which every runner
    runs once, the order rotating (for two runners: alternating), so that all see the same machine load."""
    for runner in runners:
        for _ in range(warm_calls):
            runner(x)
    times: list[list[float]] = [[] for _ in runners]
    for r in range(rounds):
        for i in [(r + k) % len(runners) for k in range(len(runners))]:
            started = time.perf_counter()
            runners[i](x)
            times[i].append(time.perf_counter() - started)
    return times
