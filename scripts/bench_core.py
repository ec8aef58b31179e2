"""Benchmark of the pure core on one core: feature throughput, scoring cost and refit cost.

* features: FeatureEngine.process on batches of `--batch` events (trades + quotes) from the market
  simulator, after a warm-up that fills the 5-minute window state; per-batch latency p50/p99 and
  events/s.
* scoring: AnomalyDetector.score on the per-trade rows of each batch, with fitted per-ticker models
  (and the pooled model for comparison); amortised µs per scored trade.
* refit: one Isolation Forest fit (`tradepulse.core.iforest`, 100 trees) and its 1 % threshold on 1000 rows.

    .venv/bin/python scripts/bench_core.py [--rate 20000] [--batch 10000] [--batches 60] [--warm-batch 10000]

Small batches (`--batch 500`: what the runner sends at moderate rates) are measured after the same
warm-up in `--warm-batch` events.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import click
import numpy as np

from tradepulse.bus.runner import tune_process
from tradepulse.core.anomaly import AnomalyConfig, AnomalyDetector
from tradepulse.core.columns import QuoteColumns, TradeColumns, object_array
from tradepulse.core.features import FeatureEngine
from tradepulse.core.iforest import IsolationForest
from tradepulse.sources.simulator.market import CONDITION_SETS, Block, MarketConfig, MarketModel, make_tickers

START_MS = 1_767_000_000_000
Command = TypeVar("Command", bound=Callable[..., None])


def market_options(seconds: float) -> Callable[[Command], Command]:
    """The simulated market's options of the core benchmarks: --rate, --tickers, --seconds, --seed."""
    options = (
        click.option(
            "--rate",
            type=float,
            default=15000.0,
            show_default=True,
            help="simulated events/s (trades + quotes)",
        ),
        click.option("--tickers", type=int, default=200, show_default=True),
        click.option("--seconds", type=float, default=seconds, show_default=True, help="market time fed"),
        click.option("--seed", type=int, default=7, show_default=True),
    )

    def apply(command: Command) -> Command:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def simulated_market(rate: float, tickers: int, seed: int) -> tuple[MarketModel, np.ndarray]:
    """The simulator's market model over `tickers` tickers, and its ticker names by code."""
    model = MarketModel(MarketConfig(seed=seed, rate=rate, start_ms=START_MS, tickers=make_tickers(tickers)))
    return model, np.asarray(model.symbols, dtype=object)


def batches(
    rate: float, seconds: float, batch_events: int, seed: int, warm_events: int = 0, warm_batch: int = 0
) -> tuple[list[tuple[TradeColumns, QuoteColumns]], int]:
    """The simulated market cut into batches of ~`batch_events` events, in arrival order (the first
    `warm_events` into batches of ~`warm_batch`); also returns how many warm-up batches there are."""
    model = MarketModel(MarketConfig(seed=seed, rate=rate, start_ms=START_MS))
    names = np.asarray(model.symbols, dtype=object)
    out, pending, count, seen, n_warm = [], [], 0, 0, 0
    for block in model.generate(seconds):
        pending.append(block)
        count += len(block)
        warming = seen < warm_events
        if count >= (warm_batch or batch_events if warming else batch_events):
            out.append(market_columns(pending, names))
            n_warm += warming
            seen += count
            pending, count = [], 0
    return out, n_warm


def market_columns(blocks: list[Block], names: np.ndarray) -> tuple[TradeColumns, QuoteColumns]:
    """The simulator's blocks as the core's columnar batch, arrival order, with their condition codes."""
    tr = {
        k: np.concatenate([b.trades[k] for b in blocks if b.trades]) for k in ("sym", "p", "s", "t", "q", "c")
    }
    qu = {k: np.concatenate([b.quotes[k] for b in blocks if b.quotes]) for k in ("sym", "bp", "ap", "t", "q")}
    event_id = np.char.add(names[tr["sym"]].astype(str), tr["q"].astype(str)).astype(object)
    conditions = object_array([list(CONDITION_SETS[c]) for c in tr["c"].tolist()])  # the rules apply
    trades = TradeColumns(
        names[tr["sym"]], tr["p"].astype(float), tr["s"].astype(float), tr["t"], tr["q"], event_id, conditions
    )
    quotes = QuoteColumns(names[qu["sym"]], qu["bp"].astype(float), qu["ap"].astype(float), qu["t"], qu["q"])
    return trades, quotes


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


@click.command(help=__doc__)
@click.option(
    "--rate", type=float, default=20000.0, show_default=True, help="simulated events/s (trades + quotes)"
)
@click.option("--batch", type=int, default=10000, show_default=True, help="events per batch")
@click.option("--batches", "n_batches", type=int, default=60, show_default=True, help="measured batches")
@click.option(
    "--warm-batch",
    type=int,
    default=10000,
    show_default=True,
    help="events per batch while filling the windows",
)
@click.option("--seed", type=int, default=7, show_default=True)
def main(rate: float, batch: int, n_batches: int, warm_batch: int, seed: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core

    warm_s = 330.0  # fill the 5-minute windows (and the detector's warm-up) first
    total_s = warm_s + n_batches * batch / rate + 1
    data, n_warm = batches(rate, total_s, batch, seed, int(warm_s * rate), warm_batch)
    tune_process()  # as `tradepulse process` does: GC thresholds, numpy's huge pages off
    engine = FeatureEngine()
    detectors = {
        "per-ticker": AnomalyDetector(AnomalyConfig(warmup_ms=0, min_train=300)),
        "pooled": AnomalyDetector(AnomalyConfig(warmup_ms=0, min_train=300, per_ticker=False)),
    }
    per_batch_ms, events = [], []
    score_us: dict[str, list[float]] = {k: [] for k in detectors}
    measured = 0
    warm_batches = max(n_warm, len(data) - n_batches)
    for i, (trades, quotes) in enumerate(data):
        start = time.perf_counter()
        out = engine.process(trades, quotes)
        elapsed = time.perf_counter() - start
        rows = len(out.per_trade["ts_ms"])
        for name, detector in detectors.items():
            start = time.perf_counter()
            detector.score(out.per_trade)
            if i >= warm_batches and rows:
                score_us[name].append((time.perf_counter() - start) / rows * 1e6)
            detector.wait_for_refits()  # refits measured separately; keep them out of the timings
        if i >= warm_batches:
            per_batch_ms.append(elapsed * 1e3)
            events.append(len(trades) + len(quotes))
            measured += 1
    total_events, total_s_wall = sum(events), sum(per_batch_ms) / 1e3
    print(f"state: {engine.state_rows:,} rows (trades + quotes in the 5-minute windows)")
    print(
        f"features: {total_events / total_s_wall:,.0f} events/s on one core; per {np.mean(events):,.0f}-event batch "
        f"p50 {pct(per_batch_ms, 50):.1f} ms, p99 {pct(per_batch_ms, 99):.1f} ms ({measured} batches, "
        f"{rate:,.0f} events/s simulated)"
    )
    for name, values in score_us.items():
        print(f"scoring ({name}): p50 {pct(values, 50):.1f} µs/trade, p99 {pct(values, 99):.1f} µs/trade")

    rng = np.random.default_rng(0)
    fits = []
    for k in range(5):
        x = rng.standard_normal((1000, 6))
        start = time.perf_counter()
        IsolationForest.fit(x, n_trees=100, seed=k).offset(x, 0.01)  # as `fit_model` does
        fits.append((time.perf_counter() - start) * 1e3)
    d = detectors["per-ticker"]
    in_run = d.refit_seconds / max(d.refits, 1) * 1e3
    print(
        f"refit: {pct(fits, 50):.0f} ms p50 (100 trees, 1000 rows); {in_run:.0f} ms mean over {d.refits} refits in the run"
    )
    for detector in detectors.values():
        detector.close()


if __name__ == "__main__":
    main()
