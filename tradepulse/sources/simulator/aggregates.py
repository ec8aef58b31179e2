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
The aggregation itself is written independently of the pipeline's bar engine (pandas group-by over
the model's arrays, not `tradepulse.core.bars`), so that reconciling the two checks the bar engine
rather than agreeing with itself. A field no trade of the minute is eligible for is left out of the
event (the real feed's behaviour for such a minute is not documented; the pipeline's bar has None).

Bad ticks (`MarketConfig.bad_tick_rate`): the structurally impossible ones are not prints, no
aggregate contains them; the labelled fat fingers are, as in a real SIP aggregate published in real
time (the exchange has not busted them yet). Our pipeline flags and leaves those out of its bars, and
the reconciliation reports such minutes as `outlier` only if including exactly the flagged prints
reproduces the vendor's bar (`tradepulse.core.reconcile`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tradepulse.core.conditions import ConditionRules

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
    """Accumulates a model's trades and emits the `AM` events of the minutes that have ended."""

    def __init__(self, symbols: list[str], table: np.ndarray) -> None:
        self.symbols = symbols
        self.table = table
        self._parts: list[dict[str, np.ndarray]] = []  # the trades of the open minutes, per tick
        n = len(symbols)
        self._day_volume = np.zeros(n, dtype=np.int64)
        self._day_notional = np.zeros(n)
        self._official_open = np.full(n, np.nan)

    def add(self, trades: dict[str, np.ndarray], until_ms: int) -> list[dict[str, Any]]:
        """Take a tick's trades (time order), then return the events of every minute ending at or
        before `until_ms`, by (start, symbol)."""
        keep = trades.get("bad", np.zeros(len(trades["t"]), dtype=np.int8)) != BAD_IMPOSSIBLE
        if keep.any():
            self._parts.append({name: trades[name][keep] for name in ("sym", "t", "q", "p", "s", "c")})
        # Cheap per tick (numpy only): the frame work runs once a minute, when minutes end.
        if not self._parts or (int(self._parts[0]["t"].min()) // BAR_MS + 1) * BAR_MS > until_ms:
            return []
        pending = {name: np.concatenate([part[name] for part in self._parts]) for name in self._parts[0]}
        minute = pending["t"] // BAR_MS
        done = (minute + 1) * BAR_MS <= until_ms
        self._parts = [{name: column[~done] for name, column in pending.items()}] if (~done).any() else []
        rules = self.table[pending["c"][done].astype(np.int64)]
        frame = pd.DataFrame(
            {
                "sym": pending["sym"][done],
                "t": pending["t"][done],
                "q": pending["q"][done],
                "p": pending["p"][done].astype(float),
                "s": pending["s"][done].astype(np.int64),
                "vol": rules[:, 0],
                "hl": rules[:, 1],
                "oc": rules[:, 2],
                "m": minute[done],
            }
        )
        return self._events(frame)

    def _events(self, d: pd.DataFrame) -> list[dict[str, Any]]:
        d = d.sort_values(["sym", "m", "t", "q"], kind="stable")
        vol_s = np.where(d["vol"], d["s"], 0)
        d = d.assign(
            vs=vol_s,
            vn=vol_s * d["p"].to_numpy(),
            n=d["vol"].astype(np.int64),
            hlp=d["p"].where(d["hl"]),
            ocp=d["p"].where(d["oc"]),
        )
        g = d.groupby(["sym", "m"], sort=True)
        agg = g.agg(
            v=("vs", "sum"),
            notional=("vn", "sum"),
            n=("n", "sum"),
            h=("hlp", "max"),
            l=("hlp", "min"),
            o=("ocp", "first"),
            c=("ocp", "last"),
        ).reset_index()
        events = []
        for row in agg.sort_values(["m", "sym"], kind="stable").itertuples(index=False):
            sym, v, n = int(row.sym), int(row.v), int(row.n)
            if n == 0 and np.isnan(row.h) and np.isnan(row.o):
                continue  # nothing of the minute is eligible for anything: no bar
            self._day_volume[sym] += v
            self._day_notional[sym] += float(row.notional)
            if np.isnan(self._official_open[sym]) and not np.isnan(row.o):
                self._official_open[sym] = float(row.o)
            start = int(row.m) * BAR_MS
            event: dict[str, Any] = {
                "ev": "AM",
                "sym": self.symbols[sym],
                "v": v,
                "av": int(self._day_volume[sym]),
            }
            if not np.isnan(self._official_open[sym]):
                event["op"] = float(self._official_open[sym])
            if v > 0:
                event["vw"] = round(float(row.notional) / v, 4)
            for name in ("o", "c", "h", "l"):
                value = float(getattr(row, name))
                if not np.isnan(value):
                    event[name] = value
            if self._day_volume[sym] > 0:
                event["a"] = round(float(self._day_notional[sym] / self._day_volume[sym]), 4)
            event["z"] = round(v / n) if n else 0
            event["s"] = start
            event["e"] = start + BAR_MS
            events.append(event)
        return events
