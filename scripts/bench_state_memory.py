"""Memory of the feature core's trade state: the core alone (one process) fed the simulated market in
batches, then the bytes of each `TradeState` array, the process RSS, each re-layout of the rows (the
stalls: market time, slots, milliseconds) and a digest of every per-trade feature vector (equal
digests: two builds computed the same bits).

    .venv/bin/python scripts/bench_state_memory.py [--rate 15000] [--tickers 200] [--seconds 330] [--batch 5000]

The defaults are the issue-19 load once the 5-minute windows are full (docs/benchmarks.md, "Memory").
"""

from __future__ import annotations

import hashlib
import time

import click
import numpy as np
import psutil
from bench_core import START_MS, market_columns, market_options, simulated_market

from tradepulse.bus.runner import tune_process
from tradepulse.core.features import FeatureEngine
from tradepulse.core.trade_state import TradeState
from tradepulse.sources.simulator.market import Block


@click.command(help=__doc__)
@market_options(seconds=330.0)
@click.option("--batch", type=int, default=5000, show_default=True, help="events per batch")
def main(rate: float, tickers: int, seconds: float, batch: int, seed: int) -> None:
    model, names = simulated_market(rate, tickers, seed)
    tune_process()  # as `tradepulse process` does: GC thresholds, numpy's huge pages off
    engine = FeatureEngine()
    market_s = 0.0
    relayouts: list[tuple[float, int, float]] = []  # (market time s, row slots after, ms)
    reserve_ms: list[float] = []
    reserve = TradeState.reserve

    def timed_reserve(state: TradeState, *args: np.ndarray) -> None:
        # Timed from outside (the core itself is not instrumented); a new `key` array is a re-layout.
        key, started = state.key, time.perf_counter()
        reserve(state, *args)  # type: ignore[arg-type]
        ms = (time.perf_counter() - started) * 1000
        reserve_ms.append(ms)
        if state.key is not key:
            relayouts.append((market_s, len(state.key), ms))

    TradeState.reserve = timed_reserve  # type: ignore[method-assign,assignment]
    digest = hashlib.sha256()
    core_s, batches, count = 0.0, 0, 0
    pending: list[Block] = []

    def feed() -> None:
        nonlocal core_s, batches
        trades, quotes = market_columns(pending, names)
        started = time.perf_counter()
        out = engine.process(trades, quotes)
        core_s += time.perf_counter() - started
        batches += 1
        for name in sorted(out.per_trade):
            values = np.asarray(out.per_trade[name])
            digest.update(name.encode())
            digest.update(repr(values.tolist()).encode() if values.dtype == object else values.tobytes())

    for block in model.generate(seconds):
        market_s = (block.end_ms - START_MS) / 1000
        pending.append(block)
        count += len(block)
        if count >= batch:
            feed()
            pending, count = [], 0
    state = engine._trades
    arrays = {name: value for name, value in vars(state).items() if isinstance(value, np.ndarray)}
    total = sum(value.nbytes for value in arrays.values())
    live = int((state.tail - state.reg0).sum())
    print(
        f"{batches} batches of ~{batch:,} events, {seconds:.0f} s of market time; core {core_s:.1f} s\n"
        f"trade state: {total / 2**20:,.0f} MiB = {total / max(len(state.key), 1):.0f} bytes per row slot; "
        f"{len(state.key):,} row slots for {live:,} rows, {len(state.b_key):,} bucket slots\n"
        "largest arrays (MiB): "
        + ", ".join(
            f"{n} {v.nbytes / 2**20:.0f}" for n, v in sorted(arrays.items(), key=lambda kv: -kv[1].nbytes)[:8]
        )
        + "\nrow re-layouts (market s, slots, ms): "
        + ", ".join(f"{at:.0f} s {slots / 1e6:.2f} M {ms:.0f}" for at, slots, ms in relayouts)
        + f"\nreserve p99 / max {np.percentile(reserve_ms, 99):.1f} / {max(reserve_ms):.1f} ms"
        + f" ({len(reserve_ms):,} calls)"
        + f"\nprocess RSS {psutil.Process().memory_info().rss / 2**20:,.0f} MiB\n"
        f"feature digest {digest.hexdigest()[:16]}"
    )


if __name__ == "__main__":
    main()
