"""SQLite hot store: the embedded default that carries the local pipeline.

One file (`settings.sqlite_path`) in WAL mode, so the API process reads while the runner writes: readers
never block the writer and see the last committed write (the runner writes a micro-batch's trades, then
its core's outputs: `tradepulse.bus.runner`). Each `write_batch` is one transaction
with a few multi-row statements per table (`MULTI_ROWS`: never a statement per row, each one hands the
GIL to the runner's other threads).

Every row is stored as its JSON document (orjson) next to the few columns that are keyed or queried, so
the stored rows are exactly the dicts the hot path emitted and a model field change needs no migration.
Trades, the bulk of every batch, store the document compactly: the key columns are not repeated and the
other fields are a JSON array in `Trade` field order (`vals`); a row with other keys than exactly the
`Trade` fields keeps its whole JSON object instead, so reads still return exactly what was written.

Keys (all writes are idempotent upserts, so a replayed batch overwrites instead of duplicating):
- trades in a `WITHOUT ROWID` table clustered on (exchange_ts_ms, ticker, sequence, event_id): one
  B-tree insert per trade, appended at the tail of the tree (event time grows), instead of three random
  inserts (rowid, random event_id key, time index) into tables of millions of rows. `event_id` is a
  deterministic function of (ticker, exchange, trade_id, exchange_ts_ms, sequence)
  (`tradepulse.ids.trade_event_id`), so a replayed trade has the same full key and replaces itself:
  the upsert is still by `event_id`. The TTL purge is one range delete on the key prefix.
- the latest trade per ticker in `latest_trades`: the newest by (exchange_ts_ms, sequence) of each
  batch, computed once per batch in Python, replaces the stored one only when it is newer (a late or
  replayed batch never moves it back), so `latest_trade` is one key lookup;
- feature vectors by (ticker, start_ms) (start_ms = the vector's `snapshot_start_ms`, its second), with
  a revision guard: a row is replaced only by a revision at least as high (a replay after a crash may
  write a lower revision again after a higher one; it never moves the row back). The latest features
  are the latest revision of the newest second (docs/schema.md#featurevector-revisions);
- anomalies by `anomaly_id`; correlations by `correlation_id`;
- one-minute bars by (ticker, start_ms) (one bar per ticker-minute; its `bar_id` is a function of both).

Rows older than the TTL (event time, default 48 h) are removed by `purge_expired`, in bounded chunks;
`tradepulse process` runs it every `hot_purge_interval_s` in a background thread
(`tradepulse.stores.retention`).

Durability: `synchronous = NORMAL` in WAL mode. A commit survives a process crash (kill -9); an OS crash
or power loss can drop the last commits. That is acceptable because the hot store is never the system
of record: the runner commits its Kafka offsets only after `write_batch` returned, and the hot store
holds derived data of the last 48 h, so lost commits are replayed from Kafka (idempotently).

Checkpoints: the writer does not copy the WAL back into the database file inside its COMMIT (SQLite's
auto-checkpoint, every 1,000 pages, about every other micro-batch, with an fsync); once `write_batch` has
run, a background thread on its own connection runs a PASSIVE checkpoint after commits, at most every
`CHECKPOINT_INTERVAL_S`. The checkpoint runs outside the GIL, so the runner's next batch does not wait
for it (a fifth of the hot-store write time in a drain). Durability is unchanged: a commit is in the WAL
either way, and the WAL still restarts from the beginning after each complete checkpoint.

Schema versions: the file carries `PRAGMA user_version` = `SCHEMA_VERSION`. A file written with an older
layout is not migrated (it is a 48 h cache): opening it raises `SchemaMismatch`, which says to delete
the file (the runner refills it from Kafka as it consumes).

Why one module of this size: one backend behind the `HotStore` Protocol, its schema, upserts, reads
and chunked purge share one connection/lock discipline (WAL, one writer) that is easiest to check in
one place; the shared helpers are elsewhere (`tradepulse.percentiles`, `tradepulse.stores.base`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import typing
from collections import deque
from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from tradepulse.errors import InvalidArgument, StoreError
from tradepulse.models import StoredTrade
from tradepulse.percentiles import nearest_rank
from tradepulse.stores.base import Row, feature_key

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
"""1: trades keyed by a random event_id with a rowid and a time index; 2: clustered trades, compact docs;
3: features keyed by (ticker, second start) with their revision (fresh features, issue 19)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trades (
    exchange_ts_ms INTEGER NOT NULL,
    ticker TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    vals BLOB NOT NULL,
    PRIMARY KEY (exchange_ts_ms, ticker, sequence, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latest_trades (
    ticker TEXT PRIMARY KEY,
    exchange_ts_ms INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    vals BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS features (
    ticker TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    doc BLOB NOT NULL,
    PRIMARY KEY (ticker, start_ms)
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
CREATE TABLE IF NOT EXISTS outliers (
    event_id TEXT PRIMARY KEY,
    ticker TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    doc BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outliers_by_ticker_time ON outliers (ticker, ts_ms);
CREATE INDEX IF NOT EXISTS outliers_by_time ON outliers (ts_ms);
CREATE TABLE IF NOT EXISTS bars (
    ticker TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    doc BLOB NOT NULL,
    PRIMARY KEY (ticker, start_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tickers (
    ticker TEXT PRIMARY KEY,
    last_ts_ms INTEGER NOT NULL
) WITHOUT ROWID;
"""

PURGE_CHUNK_ROWS = 5000
"""Rows one purge transaction deletes at most (a few ms of the write lock)."""

WRITER_CACHE_MIB = 4
"""The writer connection's page cache. Its inserts are time-ordered (trades) or go to the newest rows of
each ticker (features, anomalies), so it needs the B-trees' right edges, not a day of pages: 1.2 M trades
written in 2,000-message batches (a 375 MiB file) took as long with 4, 16 or 64 MiB, and grew the writing
process by 7, 20 and 70 MiB (docs/benchmarks.md); a page it no longer caches is read from the kernel's
page cache, outside the process. The readers (the API) keep `READER_CACHE_MIB`."""
READER_CACHE_MIB = 64
"""A reader connection's page cache: keeps the index pages of a busy day's queries hot."""

CHECKPOINT_INTERVAL_S = 1.0
"""Least time between two background checkpoints (each is an fsync of the WAL and of the database)."""


class _Upsert(typing.NamedTuple):
    """An `INSERT ... VALUES ... ON CONFLICT ...` statement per chunk size (`CHUNKS`: MULTI_ROWS and
    each smaller power of two), one value tuple per row."""

    by_rows: dict[int, str]
    width: int

    @classmethod
    def of(cls, insert: str, width: int, conflict: str) -> _Upsert:
        row = f"({', '.join(['?'] * width)})"
        return cls({n: f"{insert} VALUES {', '.join([row] * n)} {conflict}" for n in CHUNKS}, width)


# Rows per statement of the upserts. Each statement SQLite runs releases the GIL, and taking it back
# waits, up to the switch interval (5 ms), for another thread of the runner that runs Python code (the
# cold thread): with a statement per row a 500-event batch ran 411 statements and took ~3 s instead of
# 3 ms while another thread was busy (docs/benchmarks.md). So a table's rows go in full MULTI_ROWS
# statements, then one statement per power of two of the rest (195 rows: 128 + 64 + 2 + 1), at most
# n // MULTI_ROWS + 7 statements, from 8 statement texts per table (the connection's statement cache
# keeps them all). A multi-row INSERT also costs about a quarter less per row than a statement per
# row. The rows are applied in order, so a key repeated within a batch ends with its last row.
MULTI_ROWS = 128
CHUNKS = tuple(MULTI_ROWS >> shift for shift in range(MULTI_ROWS.bit_length()))  # 128, 64, ..., 1
_UPSERT_TRADE = _Upsert.of(
    "INSERT INTO trades (ticker, exchange_ts_ms, sequence, event_id, vals)",
    5,
    "ON CONFLICT (exchange_ts_ms, ticker, sequence, event_id) DO UPDATE SET vals = excluded.vals",
)
_UPSERT_LATEST_TRADE = _Upsert.of(
    "INSERT INTO latest_trades (ticker, exchange_ts_ms, sequence, event_id, vals)",
    5,
    "ON CONFLICT (ticker) DO UPDATE SET exchange_ts_ms = excluded.exchange_ts_ms, "
    "sequence = excluded.sequence, event_id = excluded.event_id, vals = excluded.vals "
    "WHERE (excluded.exchange_ts_ms, excluded.sequence) >= (latest_trades.exchange_ts_ms, latest_trades.sequence)",
)
_TRADE_KEY = ("ticker", "exchange_ts_ms", "sequence", "event_id")
_TRADE_FIELDS = tuple(StoredTrade.model_fields)
_TRADE_REST = tuple(f for f in _TRADE_FIELDS if f not in _TRADE_KEY)
_trade_rest = itemgetter(*_TRADE_REST)
_TRADE_COLUMNS = "ticker, exchange_ts_ms, sequence, event_id, vals"
_UPSERT_FEATURE = _Upsert.of(
    "INSERT INTO features (ticker, start_ms, revision, doc)",
    4,
    "ON CONFLICT (ticker, start_ms) DO UPDATE SET revision = excluded.revision, doc = excluded.doc "
    "WHERE excluded.revision >= features.revision",
)
_UPSERT_ANOMALY = _Upsert.of(
    "INSERT INTO anomalies (anomaly_id, ticker, ts_ms, doc)",
    4,
    "ON CONFLICT (anomaly_id) DO UPDATE SET ticker = excluded.ticker, ts_ms = excluded.ts_ms, "
    "doc = excluded.doc",
)
_UPSERT_CORRELATION = _Upsert.of(
    "INSERT INTO correlations (correlation_id, ticker, ts_ms, doc)",
    4,
    "ON CONFLICT (correlation_id) DO UPDATE SET ticker = excluded.ticker, ts_ms = excluded.ts_ms, "
    "doc = excluded.doc",
)
# Outlier trades (`outlier` set by the runner) also go here, a small table the API reads by ticker and
# time (GET /outliers/{ticker}) without scanning the time-clustered trades.
_UPSERT_OUTLIER = _Upsert.of(
    "INSERT INTO outliers (event_id, ticker, ts_ms, doc)",
    4,
    "ON CONFLICT (event_id) DO UPDATE SET ticker = excluded.ticker, ts_ms = excluded.ts_ms, doc = excluded.doc",
)
_UPSERT_BAR = _Upsert.of(
    "INSERT INTO bars (ticker, start_ms, doc)",
    3,
    "ON CONFLICT (ticker, start_ms) DO UPDATE SET doc = excluded.doc",
)
_UPSERT_TICKER = _Upsert.of(
    "INSERT INTO tickers (ticker, last_ts_ms)",
    2,
    "ON CONFLICT (ticker) DO UPDATE SET last_ts_ms = max(last_ts_ms, excluded.last_ts_ms)",
)


def _upsert_many(conn: sqlite3.Connection, upsert: _Upsert, rows: list[tuple[Any, ...]]) -> None:
    """Upsert `rows` in order: full MULTI_ROWS statements, then one statement per power of two of the rest
    (see MULTI_ROWS: every statement run is a GIL hand-off)."""
    width = upsert.width
    flat = list(chain.from_iterable(rows))
    if len(flat) != len(rows) * width:
        raise InvalidArgument(f"rows must have {width} values each")
    full = len(rows) // MULTI_ROWS * MULTI_ROWS
    if full:
        step = MULTI_ROWS * width
        conn.executemany(
            upsert.by_rows[MULTI_ROWS], [flat[i : i + step] for i in range(0, full * width, step)]
        )
    start = full
    for n in CHUNKS[1:]:
        if (len(rows) - start) & n:
            conn.execute(upsert.by_rows[n], flat[start * width : (start + n) * width])
            start += n


class SchemaMismatch(StoreError):
    """The SQLite file was written with another schema version."""


def _trade_rows(trades: Sequence[Row]) -> list[tuple[Any, ...]]:
    """(ticker, exchange_ts_ms, sequence, event_id, vals) per trade, vals = the other fields as a JSON
    array, or the whole object when the row does not have exactly the Trade fields."""
    dumps, rest, n = orjson.dumps, _trade_rest, len(_TRADE_FIELDS)
    try:
        return [
            (
                t["ticker"],
                t["exchange_ts_ms"],
                t["sequence"],
                t["event_id"],
                dumps(rest(t)) if len(t) == n else dumps(t),
            )
            for t in trades
        ]
    except KeyError:  # same length, other keys: keep those rows whole (rare, so done as a second pass)
        return [
            (
                t["ticker"],
                t["exchange_ts_ms"],
                t["sequence"],
                t["event_id"],
                dumps(rest(t)) if len(t) == n and all(f in t for f in _TRADE_REST) else dumps(t),
            )
            for t in trades
        ]


_ts_seq = itemgetter(1, 2)


def _newest_per_ticker(trade_rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The newest row per ticker by (exchange_ts_ms, sequence), the last one of equals; once per batch,
    not per row in SQL. A stable sort (batches arrive nearly in time order, so it is about linear) and a
    dict that keeps each ticker's last row: ~2.5× faster than comparing key tuples row by row."""
    return list({row[0]: row for row in sorted(trade_rows, key=_ts_seq)}.values())


def _trade_doc(row: tuple[Any, ...]) -> Row:
    """The trade dict of a stored (ticker, exchange_ts_ms, sequence, event_id, vals) row."""
    vals = orjson.loads(row[4])
    if isinstance(vals, dict):
        return vals
    doc = dict(zip(_TRADE_KEY, row[:4], strict=True))
    doc.update(zip(_TRADE_REST, vals, strict=False))
    doc.setdefault("outlier", False)  # stored before the flag existed
    return {f: doc[f] for f in _TRADE_FIELDS}  # model field order, as emitted


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
        self._checkpoint_due = threading.Event()
        self._stopping = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._checkpointer_tried = False
        self._writer = self._connect(WRITER_CACHE_MIB)
        with self._write_lock:
            self._create_schema(self._writer)

    # --- connections ---------------------------------------------------------------------------

    def _connect(self, cache_mib: int) -> sqlite3.Connection:
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
        conn.execute(f"PRAGMA cache_size = -{cache_mib * 1024}")  # negative: KiB
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # two processes opening a new file: one creates, one checks
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            has_tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
            if has_tables and version != SCHEMA_VERSION:
                raise SchemaMismatch(
                    f"{self.path} has hot-store schema version {version or 1}, this code needs "
                    f"{SCHEMA_VERSION}; delete the file (a 48 h cache, refilled from Kafka) and restart"
                )
            # Statement by statement: executescript would commit the transaction first.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(READER_CACHE_MIB)
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
        bars: Sequence[Row] = (),
    ) -> None:
        """Upsert one micro-batch in a single transaction."""
        if not (trades or features or anomalies or correlations or bars):
            return
        dumps = orjson.dumps
        trade_rows = _trade_rows(trades)
        feature_rows = [(f["ticker"], *feature_key(f), dumps(f)) for f in features]
        anomaly_rows = [(a["anomaly_id"], a["ticker"], a["ts_ms"], dumps(a)) for a in anomalies]
        correlation_rows = [
            (c["correlation_id"], c["ticker"], c["published_ts_ms"], dumps(c)) for c in correlations
        ]
        outlier_rows = [
            (t["event_id"], t["ticker"], t["exchange_ts_ms"], dumps(t)) for t in trades if t.get("outlier")
        ]
        bar_rows = [(b["ticker"], b["start_ms"], dumps(b)) for b in bars]
        started = time.perf_counter()
        with self._write_lock:
            if self._closed:
                raise StoreError("store is closed")
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                last_seen: dict[str, int] = {}
                if trade_rows:
                    _upsert_many(conn, _UPSERT_TRADE, trade_rows)
                    # After the insert, which has rejected rows with a NULL key.
                    newest = _newest_per_ticker(trade_rows)
                    _upsert_many(conn, _UPSERT_LATEST_TRADE, newest)
                    # A ticker's newest trade has its latest event time.
                    last_seen = {row[0]: row[1] for row in newest}
                if feature_rows:
                    _upsert_many(conn, _UPSERT_FEATURE, feature_rows)
                    for f in features:
                        if f["ts_ms"] > last_seen.get(f["ticker"], -1):
                            last_seen[f["ticker"]] = f["ts_ms"]
                for upsert, rows in (
                    (_UPSERT_ANOMALY, anomaly_rows),
                    (_UPSERT_CORRELATION, correlation_rows),
                    (_UPSERT_OUTLIER, outlier_rows),
                    (_UPSERT_BAR, bar_rows),
                    (_UPSERT_TICKER, list(last_seen.items())),
                ):
                    if rows:
                        _upsert_many(conn, upsert, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._latencies.append((time.perf_counter() - started) * 1000)
            if not self._checkpointer_tried:
                self._checkpointer_tried = True
                self._start_checkpointer()
        self._checkpoint_due.set()

    def _start_checkpointer(self) -> None:
        """Move checkpoints from the writer's COMMIT to a background connection (under the write lock).
        Without that connection the writer keeps SQLite's auto-checkpoint."""
        try:
            conn = self._connect(WRITER_CACHE_MIB)  # copies WAL frames; reads no queries' pages
        except sqlite3.Error as exc:
            log.warning("no background checkpoint connection (%s); the writer checkpoints itself", exc)
            return
        self._writer.execute("PRAGMA wal_autocheckpoint = 0")
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop,
            args=(conn,),
            name=f"sqlite-checkpoint-{self.path.name}",
            daemon=True,
        )
        self._checkpointer.start()

    def _checkpoint_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                self._checkpoint_due.wait()
                if self._stopping.is_set():
                    return
                self._checkpoint_due.clear()
                try:
                    # PASSIVE: copies what no reader still needs, never blocks the writer or readers.
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # the next commit triggers another attempt
                    log.warning("hot-store checkpoint failed: %s", exc)
                if self._stopping.wait(CHECKPOINT_INTERVAL_S):
                    return
        finally:
            conn.close()

    def purge_expired(self, now_ms: int, *, chunk_rows: int = PURGE_CHUNK_ROWS) -> int:
        """Delete rows whose event time is older than the TTL; returns how many rows went.

        In chunks of at most `chunk_rows` rows, each its own short transaction under the write lock, so
        a purge running beside the runner (`tradepulse.stores.retention`) delays a micro-batch by one
        chunk at most, never by the whole backlog (the first purge of a long-running file can be
        millions of rows)."""
        cutoff = now_ms - self.ttl_ms
        deleted = 0
        # Trades are clustered by time: each chunk is a range at the start of the key.
        deleted += self._purge_chunks(
            "DELETE FROM trades WHERE (exchange_ts_ms, ticker, sequence, event_id) IN ("
            "SELECT exchange_ts_ms, ticker, sequence, event_id FROM trades WHERE exchange_ts_ms < ? "
            "ORDER BY exchange_ts_ms LIMIT ?)",
            (cutoff,),
            chunk_rows,
        )
        # Per ticker, so each chunk is a range on the (ticker, time) key, not a table scan.
        for ticker in [r[0] for r in self._reader().execute("SELECT ticker FROM tickers")]:
            deleted += self._purge_chunks(
                "DELETE FROM features WHERE (ticker, start_ms) IN (SELECT ticker, start_ms FROM features "
                "WHERE ticker = ? AND start_ms < ? ORDER BY start_ms LIMIT ?)",
                (ticker, cutoff),
                chunk_rows,
            )
            deleted += self._purge_chunks(
                "DELETE FROM bars WHERE (ticker, start_ms) IN (SELECT ticker, start_ms FROM bars "
                "WHERE ticker = ? AND start_ms < ? ORDER BY start_ms LIMIT ?)",
                (ticker, cutoff),
                chunk_rows,
            )
        for table in ("anomalies", "correlations", "outliers"):  # rowid tables with a time index
            deleted += self._purge_chunks(
                f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE ts_ms < ? "
                "ORDER BY ts_ms LIMIT ?)",
                (cutoff,),
                chunk_rows,
            )
        # One row per ticker: small enough for one statement each.
        self._purge_chunks("DELETE FROM latest_trades WHERE exchange_ts_ms < ?", (cutoff,), None)
        self._purge_chunks("DELETE FROM tickers WHERE last_ts_ms < ?", (cutoff,), None)
        return deleted

    def _purge_chunks(self, sql: str, params: tuple[Any, ...], chunk_rows: int | None) -> int:
        """Run a DELETE until it deletes fewer than `chunk_rows` rows (once when None), one transaction
        per run, releasing the write lock in between so writers interleave."""
        deleted = 0
        while True:
            with self._write_lock:
                if self._closed:
                    raise StoreError("store is closed")
                conn = self._writer
                conn.execute("BEGIN IMMEDIATE")
                try:
                    args = params if chunk_rows is None else (*params, chunk_rows)
                    count = conn.execute(sql, args).rowcount
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            deleted += count
            if chunk_rows is None or count < chunk_rows:
                return deleted

    # --- reads -----------------------------------------------------------------------------------

    def _one(self, sql: str, params: tuple[Any, ...]) -> Row | None:
        row = self._reader().execute(sql, params).fetchone()
        return orjson.loads(row[0]) if row else None

    def _many(self, sql: str, params: tuple[Any, ...]) -> list[Row]:
        return [orjson.loads(r[0]) for r in self._reader().execute(sql, params)]

    def latest_trade(self, ticker: str) -> Row | None:
        row = (
            self._reader()
            .execute(
                f"SELECT {_TRADE_COLUMNS} FROM latest_trades WHERE ticker = ?",
                (ticker,),
            )
            .fetchone()
        )
        return _trade_doc(row) if row else None

    def latest_features(self, ticker: str) -> Row | None:
        return self._one(
            "SELECT doc FROM features WHERE ticker = ? ORDER BY start_ms DESC LIMIT 1", (ticker,)
        )

    def feature_history(self, ticker: str, since_ms: int, limit: int = 2000) -> list[Row]:
        """Feature vectors (the latest revision of each second) of the seconds starting at or after
        `since_ms`, oldest first (the newest `limit` of them)."""
        rows = self._many(
            "SELECT doc FROM features WHERE ticker = ? AND start_ms >= ? ORDER BY start_ms DESC LIMIT ?",
            (ticker, since_ms, limit),
        )
        rows.reverse()
        return rows

    def bars(self, ticker: str, since_ms: int, limit: int = 1000) -> list[Row]:
        """One-minute bars of a ticker starting at or after `since_ms`, oldest first (the newest `limit`)."""
        rows = self._many(
            "SELECT doc FROM bars WHERE ticker = ? AND start_ms >= ? ORDER BY start_ms DESC LIMIT ?",
            (ticker, since_ms, limit),
        )
        rows.reverse()
        return rows

    def trades(self, ticker: str, since_ms: int, limit: int = 10_000) -> list[Row]:
        """Trades of a ticker since `since_ms`, oldest first (the newest `limit` of them). For checks and
        tests: trades are clustered by time, so this scans every ticker's trades since `since_ms`."""
        rows = [
            _trade_doc(r)
            for r in self._reader().execute(
                f"SELECT {_TRADE_COLUMNS} FROM trades WHERE ticker = ? AND exchange_ts_ms >= ? "
                "ORDER BY exchange_ts_ms DESC, sequence DESC LIMIT ?",
                (ticker, since_ms, limit),
            )
        ]
        rows.reverse()
        return rows

    def anomalies(self, ticker: str | None, since_ms: int, limit: int = 1000) -> list[Row]:
        """Anomalies since `since_ms` (all tickers when `ticker` is None), oldest first."""
        return self._recent("anomalies", ticker, since_ms, limit)

    def correlations(self, ticker: str | None, since_ms: int, limit: int = 1000) -> list[Row]:
        """Correlations published since `since_ms` (all tickers when `ticker` is None), oldest first."""
        return self._recent("correlations", ticker, since_ms, limit)

    def outliers(self, ticker: str | None, since_ms: int, limit: int = 1000) -> list[Row]:
        """Trades flagged outlier since `since_ms` (all tickers when `ticker` is None), oldest first."""
        return self._recent("outliers", ticker, since_ms, limit)

    def _recent(self, table: str, ticker: str | None, since_ms: int, limit: int) -> list[Row]:
        """The newest `limit` docs of a (ticker, ts_ms)-indexed table since `since_ms`, oldest first."""
        if table not in {"anomalies", "correlations", "outliers"}:
            raise InvalidArgument(f"not a time-indexed document table: {table!r}")
        if ticker is None:
            rows = self._many(
                f"SELECT doc FROM {table} WHERE ts_ms >= ? ORDER BY ts_ms DESC LIMIT ?", (since_ms, limit)
            )
        else:
            rows = self._many(
                f"SELECT doc FROM {table} WHERE ticker = ? AND ts_ms >= ? ORDER BY ts_ms DESC LIMIT ?",
                (ticker, since_ms, limit),
            )
        rows.reverse()
        return rows

    def tickers(self) -> list[str]:
        return [r[0] for r in self._reader().execute("SELECT ticker FROM tickers ORDER BY ticker")]

    def count(self, table: str) -> int:
        """Row count of one table (trades, features, anomalies, correlations, outliers, bars); for checks and tests."""
        if table not in {"trades", "features", "anomalies", "correlations", "outliers", "bars"}:
            raise InvalidArgument(f"unknown table {table!r}")
        return self._reader().execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def trade_ids(self) -> set[str]:
        """Every stored trade event_id (the chaos test compares this with the simulator's set)."""
        return {r[0] for r in self._reader().execute("SELECT event_id FROM trades")}

    #: SQLite never throttles a write (the HotWriteThrottles metric reads 0).
    throttles = 0

    def put_runner_status(self, status: dict[str, Any], instance: str = "0") -> None:
        """Nothing to keep: every reader of this store shares the runner's disk and reads the runner's
        status file, which `publish_status` has already written."""

    def write_latency_p99_ms(self) -> float:
        return nearest_rank(list(self._latencies), 99)

    def get_runner_statuses(self) -> dict[str, dict[str, Any]]:
        """Always {}: locally the runners write their heartbeat to files beside the database."""
        return {}

    def close(self) -> None:
        if self._closed:
            return
        with self._write_lock:
            self._closed = True
            checkpointer = self._checkpointer
        if checkpointer is not None:
            self._stopping.set()
            self._checkpoint_due.set()
            checkpointer.join(timeout=CHECKPOINT_INTERVAL_S + 30)
        with self._write_lock:
            # The last connection to close checkpoints the whole WAL.
            self._writer.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    def __enter__(self) -> SqliteHotStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
