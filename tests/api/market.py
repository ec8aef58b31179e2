"""A small, deterministic market written through the real hot-store interface for the API tests.

Every row is validated against its `tradepulse.models` contract before it is written, so the API is tested
on exactly the shapes the pipeline emits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tradepulse.api.responses import iso_ms
from tradepulse.ids import news_event_id, stable_id, trade_event_id
from tradepulse.models import Anomaly, Correlation, FeatureVector, StoredTrade, Trade

HOUR_MS = 3_600_000


@dataclass
class Market:
    """What was written, so tests can compare the API's answers with it."""

    now_ms: int
    trades: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    features: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    anomalies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    correlations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    outliers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def trade(ticker: str, ts_ms: int, price: float, size: float, sequence: int) -> dict[str, Any]:
    row = {
        "event_id": trade_event_id(ticker, 4, str(sequence), ts_ms, sequence),
        "ticker": ticker,
        "price": round(price, 4),
        "size": size,
        "exchange": 4,
        "trade_id": str(sequence),
        "tape": 3,
        "conditions": [],
        "sequence": sequence,
        "exchange_ts_ms": ts_ms,
        "received_ts_us": ts_ms * 1000 + 150,
    }
    return Trade.model_validate(row).model_dump()


def anomaly(ticker: str, ts_ms: int, n: int) -> dict[str, Any]:
    """An anomaly whose numbers derive from `n`."""
    return Anomaly.model_validate(
        {
            "anomaly_id": stable_id("A", ticker, ts_ms),
            "ticker": ticker,
            "ts_ms": ts_ms,
            "anomaly_score": -0.7 - n / 100,
            "threshold": -0.62,
            "feature_vector": {"price": 200.0 + n, "volume_zscore": 5.0 + n / 10},
            "model_version": n,
            "event_id": stable_id("trade", ticker, ts_ms),
        }
    ).model_dump()


def _series(ticker: str, now_ms: int, seconds: int, start_price: float, seed: int) -> Market:
    """`seconds` one-second snapshots ending one second before now, with a volume spike near the end."""
    rng = np.random.default_rng(seed)
    prices = start_price * np.exp(np.cumsum(rng.normal(0, 0.0006, seconds)))
    volumes = rng.gamma(4.0, 250.0, seconds)
    spikes = [seconds - 90, seconds - 40]
    for s in spikes:
        volumes[s] *= 9
    market = Market(now_ms)
    trades, features = [], []
    start_ms = now_ms - seconds * 1000
    for i in range(seconds):
        ts = start_ms + i * 1000
        lo1, lo5 = max(0, i - 59), max(0, i - 299)
        p1, v1 = prices[lo1 : i + 1], volumes[lo1 : i + 1]
        p5, v5 = prices[lo5 : i + 1], volumes[lo5 : i + 1]
        hist = volumes[max(0, i - 300) : i]
        z = float((volumes[i] - hist.mean()) / hist.std()) if len(hist) > 10 and hist.std() > 0 else 0.0
        vwap5 = float((p5 * v5).sum() / v5.sum())
        trades.append(trade(ticker, ts, float(prices[i]), float(round(volumes[i] / 10)), 1000 + i))
        features.append(
            FeatureVector.model_validate(
                {
                    "ticker": ticker,
                    "ts_ms": ts,
                    "price": round(float(prices[i]), 4),
                    "volume": round(float(volumes[i]), 1),
                    "vwap_1min": round(float((p1 * v1).sum() / v1.sum()), 4),
                    "vwap_5min": round(vwap5, 4),
                    "rolling_avg_5min": round(float(p5.mean()), 4),
                    "volume_zscore": round(z, 3),
                    "price_momentum": round(float((prices[i] / prices[lo1] - 1) * 100), 4),
                    "trade_frequency": int(i - lo1 + 1),
                    "vwap_deviation_bps": round(float((prices[i] - vwap5) / vwap5 * 10_000), 3),
                    "bid_ask_spread": 0.01,
                    "window_start_ms": start_ms + lo5 * 1000,
                    "window_end_ms": ts,
                }
            ).model_dump()
        )
    market.trades[ticker] = trades
    market.features[ticker] = features
    anomalies = []
    for s in spikes:
        f = features[s]
        anomalies.append(
            Anomaly.model_validate(
                {
                    "anomaly_id": stable_id("A", ticker, f["ts_ms"]),
                    "ticker": ticker,
                    "ts_ms": f["ts_ms"],
                    "anomaly_score": -0.71 - 0.01 * s / seconds,
                    "threshold": -0.62,
                    "feature_vector": {
                        k: float(f[k])
                        for k in ("price", "volume_zscore", "vwap_deviation_bps", "price_momentum")
                    },
                    "model_version": 3,
                    "event_id": trades[s]["event_id"],
                }
            ).model_dump()
        )
    market.anomalies[ticker] = anomalies
    return market


def correlation(
    ticker: str,
    article_id: int,
    published_ts_ms: int,
    headline: str,
    compound: float,
    strength: str,
    zscore: float | None,
    lag: float | None,
) -> dict[str, Any]:
    label = "positive" if compound >= 0.05 else "negative" if compound <= -0.05 else "neutral"
    pos = max(compound, 0.0) * 0.6
    neg = max(-compound, 0.0) * 0.6
    row = {
        "correlation_id": news_event_id(article_id, ticker),
        "article_id": article_id,
        "ticker": ticker,
        "headline": headline,
        "source": "Reuters",
        "url": f"https://news.example.com/{article_id}",
        "published_at": _iso(published_ts_ms),
        "published_ts_ms": published_ts_ms,
        "sentiment": {
            "compound": compound,
            "label": label,
            "pos": round(pos, 3),
            "neg": round(neg, 3),
            "neu": round(1 - pos - neg, 3),
        },
        "volume_zscore_at_publish": zscore,
        "matched_zscore": zscore if strength != "none" else None,
        "peak_zscore": zscore,
        "lag_seconds": lag,
        "correlation_strength": strength,
    }
    return Correlation.model_validate(row).model_dump()


def _iso(ts_ms: int) -> str:
    return iso_ms(ts_ms).replace(".000Z", "Z")


def build_market(now_ms: int) -> Market:
    """AAPL and MSFT with 10 minutes of snapshots; AAPL has anomalies and news (one 30 h old, outside the
    24 h default); MSFT has neither; BRK.B has a trade but no features."""
    aapl = _series("AAPL", now_ms, 600, 231.40, seed=7)
    msft = _series("MSFT", now_ms, 600, 415.10, seed=11)
    old = now_ms - 30 * HOUR_MS
    aapl.anomalies["AAPL"].append(
        Anomaly.model_validate(
            {
                "anomaly_id": stable_id("A", "AAPL", old),
                "ticker": "AAPL",
                "ts_ms": old,
                "anomaly_score": -0.80,
                "threshold": -0.62,
                "feature_vector": {"price": 228.0, "volume_zscore": 6.1},
                "model_version": 2,
                "event_id": stable_id("old-trade"),
            }
        ).model_dump()
    )
    spike_ts = aapl.anomalies["AAPL"][1]["ts_ms"]
    aapl.correlations["AAPL"] = [
        correlation(
            "AAPL",
            9001,
            spike_ts - 4000,
            "Apple beats earnings expectations, raises buyback",
            0.77,
            "strong",
            5.8,
            4.0,
        ),
        correlation(
            "AAPL",
            9002,
            now_ms - 5 * 60_000,
            "Apple faces EU antitrust probe over App Store fees",
            -0.52,
            "moderate",
            2.4,
            -12.0,
        ),
        correlation(
            "AAPL",
            9003,
            now_ms - 3 * HOUR_MS,
            "Apple to present at developer conference",
            0.0,
            "none",
            0.1,
            None,
        ),
        correlation("AAPL", 9000, old, "Apple supplier warns on demand", -0.34, "weak", 1.2, 30.0),
    ]
    market = Market(now_ms)
    for part in (aapl, msft):
        market.trades.update(part.trades)
        market.features.update(part.features)
        market.anomalies.update(part.anomalies)
    market.anomalies["MSFT"] = []
    market.correlations = {"AAPL": aapl.correlations["AAPL"], "MSFT": []}
    market.trades["BRK.B"] = [trade("BRK.B", now_ms - 2000, 462.5, 100, 1)]
    # Two fat fingers the runner flagged (one 30 h old, outside the 24 h default): older than the
    # latest trade, so they are not what /quotes answers.
    market.outliers["AAPL"] = [
        outlier("AAPL", old, 342.0, 231.0, 9_001),
        outlier("AAPL", now_ms - 7 * 60_000, 115.5, 231.2, 9_002),
    ]
    return market


def outlier(ticker: str, ts_ms: int, price: float, reference: float, sequence: int) -> dict[str, Any]:
    """A trade as the runner writes a flagged one (`CoreProcessor.flag_outliers`)."""
    row = StoredTrade.model_validate({**trade(ticker, ts_ms, price, 100, sequence), "outlier": True})
    reason = "above_band" if price > reference else "below_band"
    return row.model_dump() | {
        "outlier_reason": reason,
        "reference_price": reference,
        "band_usd": reference / 10,
    }


def write_market(store: Any, market: Market) -> None:
    """Write everything through HotStore.write_batch, one batch per ticker like the runner would."""
    for ticker in market.trades:
        store.write_batch(
            trades=market.trades.get(ticker, []),
            features=market.features.get(ticker, []),
            anomalies=market.anomalies.get(ticker, []),
            correlations=market.correlations.get(ticker, []),
        )
    for rows in market.outliers.values():
        store.write_batch(trades=rows)
