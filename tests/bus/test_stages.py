"""The runner's per-stage latency histograms (`tradepulse.bus.stages`): percentiles agree with the one
definition (nearest rank) on raw samples, the last-minute window forgets, and recording is cheap."""

from __future__ import annotations

import random
import time

import numpy as np
import orjson
import pytest

from tradepulse.bus.stages import (
    BATCH_STAGES,
    LatencyHistogram,
    StageTimes,
    WindowedHistogram,
    merge_summaries,
    strided,
)
from tradepulse.errors import InvalidArgument
from tradepulse.percentiles import nearest_rank


@pytest.mark.parametrize("q", [50, 90, 99, 99.9])
def test_percentiles_match_nearest_rank_within_the_bucket_width(q: float) -> None:
    rng = random.Random(7)
    samples = [rng.lognormvariate(9, 1.5) for _ in range(20_000)]  # µs: ~8 ms median, long tail
    hist = LatencyHistogram()
    hist.record_many(np.array(samples[:10_000]))
    for value in samples[10_000:]:
        hist.record(value)
    exact = nearest_rank(samples, q)
    assert hist.total == len(samples)
    assert abs(hist.percentile_us(q) - exact) <= exact * 0.001  # buckets are 0.1 % wide


def test_summary_is_in_ms_and_weights_count() -> None:
    hist = LatencyHistogram()
    hist.record_many(np.array([1_000.0, 2_000.0, 3_000.0, 4_000.0]), weight=10)
    s = hist.summary_ms()
    assert s["count"] == 40
    assert s["p50"] == pytest.approx(2.0, rel=1e-3)
    assert s["p99"] == pytest.approx(4.0, rel=1e-3)
    assert s["max"] == 4.0 and s["total"] == pytest.approx(100.0)
    assert LatencyHistogram().summary_ms()["p99"] == 0.0


def test_values_out_of_range_are_clamped_not_dropped() -> None:
    hist = LatencyHistogram()
    hist.record_many(np.array([-5_000.0, 0.0]))  # a receive stamp after the Kafka timestamp (clock skew)
    hist.record(1e12)
    assert hist.total == 3
    assert hist.percentile_us(50) == pytest.approx(1.0, rel=1e-3)
    assert hist.summary_ms()["max"] == 3_600_000.0


def test_subtracting_an_earlier_copy_leaves_what_was_recorded_since() -> None:
    rng = np.random.default_rng(3)
    first, later = rng.lognormal(9, 1, 5_000), rng.lognormal(12, 1, 3_000)
    hist = LatencyHistogram()
    hist.record_many(first)
    earlier = LatencyHistogram.from_dict(hist.to_dict())
    hist.record_many(later, weight=2)
    hist.subtract(earlier)
    alone = LatencyHistogram()
    alone.record_many(later, weight=2)
    assert hist.total == alone.total == 6_000
    left, expected = hist.summary_ms(), alone.summary_ms()
    for key in ("count", "p50", "p90", "p99", "p99_9"):
        assert left[key] == expected[key]
    assert left["total"] == pytest.approx(expected["total"])
    assert left["max"] >= expected["max"]  # the max stays the whole run's: an upper bound
    with pytest.raises(InvalidArgument):  # not an earlier copy: samples it never had
        earlier.subtract(hist)


def test_a_histogram_written_as_data_reads_back_the_same() -> None:
    hist = LatencyHistogram()
    hist.record_many(np.array([800.0, 12_000.0, 12_000.0, 950_000.0]), weight=3)
    hist.record(40.0)
    back = LatencyHistogram.from_dict(orjson.loads(orjson.dumps(hist.to_dict())))
    assert back.summary_ms() == hist.summary_ms()
    broken = hist.to_dict() | {"total": hist.total + 1}
    with pytest.raises(ValueError, match="do not add up"):
        LatencyHistogram.from_dict(broken)


def test_runs_merge_into_the_percentiles_of_all_their_samples() -> None:
    """Two runner instances' histograms added (the bench's merge) give the percentiles of every sample
    of both, which no combination of the two instances' own percentiles gives in general."""
    rng = random.Random(11)
    fast = [rng.lognormvariate(9, 0.5) for _ in range(6_000)]  # ~8 ms
    slow = [rng.lognormvariate(11, 0.5) for _ in range(2_000)]  # ~60 ms
    runs = []
    for samples in (fast, slow):
        times = StageTimes()
        times.record_latencies("e2e", np.array(samples))
        times.record_batch(decode=1.5)
        runs.append(times.run_histograms())
    merged = merge_summaries(runs)
    both = fast + slow
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        exact = nearest_rank(both, q) / 1000
        assert merged["e2e"][name] == pytest.approx(exact, rel=0.002)
    assert merged["e2e"]["count"] == len(both)
    assert merged["e2e"]["max"] == pytest.approx(max(both) / 1000, rel=1e-3)
    assert merged["decode"]["count"] == 2 and merged["decode"]["p50"] == pytest.approx(1.5, rel=1e-3)
    assert merged["kafka"]["count"] == 0  # stages nobody recorded stay, empty


def test_last_minute_forgets_older_slots_the_run_does_not() -> None:
    now = [1000.0]
    hist = WindowedHistogram(clock=lambda: now[0])
    hist.record(50_000)
    now[0] += 30
    hist.record(2_000)
    assert hist.last_minute().total == 2
    now[0] += 45  # the first slot is 75 s old now
    hist.record(3_000)
    minute = hist.last_minute()
    assert minute.total == 2 and minute.max_us == 3_000
    assert hist.run.total == 3 and hist.run.max_us == 50_000
    now[0] += 120
    assert hist.last_minute().total == 0


def test_strided_sample_stands_for_every_item() -> None:
    items = list(range(1000))
    sample, stride = strided(items, 64)
    assert stride == 16 and len(sample) * stride >= len(items) and len(sample) <= 64
    assert strided(items[:10], 64) == (items[:10], 1)


def test_recording_a_batch_costs_well_under_a_millisecond() -> None:
    """All the batch stages, 64 arrival samples and 256 e2e samples per batch: the per-batch cost stays
    negligible next to a batch (≥ 1 ms). Measured as the best of several rounds (a busy machine slows
    some rounds, never speeds one up)."""
    stages = StageTimes()
    timings = {stage: 1.5 for stage in BATCH_STAGES}
    arrivals, e2e = np.full(64, 3_000.0), np.full(256, 9_000.0)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(200):
            stages.record_batch(**timings)
            stages.record_latencies("kafka", arrivals, 4)
            stages.record_latencies("ingest", arrivals, 4)
            stages.record_latencies("e2e", e2e, 2)
        best = min(best, (time.perf_counter() - started) / 200)
    assert best < 0.5e-3, f"{best * 1e6:.0f} µs per batch"
    summary = stages.summary()
    assert summary["decode"]["count"] == 1000 and summary["e2e"]["count"] == 1000 * 256 * 2
