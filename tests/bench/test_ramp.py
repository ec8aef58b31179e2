"""e2e outside the market-open ramp (`tradepulse.bench.ramp`): the snapshots the bench takes of the
runners' stages files, and what the report makes of them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tradepulse.bench.ramp import RampSnapshots, outside_ramp
from tradepulse.bench.report import targets_table
from tradepulse.bus.stages import LatencyHistogram
from tradepulse.bus.status import write_json_atomic
from tradepulse.sources.simulator.market import OPEN_RAMP_S

MARKET_START_MS = 1_800_000_000_000
RAMP_START, RAMP_END = (MARKET_START_MS / 1000 + s for s in OPEN_RAMP_S)


class Runner:
    """A runner's e2e histogram, left in its stages file at given wall-clock times (the file's mtime)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hist = LatencyHistogram()

    def commit(self, ms: float, n: int) -> None:
        self.hist.record_many(np.full(n, ms * 1000.0))

    def beat(self, at_s: float) -> None:
        write_json_atomic(self.path, {"e2e": self.hist.to_dict(), "batch": LatencyHistogram().to_dict()})
        os.utime(self.path, (at_s, at_s))


def latency_ms(at_s: float) -> float:
    """10 ms before the ramp, 2 s during it, 800 ms while its backlog drains (5 s), then 10 ms again."""
    if at_s < RAMP_START:
        return 10.0
    return 2_000.0 if at_s < RAMP_END else 800.0 if at_s < RAMP_END + 5 else 10.0


def test_the_trades_committed_during_the_ramp_are_taken_out_and_nothing_else(tmp_path: Path) -> None:
    runners = [Runner(tmp_path / "runner-stages.json"), Runner(tmp_path / "runner-stages-1.json")]
    snapshots = RampSnapshots([r.path for r in runners])
    for t in range(90):  # each runner commits 100 trades a second, then beats
        at = MARKET_START_MS / 1000 + t + 0.3
        for runner in runners:
            runner.commit(latency_ms(at), 100)
            runner.beat(at)
        snapshots.observe(MARKET_START_MS, at + 0.5)
    outside = outside_ramp(snapshots.result([r.hist.to_dict() for r in runners]))
    # Taken out: what was committed between the first beat at or after the ramp's start (t = 5.3 s) and
    # the last before its end (t = 34.3 s). So the ramp's first second (t = 5.3) counts as outside, and
    # so does its backlog (t = 35.3 .. 39.3): never less than the trades outside it.
    assert outside["count"] == 2 * 100 * (5 + 1 + 5 + 50)
    assert outside["total"] == 2 * 100 * (5 * 10.0 + 2_000.0 + 5 * 800.0 + 50 * 10.0)
    expected = (10.0, 10.0, 2_000.0)
    assert (outside["p50"], outside["p90"], outside["p99"]) == pytest.approx(expected, rel=1e-3)
    results: dict[str, Any] = {
        "derived": {
            "sustained_events_per_s": 5_000.0,
            "max_lag_s": 3.0,
            "events_lost": 0,
            "lag_s_over_target_after_burst_s": 0.0,
            "e2e_latency_ms": {"p50": 10.0, "p99": 2_000.0},
            "e2e_outside_ramp_ms": outside,
            "freshness_ms": {},
            "rss_drift_pct": {},
        },
        "config": {"rate": 5_000.0, "profile": "market_open"},
        "full_path": {},
    }
    (row,) = [line for line in targets_table(results).splitlines() if line.startswith("| 10× burst")]
    assert row.endswith(f"e2e p99 outside the ramp {outside['p99']:,.1f} ms |")


def test_no_snapshot_before_the_ramp_or_from_a_file_written_after_it(tmp_path: Path) -> None:
    runner = Runner(tmp_path / "runner-stages.json")
    snapshots = RampSnapshots([runner.path])
    runner.commit(10.0, 50)
    runner.beat(RAMP_START - 0.5)
    snapshots.observe(MARKET_START_MS, RAMP_START - 0.1)  # before the ramp: not read
    snapshots.observe(MARKET_START_MS, RAMP_START + 0.5)  # the file predates the ramp: no snapshot
    runner.commit(10.0, 50)
    runner.beat(RAMP_END + 0.5)
    snapshots.observe(MARKET_START_MS, RAMP_END + 1.0)  # written after it: not a snapshot either
    result = snapshots.result([runner.hist.to_dict()])
    assert result["start"] is None and result["end"] is None
    assert outside_ramp(result) == {} and outside_ramp(None) == {}


def test_a_run_shorter_than_the_ramp_is_measured_before_it(tmp_path: Path) -> None:
    runner = Runner(tmp_path / "runner-stages.json")
    snapshots = RampSnapshots([runner.path])
    for t in range(0, 15):
        at = MARKET_START_MS / 1000 + t + 0.5
        runner.commit(30.0 if at >= RAMP_START else 5.0, 10)
        runner.beat(at)
        snapshots.observe(MARKET_START_MS, at + 0.1)
    outside = outside_ramp(snapshots.result([runner.hist.to_dict()]))
    # Before it, and its first second (the first beat within it comes after that second's commit).
    assert outside["count"] == 10 * 5 + 10 and outside["p50"] == pytest.approx(5.0, rel=1e-3)
