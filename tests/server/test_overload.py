"""Overload, shortened for CI (benchmarks/overload.py runs the 60 s version and prints the figures): offered load at
3x the measured capacity, open loop. Only 200/503/504, nothing lost, accepted requests within their deadline,
resident memory growth under 10 %, healthy afterwards -- and the load really was an overload."""

from __future__ import annotations

from benchmarks.overload import run_overload


def test_three_times_capacity(digits_artifact):
    report = run_overload(digits_artifact, multiple=3.0, seconds=10, capacity_seconds=4, threads=1, log=print)
    print(report)
    assert report.failures() == []
    assert report.achieved_rps >= 2 * report.capacity_rps, "the client could not offer an overload: test is void"
    assert report.statuses.get("503", 0) + report.statuses.get("504", 0) > 0
    assert report.statuses.get("200", 0) > 0.5 * report.capacity_rps * report.seconds  # still serving at capacity
