"""SQLite hot store: batches larger than one multi-row statement (MULTI_ROWS) store exactly what
row-by-row upserts store, including keys repeated within one batch (the last row wins), a batch that is
not a multiple of MULTI_ROWS, and a replay of the same batch."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from tests.stores.conftest import (
    BASE_MS,
    make_anomaly,
    make_bar,
    make_correlation,
    make_feature,
    make_outlier,
    make_trade,
)
from tradepulse.stores.sqlite_hot import MULTI_ROWS, READER_CACHE_MIB, WRITER_CACHE_MIB, SqliteHotStore


def _batch() -> tuple[list[dict], list[dict]]:
    n = 2 * MULTI_ROWS + 37
    trades = [make_trade(("AAPL", "MSFT")[i % 2], seq=i, ts_ms=BASE_MS + i) for i in range(n)]
    # Repeats of earlier keys with other values: in the same statement, in the next one, and in the
    # rows after the last full statement.
    for i in (3, MULTI_ROWS - 5, 2 * MULTI_ROWS - 2):
        trades.insert(i + 20, trades[i] | {"price": 999.0 + i, "size": 3.0})
    features = [make_feature(("AAPL", "MSFT")[i % 2], ts_ms=BASE_MS + 1000 * (i // 2)) for i in range(n)]
    features.insert(MULTI_ROWS + 3, features[MULTI_ROWS - 3] | {"price": 555.0})
    return trades, features


def _expected(rows: list[dict], key: tuple[str, ...]) -> dict[tuple, dict]:
    last: dict[tuple, dict] = {}
    for row in rows:
        last[tuple(row[k] for k in key)] = row
    return last


def test_bulk_upserts_store_the_last_row_of_each_key(tmp_path: Path) -> None:
    trades, features = _batch()
    store = SqliteHotStore(tmp_path / "hot.db")
    for _ in range(2):  # the second write is a replay: it must change nothing
        store.write_batch(trades=trades, features=features)
        stored = {
            (t["ticker"], t["exchange_ts_ms"], t["sequence"], t["event_id"]): t
            for ticker in ("AAPL", "MSFT")
            for t in store.trades(ticker, since_ms=0)
        }
        assert stored == _expected(trades, ("ticker", "exchange_ts_ms", "sequence", "event_id"))
        history = {
            (f["ticker"], f["ts_ms"]): f
            for ticker in ("AAPL", "MSFT")
            for f in store.feature_history(ticker, since_ms=0)
        }
        assert history == _expected(features, ("ticker", "ts_ms"))
    assert stored[next(k for k in stored if k[2] == 3)]["price"] == 1002.0
    assert store.count("trades") == 2 * MULTI_ROWS + 37
    store.close()


def test_a_batch_takes_a_few_statements_per_table_not_one_per_row(tmp_path: Path) -> None:
    """Every statement SQLite runs lets go of the GIL, and taking it back waits for another busy thread
    of the runner (the cold thread) to give it up: up to the interpreter's switch interval, 5 ms. With a
    statement per row (the remainder after the full multi-row statements, the latest trade and the last
    time of each ticker) a 500-event batch took 411 statements, and ~3 s instead of 3 ms while another
    thread ran Python code. So each table's rows go in a few multi-row statements, whatever their count."""
    tickers = [f"T{i:03d}" for i in range(150)]
    trades = [make_trade(tickers[i % 150], seq=i, ts_ms=BASE_MS + i) for i in range(200)]
    trades += [make_outlier(tickers[i], seq=1000 + i, ts_ms=BASE_MS + 300 + i) for i in range(3)]
    features = [make_feature(t, ts_ms=BASE_MS) for t in tickers]
    anomalies = [make_anomaly(tickers[i], ts_ms=BASE_MS + i) for i in range(12)]
    correlations = [make_correlation(tickers[i], article_id=i) for i in range(3)]
    bars = [make_bar(t) for t in tickers[:5]]
    store = SqliteHotStore(tmp_path / "hot.db")
    statements: list[str] = []
    store._writer.set_trace_callback(statements.append)  # the writer connection: every statement it runs
    store.write_batch(
        trades=trades, features=features, anomalies=anomalies, correlations=correlations, bars=bars
    )
    store._writer.set_trace_callback(None)
    per_table = Counter(s.split()[2] for s in statements if s.startswith("INSERT INTO"))
    rows = {"trades": 203, "latest_trades": 150, "features": 150, "anomalies": 12, "correlations": 3}
    rows |= {"outliers": 3, "bars": 5, "tickers": 150}
    assert set(per_table) == set(rows)
    for table, n in rows.items():
        assert per_table[table] <= n // MULTI_ROWS + math.ceil(math.log2(MULTI_ROWS)), table
    assert len(statements) <= 40
    # What went in is what the rows say.
    assert store.count("trades") == 203 and store.count("features") == 150 and store.count("bars") == 5
    assert store.tickers() == sorted(tickers)
    assert len(store.anomalies(None, since_ms=0)) == 12 and len(store.outliers(None, since_ms=0)) == 3
    store.close()


def test_the_writer_keeps_a_small_page_cache_and_readers_a_large_one(tmp_path: Path) -> None:
    """The writer's 64 MiB cache grew the runner by ~50 MiB more than 16 MiB did, for no faster writes
    (its inserts go to the B-trees' right edges); the API's reads keep the large one."""
    store = SqliteHotStore(tmp_path / "hot.db")
    store.write_batch(trades=[make_trade()])
    assert store._writer.execute("PRAGMA cache_size").fetchone()[0] == -WRITER_CACHE_MIB * 1024
    assert store._reader().execute("PRAGMA cache_size").fetchone()[0] == -READER_CACHE_MIB * 1024
    assert WRITER_CACHE_MIB < READER_CACHE_MIB
    store.close()
