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
  - `volume` (`updates_volume`) feeds `volume` (Σ size), `vwap` (Σ price·size / Σ size), both sums
    taken trade by trade in arrival order, and `trade_count` (number of trades).
  A price field is None when no trade of the minute is eligible for it; `vwap` is None when the volume
  is 0. A minute none of whose trades is eligible for anything yields no bar.
* `session`: the trading session of the bar's start in America/New_York (`tradepulse.core.sessions`;
  `unknown` when the engine has no session table).
* `bar_id = stable_id("B", ticker, start_ms)`: replays and restarts produce the same id.

Determinism: the accepted set depends only on the arrival sequence, and each open bar's aggregates are
folded in trade by trade in arrival order (`OpenBars`), so its values are bit-identical however the
stream is split into batches. After a restart, the runner's rebuild replays the input look-back (far
longer than a minute plus the grace) with outputs discarded: the open bars come back exactly and the
bars that closed before the committed offset are not emitted again.

State: the running aggregates of the open bars (about one or two per ticker), no trades. A batch costs
O(batch + open bars), and a minute's close costs its bars, not its trades (holding the trades made the
close a pass and a sort over every trade of the minute, a ~20–60 ms stall at each minute's close at
15k ev/s; docs/benchmarks.md).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

from tradepulse.core.columns import TradeColumns, factorize
from tradepulse.core.sessions import UNKNOWN, SessionTable
from tradepulse.errors import InvalidArgument
from tradepulse.ids import stable_id

BAR_MS = 60_000
NO_TS = np.iinfo(np.int64).min // 2


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
        self._open = OpenBars()

    @property
    def open_bars(self) -> int:
        """Bars not closed yet (one per ticker and minute with an accepted trade)."""
        return len(self._open)

    def watermark(self, ticker: str) -> int | None:
        code = self._codes.get(ticker)
        if code is None or self._wm[code] == NO_TS:
            return None
        return int(self._wm[code])

    def watermarks(self, tickers: list[str]) -> np.ndarray:
        """The watermark of each ticker (`NO_TS` for one with no accepted trade yet), at once."""
        codes = np.fromiter(map(self._codes.get, tickers, itertools.repeat(-1)), np.int64, len(tickers))
        marks = np.full(len(tickers), NO_TS, dtype=np.int64)
        seen = codes >= 0
        marks[seen] = self._wm[codes[seen]]
        return marks

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
        self._open.fold(codes[accepted], ts[accepted], price[keep], size[keep], *(m[keep] for m in masks))
        return self._close(self._open.due(self._wm - self.late_grace_ms))

    def flush(self) -> list[dict]:
        """Close every open bar: the end of a finite stream (e.g. stored trades recomputed by
        `tradepulse verify-bars`); never called by the runner, whose bars close by event time only."""
        return self._close(np.ones(len(self._open), dtype=bool))

    # --- steps ----------------------------------------------------------------------------------
    def _codes_for(self, tickers: np.ndarray) -> np.ndarray:
        local, uniques = factorize(tickers)
        mapping = np.empty(len(uniques), dtype=np.int64)
        for j, name in enumerate(uniques):
            code = self._codes.get(name)
            if code is None:
                code = self._codes[name] = len(self._names)
                self._names.append(str(name))
            mapping[j] = code
        if len(self._names) > len(self._wm):
            self._wm = np.r_[self._wm, np.full(len(self._names) - len(self._wm), NO_TS)]
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
        first = np.empty(n, dtype=bool)
        first[0] = True
        np.not_equal(c_s[1:], c_s[:-1], out=first[1:])
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

    def _close(self, closed: np.ndarray) -> list[dict]:
        """Take the open bars where `closed` is true out of the state; returns those with an eligible
        trade, as dicts by (start_ms, ticker)."""
        if not closed.any():
            return []
        b = self._open.take(closed)
        if self.sessions is not None:
            session = self.sessions.session_of(b.start)
        else:
            session = np.full(len(b.start), UNKNOWN, dtype=object)
        bars = []
        for g in range(len(b.start)):
            count, n_hl, volume = int(b.trade_count[g]), int(b.n_hl[g]), float(b.volume[g])
            if count == 0 and n_hl == 0 and not math.isfinite(b.open[g]):
                continue  # nothing in the minute is eligible for any field
            ticker, start = self._names[b.code[g]], int(b.start[g])
            bars.append(
                {
                    "bar_id": bar_id(ticker, start),
                    "ticker": ticker,
                    "start_ms": start,
                    "end_ms": start + BAR_MS,
                    "open": _num(b.open[g]),
                    "high": _num(b.high[g]) if n_hl else None,
                    "low": _num(b.low[g]) if n_hl else None,
                    "close": _num(b.close[g]),
                    "volume": volume,
                    "vwap": float(b.notional[g] / volume) if volume > 0 else None,
                    "trade_count": count,
                    "session": session[g],
                }
            )
        bars.sort(key=lambda bar: (bar["start_ms"], bar["ticker"]))
        return bars


MINUTE_BITS = 32  # an open bar's key: code << MINUTE_BITS | minute (epoch minutes: 2^32 is ~8,000 years)


class ClosedBars(NamedTuple):
    """The running aggregates of the bars taken out of `OpenBars`, one entry per bar."""

    code: np.ndarray
    start: np.ndarray
    trade_count: np.ndarray
    n_hl: np.ndarray
    volume: np.ndarray
    notional: np.ndarray
    high: np.ndarray
    low: np.ndarray
    open: np.ndarray
    close: np.ndarray


class OpenBars:
    """The running aggregates of the open bars, one entry per (code, minute), sorted by its key.

    A batch is folded in trade by trade in arrival order (`np.add.at` and its kin apply each element in
    turn, unbuffered), so every sum has the bits of a sequential sum over the bar's trades in arrival
    order, whatever the batch split; `open` / `close` keep the price of the smallest / largest ts, the
    first / last to arrive among equals. A batch costs O(batch + open bars), and closing a bar costs
    the bar: no trade is held.
    """

    _INIT = (
        ("trade_count", np.int64, 0),
        ("n_hl", np.int64, 0),
        ("volume", np.float64, 0.0),
        ("notional", np.float64, 0.0),
        ("high", np.float64, -np.inf),
        ("low", np.float64, np.inf),
        ("open_ts", np.int64, np.iinfo(np.int64).max),
        ("open", np.float64, np.nan),
        ("close_ts", np.int64, np.iinfo(np.int64).min),
        ("close", np.float64, np.nan),
    )

    def __init__(self) -> None:
        self.key = np.empty(0, dtype=np.int64)
        self.cols = {name: np.empty(0, dtype=dtype) for name, dtype, _ in self._INIT}

    def __len__(self) -> int:
        return len(self.key)

    def fold(
        self,
        code: np.ndarray,
        ts: np.ndarray,
        price: np.ndarray,
        size: np.ndarray,
        vol: np.ndarray,
        hl: np.ndarray,
        oc: np.ndarray,
    ) -> None:
        """Add accepted trades (arrival order) to their bars, opening the bars they start."""
        if len(ts) == 0:
            return
        minute = ts // BAR_MS
        if minute.min() < 0 or minute.max() >= 2**MINUTE_BITS:
            raise InvalidArgument("trade timestamps must be Unix ms from 1970 on")
        slot = self._slots((code << MINUTE_BITS) | minute)
        c = self.cols
        at, px = slot[vol], price[vol]
        np.add.at(c["trade_count"], at, 1)
        np.add.at(c["volume"], at, size[vol])
        np.add.at(c["notional"], at, px * size[vol])
        at, px = slot[hl], price[hl]
        np.add.at(c["n_hl"], at, 1)
        np.maximum.at(c["high"], at, px)
        np.minimum.at(c["low"], at, px)
        if oc.any():
            self._open_close(slot[oc], ts[oc], price[oc])

    def _slots(self, row_key: np.ndarray) -> np.ndarray:
        """Each row's open bar (its index in `key`), opening the bars not open yet."""
        pos = np.searchsorted(self.key, row_key)
        if len(self.key):
            hit = self.key[np.minimum(pos, len(self.key) - 1)] == row_key
        else:
            hit = np.zeros(len(row_key), dtype=bool)
        if not hit.all():
            new = np.unique(row_key[~hit])
            at = np.searchsorted(self.key, new)
            self.key = np.insert(self.key, at, new)
            for name, _, init in self._INIT:
                self.cols[name] = np.insert(self.cols[name], at, init)
            pos = np.searchsorted(self.key, row_key)
        return pos

    def _open_close(self, slot: np.ndarray, ts: np.ndarray, price: np.ndarray) -> None:
        """Fold open/close-eligible rows (arrival order) into `open` and `close`. Per bar, the batch's
        first and last row by (ts, arrival) are found as the least and greatest of (ts, arrival) keys;
        a trade of an earlier batch arrived before all of this one's, so it keeps `open` on an equal ts
        and yields `close`."""
        n, c = len(ts), self.cols
        lo = int(ts.min())
        if (int(ts.max()) - lo + 1) * n >= 2**62:
            raise InvalidArgument("timestamps of one batch span too wide a range")
        order_key = (ts - lo) * n + np.arange(n)
        first = np.full(len(self.key), np.iinfo(np.int64).max)
        last = np.full(len(self.key), -1)
        np.minimum.at(first, slot, order_key)
        np.maximum.at(last, slot, order_key)
        bars = np.flatnonzero(last >= 0)
        for row, keep, ts_col, px_col in (
            (first[bars] % n, np.less, "open_ts", "open"),
            (last[bars] % n, np.greater_equal, "close_ts", "close"),
        ):
            won = keep(ts[row], c[ts_col][bars])
            c[ts_col][bars[won]] = ts[row[won]]
            c[px_col][bars[won]] = price[row[won]]

    def due(self, final_ts: np.ndarray) -> np.ndarray:
        """Which open bars end at or before their code's `final_ts` (watermark − grace)."""
        code = self.key >> MINUTE_BITS
        end = ((self.key & (2**MINUTE_BITS - 1)) + 1) * BAR_MS
        return end <= final_ts[code]

    def take(self, mask: np.ndarray) -> ClosedBars:
        """Remove the bars where `mask` is true; returns them."""
        key, c = self.key[mask], self.cols
        closed = ClosedBars(
            code=key >> MINUTE_BITS,
            start=(key & (2**MINUTE_BITS - 1)) * BAR_MS,
            **{name: c[name][mask] for name in ClosedBars._fields[2:]},
        )
        keep = ~mask
        self.key = self.key[keep]
        self.cols = {name: col[keep] for name, col in c.items()}
        return closed


def _num(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
