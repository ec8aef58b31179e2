"""Backpressure: pause consumption while the hot store is slow, so memory stays bounded and Kafka
holds the backlog.

Flow control of the runner (it lives with the runner, not with the stores it protects). The runner feeds
every hot-store write latency to `BackpressureController.record`; when the median (nearest rank,
`tradepulse.percentiles`) of the recent writes exceeds `threshold_ms` (100 ms), `should_pause()` turns
true for `pause_ms` (500 ms) and the runner pauses its partitions (consumer.pause) while still polling,
then resumes. The latency window is cleared on activation, so the next decision is made on writes after
the pause (at least `min_samples` of them), not on the old slow ones. `activations` is the metric.

The median, not the p99: the p99 of at most 20 writes is the slowest one, so a single slow write (a busy
machine's hiccup, a large catch-up batch) paused the runner, and each pause cost more than its 500 ms
(librdkafka drops what it had fetched for paused partitions and fetches it again). In the market-open
burst on the 2-core box the runner paused 22–29 times and its lag peaked at 32–50 s of data; deciding on
the median it paused 0 times and peaked at 18–21 s (docs/benchmarks.md, session 10). A sink that has
become slow makes most of its writes slow, and that still pauses within three writes. The write p99 stays
what /health, the alarms and the runbook report.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tradepulse.percentiles import nearest_rank


class BackpressureController:
    """Decides when to pause consumption from recent write latencies (thread-safe)."""

    def __init__(
        self,
        threshold_ms: float = 100.0,
        pause_ms: float = 500.0,
        *,
        window: int = 20,
        min_samples: int = 3,
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

    def latency_p50_ms(self) -> float:
        """The median of the writes since the last pause (at most the last `window`)."""
        with self._lock:
            return nearest_rank(self._latencies, 50)

    def should_pause(self) -> bool:
        """True while a pause is active; starts a pause (one activation) when the median of at least
        `min_samples` recent writes is over the threshold."""
        with self._lock:
            now = self.clock()
            if now < self._paused_until:
                return True
            if (
                len(self._latencies) >= self.min_samples
                and nearest_rank(self._latencies, 50) > self.threshold_ms
            ):
                self._paused_until = now + self.pause_ms / 1000
                self._latencies.clear()
                self.activations += 1
                return True
            return False

    def pause_remaining_s(self) -> float:
        """Seconds left in the current pause (0 when not paused)."""
        return max(0.0, self._paused_until - self.clock())
