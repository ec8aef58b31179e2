"""The cold store's Arrow conversion from the runner's decoded field columns writes exactly the files the
per-row conversion writes (same names, same rows, same types), with poison rows dropped by the decoder,
optional fields present, null or absent, integer-valued floats, and a replay below the checkpoint; and
the batches of one commit appended together write what they write one at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from tests.bus.test_decode import QUOTE, TRADE, FakeMessage
from tradepulse.bus.decode import concat_fields, decode_batch
from tradepulse.stores.parquet_cold import ParquetColdStore
from tradepulse.topics import QUOTES, TRADES

HOUR_MS = 3_600_000


def _messages(complete: bool) -> list[FakeMessage]:
    """Trades and quotes; with `complete`, every row has every optional model field (the decoder then
    hands them over as columns too), else some rows lack them."""
    messages = []
    for i in range(60):
        partition, offset = i % 3, i // 3
        trade = TRADE | {
            "event_id": f"t-{i}",
            "ticker": ("AAPL", "MSFT", "TSLA")[i % 3],
            "price": 100 + i if i % 4 else 100.5 + i,  # some integer-valued prices stay ints in JSON
            "sequence": i,
            "exchange_ts_ms": TRADE["exchange_ts_ms"] + (HOUR_MS if i >= 45 else 0) + i,
        }
        if i % 5 == 0:
            trade |= {"conditions": [12, 37], "trf_id": 4, "trf_ts_ms": trade["exchange_ts_ms"] - 1}
        elif i % 5 == 1 or complete:
            trade |= {"conditions": [], "trf_id": None, "trf_ts_ms": None}
        if i == 17:
            trade["price"] = -1.0  # a poison trade: dead-lettered, not in the cold store
        messages.append(FakeMessage(TRADES, orjson.dumps(trade), partition, offset))
        quote = QUOTE | {"event_id": f"q-{i}", "sequence": i, "exchange_ts_ms": QUOTE["exchange_ts_ms"] + i}
        if i % 2 or complete:
            quote |= {"conditions": [i % 3], "indicators": [1] if i % 2 else []}
        messages.append(FakeMessage(QUOTES, orjson.dumps(quote), partition, 100 + offset))
    return messages


def _files(root: Path, store: ParquetColdStore) -> dict[str, object]:
    return {rel: pq.read_table(root / rel) for rel in store.files()}


@pytest.mark.parametrize("complete", [False, True], ids=["some-optional-absent", "all-fields"])
def test_columns_write_the_same_files_as_rows(tmp_path: Path, complete: bool) -> None:
    batch = decode_batch(_messages(complete))
    assert len(batch.dead_letters) == 1 and batch.trade_fields is not None and batch.quote_fields
    assert len(batch.trade_fields["price"]) == len(batch.trades) == 59
    assert ("conditions" in batch.trade_fields) is complete
    assert ("indicators" in batch.quote_fields) is complete
    written = {}
    for name, columns in (("rows", False), ("columns", True)):
        store = ParquetColdStore(tmp_path / name, block_offsets=8)
        for topic, rows, positions, fields in (
            (TRADES, batch.trades, batch.trade_pos, batch.trade_fields),
            (QUOTES, batch.quotes, batch.quote_pos, batch.quote_fields),
        ):
            store.append_batch(topic, rows, positions, columns=fields if columns else None)
        store.close()
        written[name] = _files(tmp_path / name, store)
    assert len(written["rows"]) > 6 and written["columns"].keys() == written["rows"].keys()
    for rel, table in written["rows"].items():
        assert written["columns"][rel].equals(table), rel
        assert written["columns"][rel].schema == table.schema
    trades = [row for rel, t in written["columns"].items() if "trades" in rel for row in t.to_pylist()]
    assert sorted(r["event_id"] for r in trades) == sorted(r["event_id"] for r in batch.trades)
    assert {r["event_id"]: r["conditions"] for r in trades}["t-5"] == [12, 37]

    # A replay below the checkpoint of partition 1 converts the rest and duplicates nothing.
    replay = ParquetColdStore(tmp_path / "columns", block_offsets=8)
    replay.append_batch(
        TRADES, batch.trades, batch.trade_pos, start={(TRADES, 1): 9}, columns=batch.trade_fields
    )
    replay.close()
    again = _files(tmp_path / "columns", replay)
    for rel, table in written["rows"].items():
        assert again[rel].equals(table), rel


def test_batches_appended_together_write_the_same_files_as_one_at_a_time(tmp_path: Path) -> None:
    # Three consecutive batches as the cold thread gets them from one commit: the middle one has every
    # optional field as a column, the others do not (their field sets differ).
    incomplete, complete = _messages(False), _messages(True)
    batches = [decode_batch(incomplete[:40]), decode_batch(complete[40:80]), decode_batch(incomplete[80:])]
    assert all(b.trade_fields is not None and b.quote_fields is not None for b in batches)
    assert "conditions" in batches[1].trade_fields and "conditions" not in batches[0].trade_fields
    written = {}
    for name in ("one-at-a-time", "together"):
        store = ParquetColdStore(tmp_path / name, block_offsets=8)
        for topic, rows, positions, fields in (
            (TRADES, "trades", "trade_pos", "trade_fields"),
            (QUOTES, "quotes", "quote_pos", "quote_fields"),
        ):
            if name == "together":
                store.append_batch(
                    topic,
                    [row for b in batches for row in getattr(b, rows)],
                    [position for b in batches for position in getattr(b, positions)],
                    columns=concat_fields([getattr(b, fields) for b in batches]),
                )
            else:
                for b in batches:
                    store.append_batch(
                        topic, getattr(b, rows), getattr(b, positions), columns=getattr(b, fields)
                    )
        store.close()
        written[name] = _files(tmp_path / name, store)
    assert len(written["together"]) > 6 and written["together"].keys() == written["one-at-a-time"].keys()
    for rel, table in written["one-at-a-time"].items():
        assert written["together"][rel].equals(table), rel
        assert written["together"][rel].schema == table.schema


def test_concat_fields_keeps_the_fields_every_part_has() -> None:
    a = {"price": np.array([1.0, 2.0]), "ticker": ("A", "B"), "conditions": ([], [1])}
    b = {"price": np.array([3.0]), "ticker": ["C"]}
    joined = concat_fields([a, b])
    assert joined is not None and joined.keys() == {"price", "ticker"}
    assert joined["price"].tolist() == [1.0, 2.0, 3.0] and list(joined["ticker"]) == ["A", "B", "C"]
    assert concat_fields([a]) is a
    assert concat_fields([a, None]) is None  # rows without columns: converted one by one
    assert concat_fields([]) is None
