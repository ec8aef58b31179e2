"""The runner's end-to-end latency histogram (RunnerMetrics.record_e2e) that `tradepulse bench` reads."""

from __future__ import annotations

from tradepulse.bus.status import E2E_SAMPLES_PER_BATCH, RunnerMetrics


def _trades(now_us: int, latencies_ms: list[float]) -> list[dict[str, int]]:
    return [{"received_ts_us": now_us - int(ms * 1000)} for ms in latencies_ms]


def test_small_batch_records_every_trade_exactly() -> None:
    metrics = RunnerMetrics()
    now = 1_700_000_000_000_000
    metrics.record_e2e(_trades(now, [float(ms) for ms in range(1, 101)]), now_us=now)
    e2e = metrics.snapshot()["e2e_latency_ms"]
    assert e2e["count"] == 100
    # HDR keeps 3 significant digits.
    assert abs(e2e["p50"] - 50) <= 0.1
    assert abs(e2e["p99"] - 99) <= 0.1
    assert abs(e2e["max"] - 100) <= 0.1


def test_large_batch_is_sampled_with_stride_weights() -> None:
    metrics = RunnerMetrics()
    now = 1_700_000_000_000_000
    n = E2E_SAMPLES_PER_BATCH * 10
    # Latencies cycle through 1..7 ms; a stride of 10 is coprime with 7, so the sample sees every value.
    metrics.record_e2e(_trades(now, [1.0 + i % 7 for i in range(n)]), now_us=now)
    e2e = metrics.snapshot()["e2e_latency_ms"]
    assert e2e["count"] == n  # each of the 256 samples stands for 10 trades
    assert abs(e2e["max"] - 7) <= 0.01
    assert abs(e2e["p50"] - 4) <= 0.01


def test_empty_batch_and_window_rotation() -> None:
    metrics = RunnerMetrics()
    now = 1_700_000_000_000_000
    metrics.record_e2e([], now_us=now)
    assert metrics.snapshot()["e2e_latency_ms"]["count"] == 0
    metrics._e2e_window_started = now / 1e6
    metrics.record_e2e(_trades(now, [5.0] * 10), now_us=now)
    metrics.record_e2e(_trades(now + 1_500_000, [7.0] * 10), now_us=now + 1_500_000)
    window = metrics.snapshot()["e2e_latency_window_ms"]
    assert window["count"] == 20 and abs(window["max"] - 7) <= 0.01
