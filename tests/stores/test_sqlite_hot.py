"""SQLite hot store: idempotent upserts, latest-by-event-time, TTL purge, WAL with a concurrent reader."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.stores.conftest import (
    BASE_MS,
    check_feature_revisions,
    make_anomaly,
    make_bar,
    make_correlation,
    make_feature,
    make_outlier,
    make_trade,
)
from tradepulse.stores.base import HotStore
from tradepulse.stores.sqlite_hot import SCHEMA_VERSION, SchemaMismatch, SqliteHotStore


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteHotStore(tmp_path / "hot.sqlite3")
    yield s
    s.close()


def test_is_a_hot_store(store: SqliteHotStore) -> None:
    hot: HotStore = store  # static check of the protocol; the calls below check behaviour
    assert hot.tickers() == []
    assert hot.latest_trade("AAPL") is None
    assert hot.latest_features("AAPL") is None


def test_rows_round_trip_exactly(store: SqliteHotStore) -> None:
    trade, feature = make_trade(), make_feature()
    anomaly, corr = make_anomaly(), make_correlation()
    store.write_batch(trades=[trade], features=[feature], anomalies=[anomaly], correlations=[corr])
    assert store.latest_trade("AAPL") == trade
    assert store.latest_features("AAPL") == feature
    assert store.anomalies("AAPL", 0) == [anomaly]
    assert store.correlations("AAPL", 0) == [corr]
    assert store.tickers() == ["AAPL"]


def test_upserts_are_idempotent(store: SqliteHotStore) -> None:
    trades = [make_trade(seq=i, ts_ms=BASE_MS + i) for i in range(50)]
    features = [make_feature(ts_ms=BASE_MS + i * 1000) for i in range(10)]
    anomalies = [make_anomaly(ts_ms=BASE_MS + i) for i in range(3)]
    corrs = [make_correlation(article_id=i) for i in range(4)]
    for _ in range(3):  # a replayed batch overwrites
        store.write_batch(trades=trades, features=features, anomalies=anomalies, correlations=corrs)
    assert store.count("trades") == 50
    assert store.count("features") == 10
    assert store.count("anomalies") == 3
    assert store.count("correlations") == 4
    assert store.trade_ids() == {t["event_id"] for t in trades}
    # Same key, new content: the row is replaced, not added.
    changed = dict(features[-1], price=123.0)
    store.write_batch(features=[changed])
    assert store.count("features") == 10
    assert store.latest_features("AAPL")["price"] == 123.0


def test_latest_trade_is_newest_by_event_time_and_sequence_not_last_written(store: SqliteHotStore) -> None:
    newest = make_trade(seq=9, ts_ms=BASE_MS + 5000, price=110.0)
    same_ms_lower_seq = make_trade(seq=8, ts_ms=BASE_MS + 5000, price=109.0)
    older = make_trade(seq=3, ts_ms=BASE_MS, price=90.0)
    store.write_batch(trades=[newest])
    store.write_batch(trades=[older, same_ms_lower_seq])  # late arrivals written last
    assert store.latest_trade("AAPL") == newest
    store.write_batch(trades=[make_trade("MSFT", seq=1, price=400.0)])
    assert store.latest_trade("MSFT")["price"] == 400.0
    assert store.latest_trade("AAPL") == newest
    assert store.tickers() == ["AAPL", "MSFT"]


def test_feature_history_oldest_first_with_limit(store: SqliteHotStore) -> None:
    feats = [make_feature(ts_ms=BASE_MS + i * 1000, price=100 + i) for i in range(20)]
    store.write_batch(features=list(reversed(feats)))
    hist = store.feature_history("AAPL", since_ms=BASE_MS + 5000)
    assert [f["ts_ms"] for f in hist] == [BASE_MS + i * 1000 for i in range(5, 20)]
    # The limit keeps the newest rows, still returned oldest first.
    assert [f["ts_ms"] for f in store.feature_history("AAPL", BASE_MS, limit=3)] == [
        BASE_MS + i * 1000 for i in (17, 18, 19)
    ]
    assert store.latest_features("AAPL")["ts_ms"] == BASE_MS + 19_000
    assert store.feature_history("MSFT", BASE_MS) == []


def test_anomalies_and_correlations_since_and_across_tickers(store: SqliteHotStore) -> None:
    store.write_batch(
        anomalies=[
            make_anomaly("AAPL", BASE_MS),
            make_anomaly("AAPL", BASE_MS + 10),
            make_anomaly("TSLA", BASE_MS + 5),
        ],
        correlations=[make_correlation("AAPL", 1, BASE_MS), make_correlation("TSLA", 2, BASE_MS + 20)],
    )
    assert [a["ts_ms"] for a in store.anomalies("AAPL", BASE_MS + 1)] == [BASE_MS + 10]
    assert [a["ticker"] for a in store.anomalies(None, 0)] == ["AAPL", "TSLA", "AAPL"]
    assert [c["article_id"] for c in store.correlations("TSLA", 0)] == [2]
    assert [c["article_id"] for c in store.correlations(None, BASE_MS + 1)] == [2]


def test_bars_by_ticker_and_start_oldest_first_and_upserted(store: SqliteHotStore) -> None:
    minute = 60_000
    store.write_batch(
        bars=[make_bar("AAPL", BASE_MS + i * minute) for i in range(5)] + [make_bar("TSLA", BASE_MS)]
    )
    assert [b["start_ms"] for b in store.bars("AAPL", BASE_MS + minute)] == [
        BASE_MS + i * minute for i in range(1, 5)
    ]
    assert [b["start_ms"] for b in store.bars("AAPL", 0, limit=2)] == [
        BASE_MS + 3 * minute,
        BASE_MS + 4 * minute,
    ]
    assert store.bars("TSLA", 0) == [make_bar("TSLA", BASE_MS)]  # the document round-trips exactly
    store.write_batch(bars=[make_bar("AAPL", BASE_MS, close=None)])  # a replay overwrites its key
    assert store.count("bars") == 6 and store.bars("AAPL", 0)[0]["close"] is None


def test_failed_batch_is_rolled_back_entirely(store: SqliteHotStore) -> None:
    good = make_trade(seq=1)
    bad = dict(make_trade(seq=2), sequence=None)  # violates NOT NULL inside the transaction
    with pytest.raises(sqlite3.IntegrityError):
        store.write_batch(trades=[good, bad], features=[make_feature()])
    assert store.count("trades") == 0
    assert store.count("features") == 0
    store.write_batch(trades=[good])  # the writer is usable afterwards
    assert store.count("trades") == 1


def test_purge_expired_removes_rows_older_than_ttl(tmp_path: Path) -> None:
    hour = 3600 * 1000
    with SqliteHotStore(tmp_path / "hot.sqlite3", ttl_hours=48) as store:
        now = BASE_MS + 100 * hour
        old, fresh = now - 49 * hour, now - 47 * hour
        store.write_batch(
            trades=[make_trade(seq=1, ts_ms=old), make_trade(seq=2, ts_ms=fresh), make_trade("IBM", 1, old)],
            features=[make_feature(ts_ms=old), make_feature(ts_ms=fresh)],
            anomalies=[make_anomaly(ts_ms=old), make_anomaly(ts_ms=fresh)],
            correlations=[
                make_correlation(article_id=1, ts_ms=old),
                make_correlation(article_id=2, ts_ms=fresh),
            ],
            bars=[make_bar(start_ms=old), make_bar(start_ms=fresh)],
        )
        assert store.purge_expired(now) == 6
        assert store.count("trades") == 1 and store.latest_trade("AAPL")["sequence"] == 2
        assert store.count("features") == store.count("anomalies") == store.count("correlations") == 1
        assert [b["start_ms"] for b in store.bars("AAPL", 0)] == [fresh]
        assert store.tickers() == ["AAPL"]  # IBM had only expired rows
        assert store.purge_expired(now) == 0


def test_write_latency_p99(store: SqliteHotStore) -> None:
    assert store.write_latency_p99_ms() == 0.0
    for i in range(5):
        store.write_batch(trades=[make_trade(seq=i)])
    assert store.write_latency_p99_ms() > 0


def test_wal_mode_and_file_location(store: SqliteHotStore) -> None:
    store.write_batch(trades=[make_trade()])
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_concurrent_reader_and_writer_threads(tmp_path: Path) -> None:
    """The API reads through its own connection while the runner writes: no 'database is locked',
    readers only ever see whole batches, and counts never go backwards."""
    path = tmp_path / "hot.sqlite3"
    writer, reader = SqliteHotStore(path), SqliteHotStore(path)
    batches, per_batch = 60, 100
    done = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for b in range(batches):
                trades = [
                    make_trade(seq=b * per_batch + i, ts_ms=BASE_MS + b * per_batch + i)
                    for i in range(per_batch)
                ]
                writer.write_batch(trades=trades, features=[make_feature(ts_ms=BASE_MS + b)])
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def read() -> None:
        try:
            while not done.is_set():
                seen.append(reader.count("trades"))
                latest = reader.latest_trade("AAPL")
                if latest is not None:
                    # the newest visible trade always closes a whole batch
                    assert (latest["sequence"] + 1) % per_batch == 0
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    writer.close()
    assert not errors, errors
    assert seen == sorted(seen)
    assert all(n % per_batch == 0 for n in seen)
    assert reader.count("trades") == batches * per_batch
    reader.close()


WRITER_SCRIPT = """
import sys
from tests.stores.conftest import make_trade, BASE_MS
from tradepulse.stores.sqlite_hot import SqliteHotStore
s = SqliteHotStore(sys.argv[1])
for b in range(40):
    s.write_batch(trades=[make_trade(seq=b * 50 + i, ts_ms=BASE_MS + b * 50 + i) for i in range(50)])
s.close()
"""


def test_reader_in_this_process_while_another_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "hot.sqlite3"
    reader = SqliteHotStore(path)  # creates the schema first
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(path)], cwd=Path(__file__).resolve().parents[2]
    )
    seen = []
    while proc.poll() is None:
        seen.append(reader.count("trades"))
    assert proc.returncode == 0
    seen.append(reader.count("trades"))
    assert seen == sorted(seen) and all(n % 50 == 0 for n in seen)
    assert seen[-1] == 2000
    assert reader.latest_trade("AAPL")["sequence"] == 1999
    reader.close()


def test_trades_with_other_fields_round_trip_whole(store: SqliteHotStore) -> None:
    """Trades are stored compactly when they have exactly the Trade fields; any other shape (an extra
    or a missing optional field) is kept whole, so reads return exactly what was written."""
    plain = make_trade(seq=1, ts_ms=BASE_MS)
    extra = dict(make_trade(seq=2, ts_ms=BASE_MS + 1), note="x")
    missing = {k: v for k, v in make_trade(seq=3, ts_ms=BASE_MS + 2).items() if k != "trf_id"}
    swapped = {
        **{k: v for k, v in make_trade(seq=4, ts_ms=BASE_MS + 3).items() if k != "trf_id"},
        "note": "same length, other keys",
    }
    store.write_batch(trades=[plain, extra, missing, swapped])
    assert store.trades("AAPL", 0) == [plain, extra, missing, swapped]
    assert list(store.latest_trade("AAPL")) == list(swapped)  # key order kept too
    assert list(store.trades("AAPL", 0)[0]) == list(plain)


def test_a_file_with_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hot.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE trades (event_id TEXT PRIMARY KEY, doc BLOB)")  # version-1 layout
    old.commit()
    old.close()
    with pytest.raises(SchemaMismatch, match="delete the file"):
        SqliteHotStore(path)
    path.unlink()
    SqliteHotStore(path).close()  # a fresh file is created with the current version
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_latest_trade_expires_with_its_ticker_and_never_moves_back(store: SqliteHotStore) -> None:
    hour = 3600 * 1000
    store.write_batch(trades=[make_trade("IBM", 1, BASE_MS), make_trade("IBM", 2, BASE_MS)])
    store.write_batch(trades=[make_trade("IBM", 1, BASE_MS)])  # a replayed older trade
    assert store.latest_trade("IBM")["sequence"] == 2
    store.purge_expired(BASE_MS + 49 * hour)
    assert store.latest_trade("IBM") is None and store.count("trades") == 0


class CountingLock:
    """The store's write lock, counting how often it is taken and the longest time it was held."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acquisitions = 0
        self.longest_s = 0.0
        self._since = 0.0

    def __enter__(self) -> None:
        self._lock.acquire()
        self.acquisitions += 1
        self._since = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.longest_s = max(self.longest_s, time.perf_counter() - self._since)
        self._lock.release()


def test_purge_deletes_in_chunks_releasing_the_write_lock_in_between(tmp_path: Path) -> None:
    hour = 3600 * 1000
    now = BASE_MS + 100 * hour
    old, fresh = now - 60 * hour, now - hour
    with SqliteHotStore(tmp_path / "hot.sqlite3", ttl_hours=48) as store:
        store.write_batch(
            trades=[make_trade(seq=i, ts_ms=old + i) for i in range(238)]
            + [make_outlier(seq=i, ts_ms=old + i) for i in range(238, 250)]
            + [make_trade(seq=999, ts_ms=fresh)],
            features=[
                make_feature(ticker=t, ts_ms=old + 1000 * i) for t in ("AAPL", "MSFT") for i in range(65)
            ]
            + [make_feature(ts_ms=fresh)],
            anomalies=[make_anomaly(ts_ms=old + i) for i in range(25)] + [make_anomaly(ts_ms=fresh)],
        )
        lock = CountingLock()
        store._write_lock = lock  # type: ignore[assignment]
        assert store.purge_expired(now, chunk_rows=10) == 250 + 130 + 25 + 12
        # 26 trade chunks, 7 + 7 feature chunks, 1 + 1 bar chunks (one per ticker), 3 anomaly chunks,
        # 1 correlations, 2 outlier chunks, latest + tickers.
        assert lock.acquisitions == 26 + 14 + 2 + 3 + 1 + 2 + 2
        assert store.count("outliers") == 0
        assert store.count("trades") == store.count("anomalies") == 1
        assert [f["ts_ms"] for f in store.feature_history("AAPL", 0)] == [fresh]
        assert store.feature_history("MSFT", 0) == []


def test_outlier_trades_are_kept_as_trades_and_listed_by_ticker_and_time(tmp_path: Path) -> None:
    with SqliteHotStore(tmp_path / "hot.sqlite3") as store:
        normal = make_trade(seq=1, ts_ms=BASE_MS)
        flagged = [make_outlier(seq=2, ts_ms=BASE_MS + 1), make_outlier("MSFT", seq=3, ts_ms=BASE_MS + 2)]
        store.write_batch(trades=[normal, *flagged])
        store.write_batch(trades=flagged)  # a replay: upserts, no duplicates
        assert store.count("trades") == 3 and store.count("outliers") == 2
        assert store.outliers("AAPL", 0) == [flagged[0]]
        assert store.outliers(None, 0) == flagged  # oldest first
        assert store.outliers(None, BASE_MS + 2) == [flagged[1]]
        assert {t["event_id"]: t.get("outlier") for t in store.trades("AAPL", 0)} == {
            normal["event_id"]: None,  # written without the flag (not by a runner), kept as written
            flagged[0]["event_id"]: True,
        }


def test_feature_revisions_never_go_back(store: SqliteHotStore) -> None:
    check_feature_revisions(store)
