"""Decoding and validation of input messages for the runner.

Validation is hand-written field checks (not a pydantic model per event, which costs ~10× more): every
field the core and the stores rely on must be present with the right type, numbers finite and in range.
Whatever fails becomes a dead letter carrying its source context; the runner never crashes on input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from tradepulse.stores.dlq import make_dead_letter
from tradepulse.topics import NEWS, QUOTES, TRADES

Row = dict[str, Any]

# Event times outside [2000-01-01, 2100-01-01) are unit mistakes (seconds, µs) that would wreck windows.
_MIN_TS_MS = 946_684_800_000
_MAX_TS_MS = 4_102_444_800_000

# field -> kind. Kinds: str (non-empty), int, ts (epoch ms in range), pos / nonneg (finite float),
# list, ostr (str, may be empty).
_REQUIRED: dict[str, dict[str, str]] = {
    TRADES: {
        "event_id": "str",
        "ticker": "str",
        "price": "pos",
        "size": "pos",
        "exchange": "int",
        "trade_id": "ostr",
        "tape": "int",
        "sequence": "int",
        "exchange_ts_ms": "ts",
        "received_ts_us": "int",
    },
    QUOTES: {
        "event_id": "str",
        "ticker": "str",
        "bid_price": "nonneg",
        "bid_size": "nonneg",
        "bid_exchange": "int",
        "ask_price": "nonneg",
        "ask_size": "nonneg",
        "ask_exchange": "int",
        "tape": "int",
        "sequence": "int",
        "exchange_ts_ms": "ts",
        "received_ts_us": "int",
    },
    NEWS: {
        "event_id": "str",
        "article_id": "int",
        "ticker": "str",
        "headline": "str",
        "published_at": "str",
        "published_ts_ms": "ts",
        "received_ts_us": "int",
    },
}


class InvalidMessage(ValueError):
    """A message that cannot be processed; `error_type` classifies it for the dead-letter queue."""

    def __init__(self, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.error_type = error_type
        self.reason = reason


def _check(name: str, kind: str, value: Any) -> None:
    if value is None:
        raise InvalidMessage("missing_field", f"missing field {name!r}")
    if kind in ("str", "ostr"):
        if not isinstance(value, str) or (kind == "str" and not value):
            raise InvalidMessage("bad_value", f"{name!r} must be a non-empty string, got {value!r}")
        return
    if isinstance(value, bool):
        raise InvalidMessage("bad_value", f"{name!r} must be a number, got a boolean")
    if kind in ("int", "ts"):
        if not isinstance(value, int):
            raise InvalidMessage("bad_value", f"{name!r} must be an integer, got {value!r}")
        if kind == "ts" and not _MIN_TS_MS <= value < _MAX_TS_MS:
            raise InvalidMessage("bad_value", f"{name!r}={value} is not an epoch-ms time")
        return
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidMessage("bad_value", f"{name!r} must be a finite number, got {value!r}")
    if (kind == "pos" and value <= 0) or (kind == "nonneg" and value < 0):
        raise InvalidMessage("bad_value", f"{name!r}={value} out of range")


def decode(topic: str, raw: bytes | None) -> Row:
    """Parse and validate one input message; raises InvalidMessage."""
    if raw is None:
        raise InvalidMessage("empty", "message has no value")
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage("bad_json", f"not JSON: {exc}") from None
    if not isinstance(row, dict):
        raise InvalidMessage("bad_json", f"expected a JSON object, got {type(row).__name__}")
    spec = _REQUIRED.get(topic)
    if spec is None:
        raise InvalidMessage("unknown_topic", f"no decoder for topic {topic!r}")
    for name, kind in spec.items():
        _check(name, kind, row.get(name))
    if topic == NEWS and not isinstance(row.get("related", []), list):
        raise InvalidMessage("bad_value", "'related' must be a list")
    return row


@dataclass
class DecodedBatch:
    """One micro-batch split by topic. `positions` are (topic, partition, offset) of each valid row, in
    the same order, for the cold store."""

    trades: list[Row] = field(default_factory=list)
    quotes: list[Row] = field(default_factory=list)
    news: list[Row] = field(default_factory=list)
    trade_pos: list[tuple[int, int]] = field(default_factory=list)
    quote_pos: list[tuple[int, int]] = field(default_factory=list)
    news_pos: list[tuple[int, int]] = field(default_factory=list)
    dead_letters: list[Row] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.trades) + len(self.quotes) + len(self.news) + len(self.dead_letters)


def decode_batch(messages: list[Any], stage: str = "processor") -> DecodedBatch:
    """Split confluent-kafka messages into valid rows per topic and dead letters."""
    batch = DecodedBatch()
    targets = {
        TRADES: (batch.trades, batch.trade_pos),
        QUOTES: (batch.quotes, batch.quote_pos),
        NEWS: (batch.news, batch.news_pos),
    }
    for message in messages:
        topic = message.topic()
        raw = message.value()
        try:
            row = decode(topic, raw)
        except InvalidMessage as exc:
            key = message.key()
            batch.dead_letters.append(
                make_dead_letter(
                    stage=stage,
                    payload=raw,
                    error_type=exc.error_type,
                    reason=exc.reason,
                    source_topic=topic,
                    source_partition=message.partition(),
                    source_offset=message.offset(),
                    ticker=key.decode("utf-8", "replace") if key else None,
                    headers=message.headers(),
                )
            )
            continue
        rows, positions = targets[topic]
        rows.append(row)
        positions.append((message.partition(), message.offset()))
    return batch
