"""Bar reconciliation: our one-minute bars against the vendor's per-minute aggregates (Massive `AM`).

Per (ticker, start_ms) the comparison gives one status:

* `match`: every field within its tolerance;
* `outlier`: our bar differs, but our bar of the same minute computed over *every* print we received,
  the flagged outliers included (the "tape" bar), matches: the difference is exactly the suspect
  prints our filter left out (`tradepulse.core.outliers`), which the vendor's real-time aggregate keeps;
* `mismatch`: otherwise; `fields` names the fields that differ;
* `vendor_only`: the vendor has a bar for a minute in which we have none (once ours are final for it);
* `ours_only`: we have a bar for a minute the vendor skipped (once the vendor sent a later minute of the
  ticker: its aggregates of one ticker arrive in minute order).

Fields and tolerances (`TOLERANCES`): `open`, `high`, `low`, `close` and `volume` exactly (prices are the
prints' own, copied; volumes are integers; 1e-9 absorbs float formatting); `vwap` within 1e-4 absolute
plus 1e-9 relative, because the vendor sends `vw` rounded to 4 decimals and Σp·s/Σs is not
associative in floats; `avg_size` (the vendor's `z`, the average trade size, an integer on the wire)
against our volume / trade_count within 0.5 + 1e-9: the AM event carries no trade count, so this is
how the count is checked. A price field that is None on both sides (no eligible trade) matches.

`compare` is the pairwise check (bars paired by key, numpy per field) that the processor runs per
batch and `tradepulse verify-bars` runs over the stored bars. `BarReconciler` holds the unpaired bars
between batches and decides the one-sided statuses; its decisions depend only on the bars' values and
each stream's own order (our bars close in event time, the vendor's come in minute order per ticker),
not on how the two topics interleave: see `BarReconciler.update`.

Pure numpy: no I/O, no clocks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from tradepulse.models import BAR_CHECK_FIELDS, BAR_CHECK_STATUSES

BAR_MS = 60_000
KEY = ("ticker", "start_ms")
STATUSES = BAR_CHECK_STATUSES
PRICE_FIELDS = ("open", "high", "low", "close")
#: field → (absolute, relative) tolerance (see the module docstring).
TOLERANCES: dict[str, tuple[float, float]] = {
    "open": (1e-9, 0.0),
    "high": (1e-9, 0.0),
    "low": (1e-9, 0.0),
    "close": (1e-9, 0.0),
    "volume": (1e-9, 0.0),
    "vwap": (1e-4, 1e-9),
    "avg_size": (0.5 + 1e-9, 0.0),
}
FIELDS = BAR_CHECK_FIELDS
assert tuple(TOLERANCES) == FIELDS
#: An unpaired bar of ours is decided `ours_only` at the latest when our bars of its ticker are final
#: this far past its end, even if the vendor sent nothing later (a vendor that stopped, an unsubscribed
#: ticker): bounds the state. Vendor aggregates arrive seconds after their minute, far within this.
DEFAULT_WAIT_MS = 10 * BAR_MS

Row = dict[str, Any]


Key = tuple[Any, int]


def _keyed(bars: Iterable[Mapping[str, Any]]) -> dict[Key, Mapping[str, Any]]:
    """Bars by (ticker, start_ms); a key given twice keeps the last bar."""
    return {(bar["ticker"], int(bar["start_ms"])): bar for bar in bars}


def _value(value: Any) -> float:
    """A field as a float: NaN for None or anything that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _values(bars: list[Mapping[str, Any]], avg_size: bool) -> np.ndarray:
    """Bars as a float matrix [bar, field in FIELDS] (None → NaN). Ours: avg_size = volume /
    trade_count (NaN without trades); the vendor's: `avg_trade_size` as sent."""
    out = np.full((len(bars), len(FIELDS)), np.nan)
    size, volume = FIELDS.index("avg_size"), FIELDS.index("volume")
    for i, bar in enumerate(bars):
        for j, name in enumerate(FIELDS):
            if j != size:
                out[i, j] = _value(bar.get(name))
        if avg_size:
            count = _value(bar.get("trade_count"))
            if count > 0:
                out[i, size] = out[i, volume] / count
        else:
            out[i, size] = _value(bar.get("avg_trade_size"))
    return out


def differing(ours: np.ndarray, vendor: np.ndarray) -> np.ndarray:
    """Aligned matrices [row, field in FIELDS] → bool matrix of the same shape: True where the field
    differs beyond its tolerance (NaN on both sides matches)."""
    out = np.zeros(ours.shape, dtype=bool)
    for j, name in enumerate(FIELDS):
        a, b = ours[:, j], vendor[:, j]
        atol, rtol = TOLERANCES[name]
        both_nan = np.isnan(a) & np.isnan(b)
        with np.errstate(invalid="ignore"):
            close = np.abs(a - b) <= atol + rtol * np.abs(b)
        out[:, j] = ~(close | both_nan)
    return out


def compare(
    ours: Iterable[Mapping[str, Any]],
    vendor: Iterable[Mapping[str, Any]],
    tape: Iterable[Mapping[str, Any]] = (),
) -> list[Row]:
    """Every (ticker, start_ms) present on both sides → one result row (status match / outlier /
    mismatch), sorted by key. `tape`: our bars over every print including the flagged outliers (only
    needed for minutes where they differ from ours); a minute missing there cannot be `outlier`.
    Plain numpy over the paired bars (the runner calls this for a few bars in many batches: a pandas
    merge cost ~8 ms a call, whatever the size)."""
    mine, theirs = _keyed(ours), _keyed(vendor)
    keys = sorted(mine.keys() & theirs.keys())
    if not keys:
        return []
    o = _values([mine[k] for k in keys], avg_size=True)
    v = _values([theirs[k] for k in keys], avg_size=False)
    diff = differing(o, v)
    explained = np.zeros(len(keys), dtype=bool)
    bad = diff.any(axis=1)
    if bad.any():
        taped = _keyed(tape)
        rows = [i for i in np.flatnonzero(bad).tolist() if keys[i] in taped]
        if rows:
            t = _values([taped[keys[i]] for i in rows], avg_size=True)
            explained[rows] = ~differing(t, v[rows]).any(axis=1)
    results = []
    for i, (ticker, start_ms) in enumerate(keys):
        fields = [f for f, d in zip(FIELDS, diff[i], strict=True) if d]
        status = "match" if not fields else ("outlier" if explained[i] else "mismatch")
        results.append(_result(ticker, start_ms, status, fields, o[i], v[i]))
    return results


def _result(
    ticker: str,
    start_ms: int,
    status: str,
    fields: list[str],
    ours: np.ndarray | None = None,
    vendor: np.ndarray | None = None,
) -> Row:
    result: Row = {"ticker": ticker, "start_ms": start_ms, "status": status, "fields": fields}
    if ours is not None and vendor is not None and fields:
        # What differed, for the log line and the summary: ours → vendor's.
        result["diff"] = {f: (_num(ours[FIELDS.index(f)]), _num(vendor[FIELDS.index(f)])) for f in fields}
    return result


def _num(value: Any) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


class BarReconciler:
    """Pairs our closed bars with the vendor's across batches and decides each minute once.

    `update` takes a batch's newly closed bars (ours, and our tape bars), the vendor's newly received
    ones, and, per ticker, the time up to which our bars are final (the bar engines' watermark − grace:
    every minute ending at or before it is closed, with or without a bar). It returns the decisions:

    - a minute with both bars: compared (`compare`) as soon as the second one is here;
    - a vendor bar with no bar of ours once ours are final past its end: `vendor_only` (or `outlier`
      if our tape bar of that minute matches it: every print of the minute was flagged);
    - a bar of ours with no vendor bar once the vendor sent a later minute of the ticker (it sends in
      minute order), or once ours are final `wait_ms` past its end: `ours_only`.

    Each decision needs both streams only up to points that each stream reaches in its own order, so
    the same topic contents give the same decisions however the runner's batches interleave them (the
    `wait_ms` bound aside, for a vendor bar arriving more than `wait_ms` of event time late).
    """

    def __init__(self, wait_ms: int = DEFAULT_WAIT_MS) -> None:
        self.wait_ms = wait_ms
        self._ours: dict[tuple[str, int], Mapping[str, Any]] = {}
        self._vendor: dict[tuple[str, int], Mapping[str, Any]] = {}
        self._tape: dict[tuple[str, int], Mapping[str, Any]] = {}
        self._vendor_last: dict[str, int] = {}  # newest vendor minute per ticker
        self._final: dict[str, int] = {}  # our bars final up to here, per ticker

    def pending_keys(self) -> list[tuple[str, int]]:
        """(ticker, start_ms) of the bars waiting for their counterpart, ours and the vendor's."""
        return sorted([*self._ours, *self._vendor])

    def update(
        self,
        ours: Iterable[Mapping[str, Any]],
        vendor: Iterable[Mapping[str, Any]],
        final_ms: Mapping[str, int],
        tape: Iterable[Mapping[str, Any]] = (),
    ) -> list[Row]:
        added = 0
        for bar in ours:
            self._ours[(bar["ticker"], int(bar["start_ms"]))] = bar
            added += 1
        for bar in tape:
            self._tape[(bar["ticker"], int(bar["start_ms"]))] = bar
            added += 1
        for bar in vendor:
            key = (bar["ticker"], int(bar["start_ms"]))
            self._vendor[key] = bar  # a resent aggregate replaces the first one
            self._vendor_last[key[0]] = max(self._vendor_last.get(key[0], key[1]), key[1])
            added += 1
        crossed = False
        for ticker, ms in final_ms.items():
            before = self._final.get(ticker)
            after = ms if before is None else max(before, ms)
            self._final[ticker] = after
            crossed = crossed or before is None or self._crosses(before, after)
        if not (added or crossed):
            # Every decision below turns due when a bar arrives or when a ticker's final point reaches
            # start + BAR_MS (+ wait_ms) of a pending minute; neither happened, so none can be due now
            # (and the sweeps over every pending bar, the cost of a small batch, are skipped).
            return []
        paired = sorted(self._ours.keys() & self._vendor.keys())
        results = []
        if paired:  # most batches close no minute: no frame work at all
            results = compare(
                [self._ours.pop(k) for k in paired],
                [self._vendor.pop(k) for k in paired],
                [self._tape[k] for k in paired if k in self._tape],
            )
        for key in sorted(self._vendor):
            final = self._final.get(key[0])
            if final is None or final < key[1] + BAR_MS:
                continue
            vendor_bar = self._vendor.pop(key)
            status = "vendor_only"
            if key in self._tape:
                (check,) = compare([self._tape[key]], [vendor_bar])
                status = "outlier" if check["status"] == "match" else status
            results.append(_result(key[0], key[1], status, []))
        for key in sorted(self._ours):
            last, final = self._vendor_last.get(key[0]), self._final.get(key[0])
            if (last is not None and last > key[1]) or (
                final is not None and final >= key[1] + BAR_MS + self.wait_ms
            ):
                del self._ours[key]
                results.append(_result(key[0], key[1], "ours_only", []))
        # A tape bar can explain its minute until every decision about it is due (`wait_ms`).
        for key in [k for k in self._tape if self._final.get(k[0], k[1]) >= k[1] + BAR_MS + self.wait_ms]:
            del self._tape[key]
        results.sort(key=lambda r: (r["start_ms"], r["ticker"]))
        return results

    def _crosses(self, before: int, after: int) -> bool:
        """Whether a final point moving from `before` to `after` reaches a threshold of some minute:
        start + BAR_MS or start + BAR_MS + wait_ms, start a multiple of BAR_MS."""
        wait = self.wait_ms  # checked per ticker and batch: plain arithmetic, no generator
        return after // BAR_MS > before // BAR_MS or (after - wait) // BAR_MS > (before - wait) // BAR_MS


def summarize(results: Iterable[Mapping[str, Any]]) -> dict[str, Row]:
    """Per ticker: counts per status and mismatches per field (what `tradepulse verify-bars` prints)."""
    out: dict[str, Row] = {}
    for r in results:
        entry = out.setdefault(r["ticker"], {**{s: 0 for s in STATUSES}, "fields": {f: 0 for f in FIELDS}})
        entry[r["status"]] += 1
        if r["status"] == "mismatch":
            for name in r["fields"]:
                entry["fields"][name] += 1
    return out
