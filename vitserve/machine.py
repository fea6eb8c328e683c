"""What the CPU here is and which of the instruction sets that decide int8 and bf16 speed it has: recorded beside
every timing (`vitserve bench`, `vitserve quantize`'s speed gate), since the same artifact is fast on one CPU and
slow on the next."""

from __future__ import annotations

import platform
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
