"""The one percentile definition (nearest rank) and the places that must use it: backpressure (its
median), the runner status (/health's write p99), the hot stores' own write p99."""

from __future__ import annotations

import numpy as np

from tradepulse.bus.backpressure import BackpressureController
from tradepulse.bus.status import RunnerMetrics, percentile
from tradepulse.percentiles import nearest_rank


def test_nearest_rank_returns_an_observed_sample() -> None:
    assert nearest_rank([], 99) == 0.0
    assert nearest_rank([5.0], 99) == 5.0
    assert nearest_rank(range(1, 101), 99) == 99
    assert nearest_rank(range(1, 101), 50) == 50
    assert nearest_rank(range(1, 201), 99) == 198
    assert nearest_rank([3.0, 1.0, 2.0], 50) == 2.0
    assert nearest_rank(range(1, 21), 99) == 20  # n ≤ 100: the p99 is the largest sample
    # Not an interpolation: numpy's default would give 99.01 here.
    assert float(np.percentile(np.arange(1, 101), 99)) != nearest_rank(range(1, 101), 99)


def test_backpressure_and_status_take_percentiles_of_the_same_writes_by_nearest_rank() -> None:
    """The runner records each write latency in both: backpressure's median and the status's p99 are
    nearest ranks of the same samples (observed values, not interpolations)."""
    latencies = [4.0, 7.5, 12.0, 3.25, 150.0, 9.0, 8.0, 11.0, 6.0, 5.5]
    bp = BackpressureController(threshold_ms=100, window=len(latencies))
    metrics = RunnerMetrics()
    for ms in latencies:
        bp.record(ms)
        metrics.write_ms.append(ms)
    snapshot = metrics.snapshot()
    # numpy's interpolating p99 of these would be 137.6, its median 7.75: values no write took.
    assert snapshot["write_p99_ms"] == percentile(latencies, 99) == 150.0
    assert bp.latency_p50_ms() == percentile(latencies, 50) == 7.5
