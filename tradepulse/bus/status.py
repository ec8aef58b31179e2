"""Runner metrics and the status heartbeat that `/health` reads.

After each committed batch (at most once per `interval_s`) the runner publishes its status through
`publish_status`: always to `<data_dir>/runner-status.json` (`runner-status-<instance>.json` for other
instances), atomically (temporary file + rename) so a reader never sees half a file, and also to the hot
store when it holds heartbeats (DynamoDB: the Lambda API has no shared disk with the runner). The
transport lives in `tradepulse.bus.heartbeat` (re-exported here), which readers import without numpy.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Re-exported: the runner and older callers import the transport from here.
from tradepulse.bus.heartbeat import STATUS_FILE as STATUS_FILE
from tradepulse.bus.heartbeat import publish_status as publish_status
from tradepulse.bus.heartbeat import stages_path as stages_path
from tradepulse.bus.heartbeat import status_files as status_files
from tradepulse.bus.heartbeat import status_path as status_path
from tradepulse.bus.heartbeat import write_json_atomic as write_json_atomic
from tradepulse.bus.stages import LatencyHistogram, StageTimes, histograms_data, strided, summaries_ms
from tradepulse.percentiles import nearest_rank


def percentile(samples: deque[float] | list[float], q: float) -> float:
    """The q-th percentile of the samples (nearest rank: the one definition, tradepulse.percentiles),
    0.0 when there are none."""
    return nearest_rank(samples, q)


# Trades recorded per batch at most; each sample stands for `stride` trades, so counts stay exact-ish
# while the recording cost per batch stays bounded whatever the batch size.
E2E_SAMPLES_PER_BATCH = 256
#: The bench's e2e chart: percentiles of each complete window of this length.
E2E_WINDOW_S = 1.0


@dataclass
class RunnerMetrics:
    """Counters and recent latencies of one runner process."""

    events_processed: int = 0
    batches: int = 0
    dead_letters: int = 0
    late_events: int = 0
    outliers: dict[str, int] = field(default_factory=dict)  # suspect trades flagged, per reason
    unknown_conditions: int = 0  # trades with a condition code the rules do not know (issue 17)
    bar_checks: dict[str, int] = field(default_factory=dict)  # ticker-minutes reconciled, per status
    bar_mismatch_fields: dict[str, int] = field(default_factory=dict)  # mismatches per field
    backpressure_activations: int = 0
    outputs_produced: int = 0
    consumer_lag: int = 0
    model_version: int = 0
    dlq_depth: int = 0
    assigned_partitions: int = 0
    assignments: int = 0
    last_commit_at: float | None = None
    started_at: float = field(default_factory=time.time)
    # Set by a graceful shutdown: the last heartbeat says the runner left (not lost), see api.health.
    stopped_at: float | None = None
    batch_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2048))
    write_ms: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    # (monotonic time, events_processed) samples over the last ~10 s for the rate.
    _rate: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))
    # Per-stage latency histograms (the run and the last minute), e2e (per trade) included.
    stages: StageTimes = field(default_factory=StageTimes)
    # End-to-end latency of the last complete ~1 s window (the bench's latency chart).
    _e2e_window: LatencyHistogram = field(default_factory=LatencyHistogram)
    _e2e_last_window: dict[str, float] = field(default_factory=dict)
    _e2e_window_started: float = field(default_factory=time.time)

    def committed(self, events: int, batch_ms: float) -> None:
        """Account one committed batch."""
        self.events_processed += events
        self.batches += 1
        self.batch_ms.append(batch_ms)
        self.last_commit_at = time.time()

    def count_bar_checks(self, checks: Sequence[Mapping[str, Any]]) -> None:
        """Account one committed batch's bar reconciliation decisions (`tradepulse.core.reconcile`)."""
        for check in checks:
            self.bar_checks[check["status"]] = self.bar_checks.get(check["status"], 0) + 1
            if check["status"] == "mismatch":
                for name in check["fields"]:
                    self.bar_mismatch_fields[name] = self.bar_mismatch_fields.get(name, 0) + 1

    def record_stages(self, **ms: float) -> None:
        """Account the time of each stage of one batch (ms; names from `stages.BATCH_STAGES`)."""
        self.stages.record_batch(**ms)

    def record_e2e(self, trades: Sequence[Mapping[str, Any]], now_us: int | None = None) -> None:
        """Record now − received_ts_us for a batch of trades just committed to the hot store (a strided
        sample of at most E2E_SAMPLES_PER_BATCH of them, each weighted by the stride)."""
        if not trades:
            return
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        sample, stride = strided(trades, E2E_SAMPLES_PER_BATCH)
        received = np.fromiter((row["received_ts_us"] for row in sample), np.int64, len(sample))
        latency = now_us - received
        self.stages.record_latencies("e2e", latency, stride)
        self._e2e_window.record_many(latency, stride)
        if now_us / 1e6 - self._e2e_window_started >= E2E_WINDOW_S:
            self._e2e_last_window = {"end": now_us / 1e6, **self._e2e_window.summary_ms()}
            self._e2e_window = LatencyHistogram()
            self._e2e_window_started = now_us / 1e6

    def record_freshness(self, event_ts_ms: Mapping[str, np.ndarray], now_ms: float | None = None) -> None:
        """Record now − event time per freshness stage for the trades whose feature revision was just
        committed to the hot store (a strided sample, as `record_e2e`)."""
        now_ms = time.time() * 1000 if now_ms is None else now_ms
        for stage, ts in event_ts_ms.items():
            if len(ts):
                stride = max(1, -(-len(ts) // E2E_SAMPLES_PER_BATCH))  # as `strided`, on an array
                sample = np.asarray(ts[::stride], dtype=np.float64)
                self.stages.record_latencies(stage, (now_ms - sample) * 1000, stride)

    def events_per_s(self) -> float:
        """Events/s over the last ~10 s of samples (sampled when the status is written)."""
        now = time.monotonic()
        self._rate.append((now, self.events_processed))
        while len(self._rate) > 2 and now - self._rate[0][0] > 10:
            self._rate.popleft()
        (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def snapshot(self) -> dict[str, Any]:
        """The status document (field names are the contract with `tradepulse.api.health`)."""
        run, minute = self.stages.summaries()
        return self._document(run, minute)

    def snapshot_and_histograms(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """The status document and, from the same copies, the whole run's stage histograms as data (what
        the runner leaves in `stages_path`)."""
        run, minute = self.stages.copies()
        return self._document(summaries_ms(run), summaries_ms(minute)), histograms_data(run)

    def _document(
        self, run: dict[str, dict[str, float]], minute: dict[str, dict[str, float]]
    ) -> dict[str, Any]:
        return {
            "updated_at": time.time(),
            # Until the first commit the start time stands in, so /health can tell "idle" from "never ran".
            "last_commit_at": self.last_commit_at if self.last_commit_at is not None else self.started_at,
            "consumer_lag": int(self.consumer_lag),
            "events_processed": self.events_processed,
            "events_per_s": round(self.events_per_s(), 1),
            "batch_p50_ms": round(percentile(self.batch_ms, 50), 3),
            "batch_p99_ms": round(percentile(self.batch_ms, 99), 3),
            "write_p99_ms": round(percentile(self.write_ms, 99), 3),
            # The whole run per stage (count, p50 … p99.9, max, total ms): the bench's stage breakdown.
            "stages_ms": run,
            # The last minute per stage, and e2e of the last minute: what /health, /metrics and the
            # dashboard show live.
            "stage_p50_ms": {stage: s["p50"] for stage, s in minute.items()},
            "stage_p99_ms": {stage: s["p99"] for stage, s in minute.items()},
            "e2e_latency_p50_ms": minute["e2e"]["p50"] if minute["e2e"]["count"] else None,
            "e2e_latency_p99_ms": minute["e2e"]["p99"] if minute["e2e"]["count"] else None,
            "e2e_latency_ms": run["e2e"],
            "e2e_latency_window_ms": self._e2e_last_window,
            "backpressure_activations": self.backpressure_activations,
            "dlq_depth": self.dlq_depth,
            "dead_letters": self.dead_letters,
            "late_events": self.late_events,
            "outliers": dict(self.outliers),
            "unknown_conditions": self.unknown_conditions,
            "bar_checks": dict(self.bar_checks),
            "bar_mismatch_fields": dict(self.bar_mismatch_fields),
            "model_version": self.model_version,
            "batches": self.batches,
            "assigned_partitions": self.assigned_partitions,
            "assignments": self.assignments,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "pid": os.getpid(),
        }
