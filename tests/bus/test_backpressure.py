"""Backpressure: a slow sink (300 ms per write) engages the pause, one slow write does not; activations
are counted, in-flight memory stays bounded and nothing is lost."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.doubles import SlowHotStore
from tests.stores.conftest import BASE_MS, make_trade
from tradepulse.bus.backpressure import BackpressureController
from tradepulse.config import Settings
from tradepulse.stores.sqlite_hot import SqliteHotStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def timed_write(bp: BackpressureController, clock: Callable[[], float], write: Callable[[], None]) -> None:
    """Time one write and record it, as the runner does around each hot-store write_batch."""
    started = clock()
    write()
    bp.record((clock() - started) * 1000)


def test_controller_pauses_over_threshold_for_pause_ms_then_needs_new_evidence() -> None:
    clock = Clock()
    bp = BackpressureController(threshold_ms=100, pause_ms=500, clock=clock)
    for _ in range(10):
        bp.record(20)
    assert not bp.should_pause() and bp.activations == 0
    for _ in range(11):  # now most of the last 20 writes are slow
        bp.record(300)
    assert bp.should_pause() and bp.activations == 1
    clock.now += 0.499
    assert bp.should_pause() and bp.activations == 1  # still the same pause
    clock.now += 0.002
    assert not bp.should_pause()  # the window was cleared: no new slow write, no new pause
    bp.record(150)
    bp.record(150)
    assert not bp.should_pause()  # two writes are not yet evidence (min_samples)
    bp.record(150)
    assert bp.should_pause() and bp.activations == 2


def test_one_slow_write_among_fast_ones_does_not_pause() -> None:
    """A busy machine's hiccup (a 220 ms write among 10 ms ones) is not a slow sink: pausing for it
    stalls every record behind it for the pause and the refetch that follows."""
    bp = BackpressureController(threshold_ms=100, clock=Clock())
    for latency in (10, 10, 10, 220, 10, 10, 400, 10, 10):
        bp.record(latency)
        assert not bp.should_pause()
    assert bp.activations == 0


def test_controller_decides_on_the_median_of_recent_writes() -> None:
    bp = BackpressureController(threshold_ms=100, window=20, clock=Clock())
    for _ in range(10):
        bp.record(10)
    for _ in range(10):
        bp.record(500)
    assert bp.latency_p50_ms() == 10 and not bp.should_pause()  # half slow: the median is still fast
    bp.record(500)  # the oldest fast write leaves the window: 11 of 20 slow
    assert bp.latency_p50_ms() == 500 and bp.should_pause()


def test_from_settings() -> None:
    clock = Clock()
    bp = BackpressureController.from_settings(
        Settings(backpressure_latency_ms=50, backpressure_pause_ms=200), clock=clock
    )
    assert (bp.threshold_ms, bp.pause_ms) == (50, 200)
    for _ in range(3):
        timed_write(bp, clock, lambda: clock.sleep(0.06))
    assert abs(bp.latency_p50_ms() - 60) < 1e-6
    assert bp.should_pause()


def test_slow_sink_engages_backpressure_without_loss_and_bounded_memory(tmp_path: Path) -> None:
    """A consume loop like the runner's against a 300 ms/write hot store: the source stands in for Kafka
    (it holds the backlog while paused), time is simulated so the test does not wait."""
    clock = Clock()
    store = SqliteHotStore(tmp_path / "hot.sqlite3")
    slow = SlowHotStore(store, delay_s=0.3, sleep=clock.sleep)
    bp = BackpressureController(threshold_ms=100, pause_ms=500, clock=clock)
    backlog = deque(make_trade("AAPL", seq=i, ts_ms=BASE_MS + i) for i in range(5000))
    batch_max, max_in_flight, paused_polls = 200, 0, 0
    rss_before = psutil.Process().memory_info().rss
    while backlog:
        if bp.should_pause():
            paused_polls += 1
            clock.sleep(0.1)  # consumer.consume(timeout) on paused partitions: polling, nothing fetched
            continue
        batch = [backlog.popleft() for _ in range(min(batch_max, len(backlog)))]
        max_in_flight = max(max_in_flight, len(batch))
        timed_write(bp, clock, lambda: slow.write_batch(trades=batch))  # noqa: B023 - called at once
    rss_growth = psutil.Process().memory_info().rss - rss_before
    assert slow.writes == 25
    # Every third 300 ms write trips the 100 ms limit (min_samples = 3 since the last pause): writes 3, 6,
    # …, 24 (the 25th ends the loop).
    assert bp.activations == 8
    assert paused_polls == 8 * 5  # 500 ms pause in 100 ms polls
    assert max_in_flight == batch_max  # only one batch in memory at a time
    assert store.count("trades") == 5000 and len(store.trade_ids()) == 5000  # nothing lost
    assert rss_growth < 64 * 1024 * 1024
    store.close()


def test_real_clock_pause_expires(tmp_path: Path) -> None:
    bp = BackpressureController(threshold_ms=5, pause_ms=30)
    slow = SlowHotStore(SqliteHotStore(tmp_path / "hot.sqlite3"), delay_s=0.01)
    for _ in range(3):
        timed_write(bp, time.perf_counter, lambda: slow.write_batch(trades=[make_trade()]))
    assert bp.should_pause()
    time.sleep(bp.pause_remaining_s() + 0.005)
    assert not bp.should_pause() and bp.activations == 1
    assert slow.latest_trade("AAPL") == make_trade()  # delegation
    slow.close()
