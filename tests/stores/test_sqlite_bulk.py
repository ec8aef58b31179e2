"""SQLite hot store: batches larger than one multi-row statement (MULTI_ROWS) store exactly what
row-by-row upserts store, including keys repeated within one batch (the last row wins), a batch that is
not a multiple of MULTI_ROWS, and a replay of the same batch."""

from __future__ import annotations

from pathlib import Path

from tests.stores.conftest import BASE_MS, make_feature, make_trade
from tradepulse.stores.sqlite_hot import MULTI_ROWS, SqliteHotStore


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
