"""Overload, shortened for CI (benchmarks/overload.py runs the 60 s version and prints the figures): offered load at
3x the measured capacity, open loop, two 6 s windows on one server. Only 200/503/504, nothing lost, accepted
requests within their deadline, resident memory under 20 % above its start and under 5 % above its level after the
first window (a high-water mark is allowed, a leak is not), healthy afterwards -- and the load really was an
overload."""

from __future__ import annotations

from benchmarks.overload import run_overload


def test_three_times_capacity(digits_artifact):
    report = run_overload(digits_artifact, multiple=3.0, seconds=6, rounds=2, capacity_seconds=4, threads=1, log=print)
    print(report)
    assert report.failures() == []
    assert report.achieved_rps >= 2 * report.capacity_rps, "the client could not offer an overload: test is void"
    assert report.statuses.get("503", 0) + report.statuses.get("504", 0) > 0
    assert report.statuses.get("200", 0) > 0.5 * report.capacity_rps * report.seconds * 2  # still serving
