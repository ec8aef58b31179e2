"""The trade-condition rules in the feature core: their cost and what they change, on a seeded simulator run.

Feeds `--minutes` of the simulated market (its documented condition mix, `market.CONDITION_SETS`) in
batches of `--batch` events to two feature engines, rules on (the shipped snapshot) and rules off
(`ConditionRules.permissive()`: every trade updates everything), alternating which goes first so
load drift on a shared machine hits both alike. Prints events/s of each after the first 5 minutes
(windows full) and how the per-trade vectors differ: VWAP (bps), volume, last price, momentum,
trade count.

    .venv/bin/python scripts/bench_conditions.py [--minutes 20] [--rate 2000] [--batch 2000] [--seed 42]
"""

from __future__ import annotations

import time

import click
import numpy as np
from bench_core import market_columns

from tradepulse.core.columns import QuoteColumns, TradeColumns
from tradepulse.core.conditions import ConditionRules
from tradepulse.core.features import FeatureEngine, FeatureOutput
from tradepulse.sources.simulator.market import Block, MarketConfig, MarketModel

WARM_S = 300.0


def batches(
    rate: float, seconds: float, batch_events: int, seed: int
) -> list[tuple[float, TradeColumns, QuoteColumns]]:
    """(simulated seconds since start, trades, quotes) per batch of ~`batch_events`, arrival order."""
    model = MarketModel(MarketConfig(seed=seed, rate=rate, start_ms=1_767_000_000_000))
    names = np.asarray(model.symbols, dtype=object)
    out: list[tuple[float, TradeColumns, QuoteColumns]] = []
    pending: list[Block] = []
    count = 0
    for block in model.generate(seconds):
        pending.append(block)
        count += len(block)
        if count >= batch_events:
            trades, quotes = market_columns(pending, names)
            elapsed = (model.now_ms - model.start_ms) / 1000
            out.append((elapsed, trades, quotes))
            pending, count = [], 0
    return out


def _stats(values: np.ndarray) -> str:
    return f"mean {values.mean():.2f}, p50 {np.percentile(values, 50):.2f}, p99 {np.percentile(values, 99):.2f}, max {values.max():.2f}"


@click.command(help=__doc__)
@click.option("--minutes", type=float, default=20.0, show_default=True, help="simulated minutes")
@click.option("--rate", type=float, default=2000.0, show_default=True, help="simulated events/s")
@click.option("--batch", type=int, default=2000, show_default=True, help="events per batch")
@click.option("--seed", type=int, default=42, show_default=True)
def main(minutes: float, rate: float, batch: int, seed: int) -> None:
    data = batches(rate, minutes * 60, batch, seed)
    engines = {"on": FeatureEngine(), "off": FeatureEngine(rules=ConditionRules.permissive())}
    seconds = {name: 0.0 for name in engines}
    measured_events = 0
    cols: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in engines}
    for i, (elapsed, trades, quotes) in enumerate(data):
        order = list(engines) if i % 2 == 0 else list(engines)[::-1]
        outs: dict[str, FeatureOutput] = {}
        for name in order:
            start = time.perf_counter()
            outs[name] = engines[name].process(trades, quotes)
            took = time.perf_counter() - start
            if elapsed > WARM_S:
                seconds[name] += took
        if elapsed > WARM_S:
            measured_events += len(trades) + len(quotes)
        for name, out in outs.items():
            for key in (
                "event_id",
                "price",
                "size",
                "vwap_5min",
                "volume",
                "price_momentum",
                "trade_frequency",
            ):
                cols[name].setdefault(key, []).append(out.per_trade[key])
    on = {k: np.concatenate(v) for k, v in cols["on"].items()}
    off = {k: np.concatenate(v) for k, v in cols["off"].items()}
    assert np.array_equal(on["event_id"], off["event_id"])
    n = len(on["price"])
    rules = engines["on"].rules
    all_conditions = np.concatenate([t.conditions for _, t, _ in data if t.conditions is not None])
    assert len(all_conditions) == n  # no late or invalid trades: outputs in input order
    masks = ConditionRules.bundled().masks(all_conditions)
    print(
        f"run: {minutes:g} simulated minutes at {rate:,.0f} events/s (seed {seed}), {len(data)} batches of "
        f"~{batch} events, {n:,} trades"
    )
    print(
        f"trades: {1 - masks.volume.mean():.2%} not volume-eligible, {1 - masks.last_price.mean():.2%} "
        f"not price-eligible; unknown codes: {rules.unknown_counts or 'none'}"
    )
    for name in engines:
        print(
            f"features, rules {name}: {measured_events / seconds[name]:,.0f} events/s (after {WARM_S:.0f} s)"
        )
    print(f"cost of the rules: {seconds['on'] / seconds['off'] - 1:+.1%} core time")
    vwap_bps = np.abs(on["vwap_5min"] / off["vwap_5min"] - 1) * 1e4
    print(f"vwap_5min |on − off| in bps: {_stats(vwap_bps)}")
    vol_ratio = on["volume"].sum() / off["volume"].sum()
    differ = np.mean(on["volume"] != off["volume"])
    print(f"volume (1-s bucket, per vector): Σ on / Σ off = {vol_ratio:.4f}; {differ:.1%} of vectors differ")
    eligible_volume = float((on["size"] * masks.volume).sum()) / float(on["size"].sum())
    print(f"volume counted (Σ size of volume-eligible trades / all): {eligible_volume:.4f}")
    price_bps = np.abs(on["price"] / off["price"] - 1) * 1e4
    print(
        f"price (last price) differs on {np.mean(on['price'] != off['price']):.1%} of vectors; |Δ| bps: {_stats(price_bps)}"
    )
    momentum = np.abs(on["price_momentum"] - off["price_momentum"])
    print(f"price_momentum |on − off| (percentage points): {_stats(momentum)}")
    freq = off["trade_frequency"] - on["trade_frequency"]
    print(f"trade_frequency off − on (trades per 60 s): {_stats(freq.astype(float))}")


if __name__ == "__main__":
    main()
