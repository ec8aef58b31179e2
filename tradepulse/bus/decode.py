"""Decoding and validation of input messages for the runner.

The rules are those of the input models (`tradepulse.validation.RULES` and `NOTIONALS`, derived from
`Trade`, `Quote` and `NewsArticle`; ingest checks the same rules): every required field present with the
right type, numbers finite and in range, price × size within the notional bound. They are applied by hand, not through a pydantic model per event (~10×
slower). Whatever fails becomes a dead letter carrying its source context; the runner never crashes on
input.

`decode_batch` validates trades and quotes a column at a time (one pass per field over the batch, numpy
for ranges) and builds the core's `TradeColumns` / `QuoteColumns` from those columns. The column pass
only finds the rows that break a rule; each of them then goes through the per-row rules, which alone
decide the error type and reason, so both paths dead-letter exactly the same messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter, methodcaller
from typing import Any

import numpy as np
import orjson

from tradepulse.core.columns import QuoteColumns, TradeColumns, object_array
from tradepulse.core.conditions import EligibilityMasks
from tradepulse.errors import BusError, InvalidArgument
from tradepulse.models import INT64_MAX, INT64_MIN, Quote, Trade
from tradepulse.stores.dlq import make_dead_letter
from tradepulse.topics import NEWS, QUOTES, TRADES, VENDOR_BARS
from tradepulse.validation import NOTIONALS, RULES, InvalidField, Rule

Row = dict[str, Any]

# The other fields of the Trade / Quote models: optional on the wire, not checked here (the cold store
# takes them as they are when every row of a batch has them).
_OPTIONAL: dict[str, tuple[str, ...]] = {
    topic: tuple(name for name, info in model.model_fields.items() if not info.is_required())
    for topic, model in ((TRADES, Trade), (QUOTES, Quote))
}


class InvalidMessage(BusError, ValueError):
    """A message that cannot be processed; `error_type` classifies it for the dead-letter queue."""

    def __init__(self, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.error_type = error_type
        self.reason = reason


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
    rules = RULES.get(topic)
    if rules is None:
        raise InvalidMessage("unknown_topic", f"no decoder for topic {topic!r}")
    try:
        for name, rule in rules.items():
            rule.check(name, row.get(name))
        for notional in NOTIONALS.get(topic, ()):
            notional.check(notional.price, row[notional.price], notional.size, row[notional.size])
    except InvalidField as exc:
        raise InvalidMessage("missing_field" if exc.missing else "bad_value", exc.reason) from None
    if topic == NEWS and not isinstance(row.get("related", []), list):
        raise InvalidMessage("bad_value", f"field 'related' must be a list, got {row['related']!r}")
    return row


def decode(topic: str, raw: bytes | None) -> Row:
    """Parse and validate one input message; raises InvalidMessage."""
    return _validate(topic, _parse(raw))


@dataclass
class DecodedBatch:
    """One micro-batch split by topic. `positions` are (partition, offset) of each valid row, in the same
    order, for the cold store. `trade_columns` / `quote_columns`, when set, are the same rows as columns
    (built by `decode_batch` from the validated columns). `trade_fields` / `quote_fields`, when set, are
    the validated required fields of the same rows by name (numeric fields as numpy arrays, strings as
    sequences), for the cold store's Arrow conversion. Every attribute that describes a topic's rows is
    in row order; `keep` filters them all together (the one way to drop rows of a decoded batch)."""

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
    # Set by the processor's `flag_outliers` when some trades are suspect: True per flagged trade row.
    trade_outliers: np.ndarray | None = None
    # Set by the processor's `flag_outliers`: the trades' condition update rules (computed once a batch).
    trade_masks: EligibilityMasks | None = None
    # The vendor's per-minute aggregates (market.vendor_bars), the bar reconciliation's reference.
    vendor_bars: list[Row] = field(default_factory=list)
    vendor_bar_pos: list[tuple[int, int]] = field(default_factory=list)

    def keep(self, topic: str, index: Sequence[int]) -> None:
        """Keep only the rows of `topic` at `index` (ascending positions into its rows), with their
        positions, columns, fields, outlier flags and condition masks (`_ROW_ATTRIBUTES`)."""
        names = _ROW_ATTRIBUTES.get(topic)
        if names is None:
            raise InvalidArgument(f"no rows of topic {topic!r} in a decoded batch")
        at = np.asarray(index, dtype=np.int64)
        for name in names:
            value = getattr(self, name)
            if isinstance(value, list):  # rows, positions: in place (callers hold these lists)
                value[:] = [value[i] for i in index]
            elif isinstance(value, dict):
                setattr(self, name, _take_fields(value, at))
            elif isinstance(value, np.ndarray):
                setattr(self, name, value[at])
            elif value is not None:  # columns, masks
                setattr(self, name, value.take(at))
        if self.trade_outliers is not None and not self.trade_outliers.any():
            self.trade_outliers = None  # as `flag_outliers` leaves a batch with none flagged

    def __len__(self) -> int:
        return (
            len(self.trades)
            + len(self.quotes)
            + len(self.news)
            + len(self.vendor_bars)
            + len(self.dead_letters)
        )


_ROW_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    TRADES: ("trades", "trade_pos", "trade_columns", "trade_fields", "trade_outliers", "trade_masks"),
    QUOTES: ("quotes", "quote_pos", "quote_columns", "quote_fields"),
    NEWS: ("news", "news_pos"),
    VENDOR_BARS: ("vendor_bars", "vendor_bar_pos"),
}
"""The `DecodedBatch` attributes that describe each topic's rows, row by row (`DecodedBatch.keep`)."""


def _take_fields(fields: dict[str, Any], at: np.ndarray) -> dict[str, Any]:
    """The field columns of the rows at `at` (numpy arrays indexed, sequences picked)."""
    return {
        name: values[at] if isinstance(values, np.ndarray) else [values[i] for i in at.tolist()]
        for name, values in fields.items()
    }


_ALLOWED_TYPES: dict[type, tuple[type, ...]] = {str: (str,), int: (int,), float: (int, float)}
_COMPARE = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal}


def _and(ok: np.ndarray | None, more: np.ndarray) -> np.ndarray:
    return more if ok is None else ok & more


def _column_ok(rule: Rule, values: Sequence[Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Which values of one field pass its rule (None: all of them), and the numeric column (None for
    strings). The rule's checks a column at a time; bool is not int here (exact `type` checks)."""
    n = len(values)
    allowed = _ALLOWED_TYPES[rule.kind]
    ok: np.ndarray | None = None
    if not set(map(type, values)).issubset(allowed):
        ok = np.fromiter((type(v) in allowed for v in values), dtype=bool, count=n)
        values = tuple(v if good else 0 for v, good in zip(values, ok.tolist(), strict=True))
    if rule.kind is str:
        if rule.min_length and not all(values):  # an empty string (or a zeroed bad value) is falsy
            ok = _and(ok, np.fromiter(map(bool, values), dtype=bool, count=n))
        return ok, None
    if rule.kind is int:
        try:
            column = np.array(values, dtype=np.int64)
        except OverflowError:  # beyond int64: flag those, zero them
            fits = np.fromiter((INT64_MIN <= v <= INT64_MAX for v in values), dtype=bool, count=n)
            ok = _and(ok, fits)
            column = np.array(
                [v if good else 0 for v, good in zip(values, fits.tolist(), strict=True)], np.int64
            )
    else:
        column = np.array(values, dtype=np.float64)
        finite = np.isfinite(column)
        if not finite.all():
            ok = _and(ok, finite)
    with np.errstate(invalid="ignore"):
        for op, limit in rule.bounds:
            inside = _COMPARE[op](column, limit)
            if not inside.all():
                ok = _and(ok, inside)
    return ok, column


def _validate_columns(topic: str, rows: list[Row]) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Rows of one topic (all dicts) that may break a rule (mask of suspects, None: none), and the
    columns by field name: the required fields (a missing one is None, which fails its rule), and the
    optional model fields when every row has them (as they are, unvalidated: for the cold store)."""
    rules = RULES[topic]
    names = list(rules)
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
        ok, column = _column_ok(rules[name], values)
        out[name] = values if column is None else column
        if ok is not None:
            suspect = ~ok if suspect is None else suspect | ~ok
    with np.errstate(invalid="ignore", over="ignore"):
        for notional in NOTIONALS[topic]:
            # NaN (a field that failed its rule) compares False: a suspect either way.
            inside = out[notional.price] * out[notional.size] <= notional.limit
            if not inside.all():
                suspect = ~inside if suspect is None else suspect | ~inside
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


def concat_fields(parts: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The field columns of consecutive batches' rows as one batch's (`DecodedBatch.trade_fields` /
    `quote_fields`): the fields every part has, concatenated; None if some part has none (its rows are
    then converted one by one, as a batch without columns is)."""
    present = [part for part in parts if part is not None]
    if not parts or len(present) < len(parts):
        return None
    if len(present) == 1:
        return present[0]
    out: dict[str, Any] = {}
    for name in present[0]:
        columns = [part[name] for part in present if name in part]
        if len(columns) < len(present):
            continue
        if all(isinstance(column, np.ndarray) for column in columns):
            out[name] = np.concatenate(columns)
        else:
            out[name] = [value for column in columns for value in column]
    return out


def _trade_columns(cols: dict[str, Any], keep: np.ndarray | None, rows: list[Row]) -> TradeColumns:
    # Conditions decide which features a trade updates (tradepulse.core.conditions); the column is
    # there when every row has the field, else it is read row by row (absent: a regular sale).
    conditions = cols.get("conditions")
    if conditions is None:
        conditions = [row.get("conditions") for row in rows]
    columns = TradeColumns(
        ticker=object_array(cols["ticker"]),
        price=cols["price"],
        size=cols["size"],
        ts_ms=cols["exchange_ts_ms"],
        sequence=cols["sequence"],
        event_id=object_array(cols["event_id"]),
        conditions=object_array(conditions),
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


Dead = Callable[[Any, InvalidMessage], None]
"""Dead-letters one message (a confluent-kafka Message) for an InvalidMessage."""


def decode_batch(messages: list[Any], stage: str = "processor") -> DecodedBatch:
    """Split confluent-kafka messages into valid rows per topic (trades and quotes also as columns) and
    dead letters."""
    batch = DecodedBatch()
    dead = _dead_letterer(batch, stage)
    for topic, group in _by_topic(messages).items():
        if topic in (TRADES, QUOTES):
            _decode_columns(topic, group, batch, dead)
        else:
            _decode_each(topic, group, batch, dead)
    return batch


def _by_topic(messages: list[Any]) -> dict[str, list[Any]]:
    # Accessors through map() run in C: a Python loop over 5,000 messages costs more than the calls.
    topics = list(map(_TOPIC, messages))
    if topics and topics.count(topics[0]) == len(topics):  # the usual drain: one topic
        return {topics[0]: messages}
    by_topic: dict[str, list[Any]] = {}
    for topic, message in zip(topics, messages, strict=True):
        by_topic.setdefault(topic, []).append(message)
    return by_topic


def _dead_letterer(batch: DecodedBatch, stage: str) -> Dead:
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

    return dead


def _decode_each(topic: str, group: list[Any], batch: DecodedBatch, dead: Dead) -> None:
    """News and vendor bars (and messages of a topic we have no decoder for: all dead letters), one at a
    time."""
    rows, positions = {
        NEWS: (batch.news, batch.news_pos),
        VENDOR_BARS: (batch.vendor_bars, batch.vendor_bar_pos),
    }.get(topic, ([], []))
    for message in group:
        try:
            rows.append(decode(topic, message.value()))
        except InvalidMessage as exc:
            dead(message, exc)
            continue
        positions.append((message.partition(), message.offset()))


def _decode_columns(topic: str, group: list[Any], batch: DecodedBatch, dead: Dead) -> None:
    """Trades or quotes: rows, positions, core columns and cold-store fields of the valid messages."""
    group, parsed = _parse_objects(group, dead)
    if not parsed:
        return
    suspect, cols = _validate_columns(topic, parsed)
    keep = _recheck_suspects(topic, group, parsed, suspect, dead)
    all_rows = parsed
    if keep is not None:
        index = np.flatnonzero(keep).tolist()
        group = [group[i] for i in index]
        parsed = [parsed[i] for i in index]
    positions = list(zip(map(_PARTITION, group), map(_OFFSET, group), strict=True))
    if topic == TRADES:
        batch.trades, batch.trade_pos = parsed, positions
        batch.trade_columns = _trade_columns(cols, keep, all_rows)
        batch.trade_fields = _kept_fields(cols, keep)
    else:
        batch.quotes, batch.quote_pos = parsed, positions
        batch.quote_columns = _quote_columns(cols, keep)
        batch.quote_fields = _kept_fields(cols, keep)


def _parse_objects(group: list[Any], dead: Dead) -> tuple[list[Any], list[Any]]:
    """(messages, parsed JSON objects) of a group; a message that is not a JSON object is dead-lettered."""
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
    return group, parsed


def _recheck_suspects(
    topic: str, group: list[Any], parsed: list[Row], suspect: np.ndarray | None, dead: Dead
) -> np.ndarray | None:
    """The rows to keep (None: all). The per-row rules decide (and explain) each suspect the column pass
    found; the invalid ones are dead-lettered."""
    if suspect is None or not suspect.any():
        return None
    keep = np.ones(len(parsed), dtype=bool)
    for i in np.flatnonzero(suspect).tolist():
        try:
            _validate(topic, parsed[i])
        except InvalidMessage as exc:
            keep[i] = False
            dead(group[i], exc)
    return None if keep.all() else keep
