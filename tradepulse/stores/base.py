"""Interfaces of the stores. The runner writes through them, the API reads through them, and each has
an embedded backend (SQLite / local Parquet) and an AWS backend (DynamoDB / S3 / SQS).

Rows are plain dicts with the fields of the models in `tradepulse.models` (no per-row object churn on
the hot path). Every write is an idempotent upsert by a deterministic key, so replaying a batch after a
crash overwrites instead of duplicating.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

Row = dict[str, Any]


def feature_key(row: Row) -> tuple[int, int]:
    """(second start, revision) of a feature vector: the hot stores keep, per (ticker, second start),
    the highest revision written (docs/schema.md#featurevector-revisions). A vector from before
    revisions existed is the final revision of the second at its own ts_ms."""
    start = row.get("snapshot_start_ms")
    return (row["ts_ms"] if start is None else start), row.get("revision", 1)


class HotStore(Protocol):
    """Last 48 h, single-digit-ms reads. Keys: trades by event_id, features by (ticker, second start)
    keeping the highest revision (`feature_key`),
    anomalies by anomaly_id, correlations by correlation_id, bars by (ticker, start_ms)."""

    def write_batch(
        self,
        *,
        trades: Sequence[Row] = (),
        features: Sequence[Row] = (),
        anomalies: Sequence[Row] = (),
        correlations: Sequence[Row] = (),
        bars: Sequence[Row] = (),
    ) -> None:
        """Upsert everything of one micro-batch (one transaction where the backend has them)."""

    def latest_trade(self, ticker: str) -> Row | None: ...

    def latest_features(self, ticker: str) -> Row | None: ...

    def feature_history(self, ticker: str, since_ms: int, limit: int = 2000) -> list[Row]:
        """1-second feature vectors (latest revision each; DynamoDB: final revisions), oldest first."""

    def anomalies(self, ticker: str | None, since_ms: int, limit: int = 1000) -> list[Row]:
        """Anomalies since `since_ms`, oldest first (newest `limit`); `ticker=None` = all tickers."""

    def correlations(self, ticker: str | None, since_ms: int, limit: int = 1000) -> list[Row]:
        """Correlations published since `since_ms`, oldest first; `ticker=None` = all tickers."""

    def outliers(self, ticker: str | None, since_ms: int, limit: int = 1000) -> list[Row]:
        """Trades the runner flagged `outlier` (with `outlier_reason`, `reference_price`, `band_usd`)
        since `since_ms`, oldest first (newest `limit`); `ticker=None` = all tickers."""

    def bars(self, ticker: str, since_ms: int, limit: int = 1000) -> list[Row]:
        """One-minute bars of a ticker starting at or after `since_ms`, oldest first (newest `limit`)."""

    def tickers(self) -> list[str]: ...

    def purge_expired(self, now_ms: int, *, chunk_rows: int = 5000) -> int:
        """Delete rows older than the TTL, at most `chunk_rows` per transaction; returns how many."""

    def write_latency_p99_ms(self) -> float:
        """p99 of recent write_batch latencies (the backpressure and /health signal)."""

    @property
    def throttles(self) -> int:
        """Write calls the backend throttled since the store was opened (the HotWriteThrottles metric,
        `tradepulse.metrics_emf`); 0 for a backend that never throttles."""

    def put_runner_status(self, status: dict[str, Any], instance: str = "0") -> None:
        """Keep a runner heartbeat where readers without the runner's disk find it (DynamoDB: the API
        Lambda); a no-op for a backend whose readers share the runner's disk and read its status file
        (`tradepulse.bus.heartbeat.publish_status` always writes that file)."""

    def get_runner_statuses(self) -> dict[str, dict[str, Any]]:
        """Runner instance → its latest heartbeat document, where the runners publish them to the hot
        store (DynamoDB: no shared disk in AWS); {} for a backend whose runners write status files
        (SQLite). /health reads it through `HotStoreRunnerStatusSource`."""

    def close(self) -> None: ...


class ColdStore(Protocol):
    """History as Parquet (Snappy, Hive partitions), written idempotently per Kafka offset block: every
    row of a topic the runner consumes (its inputs, and its own outputs read back), deduplicated by
    the dataset's natural key. What the runner calls (`tradepulse.stores.parquet_cold`)."""

    def append_batch(
        self,
        topic: str,
        rows: list[Row],
        positions: list[tuple[int, int]],
        *,
        start: Mapping[tuple[str, int], int] | None = None,
        flush: bool = True,
        columns: Mapping[str, Any] | None = None,
    ) -> int:
        """Buffer one micro-batch of `topic` (`rows[i]` consumed at `positions[i]` = (partition,
        offset)), skipping rows below `start[(topic, partition)]`; flush what is due unless
        `flush=False`. Returns the files written."""

    def next_offset(self, topic: str, partition: int) -> int | None:
        """The next offset of (topic, partition) not yet durably written (None = nothing known)."""

    def flush(self, *, force: bool = False) -> int:
        """Write buffered rows whose size/time limit is reached (all, with force); returns files written."""

    def archive_dead_letters(self, letters: list[Row]) -> int:
        """Write letters the DLQ gave up on (the redrive policy's `archive`); returns files written."""

    def close(self) -> None:
        """Flush everything (a store that is dropped instead loses its buffers, by design)."""


class DeadLetterQueue(Protocol):
    """Messages that failed validation or processing, with context, class, history and redrive."""

    def put(self, letters: Iterable[Row]) -> None:
        """Add letters; a letter whose id is already queued becomes pending again (retries, original
        failure and history kept)."""

    def pending(self, limit: int = 100, failure_class: str | None = None) -> list[Row]:
        """Pending letters (of one failure class: transient, permanent; both when None), oldest first."""

    def letters(
        self, status: str | None = None, limit: int = 100, failure_class: str | None = None
    ) -> list[Row]:
        """Letters with a status (pending, redriven, archived) and class (all when None), oldest first."""

    def update(self, letter: Row) -> None:
        """Store a letter's new state after a redrive attempt."""

    def depth(self) -> int:
        """Pending letters."""

    def counts(self) -> dict[str, int]:
        """Pending letters per failure class."""

    def close(self) -> None: ...
