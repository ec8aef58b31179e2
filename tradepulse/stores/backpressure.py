"""Backpressure: pause consumption while the hot store is slow, so memory stays bounded and Kafka
holds the backlog.

The runner feeds every hot-store write latency to `BackpressureController.record`; when the p99 of the
recent writes exceeds `threshold_ms` (100 ms), `should_pause()` turns true for `pause_ms` (500 ms) and
the runner pauses its partitions (consumer.pause) while still polling, then resumes. The latency window
is cleared on activation, so the next decision is made on writes after the pause, not on the old slow
ones. `activations` is the metric.

Batch size: with the default `per_rows=0` each write's latency is judged as is (the issue's rule). A
fixed per-write threshold punishes large batches, though: a 5,000-row write that takes 120 ms (42k
rows/s) pauses consumption while a 500-row write taking 90 ms (5.5k rows/s) does not. With
`per_rows=N` (setting `backpressure_per_rows`) a write of more than N rows is judged by its latency
per N rows; writes of up to N rows keep the plain rule. `record(latency_ms, rows)` also keeps the
rows, and `rows_per_s()` reports the recent write throughput for the status page either way.

`SlowHotStore` wraps a hot store and delays each write: the slow sink of the reliability tests.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tradepulse.stores.sqlite_hot import _p99


class BackpressureController:
    """Decides when to pause consumption from recent write latencies (thread-safe)."""

    def __init__(
        self,
        threshold_ms: float = 100.0,
        pause_ms: float = 500.0,
        *,
        window: int = 20,
        min_samples: int = 1,
        per_rows: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold_ms = threshold_ms
        self.per_rows = per_rows
        self.pause_ms = pause_ms
        self.min_samples = min_samples
        self.clock = clock
        self._latencies: deque[float] = deque(maxlen=window)  # as judged (scaled with per_rows)
        self._throughput: deque[tuple[float, int]] = deque(maxlen=window)  # (raw ms, rows)
        self._paused_until = float("-inf")
        self._lock = threading.Lock()
        self.activations = 0

    @classmethod
    def from_settings(cls, settings: Any, **kw: Any) -> BackpressureController:
        kw.setdefault("per_rows", getattr(settings, "backpressure_per_rows", 0))
        return cls(settings.backpressure_latency_ms, settings.backpressure_pause_ms, **kw)

    def record(self, latency_ms: float, rows: int = 0) -> None:
        """One hot-store write of `rows` rows (0 = unknown) took `latency_ms`."""
        judged = latency_ms
        if self.per_rows and rows > self.per_rows:
            judged = latency_ms * self.per_rows / rows
        with self._lock:
            self._latencies.append(judged)
            if rows:
                self._throughput.append((latency_ms, rows))

    def rows_per_s(self) -> float:
        """Rows per second of write time over the recent writes that reported their rows (0 if none)."""
        with self._lock:
            ms = sum(m for m, _ in self._throughput)
            return sum(r for _, r in self._throughput) / ms * 1000 if ms > 0 else 0.0

    @contextmanager
    def measure(self) -> Iterator[None]:
        """Time the enclosed write and record it (also when it raises)."""
        started = self.clock()
        try:
            yield
        finally:
            self.record((self.clock() - started) * 1000)

    def latency_p99_ms(self) -> float:
        with self._lock:
            return _p99(list(self._latencies))

    def should_pause(self) -> bool:
        """True while a pause is active; starts a pause (one activation) when the recent p99 is over
        the threshold."""
        with self._lock:
            now = self.clock()
            if now < self._paused_until:
                return True
            if len(self._latencies) >= self.min_samples and _p99(self._latencies) > self.threshold_ms:
                self._paused_until = now + self.pause_ms / 1000
                self._latencies.clear()
                self.activations += 1
                return True
            return False

    def pause_remaining_s(self) -> float:
        """Seconds left in the current pause (0 when not paused)."""
        return max(0.0, self._paused_until - self.clock())


class SlowHotStore:
    """A hot store whose writes take `delay_s` longer (the slow sink of the reliability tests);
    everything else is delegated."""

    def __init__(
        self, inner: Any, delay_s: float = 0.3, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.sleep = sleep
        self.writes = 0

    def write_batch(self, **rows: Any) -> None:
        self.sleep(self.delay_s)
        self.inner.write_batch(**rows)
        self.writes += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
