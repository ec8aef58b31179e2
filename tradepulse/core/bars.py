"""One-minute OHLCV bars per ticker, closed by event time (vectorised, deterministic).

Definitions (per ticker; event time = exchange timestamp `ts`; a bar covers the minute
[start, start + 60 s), start = floor(ts / 60 s) · 60 s, UTC):

* Acceptance is the feature core's (`tradepulse.core.features`): trades with a non-finite or
  non-positive price or size are ignored; the ticker watermark is the highest ts accepted so far; a
  trade with ts < watermark − grace (`late_grace_ms`, 2 s) is late and in no bar. A bar therefore holds
  exactly the trades whose feature vectors count them.
* Closing: a bar is emitted in the batch in which its ticker's watermark − grace reaches its end
  (end ≤ watermark − grace): from then on no trade of that minute can be accepted, so the bar is final
  and emitted exactly once. A ticker that stops trading keeps its last bar open until its next trade
  (as for the feature snapshots: nothing closes on wall-clock time, which would break determinism).
* Update rules (Massive / CTA-UTP consolidated rules, `update_rules.consolidated` of
  `/v3/reference/conditions`), one boolean mask per trade, all-True by default (the runner passes the
  masks of `tradepulse.core.conditions`, and leaves trades flagged `outlier` out, as for the features):
  - `open_close` (`updates_open_close`) feeds `open` and `close`: the first and the last eligible trade
    by (ts, arrival) of the minute;
  - `high_low` (`updates_high_low`) feeds `high` and `low`;
  - `volume` (`updates_volume`) feeds `volume` (Σ size), `vwap` (Σ price·size / Σ size) and
    `trade_count` (number of trades).
  A price field is None when no trade of the minute is eligible for it; `vwap` is None when the volume
  is 0. A minute none of whose trades is eligible for anything yields no bar.
* `session`: the trading session of the bar's start in America/New_York (`tradepulse.core.sessions`;
  `unknown` when the engine has no session table).
* `bar_id = stable_id("B", ticker, start_ms)`: replays and restarts produce the same id.

Determinism: the accepted set depends only on the arrival sequence, and a closed bar is computed from
its own trades in (ts, arrival) order, never from running sums carried across batches, so its values
are bit-identical however the stream is split into batches. After a restart, the runner's rebuild
replays the input look-back (far longer than a minute plus the grace) with outputs discarded: the open
bars come back exactly and the bars that closed before the committed offset are not emitted again.

State: the accepted trades of the still-open minutes (at most about a minute plus the grace per ticker).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tradepulse.core.columns import TradeColumns
from tradepulse.core.sessions import UNKNOWN, SessionTable
from tradepulse.core.trade_state import group_sizes
from tradepulse.errors import InvalidArgument
from tradepulse.ids import stable_id

BAR_MS = 60_000
NO_TS = np.iinfo(np.int64).min // 2
OPEN_NONE = np.iinfo(np.int64).max  # no open bar: later than any watermark


def bar_id(ticker: str, start_ms: int) -> str:
    """Deterministic id of the bar of `ticker` that starts at `start_ms`."""
    return stable_id("B", ticker, start_ms)


class BarEngine:
    """Stateful one-minute bars over micro-batches of trades (see the module docstring)."""

    def __init__(self, late_grace_ms: int = 2000, sessions: SessionTable | None = None) -> None:
        if late_grace_ms < 0:
            raise InvalidArgument("late_grace_ms must be >= 0")
        self.late_grace_ms = late_grace_ms
        self.sessions = sessions
        self._codes: dict[str, int] = {}
        self._names: list[str] = []
        self._wm = np.empty(0, dtype=np.int64)
        # Accepted trades of the open minutes, in arrival order (which orders equal timestamps).
        self._open = OpenTrades()
        # Per ticker code: the earliest end of its open bars (OPEN_NONE: none). A batch closes a bar only
        # when some ticker's watermark − grace reaches it, so most batches look at this, not the trades.
        self._open_end = np.empty(0, dtype=np.int64)

    @property
    def open_trades(self) -> int:
        """Accepted trades held for the bars not closed yet."""
        return len(self._open)

    def watermark(self, ticker: str) -> int | None:
        code = self._codes.get(ticker)
        if code is None or self._wm[code] == NO_TS:
            return None
        return int(self._wm[code])

    def process(
        self,
        trades: TradeColumns,
        *,
        volume_eligible: np.ndarray | None = None,
        high_low_eligible: np.ndarray | None = None,
        open_close_eligible: np.ndarray | None = None,
    ) -> list[dict]:
        """Fold a batch (arrival order) in; return the bars it closes, by (start_ms, ticker)."""
        n = len(trades)
        masks = [
            np.ones(n, dtype=bool) if m is None else np.asarray(m, dtype=bool)
            for m in (volume_eligible, high_low_eligible, open_close_eligible)
        ]
        if any(len(m) != n for m in masks):
            raise InvalidArgument("every eligibility mask must have one entry per trade")
        if n == 0:
            return []
        price, size = trades.price, trades.size
        valid = np.isfinite(price) & (price > 0) & np.isfinite(size) & (size > 0)
        codes = self._codes_for(trades.ticker[valid])
        ts = trades.ts_ms[valid].astype(np.int64)
        accepted = self._accept(codes, ts)
        keep = np.flatnonzero(valid)[accepted]
        self._open.append(
            codes[accepted],
            ts[accepted],
            price[keep],
            size[keep],
            *(m[keep] for m in masks),
        )
        np.minimum.at(self._open_end, codes[accepted], _bar_end(ts[accepted]))
        return self._close()

    def flush(self) -> list[dict]:
        """Close every open bar: the end of a finite stream (e.g. stored trades recomputed by
        `tradepulse verify-bars`); never called by the runner, whose bars close by event time only."""
        watermarks = self._wm
        self._wm = np.full(len(watermarks), np.iinfo(np.int64).max // 2, dtype=np.int64)
        try:
            return self._close()
        finally:
            self._wm = watermarks

    # --- steps ----------------------------------------------------------------------------------
    def _codes_for(self, tickers: np.ndarray) -> np.ndarray:
        local, uniques = pd.factorize(tickers)
        mapping = np.empty(len(uniques), dtype=np.int64)
        for j, name in enumerate(uniques):
            code = self._codes.get(name)
            if code is None:
                code = self._codes[name] = len(self._names)
                self._names.append(str(name))
            mapping[j] = code
        if len(self._names) > len(self._wm):
            self._wm = np.r_[self._wm, np.full(len(self._names) - len(self._wm), NO_TS)]
            self._open_end = np.r_[self._open_end, np.full(len(self._names) - len(self._open_end), OPEN_NONE)]
        return mapping[local].astype(np.int64)

    def _accept(self, codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Which trades are accepted (watermark before each, per ticker in arrival order, vs its ts);
        advances the watermarks over the accepted ones."""
        n = len(ts)
        if n == 0:
            return np.zeros(0, dtype=bool)
        # Group by code (arrival order kept) and take the running max of ts within each group: offset
        # every group by a span larger than its ts range, so one accumulate never leaks across groups.
        # Late trades cannot raise it (their ts is below the watermark), so the max over all earlier
        # trades of the group is its watermark before each trade.
        order = np.argsort(codes, kind="stable")
        c_s, t_s = codes[order], ts[order]
        first = np.r_[True, c_s[1:] != c_s[:-1]]
        group = np.cumsum(first) - 1
        lo = int(t_s.min()) - 1
        span = int(t_s.max()) - lo + 1
        if span * (int(group[-1]) + 1) >= 2**62:
            raise InvalidArgument("timestamps of one batch span too wide a range")
        running = np.maximum.accumulate(group * span + (t_s - lo)) - group * span + lo
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = running[:-1]
        prev[first] = NO_TS
        wm_before = np.empty(n, dtype=np.int64)
        wm_before[order] = np.maximum(prev, self._wm[c_s])
        accepted = ts >= wm_before - self.late_grace_ms
        np.maximum.at(self._wm, codes[accepted], ts[accepted])
        return np.asarray(accepted, dtype=bool)

    def _close(self) -> list[dict]:
        """Take the trades of the minutes closed by the watermarks out of the state and aggregate them."""
        if not (self._open_end <= self._wm - self.late_grace_ms).any():
            return []  # no ticker's watermark reached the end of its earliest open bar
        held = self._open
        closed = _bar_end(held.ts) <= self._wm[held.code] - self.late_grace_ms
        code, ts, price, size, vol, hl, oc = held.take(closed)
        self._open_end[:] = OPEN_NONE
        np.minimum.at(self._open_end, held.code, _bar_end(held.ts))
        # Key order (code, ts, arrival): a bar's trades are contiguous, in the order of the tape.
        order = _tape_order(code, ts)
        code, ts, price, size = code[order], ts[order], price[order], size[order]
        vol, hl, oc = vol[order], hl[order], oc[order]
        minute = ts // BAR_MS
        starts = np.flatnonzero(np.r_[True, (code[1:] != code[:-1]) | (minute[1:] != minute[:-1])])
        group = np.repeat(np.arange(len(starts)), group_sizes(starts, len(ts)))
        volume = np.add.reduceat(np.where(vol, size, 0.0), starts)
        notional = np.add.reduceat(np.where(vol, price * size, 0.0), starts)
        count = np.add.reduceat(vol.astype(np.int64), starts)
        n_hl = np.add.reduceat(hl.astype(np.int64), starts)
        high = np.maximum.reduceat(np.where(hl, price, -np.inf), starts)
        low = np.minimum.reduceat(np.where(hl, price, np.inf), starts)
        open_, close = _first_last(price, oc, group, len(starts))
        g_code, g_start = code[starts], minute[starts] * BAR_MS
        if self.sessions is not None:
            session = self.sessions.session_of(g_start)
        else:
            session = np.full(len(starts), UNKNOWN, dtype=object)
        bars = []
        for g in range(len(starts)):
            if count[g] == 0 and n_hl[g] == 0 and not math.isfinite(open_[g]):
                continue  # nothing in the minute is eligible for any field
            ticker, start = self._names[g_code[g]], int(g_start[g])
            bars.append(
                {
                    "bar_id": bar_id(ticker, start),
                    "ticker": ticker,
                    "start_ms": start,
                    "end_ms": start + BAR_MS,
                    "open": _num(open_[g]),
                    "high": _num(high[g]) if n_hl[g] else None,
                    "low": _num(low[g]) if n_hl[g] else None,
                    "close": _num(close[g]),
                    "volume": float(volume[g]),
                    "vwap": float(notional[g] / volume[g]) if volume[g] > 0 else None,
                    "trade_count": int(count[g]),
                    "session": session[g],
                }
            )
        bars.sort(key=lambda bar: (bar["start_ms"], bar["ticker"]))
        return bars


def _tape_order(code: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """The order by (code, ts, arrival) of trades given in arrival order: the same as
    `np.lexsort((np.arange(n), ts, code))`, ~4× faster on the 15k market's minute (~230k trades, 11 → 3 ms).
    A stable sort keeps arrival order among equals. The codes first, with numpy's O(n) radix sort for
    16-bit keys; then (code, ts) as one key, whose runs are then nearly sorted already (a ticker's
    trades arrive mostly in ts order), which the stable sort (timsort) exploits."""
    n = len(ts)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    lo = int(ts.min())
    span = int(ts.max()) - lo + 1
    if int(code.max()) >= 2**15 or (int(code.max()) + 1) * span >= 2**62:
        return np.lexsort((np.arange(n), ts, code))
    by_code = np.argsort(code.astype(np.int16), kind="stable")
    key = code[by_code] * span + (ts[by_code] - lo)
    return by_code[np.argsort(key, kind="stable")]


def _bar_end(ts: np.ndarray) -> np.ndarray:
    """End of the bar (minute) each ts is in."""
    return (ts // BAR_MS + 1) * BAR_MS


class OpenTrades:
    """The accepted trades of the open bars as columns with spare capacity: a batch is appended in
    amortised O(batch), not by copying every open trade, and closed trades are compacted out at once."""

    COLUMNS = (
        ("code", np.int64),
        ("ts", np.int64),
        ("price", np.float64),
        ("size", np.float64),
        ("vol", bool),
        ("hl", bool),
        ("oc", bool),
    )

    def __init__(self) -> None:
        self._n = 0
        self._cols = [np.empty(0, dtype=dtype) for _, dtype in self.COLUMNS]
        self.reallocations = 0

    def __len__(self) -> int:
        return self._n

    @property
    def code(self) -> np.ndarray:
        return self._cols[0][: self._n]

    @property
    def ts(self) -> np.ndarray:
        return self._cols[1][: self._n]

    def append(self, *columns: np.ndarray) -> None:
        """Add rows (one array per column, in `COLUMNS` order)."""
        n, add = self._n, len(columns[0])
        if n + add > len(self._cols[0]):
            capacity = max(2 * (n + add), 1024)
            grown = [np.empty(capacity, dtype=dtype) for _, dtype in self.COLUMNS]
            for new, old in zip(grown, self._cols, strict=True):
                new[:n] = old[:n]
            self._cols = grown
            self.reallocations += 1
        for col, values in zip(self._cols, columns, strict=True):
            col[n : n + add] = values
        self._n = n + add

    def take(self, mask: np.ndarray) -> list[np.ndarray]:
        """Remove the rows where `mask` is true; returns them (one array per column, arrival order)."""
        # Index arrays, made once: a boolean mask is scanned again for every column.
        rows, rest = np.flatnonzero(mask), np.flatnonzero(~mask)
        taken = [col[rows] for col in self._cols]
        for col in self._cols:
            col[: len(rest)] = col[rest]
        self._n = len(rest)
        return taken


def _first_last(
    price: np.ndarray, eligible: np.ndarray, group: np.ndarray, groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the price of its first and last eligible row (NaN when it has none)."""
    first = np.full(groups, np.nan)
    last = np.full(groups, np.nan)
    rows = np.flatnonzero(eligible)
    if len(rows):
        g = group[rows]
        is_first = np.r_[True, g[1:] != g[:-1]]
        is_last = np.r_[g[1:] != g[:-1], True]
        first[g[is_first]] = price[rows[is_first]]
        last[g[is_last]] = price[rows[is_last]]
    return first, last


def _num(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
