"""Decoding and validation of input messages for the runner.

Validation is hand-written field checks (not a pydantic model per event, which costs ~10× more): every
field the core and the stores rely on must be present with the right type, numbers finite and in range.
Whatever fails becomes a dead letter carrying its source context; the runner never crashes on input.

`decode_batch` validates trades and quotes a column at a time (one pass per field over the batch, numpy
for ranges) and builds the core's `TradeColumns` / `QuoteColumns` from those columns. The column pass
only finds the rows that break a rule; each of them then goes through the per-row `decode` rules, which
alone decide the error type and reason, so both paths dead-letter exactly the same messages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter, methodcaller
from typing import Any

import numpy as np
import orjson

from tradepulse.core.columns import QuoteColumns, TradeColumns, object_array
from tradepulse.errors import BusError
from tradepulse.stores.dlq import make_dead_letter
from tradepulse.topics import NEWS, QUOTES, TRADES

Row = dict[str, Any]

# Event times outside [2000-01-01, 2100-01-01) are unit mistakes (seconds, µs) that would wreck windows.
_MIN_TS_MS = 946_684_800_000
_MAX_TS_MS = 4_102_444_800_000
# Integers are stored as int64 (numpy columns, SQLite, Parquet); a larger one would crash the core.
_MIN_INT = -(2**63)
_MAX_INT = 2**63 - 1

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

# The other fields of the Trade / Quote models: optional on the wire, not checked here.
_OPTIONAL: dict[str, tuple[str, ...]] = {
    TRADES: ("conditions", "trf_id", "trf_ts_ms"),
    QUOTES: ("conditions", "indicators"),
}


class InvalidMessage(BusError, ValueError):
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
        if not _MIN_INT <= value <= _MAX_INT:
            raise InvalidMessage("bad_value", f"{name!r}={value} is out of the 64-bit range")
        if kind == "ts" and not _MIN_TS_MS <= value < _MAX_TS_MS:
            raise InvalidMessage("bad_value", f"{name!r}={value} is not an epoch-ms time")
        return
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidMessage("bad_value", f"{name!r} must be a finite number, got {value!r}")
    if (kind == "pos" and value <= 0) or (kind == "nonneg" and value < 0):
        raise InvalidMessage("bad_value", f"{name!r}={value} out of range")


def _parse(raw: bytes | None) -> Any:
    if raw is None:
        raise InvalidMessage("empty", "message has no value")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage("bad_json", f"not JSON: {exc}") from None


def _validate(topic: str, row: Any) -> Row:
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


def decode(topic: str, raw: bytes | None) -> Row:
    """Parse and validate one input message; raises InvalidMessage."""
    return _validate(topic, _parse(raw))


@dataclass
class DecodedBatch:
    """One micro-batch split by topic. `positions` are (partition, offset) of each valid row, in the same
    order, for the cold store. `trade_columns` / `quote_columns`, when set, are the same rows as columns
    (built by `decode_batch` from the validated columns; whoever filters the rows must filter them too).
    `trade_fields` / `quote_fields`, when set, are the validated required fields of the same rows by
    name (numeric fields as numpy arrays, strings as sequences), for the cold store's Arrow conversion;
    whoever filters the rows must filter or drop them too."""

    trades: list[Row] = field(default_factory=list)
    quotes: list[Row] = field(default_factory=list)
    news: list[Row] = field(default_factory=list)
    trade_pos: list[tuple[int, int]] = field(default_factory=list)
    quote_pos: list[tuple[int, int]] = field(default_factory=list)
    news_pos: list[tuple[int, int]] = field(default_factory=list)
    dead_letters: list[Row] = field(default_factory=list)
    trade_columns: TradeColumns | None = None
    quote_columns: QuoteColumns | None = None
    trade_fields: dict[str, Any] | None = None
    quote_fields: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.trades) + len(self.quotes) + len(self.news) + len(self.dead_letters)


_ALLOWED_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "ostr": (str,),
    "int": (int,),
    "ts": (int,),
    "pos": (int, float),
    "nonneg": (int, float),
}


def _column_ok(kind: str, values: Sequence[Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Which values of one field pass its rule (None: all of them), and the numeric column (None for
    strings). Same rules as `_check`, a column at a time; bool is not int here (exact `type` checks)."""
    n = len(values)
    allowed = _ALLOWED_TYPES[kind]
    types = set(map(type, values))
    ok: np.ndarray | None = None
    if not types.issubset(allowed):
        ok = np.fromiter((type(v) in allowed for v in values), dtype=bool, count=n)
        values = tuple(v if good else 0 for v, good in zip(values, ok.tolist(), strict=True))
    if kind in ("str", "ostr"):
        if kind == "str" and not all(values):  # an empty string (or a zeroed bad value) is falsy
            nonempty = np.fromiter(map(bool, values), dtype=bool, count=n)
            ok = nonempty if ok is None else ok & nonempty
        return ok, None
    if kind in ("int", "ts"):
        try:
            column = np.array(values, dtype=np.int64)
        except OverflowError:  # beyond int64: flag those, zero them
            fits = np.fromiter((_MIN_INT <= v <= _MAX_INT for v in values), dtype=bool, count=n)
            ok = fits if ok is None else ok & fits
            column = np.array(
                [v if good else 0 for v, good in zip(values, fits.tolist(), strict=True)], np.int64
            )
        if kind == "ts":
            in_range = (column >= _MIN_TS_MS) & (column < _MAX_TS_MS)
            if not in_range.all():
                ok = in_range if ok is None else ok & in_range
        return ok, column
    column = np.array(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        good = np.isfinite(column) & ((column > 0) if kind == "pos" else (column >= 0))
    if not good.all():
        ok = good if ok is None else ok & good
    return ok, column


def _validate_columns(topic: str, rows: list[Row]) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Rows of one topic (all dicts) that may break a rule (mask of suspects, None: none), and the
    columns by field name: the required fields (a missing one is None, which fails its rule), and the
    optional model fields when every row has them (as they are, unvalidated: for the cold store)."""
    spec = _REQUIRED[topic]
    names = list(spec)
    optional = _OPTIONAL.get(topic, ())
    # Row by row (one itemgetter call per row), then transposed: each row dict is visited once, which
    # in the runner (5,000 freshly parsed dicts, cold in the CPU cache) beats a pass per field.
    try:
        columns = list(zip(*map(itemgetter(*names, *optional), rows), strict=True))
    except KeyError:
        optional = ()
        try:
            columns = list(zip(*map(itemgetter(*names), rows), strict=True))
        except KeyError:  # a field is absent from some row: None stands in, and fails its rule
            columns = [tuple(row.get(name) for row in rows) for name in names]
    suspect: np.ndarray | None = None
    out: dict[str, Any] = {}
    for name, values in zip(names, columns, strict=False):
        ok, column = _column_ok(spec[name], values)
        out[name] = values if column is None else column
        if ok is not None:
            suspect = ~ok if suspect is None else suspect | ~ok
    out.update(zip(optional, columns[len(names) :], strict=True))
    return suspect, out


def _kept_fields(cols: dict[str, Any], keep: np.ndarray | None) -> dict[str, Any]:
    """The field columns of the kept rows."""
    if keep is None:
        return cols
    index = np.flatnonzero(keep)
    return {
        name: values[index] if isinstance(values, np.ndarray) else [values[i] for i in index.tolist()]
        for name, values in cols.items()
    }


def _trade_columns(cols: dict[str, Any], keep: np.ndarray | None) -> TradeColumns:
    columns = TradeColumns(
        ticker=object_array(cols["ticker"]),
        price=cols["price"],
        size=cols["size"],
        ts_ms=cols["exchange_ts_ms"],
        sequence=cols["sequence"],
        event_id=object_array(cols["event_id"]),
    )
    return columns if keep is None else columns.take(keep)


def _quote_columns(cols: dict[str, Any], keep: np.ndarray | None) -> QuoteColumns:
    columns = QuoteColumns(
        ticker=object_array(cols["ticker"]),
        bid_price=cols["bid_price"],
        ask_price=cols["ask_price"],
        ts_ms=cols["exchange_ts_ms"],
        sequence=cols["sequence"],
    )
    return columns if keep is None else columns.take(keep)


_TOPIC, _VALUE = methodcaller("topic"), methodcaller("value")
_PARTITION, _OFFSET = methodcaller("partition"), methodcaller("offset")


def decode_batch(messages: list[Any], stage: str = "processor") -> DecodedBatch:
    """Split confluent-kafka messages into valid rows per topic (trades and quotes also as columns) and
    dead letters."""
    batch = DecodedBatch()
    by_topic: dict[str, list[Any]] = {}
    # Accessors through map() run in C: a Python loop over 5,000 messages costs more than the calls.
    topics = list(map(_TOPIC, messages))
    if topics and topics.count(topics[0]) == len(topics):  # the usual drain: one topic
        by_topic[topics[0]] = messages
    else:
        for topic, message in zip(topics, messages, strict=True):
            group = by_topic.get(topic)
            if group is None:
                group = by_topic[topic] = []
            group.append(message)

    def dead(message: Any, exc: InvalidMessage) -> None:
        key = message.key()
        batch.dead_letters.append(
            make_dead_letter(
                stage=stage,
                payload=message.value(),
                error_type=exc.error_type,
                reason=exc.reason,
                source_topic=message.topic(),
                source_partition=message.partition(),
                source_offset=message.offset(),
                ticker=key.decode("utf-8", "replace") if key else None,
                headers=message.headers(),
            )
        )

    for topic, group in by_topic.items():
        if topic not in (TRADES, QUOTES):
            rows, positions = (batch.news, batch.news_pos) if topic == NEWS else ([], [])
            for message in group:
                try:
                    rows.append(decode(topic, message.value()))
                except InvalidMessage as exc:
                    dead(message, exc)
                    continue
                positions.append((message.partition(), message.offset()))
            continue
        values = list(map(_VALUE, group))
        try:
            parsed = list(map(orjson.loads, values))
        except (orjson.JSONDecodeError, TypeError):  # some message is not JSON: find it, one at a time
            parsed, ok_group = [], []
            for message, raw in zip(group, values, strict=True):
                try:
                    parsed.append(_parse(raw))
                except InvalidMessage as exc:
                    dead(message, exc)
                    continue
                ok_group.append(message)
            group = ok_group
        if set(map(type, parsed)) != {dict}:
            for message, row in zip(group, parsed, strict=True):
                if type(row) is not dict:
                    kind = type(row).__name__
                    dead(message, InvalidMessage("bad_json", f"expected a JSON object, got {kind}"))
            objects = [i for i, row in enumerate(parsed) if type(row) is dict]
            group, parsed = [group[i] for i in objects], [parsed[i] for i in objects]
        if not parsed:
            continue
        suspect, cols = _validate_columns(topic, parsed)
        keep: np.ndarray | None = None
        if suspect is not None and suspect.any():
            # The per-row rules decide (and explain) each suspect; the column pass only found them.
            keep = np.ones(len(parsed), dtype=bool)
            for i in np.flatnonzero(suspect).tolist():
                try:
                    _validate(topic, parsed[i])
                except InvalidMessage as exc:
                    keep[i] = False
                    dead(group[i], exc)
            if keep.all():
                keep = None
            else:
                index = np.flatnonzero(keep).tolist()
                group = [group[i] for i in index]
                parsed = [parsed[i] for i in index]
        positions = list(zip(map(_PARTITION, group), map(_OFFSET, group), strict=True))
        if topic == TRADES:
            batch.trades, batch.trade_pos = parsed, positions
            batch.trade_columns = _trade_columns(cols, keep)
            batch.trade_fields = _kept_fields(cols, keep)
        else:
            batch.quotes, batch.quote_pos = parsed, positions
            batch.quote_columns = _quote_columns(cols, keep)
            batch.quote_fields = _kept_fields(cols, keep)
    return batch
