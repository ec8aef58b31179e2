"""Backpressure: pause consumption while the hot store is slow, so memory stays bounded and Kafka
holds the backlog.

The runner feeds every hot-store write latency to `BackpressureController.record`; when the p99 of the
recent writes exceeds `threshold_ms` (100 ms), `should_pause()` turns true for `pause_ms` (500 ms) and
the runner pauses its partitions (consumer.pause) while still polling, then resumes. The latency window
is cleared on activation, so the next decision is made on writes after the pause, not on the old slow
ones. `activations` is the metric.

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold_ms = threshold_ms
        self.pause_ms = pause_ms
        self.min_samples = min_samples
        self.clock = clock
        self._latencies: deque[float] = deque(maxlen=window)
        self._paused_until = float("-inf")
        self._lock = threading.Lock()
        self.activations = 0

    @classmethod
    def from_settings(cls, settings: Any, **kw: Any) -> BackpressureController:
        return cls(settings.backpressure_latency_ms, settings.backpressure_pause_ms, **kw)

    def record(self, latency_ms: float) -> None:
        """One hot-store write took `latency_ms`."""
        with self._lock:
            self._latencies.append(latency_ms)

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
