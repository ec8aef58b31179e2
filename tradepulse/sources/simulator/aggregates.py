"""The simulator's per-minute aggregates: Massive `AM` events computed from its own ground-truth trades.

As the real feed, one `AM` event per ticker and minute with at least one eligible trade, sent after
the minute ends (here: with the first tick at or past its end), on the `AM.<ticker>` / `AM.*`
channels. Fields as Massive documents them (WebSocket, stocks, Aggregates (Per Minute)): `ev` "AM",
`sym`, `v` tick volume, `av` today's accumulated volume, `op` today's official opening price, `vw`
tick VWAP (4 decimals, as the real feed rounds it), `o` / `c` / `h` / `l`, `a` today's VWAP,
`z` average trade size (an integer), `s` / `e` the window's start and end (Unix ms). "Today" is the
simulator's run (it does not cross a session boundary).

Which trades count for which field is Massive's consolidated update rules (the same condition table
the pipeline applies, `tradepulse.core.conditions`), looked up once per condition set of the model.
The aggregation itself is written independently of the pipeline's bar engine (accumulators per tick
over the model's arrays, not `tradepulse.core.bars`), so that reconciling the two checks the bar
engine rather than agreeing with itself. A field no trade of the minute is eligible for is left out of
the event (the real feed's behaviour for such a minute is not documented; the pipeline's bar has None).

Bad ticks (`MarketConfig.bad_tick_rate`): the structurally impossible ones are not prints, no
aggregate contains them; the labelled fat fingers are, as in a real SIP aggregate published in real
time (the exchange has not busted them yet). Our pipeline flags and leaves those out of its bars, and
the reconciliation reports such minutes as `outlier` only if including exactly the flagged prints
reproduces the vendor's bar (`tradepulse.core.reconcile`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tradepulse.core.conditions import ConditionRules
from tradepulse.core.trade_state import group_sizes, group_starts

BAR_MS = 60_000
#: `MarketModel` bad-tick marks (the `bad` column of a block's trades).
BAD_NONE, BAD_IMPOSSIBLE, BAD_FAT_FINGER = 0, 1, 2


def rule_table(condition_sets: tuple[tuple[int, ...], ...], rules: ConditionRules) -> np.ndarray:
    """Per condition-set index: [volume, high_low, open_close] eligibility (bool, shape (sets, 3))."""
    table = np.empty((len(condition_sets), 3), dtype=bool)
    for i, codes in enumerate(condition_sets):
        rule = rules.rule_for(codes)
        table[i] = (rule.volume, rule.high_low, rule.open_close)
    return table


class MinuteAggregates:
    """Accumulates a model's trades and emits the `AM` events of the minutes that have ended.

    Each tick's trades are folded into per-minute, per-symbol accumulators as they come (volume,
    notional, eligible count, high, low, the first and the last open/close-eligible price), so a minute's
    end costs an event per symbol. Aggregating a whole minute at its end (~360k trades at 15k ev/s)
    stalled the simulator's event loop for 150–290 ms once a minute, then sent that time's events at
    once: a burst the pipeline queued (docs/benchmarks.md, "The minute's stall")."""

    def __init__(self, symbols: list[str], table: np.ndarray) -> None:
        self.symbols = symbols
        self.table = table
        self._minutes: dict[int, _Minute] = {}  # the open minutes' accumulators, by minute
        n = len(symbols)
        self._day_volume = np.zeros(n, dtype=np.int64)
        self._day_notional = np.zeros(n)
        self._official_open = np.full(n, np.nan)

    def add(self, trades: dict[str, np.ndarray], until_ms: int) -> list[dict[str, Any]]:
        """Take a tick's trades (its time span, after the previous tick's), then return the events of
        every minute ending at or before `until_ms`, by (start, symbol)."""
        keep = trades.get("bad", np.zeros(len(trades["t"]), dtype=np.int8)) != BAD_IMPOSSIBLE
        if keep.any():
            self._fold({name: trades[name][keep] for name in ("sym", "t", "q", "p", "s", "c")})
        events: list[dict[str, Any]] = []
        for minute in sorted(m for m in self._minutes if (m + 1) * BAR_MS <= until_ms):
            events += self._events(minute, self._minutes.pop(minute))
        return events

    def _fold(self, d: dict[str, np.ndarray]) -> None:
        """Add one tick's trades to the accumulators of their (minute, symbol)."""
        sym = d["sym"].astype(np.int64)
        minute = d["t"] // BAR_MS
        # (minute, symbol, t, q) order: a group's trades in the tape's order, for its first and last.
        order = np.lexsort((d["q"], d["t"], sym, minute))
        sym, minute, price = sym[order], minute[order], d["p"][order].astype(float)
        size = d["s"][order].astype(np.int64)
        rules = self.table[d["c"][order].astype(np.int64)]
        vol, hl, oc = rules[:, 0], rules[:, 1], rules[:, 2]
        starts = group_starts(minute, sym)
        vol_size = np.where(vol, size, 0)
        v = np.add.reduceat(vol_size, starts)
        notional = np.add.reduceat(vol_size * price, starts)
        n = np.add.reduceat(vol.astype(np.int64), starts)
        high = np.maximum.reduceat(np.where(hl, price, -np.inf), starts)
        low = np.minimum.reduceat(np.where(hl, price, np.inf), starts)
        # Per group, the price of its first and last open/close-eligible trade (NaN: none).
        group = np.repeat(np.arange(len(starts)), group_sizes(starts, len(sym)))
        open_g, close_g = np.full(len(starts), np.nan), np.full(len(starts), np.nan)
        rows = np.flatnonzero(oc)
        if len(rows):
            g = group[rows]
            change = g[1:] != g[:-1]
            first, last = np.r_[True, change], np.r_[change, True]
            open_g[g[first]], close_g[g[last]] = price[rows[first]], price[rows[last]]
        for m in np.unique(minute[starts]).tolist():
            g = np.flatnonzero(minute[starts] == m)
            acc = self._minutes.get(m)
            if acc is None:
                acc = self._minutes[m] = _Minute(len(self.symbols))
            syms = sym[starts[g]]  # distinct within a minute
            acc.volume[syms] += v[g]
            acc.notional[syms] += notional[g]
            acc.count[syms] += n[g]
            acc.high[syms] = np.maximum(acc.high[syms], high[g])
            acc.low[syms] = np.minimum(acc.low[syms], low[g])
            # Ticks come in time order: a minute's open is its first tick's that has one, its close the
            # last's.
            unset = np.isnan(acc.open[syms])
            acc.open[syms[unset]] = open_g[g[unset]]
            has_close = ~np.isnan(close_g[g])
            acc.close[syms[has_close]] = close_g[g[has_close]]

    def _events(self, minute: int, acc: _Minute) -> list[dict[str, Any]]:
        events = []
        start = minute * BAR_MS
        for sym in range(len(self.symbols)):
            v, n = int(acc.volume[sym]), int(acc.count[sym])
            high, low = float(acc.high[sym]), float(acc.low[sym])
            open_, close = float(acc.open[sym]), float(acc.close[sym])
            if n == 0 and np.isinf(high) and np.isnan(open_):
                continue  # no trade of the minute, or nothing of it is eligible for anything: no bar
            self._day_volume[sym] += v
            self._day_notional[sym] += float(acc.notional[sym])
            if np.isnan(self._official_open[sym]) and not np.isnan(open_):
                self._official_open[sym] = open_
            event: dict[str, Any] = {
                "ev": "AM",
                "sym": self.symbols[sym],
                "v": v,
                "av": int(self._day_volume[sym]),
            }
            if not np.isnan(self._official_open[sym]):
                event["op"] = float(self._official_open[sym])
            if v > 0:
                event["vw"] = round(float(acc.notional[sym]) / v, 4)
            for name, value in (("o", open_), ("c", close), ("h", high), ("l", low)):
                if not (np.isnan(value) or np.isinf(value)):
                    event[name] = value
            if self._day_volume[sym] > 0:
                event["a"] = round(float(self._day_notional[sym] / self._day_volume[sym]), 4)
            event["z"] = round(v / n) if n else 0
            event["s"] = start
            event["e"] = start + BAR_MS
            events.append(event)
        return events


class _Minute:
    """One open minute's accumulators, one slot per symbol."""

    def __init__(self, symbols: int) -> None:
        self.volume = np.zeros(symbols, dtype=np.int64)
        self.notional = np.zeros(symbols)
        self.count = np.zeros(symbols, dtype=np.int64)
        self.high = np.full(symbols, -np.inf)
        self.low = np.full(symbols, np.inf)
        self.open = np.full(symbols, np.nan)
        self.close = np.full(symbols, np.nan)
