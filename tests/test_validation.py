"""One validation source: every invalid value the rule table implies is rejected by the pydantic model,
by the runner (per message and a column at a time) and by ingest (under the Massive wire name), with
the same reason. The cases are generated from `tradepulse.validation.RULES`, so a rule added to a model
is tested on every path without a line here."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from tradepulse.bus.decode import InvalidMessage, decode, decode_batch
from tradepulse.models import (
    INT64_MAX,
    MAX_NOTIONAL,
    MAX_PRICE,
    NewsArticle,
    Quote,
    Trade,
    VendorBar,
)
from tradepulse.sources.parse import QUOTE_WIRE, TRADE_WIRE, parse_frame
from tradepulse.topics import NEWS, QUOTES, TRADES, VENDOR_BARS
from tradepulse.validation import NOTIONALS, RULES, Rule

MODELS: dict[str, type[BaseModel]] = {
    TRADES: Trade, QUOTES: Quote, NEWS: NewsArticle, VENDOR_BARS: VendorBar
}  # fmt: skip
VALID: dict[str, dict[str, Any]] = {
    TRADES: {
        "event_id": "t-1", "ticker": "AAPL", "price": 187.25, "size": 100.0, "exchange": 4,
        "trade_id": "71675577", "tape": 3, "conditions": [12], "sequence": 17,
        "exchange_ts_ms": 1_767_000_000_000, "received_ts_us": 1_767_000_000_000_123,
        "trf_id": None, "trf_ts_ms": None,
    },
    QUOTES: {
        "event_id": "q-1", "ticker": "MSFT", "bid_price": 410.0, "bid_size": 0.0, "bid_exchange": 11,
        "ask_price": 410.05, "ask_size": 3.5, "ask_exchange": 12, "conditions": [], "indicators": [],
        "tape": 3, "sequence": 18, "exchange_ts_ms": 1_767_000_000_001, "received_ts_us": 1_767_000_000_001_000,
    },
    NEWS: {
        "event_id": "n-1", "article_id": 5, "ticker": "AAPL", "related": ["AAPL"], "headline": "h",
        "summary": "", "source": "", "url": "", "image": "", "category": "",
        "published_at": "2026-01-01T00:00:00Z", "published_ts_ms": 1_767_000_000_000,
        "received_ts_us": 1_767_000_000_000_000,
    },
    VENDOR_BARS: {
        "ticker": "AAPL", "start_ms": 1_767_000_000_000, "end_ms": 1_767_000_060_000, "volume": 1200.0,
        "received_ts_us": 1_767_000_060_000_500, "open": 187.0, "high": 187.5, "low": 186.9,
        "close": 187.25, "vwap": 187.2, "avg_trade_size": 60.0, "accumulated_volume": 1_000_000.0,
        "official_open": 185.0, "day_vwap": 186.1, "otc": False,
    },
}  # fmt: skip
WIRE_EVENTS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    TRADES: (
        {"ev": "T", "sym": "AAPL", "x": 4, "i": "71675577", "z": 3, "p": 187.25, "s": 100, "c": [12],
         "t": 1_767_000_000_000, "q": 17},
        TRADE_WIRE,
    ),
    QUOTES: (
        {"ev": "Q", "sym": "MSFT", "bx": 11, "bp": 410.0, "bs": 0, "ax": 12, "ap": 410.05, "as": 3.5,
         "z": 3, "t": 1_767_000_000_001, "q": 18},
        QUOTE_WIRE,
    ),
    VENDOR_BARS: (
        {"ev": "AM", "sym": "AAPL", "s": 1_767_000_000_000, "e": 1_767_000_060_000, "v": 1200},
        {"sym": "ticker", "s": "start_ms", "e": "end_ms", "v": "volume"},
    ),
}  # fmt: skip
MISSING = object()


def invalid_values(rule: Rule) -> list[Any]:
    """Values that break `rule`: absent, null, each wrong type, and just outside each bound."""
    values: list[Any] = [MISSING, None, True, [], {}]
    values += [5, 1.5] if rule.kind is str else ["1"]
    if rule.kind is str and rule.min_length:
        values.append("")
    if rule.kind is int:
        values += [1.5, INT64_MAX + 1]
    if rule.kind is float:
        values += [math.nan, math.inf]
    for op, limit in rule.bounds:
        step = 1 if rule.kind is int else 0.5
        values.append({">": limit, ">=": limit - step, "<": limit, "<=": limit + step}[op])
    return values


CASES = [
    pytest.param(topic, name, value, id=f"{topic}.{name}={'missing' if value is MISSING else value!r}")
    for topic, rules in RULES.items()
    for name, rule in rules.items()
    for value in invalid_values(rule)
]


def with_value(row: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    row = dict(row)
    if value is MISSING:
        del row[name]
    else:
        row[name] = value
    return row


def test_the_valid_rows_pass_everywhere() -> None:
    for topic, row in VALID.items():
        MODELS[topic].model_validate(row)
        assert decode(topic, orjson.dumps(row)) == row
    for event, _ in WIRE_EVENTS.values():
        frame = parse_frame(orjson.dumps([event]), 1_767_000_000_000_000)
        assert not frame.rejects and len(frame.trades) + len(frame.quotes) + len(frame.aggregates) == 1


@pytest.mark.parametrize(("topic", "name", "value"), CASES)
def test_models_runner_and_ingest_reject_the_same_values_with_the_same_reason(
    topic: str, name: str, value: Any
) -> None:
    row = with_value(VALID[topic], name, value)
    with pytest.raises(ValidationError) as error:
        MODELS[topic].model_validate(row)
    assert {e["loc"][0] for e in error.value.errors()} == {name}

    if isinstance(value, float) and not math.isfinite(value):
        raw = json.dumps(row).encode()  # NaN/Infinity literals: not JSON, so the runner rejects the message
        with pytest.raises(InvalidMessage) as rejected:
            decode(topic, raw)
        assert rejected.value.error_type == "bad_json"
        reason = f"field {name!r} must be a finite number, got {value!r}"
    else:
        raw = orjson.dumps(row)
        with pytest.raises(InvalidMessage) as rejected:
            decode(topic, raw)
        reason = rejected.value.reason
        expected_type = "missing_field" if value is MISSING or value is None else "bad_value"
        assert rejected.value.error_type == expected_type
        # The column pass of decode_batch finds it among valid rows and dead-letters it the same way.
        batch = decode_batch([_Message(topic, orjson.dumps(VALID[topic]), 0), _Message(topic, raw, 1)])
        assert [(d["source_offset"], d["reason"]) for d in batch.dead_letters] == [(1, reason)]

    if topic not in WIRE_EVENTS:
        return
    event, wire = WIRE_EVENTS[topic]
    keys = [key for key, field in wire.items() if field == name]
    if not keys:
        return  # computed by ingest (event id, receive time), never read from the wire
    (key,) = keys
    frame = json.dumps([with_value(event, key, value)])
    (reject,) = parse_frame(frame, 1_767_000_000_000_000).rejects
    assert reject.reason == reason.replace(repr(name), repr(key))


NOTIONAL_CASES = [
    pytest.param(topic, notional.price, notional.size, id=f"{topic}.{notional.price}*{notional.size}")
    for topic, notionals in NOTIONALS.items()
    for notional in notionals
]


@pytest.mark.parametrize(("topic", "price", "size"), NOTIONAL_CASES)
def test_every_path_bounds_the_notional_with_the_same_reason(topic: str, price: str, size: str) -> None:
    """price × size beyond MAX_NOTIONAL, each field within its own bound: rejected by the model, the
    runner (per message and a column at a time) and ingest; exactly at the bound: accepted."""
    at_bound = with_value(
        with_value(VALID[topic], price, MAX_PRICE / 10), size, MAX_NOTIONAL / (MAX_PRICE / 10)
    )
    MODELS[topic].model_validate(at_bound)
    assert decode(topic, orjson.dumps(at_bound)) == at_bound
    row = with_value(at_bound, size, at_bound[size] * 2)
    with pytest.raises(ValidationError):
        MODELS[topic].model_validate(row)
    reason = f"notional {price!r} × {size!r} must be <= {MAX_NOTIONAL}, got {row[price] * row[size]!r}"
    with pytest.raises(InvalidMessage) as rejected:
        decode(topic, orjson.dumps(row))
    assert (rejected.value.error_type, rejected.value.reason) == ("bad_value", reason)
    batch = decode_batch(
        [_Message(topic, orjson.dumps(VALID[topic]), 0), _Message(topic, orjson.dumps(row), 1)]
    )
    assert [(d["source_offset"], d["reason"]) for d in batch.dead_letters] == [(1, reason)]
    assert batch.trade_columns is None or len(batch.trade_columns.price) == 1

    event, wire = WIRE_EVENTS[topic]
    (price_key,) = [k for k, f in wire.items() if f == price]
    (size_key,) = [k for k, f in wire.items() if f == size]
    event = with_value(with_value(event, price_key, row[price]), size_key, row[size])
    (reject,) = parse_frame(orjson.dumps([event]), 1_767_000_000_000_000).rejects
    assert reject.reason == reason.replace(repr(price), repr(price_key)).replace(repr(size), repr(size_key))


class _Message:
    def __init__(self, topic: str, value: bytes, offset: int) -> None:
        self._topic, self._value, self._offset = topic, value, offset

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return None

    def headers(self) -> None:
        return None


@pytest.mark.parametrize(
    ("topic", "name", "value"), [case for case in CASES if case.values[2] is not MISSING]
)
def test_a_column_with_a_value_that_breaks_the_rule_does_not_pass_as_a_whole(
    topic: str, name: str, value: Any
) -> None:
    """`Rule.all_pass` (the column pass of ingest) is never True where `check` would refuse a value."""
    rule, valid = RULES[topic][name], VALID[topic][name]
    assert rule.all_pass([valid, valid]) and rule.all_pass([])
    assert not rule.all_pass([valid, value, valid])
