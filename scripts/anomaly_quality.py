"""Anomaly detection quality on labelled injected events (volume spikes and price jumps).

Runs a deterministic labelled market through FeatureEngine → AnomalyDetector and reports precision and
recall against the ground truth, for per-ticker models and for one pooled model (the default). Only
what happens once a ticker's first model is live counts (no flags before warm-up is by design):

* episode recall: an injected volume spike (including news-driven ones) or price jump counts as found
  when at least one of its ticker's trades inside its window is flagged. Windows: a spike is
  [start, end + 2 s]; a jump, which moves momentum for 60 s, [t, t + 10 s] (detection must be prompt).
* alert precision: flags of a ticker closer than 5 s apart form one alert; an alert is true when it
  overlaps an anomalous window: a spike's, a jump's 60 s of displaced momentum [t, t + 60 s], or a
  news-driven price move [start, end + 60 s].
* point-wise precision / recall: per trade, flagged vs inside a labelled window.

The market is `tradepulse.sources.simulator.market` (labelled ground truth); if that module is missing
it falls back to a small built-in generator with the same kinds of injections.

    .venv/bin/python scripts/anomaly_quality.py [--seconds 900] [--seed 42] [--rate 2000]
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click
import numpy as np
import pandas as pd

from tradepulse.core.anomaly import AnomalyConfig, AnomalyDetector
from tradepulse.core.columns import QuoteColumns, TradeColumns
from tradepulse.core.features import FeatureEngine

Batch = tuple[TradeColumns, QuoteColumns]
START_MS = 1_767_000_000_000


@dataclass
class Labelled:
    batches: Iterator[Batch]
    ground_truth: list[dict]  # complete once `batches` is exhausted


def simulator_market(seconds: float, seed: int, rate: float, batch_ms: int) -> Labelled:
    """Batches of `batch_ms` of simulated time from the project's market simulator."""
    from tradepulse.sources.simulator.market import MarketConfig, MarketModel

    model = MarketModel(MarketConfig(seed=seed, rate=rate, start_ms=START_MS))
    names = np.asarray(model.symbols, dtype=object)

    def batches() -> Iterator[Batch]:
        blocks = []
        for block in model.generate(seconds):
            blocks.append(block)
            if (block.end_ms - blocks[0].start_ms) >= batch_ms:
                yield _to_columns(blocks, names)
                blocks = []
        if blocks:
            yield _to_columns(blocks, names)

    return Labelled(batches(), model.ground_truth)


def _to_columns(blocks: list, names: np.ndarray) -> Batch:
    tr = {k: np.concatenate([b.trades[k] for b in blocks]) for k in ("sym", "p", "s", "t", "q")}
    qu = {k: np.concatenate([b.quotes[k] for b in blocks]) for k in ("sym", "bp", "ap", "t", "q")}
    trades = TradeColumns(
        ticker=names[tr["sym"]],
        price=tr["p"].astype(np.float64),
        size=tr["s"].astype(np.float64),
        ts_ms=tr["t"].astype(np.int64),
        sequence=tr["q"].astype(np.int64),
        event_id=np.char.add(names[tr["sym"]].astype(str), tr["q"].astype(str)).astype(object),
    )
    quotes = QuoteColumns(
        ticker=names[qu["sym"]],
        bid_price=qu["bp"].astype(np.float64),
        ask_price=qu["ap"].astype(np.float64),
        ts_ms=qu["t"].astype(np.int64),
        sequence=qu["q"].astype(np.int64),
    )
    return trades, quotes


def synthetic_market(seconds: float, seed: int, rate: float, batch_ms: int) -> Labelled:
    """Fallback labelled market: Poisson trades on 5 tickers, spikes (10× volume, 2× rate, 5–20 s)
    every ~90 s and ±1.5–4 % price jumps every ~150 s."""
    rng = np.random.default_rng(seed)
    tickers = ["AAPL", "MSFT", "AMZN", "TSLA", "NVDA"]
    t0, end = START_MS, START_MS + int(seconds * 1000)
    truth: list[dict] = []
    for _ in range(rng.poisson(seconds / 90)):
        s = int(rng.uniform(t0 + 90_000, end))
        truth.append(
            {
                "type": "volume_spike",
                "ticker": str(rng.choice(tickers)),
                "start_ms": s,
                "end_ms": s + int(rng.uniform(5000, 20000)),
            }
        )
    for _ in range(rng.poisson(seconds / 150)):
        s = int(rng.uniform(t0 + 90_000, end))
        truth.append({"type": "price_jump", "ticker": str(rng.choice(tickers)), "start_ms": s, "end_ms": s, "magnitude": rng.uniform(0.015, 0.04) * rng.choice([-1, 1])})  # fmt: skip
    per_ticker = rate * 0.4 / len(tickers)
    cols: dict[str, list[np.ndarray]] = {"ticker": [], "ts": [], "price": [], "size": []}
    for k, tk in enumerate(tickers):
        spikes = [g for g in truth if g["ticker"] == tk and g["type"] == "volume_spike"]
        ts = np.sort(rng.uniform(t0, end, rng.poisson(per_ticker * seconds))).astype(np.int64)
        extra = [np.sort(rng.uniform(g["start_ms"], g["end_ms"], rng.poisson(per_ticker * (g["end_ms"] - g["start_ms"]) / 1000))) for g in spikes]  # fmt: skip
        ts = np.sort(np.concatenate([ts, *[e.astype(np.int64) for e in extra]]))
        size = np.where(
            rng.random(len(ts)) < 0.45,
            rng.geometric(0.06, len(ts)),
            100 * np.ceil(rng.pareto(1.6, len(ts)) + 1e-9),
        )
        for g in spikes:
            size[(ts >= g["start_ms"]) & (ts <= g["end_ms"])] *= 5.0
        logret = rng.normal(0, 2e-5, len(ts))
        for g in truth:
            if g["ticker"] == tk and g["type"] == "price_jump":
                logret[np.searchsorted(ts, g["start_ms"])  : np.searchsorted(ts, g["start_ms"]) + 1] += np.log1p(g["magnitude"])  # fmt: skip
        cols["ticker"].append(np.full(len(ts), tk, dtype=object))
        cols["ts"].append(ts)
        cols["price"].append(np.round(100.0 * (k + 1) * np.exp(np.cumsum(logret)), 2))
        cols["size"].append(size.astype(float))
    allc = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.argsort(allc["ts"], kind="stable")
    allc = {k: v[order] for k, v in allc.items()}

    def batches() -> Iterator[Batch]:
        cuts = np.searchsorted(allc["ts"], np.arange(t0, end + batch_ms, batch_ms))
        for a, b in itertools.pairwise(cuts):
            n = b - a
            yield (
                TradeColumns(allc["ticker"][a:b], allc["price"][a:b], allc["size"][a:b], allc["ts"][a:b], np.arange(a, b), np.arange(a, b).astype(str).astype(object)),
                QuoteColumns.empty(),
            ) if n else (TradeColumns.empty(), QuoteColumns.empty())  # fmt: skip

    return Labelled(batches(), truth)


def load_market(seconds: float, seed: int, rate: float, batch_ms: int) -> tuple[str, Labelled]:
    try:
        return "simulator", simulator_market(seconds, seed, rate, batch_ms)
    except ImportError:
        return "synthetic", synthetic_market(seconds, seed, rate, batch_ms)


def windows(truth: list[dict]) -> tuple[list[dict], list[tuple[str, int, int]]]:
    """Targets to find (spikes, jumps) and every anomalous window (targets plus news price moves)."""
    targets, anomalous = [], []
    for g in truth:
        if g["type"] == "volume_spike":
            w = (g["ticker"], g["start_ms"], g["end_ms"] + 2000)
        elif g["type"] == "price_jump":
            w = (g["ticker"], g["start_ms"], g["start_ms"] + 10_000)
        elif g["type"] == "price_move":
            w = (g["ticker"], g["start_ms"], g["end_ms"] + 60_000)
        else:
            continue
        if g["type"] in ("volume_spike", "price_jump"):
            targets.append(g | {"window": w})
        if g["type"] == "price_jump":
            w = (g["ticker"], g["start_ms"], g["start_ms"] + 60_000)
        anomalous.append(w)
    return targets, anomalous


def evaluate(
    truth: list[dict], trades: dict[str, np.ndarray], flagged: np.ndarray, live_since: dict[str, int]
) -> dict[str, float]:
    """Metrics over what happened once the ticker's first model was live (no flags before warm-up
    is by design, so earlier events are excluded from recall and from the point-wise counts)."""
    truth = [g for g in truth if g["start_ms"] >= live_since.get(g["ticker"], 2**62)]
    live = trades["ts_ms"] >= np.array([live_since.get(t, 2**62) for t in trades["ticker"]])
    trades = {k: v[live] for k, v in trades.items()}
    flagged = flagged[live]
    targets, anomalous = windows(truth)
    tick, ts = trades["ticker"], trades["ts_ms"]
    labelled = np.zeros(len(ts), dtype=bool)
    for tk, a, b in anomalous:
        labelled |= (tick == tk) & (ts >= a) & (ts <= b)
    found = {"volume_spike": [0, 0], "price_jump": [0, 0]}
    for g in targets:
        tk, a, b = g["window"]
        hit = bool((flagged & (tick == tk) & (ts >= a) & (ts <= b)).any())
        found[g["type"]][0] += hit
        found[g["type"]][1] += 1
    # Alerts: per ticker, flags less than 5 s apart merge.
    alerts_true = alerts = 0
    for tk in np.unique(tick[flagged]):
        f_ts = np.sort(ts[flagged & (tick == tk)])
        breaks = np.flatnonzero(np.diff(f_ts) > 5000)
        starts, ends = f_ts[np.r_[0, breaks + 1]], f_ts[np.r_[breaks, len(f_ts) - 1]]
        for a, b in zip(starts, ends, strict=True):
            alerts += 1
            alerts_true += any(t == tk and a <= wb and b >= wa for t, wa, wb in anomalous)
    n_flag, n_lab = int(flagged.sum()), int(labelled.sum())
    tp = int((flagged & labelled).sum())
    n_targets = sum(v[1] for v in found.values())
    return {
        "episode_recall": sum(v[0] for v in found.values()) / max(n_targets, 1),
        "spike_recall": found["volume_spike"][0] / max(found["volume_spike"][1], 1),
        "jump_recall": found["price_jump"][0] / max(found["price_jump"][1], 1),
        "targets": n_targets,
        "alert_precision": alerts_true / max(alerts, 1),
        "alerts": alerts,
        "point_precision": tp / max(n_flag, 1),
        "point_recall": tp / max(n_lab, 1),
        "flagged": n_flag,
        "trades": len(ts),
        "flag_rate": n_flag / max(len(ts), 1),
    }


def run(per_ticker: bool, seconds: float, seed: int, rate: float, batch_ms: int) -> dict[str, Any]:
    source, market = load_market(seconds, seed, rate, batch_ms)
    engine = FeatureEngine()
    detector = AnomalyDetector(AnomalyConfig(per_ticker=per_ticker))
    parts: dict[str, list[np.ndarray]] = {"ticker": [], "ts_ms": [], "event_id": []}
    flagged_ids: set[str] = set()
    versions = set()
    live_since: dict[str, int] = {}  # ticker -> exchange time from which its model scores
    start = time.perf_counter()
    for trades, quotes in market.batches:
        out = engine.process(trades, quotes)
        for anomaly in detector.score(out.per_trade):
            flagged_ids.add(anomaly["event_id"])
            versions.add(anomaly["model_version"])
        detector.wait_for_refits()  # deterministic: the model of batch k is the same on every run
        if len(out.per_trade["ts_ms"]):
            for ticker in set(out.per_trade["ticker"]) - set(live_since):
                if detector.model_for(ticker) is not None:
                    live_since[ticker] = int(out.per_trade["ts_ms"].max())
        for k in parts:
            parts[k].append(out.per_trade[k])
    elapsed = time.perf_counter() - start
    detector.close()
    trades_all = {k: np.concatenate(v) for k, v in parts.items()}
    flagged = pd.Series(trades_all["event_id"]).isin(flagged_ids).to_numpy()  # hashed, not O(n·m)
    result = evaluate(market.ground_truth, trades_all, flagged, live_since)
    return result | {
        "source": source,
        "refits": detector.refits,
        "seconds_wall": elapsed,
        "live_since": live_since or {"": START_MS},
    }


@click.command(help=__doc__)
@click.option("--seconds", type=float, default=2400.0, show_default=True, help="simulated market time")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--rate", type=float, default=2000.0, show_default=True, help="events/s (trades + quotes)")
@click.option("--batch-ms", type=int, default=1000, show_default=True, help="simulated time per batch")
def main(seconds: float, seed: int, rate: float, batch_ms: int) -> None:
    for per_ticker in (True, False):
        r = run(per_ticker, seconds, seed, rate, batch_ms)
        label = "per-ticker models" if per_ticker else "pooled model    "
        print(
            f"{label}: episode recall {r['episode_recall']:.3f} (spikes {r['spike_recall']:.2f}, jumps "
            f"{r['jump_recall']:.2f}, n={r['targets']}), alert precision {r['alert_precision']:.3f} "
            f"({r['alerts']} alerts), point precision {r['point_precision']:.3f}, point recall "
            f"{r['point_recall']:.3f}, flag rate {r['flag_rate']:.4f} of {r['trades']} trades, "
            f"{r['refits']} refits [{r['source']}, {r['seconds_wall']:.1f} s]; scored from "
            f"{(min(r['live_since'].values()) - START_MS) / 1000:.0f} s"
        )


if __name__ == "__main__":
    main()
