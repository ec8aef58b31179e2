"""SQLite hot store: the embedded default that carries the local pipeline.

One file (`settings.sqlite_path`) in WAL mode, so the API process reads while the runner writes: readers
never block the writer and see the last committed micro-batch. Each `write_batch` is one transaction
with one `executemany` per table.

Every row is stored as its JSON document (orjson) next to the few columns that are keyed or queried, so
the stored rows are exactly the dicts the hot path emitted and a model field change needs no migration.

Keys (all writes are idempotent upserts, so a replayed batch overwrites instead of duplicating):
- trades by `event_id`; the latest trade of a ticker is the newest by (exchange_ts_ms, sequence),
  found through the (ticker, exchange_ts_ms, sequence) index, not the last one written;
- feature snapshots by (ticker, ts_ms); the latest features are the newest snapshot;
- anomalies by `anomaly_id`; correlations by `correlation_id`.

Rows older than the TTL (event time, default 48 h) are removed by `purge_expired`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from tradepulse.stores.base import Row

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trades (
    event_id TEXT PRIMARY KEY,
    ticker TEXT NOT NULL,
    exchange_ts_ms INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    doc BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS trades_by_ticker_time ON trades (ticker, exchange_ts_ms, sequence);
CREATE TABLE IF NOT EXISTS features (
    ticker TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    doc BLOB NOT NULL,
    PRIMARY KEY (ticker, ts_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS anomalies (
    anomaly_id TEXT PRIMARY KEY,
    ticker TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    doc BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS anomalies_by_ticker_time ON anomalies (ticker, ts_ms);
CREATE INDEX IF NOT EXISTS anomalies_by_time ON anomalies (ts_ms);
CREATE TABLE IF NOT EXISTS correlations (
    correlation_id TEXT PRIMARY KEY,
    ticker TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    doc BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS correlations_by_ticker_time ON correlations (ticker, ts_ms);
CREATE INDEX IF NOT EXISTS correlations_by_time ON correlations (ts_ms);
CREATE TABLE IF NOT EXISTS tickers (
    ticker TEXT PRIMARY KEY,
    last_ts_ms INTEGER NOT NULL
) WITHOUT ROWID;
"""

_UPSERT_TRADE = (
    "INSERT INTO trades (event_id, ticker, exchange_ts_ms, sequence, doc) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (event_id) DO UPDATE SET ticker = excluded.ticker, "
    "exchange_ts_ms = excluded.exchange_ts_ms, sequence = excluded.sequence, doc = excluded.doc"
)
_UPSERT_FEATURE = (
    "INSERT INTO features (ticker, ts_ms, doc) VALUES (?, ?, ?) "
    "ON CONFLICT (ticker, ts_ms) DO UPDATE SET doc = excluded.doc"
)
_UPSERT_ANOMALY = (
    "INSERT INTO anomalies (anomaly_id, ticker, ts_ms, doc) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (anomaly_id) DO UPDATE SET ticker = excluded.ticker, ts_ms = excluded.ts_ms, "
    "doc = excluded.doc"
)
_UPSERT_CORRELATION = (
    "INSERT INTO correlations (correlation_id, ticker, ts_ms, doc) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (correlation_id) DO UPDATE SET ticker = excluded.ticker, ts_ms = excluded.ts_ms, "
    "doc = excluded.doc"
)
_UPSERT_TICKER = (
    "INSERT INTO tickers (ticker, last_ts_ms) VALUES (?, ?) "
    "ON CONFLICT (ticker) DO UPDATE SET last_ts_ms = max(last_ts_ms, excluded.last_ts_ms)"
)


def _p99(samples: Iterable[float]) -> float:
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    # Nearest-rank percentile: no interpolation, so the value is one that was actually observed.
    rank = max(0, -(-99 * len(ordered) // 100) - 1)
    return ordered[rank]


class SqliteHotStore:
    """HotStore on one SQLite file in WAL mode. Thread-safe: one writer connection behind a lock,
    one reader connection per thread. Several processes may open the same file."""

    def __init__(
        self,
        path: str | Path,
        *,
        ttl_hours: int = 48,
        latency_window: int = 256,
        busy_timeout_ms: int = 10_000,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ttl_ms = ttl_hours * 3600 * 1000
        self._busy_timeout_ms = busy_timeout_ms
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._closed = False
        self._writer = self._connect()
        with self._write_lock:
            self._writer.executescript(_SCHEMA)

    # --- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is exactly one transaction.
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); only an OS crash can lose the last
        # commits, which the runner replays from Kafka anyway.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: keeps the index pages of a busy day hot
        return conn

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # --- writes ----------------------------------------------------------------------------------

    def write_batch(
        self,
        *,
        trades: Sequence[Row] = (),
        features: Sequence[Row] = (),
        anomalies: Sequence[Row] = (),
        correlations: Sequence[Row] = (),
    ) -> None:
        """Upsert one micro-batch in a single transaction."""
        if not (trades or features or anomalies or correlations):
            return
        dumps = orjson.dumps
        last_seen: dict[str, int] = {}
        trade_rows = []
        for t in trades:
            ticker, ts = t["ticker"], t["exchange_ts_ms"]
            trade_rows.append((t["event_id"], ticker, ts, t["sequence"], dumps(t)))
            if ts > last_seen.get(ticker, -1):
                last_seen[ticker] = ts
        feature_rows = []
        for f in features:
            ticker, ts = f["ticker"], f["ts_ms"]
            feature_rows.append((ticker, ts, dumps(f)))
            if ts > last_seen.get(ticker, -1):
                last_seen[ticker] = ts
        anomaly_rows = [(a["anomaly_id"], a["ticker"], a["ts_ms"], dumps(a)) for a in anomalies]
        correlation_rows = [
            (c["correlation_id"], c["ticker"], c["published_ts_ms"], dumps(c)) for c in correlations
        ]
        started = time.perf_counter()
        with self._write_lock:
            if self._closed:
                raise RuntimeError("store is closed")
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                if trade_rows:
                    conn.executemany(_UPSERT_TRADE, trade_rows)
                if feature_rows:
                    conn.executemany(_UPSERT_FEATURE, feature_rows)
                if anomaly_rows:
                    conn.executemany(_UPSERT_ANOMALY, anomaly_rows)
                if correlation_rows:
                    conn.executemany(_UPSERT_CORRELATION, correlation_rows)
                if last_seen:
                    conn.executemany(_UPSERT_TICKER, list(last_seen.items()))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._latencies.append((time.perf_counter() - started) * 1000)

    def purge_expired(self, now_ms: int) -> int:
        """Delete rows whose event time is older than the TTL; returns how many rows went."""
        cutoff = now_ms - self.ttl_ms
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                tickers = [r[0] for r in conn.execute("SELECT ticker FROM tickers")]
                deleted = 0
                # Per ticker, so each delete is a range on the (ticker, time) index, not a table scan.
                for ticker in tickers:
                    deleted += conn.execute(
                        "DELETE FROM trades WHERE ticker = ? AND exchange_ts_ms < ?", (ticker, cutoff)
                    ).rowcount
                    deleted += conn.execute(
                        "DELETE FROM features WHERE ticker = ? AND ts_ms < ?", (ticker, cutoff)
                    ).rowcount
                deleted += conn.execute("DELETE FROM anomalies WHERE ts_ms < ?", (cutoff,)).rowcount
                deleted += conn.execute("DELETE FROM correlations WHERE ts_ms < ?", (cutoff,)).rowcount
                conn.execute("DELETE FROM tickers WHERE last_ts_ms < ?", (cutoff,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return deleted

    # --- reads -----------------------------------------------------------------------------------

    def _one(self, sql: str, params: tuple[Any, ...]) -> Row | None:
        row = self._reader().execute(sql, params).fetchone()
        return orjson.loads(row[0]) if row else None

    def _many(self, sql: str, params: tuple[Any, ...]) -> list[Row]:
        return [orjson.loads(r[0]) for r in self._reader().execute(sql, params)]

    def latest_trade(self, ticker: str) -> Row | None:
        return self._one(
            "SELECT doc FROM trades WHERE ticker = ? ORDER BY exchange_ts_ms DESC, sequence DESC LIMIT 1",
            (ticker,),
        )

    def latest_features(self, ticker: str) -> Row | None:
        return self._one("SELECT doc FROM features WHERE ticker = ? ORDER BY ts_ms DESC LIMIT 1", (ticker,))

    def feature_history(self, ticker: str, since_ms: int, limit: int = 2000) -> list[Row]:
        """Feature snapshots since `since_ms`, oldest first (the newest `limit` of them)."""
        rows = self._many(
            "SELECT doc FROM features WHERE ticker = ? AND ts_ms >= ? ORDER BY ts_ms DESC LIMIT ?",
            (ticker, since_ms, limit),
        )
        rows.reverse()
        return rows

    def trades(self, ticker: str, since_ms: int, limit: int = 10_000) -> list[Row]:
        """Trades of a ticker since `since_ms`, oldest first (the newest `limit` of them)."""
        rows = self._many(
            "SELECT doc FROM trades WHERE ticker = ? AND exchange_ts_ms >= ? "
            "ORDER BY exchange_ts_ms DESC, sequence DESC LIMIT ?",
            (ticker, since_ms, limit),
        )
        rows.reverse()
        return rows

    def anomalies(self, ticker: str | None, since_ms: int, limit: int = 1000) -> list[Row]:
        """Anomalies since `since_ms` (all tickers when `ticker` is None), oldest first."""
        if ticker is None:
            rows = self._many(
                "SELECT doc FROM anomalies WHERE ts_ms >= ? ORDER BY ts_ms DESC LIMIT ?", (since_ms, limit)
            )
        else:
            rows = self._many(
                "SELECT doc FROM anomalies WHERE ticker = ? AND ts_ms >= ? ORDER BY ts_ms DESC LIMIT ?",
                (ticker, since_ms, limit),
            )
        rows.reverse()
        return rows

    def correlations(self, ticker: str | None, since_ms: int, limit: int = 1000) -> list[Row]:
        """Correlations published since `since_ms` (all tickers when `ticker` is None), oldest first."""
        if ticker is None:
            rows = self._many(
                "SELECT doc FROM correlations WHERE ts_ms >= ? ORDER BY ts_ms DESC LIMIT ?",
                (since_ms, limit),
            )
        else:
            rows = self._many(
                "SELECT doc FROM correlations WHERE ticker = ? AND ts_ms >= ? ORDER BY ts_ms DESC LIMIT ?",
                (ticker, since_ms, limit),
            )
        rows.reverse()
        return rows

    def tickers(self) -> list[str]:
        return [r[0] for r in self._reader().execute("SELECT ticker FROM tickers ORDER BY ticker")]

    def count(self, table: str) -> int:
        """Row count of one table (trades, features, anomalies, correlations); for checks and tests."""
        if table not in {"trades", "features", "anomalies", "correlations"}:
            raise ValueError(f"unknown table {table!r}")
        return self._reader().execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def trade_ids(self) -> set[str]:
        """Every stored trade event_id (the chaos test compares this with the simulator's set)."""
        return {r[0] for r in self._reader().execute("SELECT event_id FROM trades")}

    def write_latency_p99_ms(self) -> float:
        return _p99(list(self._latencies))

    def close(self) -> None:
        if self._closed:
            return
        with self._write_lock:
            self._closed = True
            self._writer.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    def __enter__(self) -> SqliteHotStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
