"""Columnar batches of trades and quotes: the input of the feature core.

The runner's decoder validates a Kafka batch a field at a time and builds these column sets straight from
the validated columns (`from_records` builds them from plain dicts with the field names of
`tradepulse.models.Trade` / `Quote`); everything downstream is numpy over columns.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def object_array(values: Sequence[object]) -> np.ndarray:
    """A 1-d object array of `values` (never a 2-d array, even if the values are sequences)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def factorize(values: Iterable[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """(each value's code, the distinct values as a 1-d object array): codes are int64 indices into the
    distinct values, numbered in order of first appearance. One pass over a dict, no sort; values are
    told apart by `==` and `hash`, None included (it is a value like any other). pandas' `factorize`
    gives the same codes on our columns but would load pandas into the runner (~50 MiB resident,
    docs/benchmarks.md); this costs ~0.03 µs a value more."""
    if isinstance(values, np.ndarray):
        values = values.tolist()  # iterating a list is faster, and yields str, not numpy str scalars
    first_seen: dict[Hashable, int] = {}
    code_of = first_seen.setdefault
    codes = np.array([code_of(value, len(first_seen)) for value in values], dtype=np.int64)
    return codes, np.fromiter(first_seen, dtype=object, count=len(first_seen))


@dataclass
class TradeColumns:
    """A batch of trades in arrival order; all arrays have the same length."""

    ticker: np.ndarray  # object (str)
    price: np.ndarray  # float64
    size: np.ndarray  # float64
    ts_ms: np.ndarray  # int64, exchange (event) time
    sequence: np.ndarray  # int64
    event_id: np.ndarray  # object (str)
    conditions: np.ndarray | None = None
    """object: each trade's condition codes (a list; None or [] for a regular sale). None for the whole
    batch: no conditions known, every trade is a regular sale."""

    @classmethod
    def from_records(cls, records: Sequence[Mapping]) -> TradeColumns:
        """Columns from Trade dicts (`ticker, price, size, exchange_ts_ms, sequence, event_id`, and
        `conditions` when present)."""
        if not records:
            return cls.empty()
        return cls(
            ticker=object_array([r["ticker"] for r in records]),
            price=np.fromiter((r["price"] for r in records), dtype=np.float64, count=len(records)),
            size=np.fromiter((r["size"] for r in records), dtype=np.float64, count=len(records)),
            ts_ms=np.fromiter((r["exchange_ts_ms"] for r in records), dtype=np.int64, count=len(records)),
            sequence=np.fromiter((r["sequence"] for r in records), dtype=np.int64, count=len(records)),
            event_id=object_array([r["event_id"] for r in records]),
            conditions=object_array([r.get("conditions") for r in records]),
        )

    @classmethod
    def empty(cls) -> TradeColumns:
        return cls(
            ticker=np.empty(0, dtype=object),
            price=np.empty(0, dtype=np.float64),
            size=np.empty(0, dtype=np.float64),
            ts_ms=np.empty(0, dtype=np.int64),
            sequence=np.empty(0, dtype=np.int64),
            event_id=np.empty(0, dtype=object),
        )

    def take(self, index: np.ndarray | slice) -> TradeColumns:
        """The rows at `index` (an integer array, boolean mask or slice), as a new batch."""
        return TradeColumns(
            ticker=self.ticker[index],
            price=self.price[index],
            size=self.size[index],
            ts_ms=self.ts_ms[index],
            sequence=self.sequence[index],
            event_id=self.event_id[index],
            conditions=None if self.conditions is None else self.conditions[index],
        )

    def __len__(self) -> int:
        return len(self.ts_ms)


@dataclass
class QuoteColumns:
    """A batch of NBBO quotes in arrival order; all arrays have the same length."""

    ticker: np.ndarray  # object (str)
    bid_price: np.ndarray  # float64
    ask_price: np.ndarray  # float64
    ts_ms: np.ndarray  # int64, exchange (event) time
    sequence: np.ndarray  # int64

    @classmethod
    def from_records(cls, records: Sequence[Mapping]) -> QuoteColumns:
        """Columns from Quote dicts (`ticker, bid_price, ask_price, exchange_ts_ms, sequence`)."""
        if not records:
            return cls.empty()
        n = len(records)
        return cls(
            ticker=object_array([r["ticker"] for r in records]),
            bid_price=np.fromiter((r["bid_price"] for r in records), dtype=np.float64, count=n),
            ask_price=np.fromiter((r["ask_price"] for r in records), dtype=np.float64, count=n),
            ts_ms=np.fromiter((r["exchange_ts_ms"] for r in records), dtype=np.int64, count=n),
            sequence=np.fromiter((r["sequence"] for r in records), dtype=np.int64, count=n),
        )

    @classmethod
    def empty(cls) -> QuoteColumns:
        return cls(
            ticker=np.empty(0, dtype=object),
            bid_price=np.empty(0, dtype=np.float64),
            ask_price=np.empty(0, dtype=np.float64),
            ts_ms=np.empty(0, dtype=np.int64),
            sequence=np.empty(0, dtype=np.int64),
        )

    def take(self, index: np.ndarray | slice) -> QuoteColumns:
        """The rows at `index` (an integer array, boolean mask or slice), as a new batch."""
        return QuoteColumns(
            ticker=self.ticker[index],
            bid_price=self.bid_price[index],
            ask_price=self.ask_price[index],
            ts_ms=self.ts_ms[index],
            sequence=self.sequence[index],
        )

    def __len__(self) -> int:
        return len(self.ts_ms)
