"""Overload, shortened for CI (benchmarks/overload.py runs the 60 s version and prints the figures): offered load at
3x the measured capacity, open loop, three 5 s windows on one server. Only 200/503/504, nothing lost, accepted
requests within their deadline, resident memory under 20 % above its start and not growing in every window after
the first (one step up is a high-water mark -- a server that stalls for a moment, say on a busy machine, has more
requests open at once afterwards -- a leak grows every round), healthy afterwards -- and the load really was an
overload."""

from __future__ import annotations

import pytest

from benchmarks.overload import Report, run_overload

pytestmark = pytest.mark.slow  # a live server at 3x capacity

ROUNDS = 3


def test_three_times_capacity(digits_artifact):
    report = run_overload(digits_artifact, multiple=3.0, seconds=5, rounds=ROUNDS, capacity_seconds=4, threads=1,
                          log=print)
    print(report)
    assert report.failures() == []
    assert report.achieved_rps >= 2 * report.capacity_rps, "the client could not offer an overload: test is void"
    assert report.statuses.get("503", 0) + report.statuses.get("504", 0) > 0
    assert report.statuses.get("200", 0) > 0.5 * report.capacity_rps * report.seconds * ROUNDS  # still serving


def memory_report(before: float, after_each_round: list[float]) -> Report:
    return Report(capacity_rps=100, offered_rps=300, achieved_rps=300, seconds=5, statuses={"200": 1},
                  rss_before_mb=before, rss_after_each_round_mb=after_each_round,
                  rss_after_mb=after_each_round[-1], healthy_after=True)


def test_memory_verdicts():
    # One step up (a burst of connections in the second round, as a slow CI machine produced), then flat: no leak.
    assert memory_report(137, [141, 153, 153.2]).failures() == []
    # Growing in every round after the first, even by a little: a leak.
    [problem] = memory_report(137, [141, 144, 147]).failures()
    assert "every round after the first" in problem
    # Two rounds cannot tell a step from a leak; the overall bound still holds.
    assert memory_report(137, [141, 153]).failures() == []
    [problem] = memory_report(137, [150, 170]).failures()
    assert "grew 24.1%" in problem
