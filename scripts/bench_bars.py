"""Benchmark of the one-minute bar engine alone: its cost per batch, and the batches that close bars.

The simulator's market (`--rate` events/s over `--tickers` tickers, `--seconds` of market time) is cut
into batches of `--batch-trades` trades (at 15k ev/s the runner's batches hold ~70 trades), each fed to
a `BarEngine` with the bundled condition rules' masks, as the runner's engines get them. Prints the
time per `process` call (p50 / p99 / max, percentiles by nearest rank), the calls that closed bars
(how many, their largest), the total, and a digest of every bar emitted (equal digests: equal bars).

    .venv/bin/python scripts/bench_bars.py --rate 15000 --tickers 200 --seconds 200 --batch-trades 70
"""

from __future__ import annotations

import hashlib
import time

import click
from bench_core import market_columns, market_options, simulated_market

from tradepulse.core.bars import BarEngine
from tradepulse.core.conditions import ConditionRules
from tradepulse.percentiles import nearest_rank


@click.command(help=__doc__)
@market_options(seconds=200.0)
@click.option("--batch-trades", type=int, default=70, show_default=True, help="trades per batch")
def main(rate: float, tickers: int, seconds: float, batch_trades: int, seed: int) -> None:
    model, names = simulated_market(rate, tickers, seed)
    rules = ConditionRules.bundled()
    batches = []
    for block in model.generate(seconds):
        if not block.trades:
            continue
        trades = market_columns([block], names)[0]
        for lo in range(0, len(trades), batch_trades):
            part = trades.take(slice(lo, lo + batch_trades))
            assert part.conditions is not None  # the simulator's trades carry their condition codes
            batches.append((part, rules.masks(part.conditions, count_unknown=False)))
    engine = BarEngine(2000)
    times, closing, digest, emitted = [], [], hashlib.sha256(), 0
    for trades, mask in batches:
        started = time.perf_counter()
        bars = engine.process(
            trades,
            volume_eligible=mask.volume,
            high_low_eligible=mask.high_low,
            open_close_eligible=mask.open_close,
        )
        elapsed = (time.perf_counter() - started) * 1000
        times.append(elapsed)
        if bars:
            closing.append(elapsed)
            emitted += len(bars)
            digest.update(repr(sorted(bars, key=lambda b: (b["start_ms"], b["ticker"]))).encode())
    click.echo(
        f"{len(times):,} batches of ≤ {batch_trades} trades, {emitted:,} bars; per call p50 "
        f"{nearest_rank(times, 50):.3f} / p99 {nearest_rank(times, 99):.3f} / max {max(times):.2f} ms; "
        f"total {sum(times):,.0f} ms"
    )
    click.echo(
        f"calls that closed bars: {len(closing):,}, the largest {max(closing, default=0.0):.2f} ms; "
        f"open bars at the end {engine.open_bars:,}; bars digest {digest.hexdigest()[:16]}"
    )


if __name__ == "__main__":
    main()
