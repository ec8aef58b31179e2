"""Bars, condition rules, bad ticks and vendor reconciliation on a seeded simulator run (issue 17).

Generates `--minutes` of the simulated market (batch mode, faster than real time: the model's own
clock) with labelled bad ticks, frames each tick as the simulator's WebSocket sends it (its trades
and its `AM` aggregates) and parses it with ingest's parser (which rejects the structurally
impossible prints), then runs the runner's bar path over it tick by tick: the outlier flagger
(`tradepulse.core.outliers`, default bands), the bar engine with the shipped condition rules over
the non-flagged trades, and the vendor reconciliation (`tradepulse.bus.pipeline.VendorCheck`, the
runner's own code). A second bar engine over the same trades with `ConditionRules.permissive()`
gives the bars without the rules. Prints:

- per ticker, the mean and max |Δ| % of the minute bars' VWAP and volume, rules on vs off;
- outliers flagged vs labelled fat fingers: precision and recall;
- the reconciliation: minutes per status, mismatches per field.

    .venv/bin/python scripts/bar_quality.py [--minutes 20] [--rate 2000] [--seed 42] [--bad-tick-rate 0.001]
"""

from __future__ import annotations

import collections
import time

import click
import numpy as np
import orjson

from tradepulse.bus.pipeline import VendorCheck
from tradepulse.core.bars import BarEngine
from tradepulse.core.columns import TradeColumns
from tradepulse.core.conditions import ConditionRules
from tradepulse.core.outliers import OutlierConfig, OutlierFlagger
from tradepulse.core.sessions import SessionTable
from tradepulse.sources.parse import parse_frame
from tradepulse.sources.simulator.market import MarketConfig, MarketModel

START_MS = 1_764_685_800_000  # 2025-12-02 14:30 UTC = 09:30 ET, a regular session
GRACE_MS = 2000


@click.command(help=__doc__)
@click.option("--minutes", type=float, default=20.0, show_default=True, help="simulated minutes")
@click.option("--rate", type=float, default=2000.0, show_default=True, help="simulated events/s")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--bad-tick-rate", type=float, default=0.001, show_default=True)
def main(minutes: float, rate: float, seed: int, bad_tick_rate: float) -> None:
    started = time.perf_counter()
    model = MarketModel(MarketConfig(seed=seed, rate=rate, start_ms=START_MS, bad_tick_rate=bad_tick_rate))
    rules, permissive = ConditionRules.bundled(), ConditionRules.permissive()
    sessions = SessionTable.nyse()
    flagger = OutlierFlagger(OutlierConfig())
    on, off = BarEngine(GRACE_MS, sessions), BarEngine(GRACE_MS, sessions)
    check = VendorCheck(GRACE_MS, sessions)
    bars_on: list[dict] = []
    bars_off: list[dict] = []
    checks: list[dict] = []
    flagged: set[str] = set()
    trades_total = 0
    for block in model.generate(minutes * 60):
        frame = parse_frame(orjson.dumps(block.records() + block.aggregates), block.end_ms * 1000)
        trades = TradeColumns.from_records(frame.trades) if frame.trades else TradeColumns.empty()
        trades_total += len(trades)
        closed: dict[str, list[dict]] = {}
        if len(trades):
            assert trades.conditions is not None
            eligible = rules.masks(trades.conditions, count_unknown=False).last_price
            outlier = flagger.flag(trades, eligible).outlier
            flagged |= set(trades.event_id[outlier].tolist())
            kept = trades.take(np.flatnonzero(~outlier))
            assert kept.conditions is not None
            for name, engine, rule_set in (("on", on, rules), ("off", off, permissive)):
                m = rule_set.masks(kept.conditions, count_unknown=False)
                closed[name] = engine.process(
                    kept,
                    volume_eligible=m.volume,
                    high_low_eligible=m.high_low,
                    open_close_eligible=m.open_close,
                )
        bars_on += closed.get("on", [])
        bars_off += closed.get("off", [])
        checks += check.process(trades, rules, on, closed.get("on", []), frame.aggregates, emit=False)
    elapsed = time.perf_counter() - started
    labelled = [g for g in model.ground_truth if g["type"] == "bad_tick"]
    fat = {g["event_id"] for g in labelled if g["kind"] == "fat_finger"}
    impossible = sum(g["kind"] == "impossible" for g in labelled)
    print(
        f"run: {minutes:g} simulated minutes at {rate:,.0f} events/s, seed {seed}, bad-tick rate {bad_tick_rate}: "
        f"{trades_total:,} trades parsed, {len(bars_on)} bars, generated and processed in {elapsed:.0f} s"
    )
    # Rules on vs off, per ticker: the minute bars' VWAP and volume.
    key = {(b["ticker"], b["start_ms"]): b for b in bars_off}
    per: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: {"vwap": [], "volume": []})
    for b in bars_on:
        o = key.get((b["ticker"], b["start_ms"]))
        if o is None or not b["vwap"] or not o["vwap"]:
            continue
        per[b["ticker"]]["vwap"].append(abs(b["vwap"] / o["vwap"] - 1) * 100)
        per[b["ticker"]]["volume"].append(abs(b["volume"] / o["volume"] - 1) * 100)
    print("rules on vs off, per minute bar: |Δ| % (mean / max)")
    print(
        f"  {'ticker':<6} {'bars':>5} {'vwap mean':>10} {'vwap max':>9} {'volume mean':>12} {'volume max':>11}"
    )
    all_vwap: list[float] = []
    all_volume: list[float] = []
    for ticker in sorted(per):
        v, q = np.array(per[ticker]["vwap"]), np.array(per[ticker]["volume"])
        all_vwap += v.tolist()
        all_volume += q.tolist()
        print(
            f"  {ticker:<6} {len(v):>5} {v.mean():>10.4f} {v.max():>9.4f} {q.mean():>12.3f} {q.max():>11.3f}"
        )
    v, q = np.array(all_vwap), np.array(all_volume)
    print(f"  {'all':<6} {len(v):>5} {v.mean():>10.4f} {v.max():>9.4f} {q.mean():>12.3f} {q.max():>11.3f}")
    hit = len(flagged & fat)
    precision = hit / len(flagged) if flagged else float("nan")
    recall = hit / len(fat) if fat else float("nan")
    print(
        f"bad ticks labelled: {len(fat)} fat fingers, {impossible} impossible (rejected by ingest's parser); "
        f"flagged outlier: {len(flagged)}, of them labelled {hit}: precision {precision:.3f}, recall {recall:.3f}"
    )
    statuses = collections.Counter(c["status"] for c in checks)
    fields = collections.Counter(f for c in checks if c["status"] == "mismatch" for f in c["fields"])
    print(
        f"reconciliation with the simulator's AM: {len(checks)} ticker-minutes decided: "
        + ", ".join(
            f"{s} {statuses.get(s, 0)}" for s in ("match", "outlier", "mismatch", "vendor_only", "ours_only")
        )
        + f"; mismatched fields: {dict(fields) or 'none'}; still pending (open minutes): {len(check.reconciler.pending_keys())}"
    )


if __name__ == "__main__":
    main()
