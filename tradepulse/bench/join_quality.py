"""Precision / recall of the news ↔ volume-spike join on labelled news scenarios: the measurement behind
docs/quality.md and tests/core/test_join_quality.py. Command line: `scripts/join_quality.py`

    .venv/bin/python scripts/join_quality.py [--minutes 60] [--seed 7] [--source auto|simulator|synthetic]
                                             [--raw-zscore] [--tickers 5]

`--raw-zscore` runs the feature core with the plain raw-volume z-score (no size cap, no log), the
definition before the robust one, for comparison. `--tickers N` spreads the simulator's news and
unrelated spikes (global rates) over N tickers (trade rate 120/s per ticker): fewer confounded windows.

Source `simulator` (default when importable): the market simulator (`tradepulse.sources.simulator`)
generates trades and news with ground truth (which articles the market reacts to, and when); trades go
through the real feature core (`tradepulse.core.features.FeatureEngine`) for volume z-scores, articles
are delivered with a random polling delay (0–60 s) and scored by `score_article`, and everything goes
through `NewsJoiner` in micro-batches with per-ticker watermarks, as the runner does.

Source `synthetic` (fallback): per-second z-scores drawn here (noise, reactions 5–45 s after the news,
unrelated spikes), with the same headline templates; use it when the simulator is not available.

Reported (articles after the 330 s z-score warm-up): recall of strong/moderate and of any correlation
on news followed by a reaction; precision of strong/moderate; the false-strong rate on news with no
reaction, split into *clean* (no injected spike of the ticker overlaps the ±60 s window: what the join
itself gets wrong) and *confounded* (an unrelated spike, or another article's reaction, overlaps the
window: the co-occurrence rule correlates these by design); whether the matched peak lies inside the
article's own reaction spike.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tradepulse.core.feature_config import FeatureConfig
from tradepulse.core.news_join import NewsJoiner
from tradepulse.ids import news_event_id

START_MS = 1_764_000_000_000
WARMUP_MS = 330_000


@dataclass
class Truth:
    article_id: int
    ticker: str
    published_ms: int
    reaction: bool
    lag_s: float | None


def news_articles(finnhub: dict[str, Any], received_ms: int) -> list[dict[str, Any]]:
    """NewsArticle dicts (one per related ticker) from a Finnhub company-news item, as the poller emits."""
    related = [t for t in str(finnhub.get("related", "")).split(",") if t]
    published_ms = int(finnhub["datetime"]) * 1000
    return [
        {
            "event_id": news_event_id(finnhub["id"], ticker),
            "article_id": int(finnhub["id"]),
            "ticker": ticker,
            "related": related,
            "headline": finnhub["headline"],
            "summary": finnhub.get("summary", ""),
            "source": finnhub.get("source", ""),
            "url": finnhub.get("url", ""),
            "image": "",
            "category": finnhub.get("category", ""),
            "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(published_ms / 1000)),
            "published_ts_ms": published_ms,
            "received_ts_us": received_ms * 1000,
        }
        for ticker in related
    ]


Batch = tuple[int, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]
"""(batch end ms, z tickers, z ts, z values, Finnhub news items published in the batch)."""


def simulator_stream(
    minutes: float,
    seed: int,
    batch_ms: int,
    truth: list[Truth],
    spikes: list[dict],
    raw_zscore: bool = False,
    tickers: int = 5,
) -> Iterator[Batch]:
    """Batches from the market simulator through the real feature core; fills `truth` and `spikes`."""
    from tradepulse.core.columns import QuoteColumns, TradeColumns
    from tradepulse.core.features import FeatureConfig, FeatureEngine
    from tradepulse.sources.simulator.market import MarketConfig, MarketModel, make_tickers

    market = MarketConfig(seed=seed, tickers=make_tickers(tickers), rate=120.0 * tickers, start_ms=START_MS)
    model = MarketModel(market)
    config = FeatureConfig(zscore_size_cap=0.0, zscore_log_volume=False) if raw_zscore else FeatureConfig()
    engine = FeatureEngine(config)
    symbols = np.array(model.symbols, dtype=object)
    blocks = model.generate(minutes * 60)
    per_batch = max(1, batch_ms // model.tick_ms)
    seen = 0
    while chunk := [b for _, b in zip(range(per_batch), blocks, strict=False)]:
        tr = [b.trades for b in chunk if b.trades is not None and len(b.trades["t"])]
        zt, zts, zv = np.empty(0, object), np.empty(0, np.int64), np.empty(0)
        if tr:
            sym = np.concatenate([t["sym"] for t in tr])
            seq = np.concatenate([t["q"] for t in tr]).astype(np.int64)
            cols = TradeColumns(
                ticker=symbols[sym],
                price=np.concatenate([t["p"] for t in tr]).astype(np.float64),
                size=np.concatenate([t["s"] for t in tr]).astype(np.float64),
                ts_ms=np.concatenate([t["t"] for t in tr]).astype(np.int64),
                sequence=seq,
                event_id=np.array(
                    [f"{s}-{q}" for s, q in zip(sym.tolist(), seq.tolist(), strict=True)], dtype=object
                ),
            )
            z = engine.process(cols, QuoteColumns.empty()).zscores
            zt, zts, zv = z["ticker"], z["ts_ms"], z["volume_zscore"]
        for rec in model.ground_truth[seen:]:
            if rec["type"] == "news":
                truth.append(
                    Truth(
                        rec["article_id"],
                        rec["ticker"],
                        rec["start_ms"],
                        rec["reaction"],
                        rec["reaction_lag_s"],
                    )
                )
            elif rec["type"] == "volume_spike":
                spikes.append(rec)
        seen = len(model.ground_truth)
        yield chunk[-1].end_ms, zt, zts, zv, [a for b in chunk for a in b.news]


def synthetic_stream(
    minutes: float, seed: int, batch_ms: int, truth: list[Truth], spikes: list[dict]
) -> Iterator[Batch]:
    """Fallback scenarios: 5 tickers, one z-score per second (noise N(0, 0.7)), news every ~30 s of which 60 %
    get a volume reaction (z 4-15 for 5-20 s, 5-45 s after publication), unrelated spikes every ~90 s."""
    from tradepulse.sources.simulator.market import NEGATIVE_HEADLINES, POSITIVE_HEADLINES  # templates only

    rng = np.random.default_rng(seed)
    tickers = ["AAPL", "MSFT", "AMZN", "TSLA", "NVDA"]
    end = START_MS + int(minutes * 60_000)
    boosts: list[tuple[str, int, int, float]] = []
    news: list[dict[str, Any]] = []
    for kind, every in (("news", 30.0), ("spike", 90.0)):
        for _ in range(rng.poisson(minutes * 60 / every)):
            tk, at = tickers[rng.integers(5)], int(rng.integers(START_MS + 60_000, end - 120_000))
            if kind == "spike":
                dur = int(rng.uniform(5, 20) * 1000)
                boosts.append((tk, at, at + dur, float(rng.uniform(4, 15))))
                spikes.append({"ticker": tk, "start_ms": at, "end_ms": at + dur, "cause": None})
                continue
            positive, reaction = bool(rng.random() < 0.5), bool(rng.random() < 0.6)
            at -= at % 1000
            aid = int(rng.integers(1, 2**48))
            head = (POSITIVE_HEADLINES if positive else NEGATIVE_HEADLINES)[rng.integers(8)].format(name=tk)
            news.append(
                {
                    "id": aid,
                    "datetime": at // 1000,
                    "headline": head,
                    "related": tk,
                    "summary": "",
                    "source": "synthetic",
                }
            )
            lag = float(rng.uniform(5, 45)) if reaction else None
            truth.append(Truth(aid, tk, at, reaction, lag))
            if lag is not None:
                s0, dur = at + int(lag * 1000), int(rng.uniform(5, 20) * 1000)
                boosts.append((tk, s0, s0 + dur, float(rng.uniform(4, 15))))
                spikes.append({"ticker": tk, "start_ms": s0, "end_ms": s0 + dur, "cause": aid})
    news.sort(key=lambda a: a["datetime"])
    for b0 in range(START_MS, end, batch_ms):
        ts = np.arange(b0, b0 + batch_ms, 1000, dtype=np.int64)
        zt = np.repeat(np.array(tickers, dtype=object), ts.size)
        zts = np.tile(ts, len(tickers))
        zv = rng.normal(0, 0.7, zts.size)
        for tk, s0, s1, zz in boosts:
            if s0 < b0 + batch_ms and s1 > b0:
                zv[(zt == tk) & (zts >= s0) & (zts < s1)] = zz
        yield b0 + batch_ms, zt, zts, zv, [a for a in news if b0 <= a["datetime"] * 1000 < b0 + batch_ms]


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (sound at small n and at 0 or n successes)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(float(centre - half), 3), round(float(centre + half), 3))


def run(
    source: str,
    minutes: float,
    seed: int,
    batch_ms: int = 1000,
    raw_zscore: bool = False,
    tickers: int = 5,
) -> dict[str, Any]:
    """Drive NewsJoiner over the stream like the runner does; return the metrics."""
    truth: list[Truth] = []
    spikes: list[dict] = []
    rng = np.random.default_rng(seed + 1)
    joiner = NewsJoiner(settle_ms=FeatureConfig().zscore_settle_ms)  # as the runner builds it
    delayed: list[tuple[int, dict[str, Any]]] = []  # (deliver at ms, article): polling delay 0-60 s
    results: list[dict[str, Any]] = []
    watermark: dict[str, int] = {}
    t0 = time.perf_counter()
    stream = (
        simulator_stream(minutes, seed, batch_ms, truth, spikes, raw_zscore, tickers)
        if source == "simulator"
        else synthetic_stream(minutes, seed, batch_ms, truth, spikes)
    )
    for end_ms, zt, zts, zv, news in stream:
        joiner.add_zscores(zt, zts, zv)
        for tk in np.unique(zt).tolist():
            watermark[tk] = max(watermark.get(tk, 0), int(zts[zt == tk].max()))
        for item in news:
            delay = int(rng.uniform(0, 60_000))
            delayed.extend((item["datetime"] * 1000 + delay, a) for a in news_articles(item, end_ms))
        due = [a for at, a in delayed if at <= end_ms]
        delayed = [(at, a) for at, a in delayed if at > end_ms]
        joiner.add_articles(due)
        results.extend(joiner.advance(watermark))
    joiner.add_articles([a for _, a in delayed])
    results.extend(joiner.flush())
    elapsed = time.perf_counter() - t0

    by_id = {(r["article_id"], r["ticker"]): r for r in results}
    assert len(by_id) == len(results), "duplicate results"
    # Articles in the feature core's z-score warm-up (first 330 s: z = 0 until 30 history buckets)
    # are left out: in production the runner's rebuild look-back covers that period.
    scored = [t for t in truth if t.published_ms >= START_MS + WARMUP_MS]
    rows = [(t, by_id[(t.article_id, t.ticker)]) for t in scored if (t.article_id, t.ticker) in by_id]
    react = [(t, r) for t, r in rows if t.reaction]

    def spike_overlaps(t: Truth) -> bool:
        lo, hi = t.published_ms - joiner.window_ms, t.published_ms + joiner.window_ms
        return any(s["ticker"] == t.ticker and s["start_ms"] <= hi and s["end_ms"] >= lo for s in spikes)

    # No reaction to this article, but another injected spike of the ticker (unrelated, or another
    # article's reaction) overlaps its window: the co-occurrence rule correlates these by design.
    confounded = [(t, r) for t, r in rows if not t.reaction and spike_overlaps(t)]
    clean = [(t, r) for t, r in rows if not t.reaction and not spike_overlaps(t)]
    sm = {"strong", "moderate"}

    def count(pairs: list, kinds: set[str]) -> int:
        return sum(r["correlation_strength"] in kinds for _, r in pairs)

    tp = count(react, sm)
    false_strong_clean = count(clean, {"strong"})
    in_spike = [
        any(
            s["cause"] == t.article_id
            and s["start_ms"] <= t.published_ms + r["lag_seconds"] * 1000 <= s["end_ms"]
            for s in spikes
        )
        for t, r in react
        if r["lag_seconds"] is not None
    ]
    return {
        "source": source,
        "minutes": minutes,
        "articles_scored": len(scored),
        "results": len(results),
        "missing_results": len(scored) - len(rows),
        "with_reaction": len(react),
        "no_reaction_clean": len(clean),
        "no_reaction_confounded": len(confounded),
        "recall_strong_moderate": tp / max(1, len(react)),
        "recall_strong_moderate_ci95": wilson(tp, len(react)),
        "recall_any_correlation": count(react, {"strong", "moderate", "weak"}) / max(1, len(react)),
        "precision_strong_moderate": tp / max(1, tp + count(clean, sm)),
        "precision_strong_moderate_incl_confounded": tp / max(1, tp + count(clean + confounded, sm)),
        "false_strong_rate_clean": false_strong_clean / max(1, len(clean)),
        "false_strong_rate_clean_ci95": wilson(false_strong_clean, len(clean)),
        "false_strong_rate_all_quiet": count(clean + confounded, {"strong"})
        / max(1, len(clean + confounded)),
        "false_strong_rate_confounded": count(confounded, {"strong"}) / max(1, len(confounded)),
        "matched_peak_inside_reaction_spike": sum(in_spike) / max(1, len(in_spike)),
        "strengths": {
            k: sum(r["correlation_strength"] == k for r in results)
            for k in ("strong", "moderate", "weak", "none")
        },
        "joiner_stats": dict(joiner.stats),
        "clean_false_strong": [
            (t.ticker, t.article_id, round(r["matched_zscore"], 2), r["lag_seconds"])
            for t, r in clean
            if r["correlation_strength"] == "strong"
        ],
        "elapsed_s": elapsed,
    }
