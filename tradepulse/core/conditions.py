"""Trade-condition update rules: which trades count toward volume, high/low and open/close (last price).

The rules are data: Massive's `GET /v3/reference/conditions` table (stocks, trade conditions), with, per
condition, `update_rules.consolidated.{updates_volume, updates_high_low, updates_open_close}`. The
consolidated rules apply because every feature and bar here is whole-market (all exchanges). A
snapshot ships in `tradepulse/core/data/conditions.json` (provenance in that folder's README.md);
`tradepulse conditions refresh` re-fetches it.

A trade's conditions combine with AND: it updates a quantity only if *every* one of its conditions
does (an odd-lot intermarket sweep, [14, 37], updates volume but not the last price). No conditions
(the feed omits `c` for a regular sale) updates everything.

Unknown codes (not in the table, or not an int): by default a code we do not know places **no**
restriction — it is treated like a regular sale — so a new vendor code never silently drops trades
from the features; each unknown code is counted (`unknown_counts`, exported as a metric by the
runner) and logged once, which tells the operator to refresh the table.

The API for the feature core and the bars (`masks`) is vectorised: the distinct condition tuples of a
batch are factorised, their rule looked up once (and cached for the life of the rules object), and
broadcast back to boolean arrays.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from tradepulse.core.columns import factorize
from tradepulse.errors import InvalidArgument

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "conditions.json"
MALFORMED = -1
"""The key under which condition values that are not ints are counted as unknown."""


@dataclass(frozen=True)
class UpdateRule:
    """What a trade (or one of its conditions) updates under the consolidated rules."""

    volume: bool = True
    high_low: bool = True
    open_close: bool = True

    def __and__(self, other: UpdateRule) -> UpdateRule:
        return UpdateRule(
            self.volume and other.volume,
            self.high_low and other.high_low,
            self.open_close and other.open_close,
        )


REGULAR = UpdateRule()
"""A regular sale: updates everything. Also the documented default for unknown codes."""


@dataclass
class EligibilityMasks:
    """Per trade of a batch: which consolidated quantities it updates."""

    volume: np.ndarray  # bool: counts toward volume, VWAP, trade count
    high_low: np.ndarray  # bool: may set the high / low
    open_close: np.ndarray  # bool: may set the open / close (the consolidated last sale)

    def take(self, index: np.ndarray) -> EligibilityMasks:
        """The masks of the trades at `index`."""
        return EligibilityMasks(self.volume[index], self.high_low[index], self.open_close[index])

    @property
    def last_price(self) -> np.ndarray:
        """May set the last price (and so the price features): updates both high/low and last. The
        late reports that update high/low but not the last sale (22 Prior Reference Price, 33 Sold Out
        of Sequence, ...) carry a stale price, so they do not move the price features."""
        return self.high_low & self.open_close


class ConditionRules:
    """The consolidated update rules per condition code, with per-tuple caching and unknown-code
    accounting. Build with `bundled()`, `from_response()` or `permissive()` (rules off)."""

    def __init__(self, rules: Mapping[int, UpdateRule], unknown: UpdateRule = REGULAR) -> None:
        self.rules = dict(rules)
        self.unknown_rule = unknown
        self.unknown_counts: dict[int, int] = {}
        """Trades seen per unknown condition code (MALFORMED for values that are not ints)."""
        self.unknown_trades = 0
        """Trades with at least one unknown code."""
        self._cache: dict[tuple[Any, ...], tuple[UpdateRule, tuple[int, ...]]] = {}
        self._logged: set[int] = set()

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_response(cls, payload: Mapping[str, Any]) -> ConditionRules:
        """Rules from a `/v3/reference/conditions` response (or the snapshot, which has its shape):
        the stock trade conditions' consolidated update rules."""
        results = payload.get("results")
        if not isinstance(results, list):
            raise InvalidArgument("conditions payload has no 'results' list")
        rules: dict[int, UpdateRule] = {}
        for row in results:
            if not isinstance(row, Mapping):
                raise InvalidArgument(f"condition entry is not an object: {row!r}")
            if row.get("asset_class", "stocks") != "stocks" or "trade" not in row.get(
                "data_types", ["trade"]
            ):
                continue
            consolidated = (row.get("update_rules") or {}).get("consolidated")
            cid = row.get("id")
            if type(cid) is not int or not isinstance(consolidated, Mapping):
                continue  # a condition without consolidated rules (e.g. a quote-only one) has no say
            rules[cid] = UpdateRule(
                volume=bool(consolidated.get("updates_volume", True)),
                high_low=bool(consolidated.get("updates_high_low", True)),
                open_close=bool(consolidated.get("updates_open_close", True)),
            )
        if not rules:
            raise InvalidArgument("conditions payload has no stock trade condition with consolidated rules")
        return cls(rules)

    @classmethod
    def bundled(cls) -> ConditionRules:
        """A fresh rules object (own counters) over the snapshot shipped with the package."""
        return cls(_bundled_rules())

    @classmethod
    def permissive(cls) -> ConditionRules:
        """Every trade updates everything: the behaviour without condition rules (for comparisons)."""
        return _Permissive({})

    # --- lookups --------------------------------------------------------------------------------
    def rule_for(self, codes: Sequence[Any]) -> UpdateRule:
        """The combined rule of one trade's conditions (AND over its codes)."""
        return self._lookup(tuple(codes))[0]

    def _lookup(self, key: tuple[Any, ...]) -> tuple[UpdateRule, tuple[int, ...]]:
        hit = self._cache.get(key)
        if hit is None:
            rule, unknown = REGULAR, []
            for code in key:
                known = self.rules.get(code) if type(code) is int else None
                if known is None:
                    unknown.append(code if type(code) is int else MALFORMED)
                    known = self.unknown_rule
                rule = rule & known
            hit = (rule, tuple(unknown))
            self._cache[key] = hit
        return hit

    def masks(
        self, conditions: Sequence[Any] | np.ndarray, *, count_unknown: bool = True
    ) -> EligibilityMasks:
        """Masks for a batch, one entry of `conditions` per trade (a list/tuple of codes; None or an
        empty list is a regular sale). Counts the unknown codes unless `count_unknown` is false (a
        second look at trades the feature core already counted)."""
        n = len(conditions)
        if n == 0:
            empty = np.empty(0, dtype=bool)
            return EligibilityMasks(empty, empty.copy(), empty.copy())
        local, uniques = _factorize(conditions)
        table = np.empty((len(uniques), 3), dtype=bool)
        counts = None
        for j, key in enumerate(uniques):
            rule, unknown = self._lookup(key)
            table[j] = (rule.volume, rule.high_low, rule.open_close)
            if unknown and count_unknown:
                if counts is None:
                    counts = np.bincount(local, minlength=len(uniques))
                self._count_unknown(unknown, int(counts[j]))
                self.unknown_trades += int(counts[j])
        rows = table[local]
        return EligibilityMasks(rows[:, 0], rows[:, 1], rows[:, 2])

    def _count_unknown(self, codes: tuple[int, ...], trades: int) -> None:
        for code in set(codes):
            self.unknown_counts[code] = self.unknown_counts.get(code, 0) + trades
            if code not in self._logged:
                self._logged.add(code)
                log.warning(
                    "unknown trade condition code %s: treated as a regular sale (refresh the table: "
                    "`tradepulse conditions refresh`); logged once per code",
                    "(not an int)" if code == MALFORMED else code,
                )


class _Permissive(ConditionRules):
    """Rules off: every trade eligible for everything, nothing counted."""

    def masks(
        self, conditions: Sequence[Any] | np.ndarray, *, count_unknown: bool = True
    ) -> EligibilityMasks:
        ones = np.ones(len(conditions), dtype=bool)
        return EligibilityMasks(ones, ones.copy(), ones.copy())

    def _lookup(self, key: tuple[Any, ...]) -> tuple[UpdateRule, tuple[int, ...]]:
        return REGULAR, ()


def _factorize(conditions: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each trade's distinct condition tuple, the distinct tuples). The usual input (lists
    of ints) is hashed as tuples; None, non-sequences and unhashable codes go through `_key`."""
    try:
        return factorize(map(tuple, conditions))
    except TypeError:
        return factorize(map(_key, conditions))


def _key(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(v if type(v) is int else MALFORMED for v in value)
    return (MALFORMED,)


def read_snapshot() -> dict[str, Any]:
    """The snapshot shipped in `tradepulse/core/data/conditions.json` (the API response's shape plus
    a `snapshot` block: endpoint, retrieval date, how it was produced, where each row comes from)."""
    text = resources.files("tradepulse.core").joinpath("data", SNAPSHOT_FILE).read_text("utf-8")
    payload: dict[str, Any] = json.loads(text)
    return payload


@cache
def _bundled_rules() -> dict[int, UpdateRule]:
    return ConditionRules.from_response(read_snapshot()).rules
