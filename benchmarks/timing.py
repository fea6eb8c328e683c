"""Side-by-side timing shared by the benchmark scripts: on a shared, noisy machine only runs interleaved in one
process compare fairly."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def side_by_side(runners: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median milliseconds of each runner: one warm-up call each, then `rounds` rounds that run every runner once,
    in the given order on even rounds and reversed on odd ones."""
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            started = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}
