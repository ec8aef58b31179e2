"""decode_batch (columns at a time) against the per-message `decode` rules: same rows, same dead letters."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import orjson
import pytest

from tradepulse.bus.decode import DecodedBatch, InvalidMessage, decode, decode_batch
from tradepulse.core.columns import QuoteColumns, TradeColumns
from tradepulse.core.conditions import ConditionRules
from tradepulse.topics import NEWS, QUOTES, TRADES, VENDOR_BARS

TRADE = {
    "event_id": "t-1",
    "ticker": "AAPL",
    "price": 187.25,
    "size": 100,
    "exchange": 4,
    "trade_id": "71675577",
    "tape": 3,
    "sequence": 17,
    "exchange_ts_ms": 1_767_000_000_000,
    "received_ts_us": 1_767_000_000_000_123,
}
QUOTE = {
    "event_id": "q-1",
    "ticker": "MSFT",
    "bid_price": 410.0,
    "bid_size": 0,
    "bid_exchange": 11,
    "ask_price": 410.05,
    "ask_size": 3.5,
    "ask_exchange": 12,
    "tape": 3,
    "sequence": 18,
    "exchange_ts_ms": 1_767_000_000_001,
    "received_ts_us": 1_767_000_000_001_000,
}
NEWS_ROW = {
    "event_id": "n-1",
    "article_id": 5,
    "ticker": "AAPL",
    "headline": "h",
    "published_at": "2026-01-01T00:00:00Z",
    "published_ts_ms": 1_767_000_000_000,
    "received_ts_us": 1_767_000_000_000_000,
    "related": ["AAPL"],
}
# Values that break some rule for at least one kind of field, and values that pass some.
VALUES: list[Any] = [None, True, False, "", "x", "12.5", 0, -1, 0.0, -0.5, 1.5, 7, [], {}]
VALUES += [2**63 - 1, 2**63, 2**64 - 1, 1_767_000_000_000 // 1000, 4_102_444_800_000, 946_684_800_000]


class FakeMessage:
    """The part of confluent_kafka.Message that decode_batch reads."""

    def __init__(self, topic: str, value: bytes | None, partition: int, offset: int) -> None:
        self._topic, self._value, self._partition, self._offset = topic, value, partition, offset

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes:
        return b"AAPL"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def headers(self) -> None:
        return None


def _variants(template: dict[str, Any]) -> list[bytes]:
    """The template, and one broken or edge-case copy per (field, value) and per missing field."""
    out = [orjson.dumps(template)]
    for name in template:
        out.append(orjson.dumps({k: v for k, v in template.items() if k != name}))
        for value in VALUES:
            out.append(orjson.dumps({**template, name: value}))
    return out


def _messages(seed: int) -> list[FakeMessage]:
    raws = [(TRADES, r) for r in _variants(TRADE)] + [(QUOTES, r) for r in _variants(QUOTE)]
    raws += [(NEWS, r) for r in _variants(NEWS_ROW)]
    raws += [(TRADES, orjson.dumps(TRADE))] * 200 + [(QUOTES, orjson.dumps(QUOTE))] * 200
    raws += [(TRADES, b"{not json"), (TRADES, b""), (TRADES, None), (QUOTES, b"[1, 2]"), (QUOTES, b"3")]
    raws += [(TRADES, b"\xff\xfe"), ("market.unknown", orjson.dumps(TRADE)), ("market.unknown", b"x")]
    random.Random(seed).shuffle(raws)
    return [FakeMessage(topic, raw, i % 3, 1000 + i) for i, (topic, raw) in enumerate(raws)]


def _expected(messages: list[FakeMessage]) -> tuple[dict[str, list[Any]], list[tuple[int, str, str]]]:
    rows: dict[str, list[Any]] = {TRADES: [], QUOTES: [], NEWS: []}
    dead = []
    for m in messages:
        try:
            row = decode(m.topic(), m.value())
        except InvalidMessage as exc:
            dead.append((m.offset(), exc.error_type, exc.reason))
        else:
            rows[m.topic()].append((row, (m.partition(), m.offset())))
    return rows, dead


@pytest.mark.parametrize("seed", [0, 1])
def test_decode_batch_matches_the_per_message_rules(seed: int) -> None:
    messages = _messages(seed)
    expected, expected_dead = _expected(messages)
    batch = decode_batch(messages)

    assert batch.trades == [row for row, _ in expected[TRADES]]
    assert batch.trade_pos == [pos for _, pos in expected[TRADES]]
    assert batch.quotes == [row for row, _ in expected[QUOTES]]
    assert batch.quote_pos == [pos for _, pos in expected[QUOTES]]
    assert batch.news == [row for row, _ in expected[NEWS]]
    assert batch.news_pos == [pos for _, pos in expected[NEWS]]
    dead = sorted((d["source_offset"], d["error_type"], d["reason"]) for d in batch.dead_letters)
    assert dead == sorted(expected_dead)
    assert len(dead) > 300  # the variants really exercise the rules
    assert {d["stage"] for d in batch.dead_letters} == {"processor"}

    # The columns are the valid rows, exactly as from_records would build them.
    assert batch.trade_columns is not None and batch.quote_columns is not None
    _assert_same_columns(batch.trade_columns, TradeColumns.from_records(batch.trades))
    _assert_same_columns(batch.quote_columns, QuoteColumns.from_records(batch.quotes))


def _assert_same_columns(got: Any, want: Any) -> None:
    assert len(got) == len(want) > 0
    for name, column in vars(want).items():
        assert getattr(got, name).dtype == column.dtype, name
        np.testing.assert_array_equal(getattr(got, name), column, err_msg=name)


def test_out_of_int64_integers_are_dead_lettered_not_a_crash() -> None:
    # orjson reads integers up to 2**64 - 1; the int64 columns (and SQLite, Parquet) cannot hold them.
    raw = orjson.dumps({**TRADE, "sequence": 2**63})
    batch = decode_batch([FakeMessage(TRADES, raw, 0, 1), FakeMessage(TRADES, orjson.dumps(TRADE), 0, 2)])
    assert [d["error_type"] for d in batch.dead_letters] == ["bad_value"]
    assert batch.trade_pos == [(0, 2)] and len(batch.trade_columns or ()) == 1


def test_trade_conditions_reach_the_core_columns() -> None:
    # The core applies the condition rules (tradepulse.core.conditions): the codes must survive the
    # column path, whether every row has the field (column) or only some do (row by row), and the
    # rows dropped as invalid must not shift them.
    rows = [{**TRADE, "conditions": [37]}, {**TRADE, "price": -1.0, "conditions": [15]}, {**TRADE}]
    rows.append({**TRADE, "conditions": [14, 41]})
    batch = decode_batch([FakeMessage(TRADES, orjson.dumps(r), 0, i) for i, r in enumerate(rows)])
    assert batch.trade_columns is not None
    assert list(batch.trade_columns.conditions) == [[37], None, [14, 41]]
    every = [{**TRADE, "conditions": c} for c in ([], [12], [2, 37])]
    batch = decode_batch([FakeMessage(TRADES, orjson.dumps(r), 0, i) for i, r in enumerate(every)])
    assert batch.trade_columns is not None
    assert list(batch.trade_columns.conditions) == [[], [12], [2, 37]]


def _row_values(value: Any, count: int) -> list[Any]:
    """The per-row values of one `DecodedBatch` attribute, row by row: a list or array, the columns of a
    dataclass (`TradeColumns`, `EligibilityMasks`) or a dict of field columns (all per row)."""
    if value is None:
        return [None] * count
    if isinstance(value, list | np.ndarray):
        assert len(value) == count
        return [v.tolist() if isinstance(v, np.ndarray) else v for v in value]
    columns = value if isinstance(value, dict) else vars(value)
    columns = {name: column for name, column in columns.items() if column is not None}
    assert all(len(column) == count for column in columns.values())
    return [{name: column[i] for name, column in columns.items()} for i in range(count)]


@pytest.mark.parametrize("topic", [TRADES, QUOTES, NEWS, VENDOR_BARS])
def test_keep_filters_everything_that_describes_the_rows_of_a_topic(topic: str) -> None:
    # The runner's rebuild drops the rows before the state's look-back with `keep`; an attribute it
    # missed would pair the core's rows with another row's columns, flags or masks.
    codes = [None, [], [37], [12], [2, 37], [14, 41], [15]]
    values = {
        TRADES: [
            {**TRADE, "event_id": f"t-{i}", "sequence": i, "conditions": codes[i % 7]} for i in range(9)
        ],
        QUOTES: [{**QUOTE, "event_id": f"q-{i}", "sequence": i} for i in range(9)],
        NEWS: [{**NEWS_ROW, "event_id": f"n-{i}", "article_id": i} for i in range(9)],
        VENDOR_BARS: [
            {
                "ticker": "AAPL",
                "start_ms": start,
                "end_ms": start + 60_000,
                "volume": 100 + i,
                "received_ts_us": i,
            }
            for i, start in enumerate(range(1_767_000_000_000, 1_767_000_540_000, 60_000))
        ],
    }
    messages = [
        FakeMessage(name, orjson.dumps(row), i % 2, 100 * j + i)
        for j, (name, rows) in enumerate(values.items())
        for i, row in enumerate(rows)
    ]
    batch = decode_batch(messages)
    assert not batch.dead_letters
    assert batch.trade_columns is not None and batch.trade_fields is not None
    batch.trade_outliers = np.arange(9) % 3 == 1
    conditions = batch.trade_columns.conditions
    assert conditions is not None
    batch.trade_masks = ConditionRules.bundled().masks(conditions, count_unknown=False)
    rows_of = {TRADES: "trade", QUOTES: "quote", NEWS: "news", VENDOR_BARS: "vendor_bar"}
    attributes = [f.name for f in dataclasses.fields(DecodedBatch)]
    # Every attribute is the dead letters or describes the rows of one topic (named after it).
    assert all(name == "dead_letters" or name.startswith(tuple(rows_of.values())) for name in attributes)
    before = {name: _row_values(getattr(batch, name), 9) for name in attributes if name != "dead_letters"}
    assert all(len(set(map(repr, rows))) > 1 for name, rows in before.items()), "rows must differ"

    index = [0, 2, 3, 7]
    batch.keep(topic, index)
    for name in attributes:
        if name == "dead_letters":
            continue
        if name.startswith(rows_of[topic]):
            got = _row_values(getattr(batch, name), len(index))
            assert repr(got) == repr([before[name][i] for i in index]), name
        else:
            assert repr(_row_values(getattr(batch, name), 9)) == repr(before[name]), name


def test_keep_clears_the_outlier_flags_when_no_flagged_trade_is_left() -> None:
    batch = decode_batch(
        [FakeMessage(TRADES, orjson.dumps({**TRADE, "sequence": i}), 0, i) for i in range(3)]
    )
    batch.trade_outliers = np.array([False, True, False])
    batch.keep(TRADES, [0, 2])
    assert batch.trade_outliers is None  # as `flag_outliers` leaves a batch with none flagged
    with pytest.raises(ValueError, match="no rows of topic"):
        batch.keep("market.unknown", [])
