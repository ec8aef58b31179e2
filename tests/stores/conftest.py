"""Row factories shared by the store tests: plain dicts with exactly the model fields."""

from __future__ import annotations

from typing import Any

import pytest

from tradepulse.config import Settings
from tradepulse.ids import stable_id, trade_event_id
from tradepulse.models import Anomaly, Bar, Correlation, FeatureVector, StoredTrade, Trade
from tradepulse.stores.base import HotStore

BASE_MS = 1_767_000_000_000  # a fixed event time (2025-12-29 UTC), far from "now" on purpose


def make_trade(ticker: str = "AAPL", seq: int = 1, ts_ms: int = BASE_MS, price: float = 100.0) -> dict:
    row = {
        "event_id": trade_event_id(ticker, 4, str(seq), ts_ms, seq),
        "ticker": ticker,
        "price": price,
        "size": 10.0,
        "exchange": 4,
        "trade_id": str(seq),
        "tape": 3,
        "conditions": [12, 37],
        "sequence": seq,
        "exchange_ts_ms": ts_ms,
        "received_ts_us": ts_ms * 1000 + 250,
        "trf_id": None,
        "trf_ts_ms": None,
    }
    Trade.model_validate(row)
    return row


def make_outlier(ticker: str = "AAPL", seq: int = 1, ts_ms: int = BASE_MS, price: float = 150.0) -> dict:
    """A trade as the runner writes a flagged one (`CoreProcessor.flag_outliers`)."""
    row = {**make_trade(ticker, seq, ts_ms, price), "outlier": True}
    StoredTrade.model_validate(row)
    return row | {"outlier_reason": "above_band", "reference_price": 100.0, "band_usd": 10.0}


def make_feature(
    ticker: str = "AAPL", ts_ms: int = BASE_MS, price: float = 100.0, revision: int = 1, final: bool = True
) -> dict:
    row = {
        "ticker": ticker,
        "ts_ms": ts_ms,
        "price": price,
        "volume": 1200.0,
        "vwap_1min": price - 0.01,
        "vwap_5min": price - 0.02,
        "rolling_avg_5min": price - 0.03,
        "volume_zscore": 1.25,
        "price_momentum": 0.1,
        "trade_frequency": 42,
        "vwap_deviation_bps": 2.0,
        "bid_ask_spread": 0.01,
        "window_start_ms": ts_ms - 300_000,
        "window_end_ms": ts_ms,
        "late_events": 0,
        "snapshot_start_ms": ts_ms // 1000 * 1000,
        "revision": revision,
        "final": final,
    }
    FeatureVector.model_validate(row)
    return row


def check_feature_revisions(store: HotStore, *, history_has_provisional: bool = True) -> None:
    """Features are upserted by (ticker, second) and never go back to a lower revision: the API shows
    the latest revision of each second, whatever order a replay writes them in (docs/schema.md).
    `history_has_provisional=False`: the history holds final revisions only (DynamoDB)."""
    first = make_feature(ts_ms=BASE_MS + 100, revision=1, final=False)
    third = make_feature(ts_ms=BASE_MS + 400, revision=3, final=False, price=101.0)
    final = make_feature(ts_ms=BASE_MS + 900, revision=5, final=True, price=102.0)
    store.write_batch(features=[first])
    assert store.latest_features("AAPL") == first
    store.write_batch(features=[third])
    assert store.latest_features("AAPL") == third
    assert store.feature_history("AAPL", 0) == ([third] if history_has_provisional else [])
    store.write_batch(features=[final])
    store.write_batch(features=[first, third])  # a replay of lower revisions
    assert store.latest_features("AAPL") == final
    assert store.feature_history("AAPL", 0) == [final]
    store.write_batch(features=[final])  # the same revision again: idempotent
    assert store.feature_history("AAPL", 0) == [final]
    nxt = make_feature(ts_ms=BASE_MS + 1200, revision=2, final=False, price=103.0)
    store.write_batch(features=[nxt, first])
    assert store.latest_features("AAPL") == nxt
    assert store.feature_history("AAPL", 0) == ([final, nxt] if history_has_provisional else [final])


def make_anomaly(ticker: str = "AAPL", ts_ms: int = BASE_MS, score: float = -0.71) -> dict:
    row = {
        "anomaly_id": stable_id("A", ticker, ts_ms),
        "ticker": ticker,
        "ts_ms": ts_ms,
        "anomaly_score": score,
        "threshold": -0.6,
        "feature_vector": {"volume_zscore": 4.2, "price_momentum": 1.1},
        "model_version": 3,
        "event_id": stable_id("T", ticker, ts_ms),
    }
    Anomaly.model_validate(row)
    return row


def make_correlation(ticker: str = "AAPL", article_id: int = 7, ts_ms: int = BASE_MS) -> dict:
    row = {
        "correlation_id": stable_id("C", article_id, ticker),
        "article_id": article_id,
        "ticker": ticker,
        "headline": "Apple beats estimates",
        "source": "Reuters",
        "url": "https://example.com/a",
        "published_at": "2025-12-29T09:20:00Z",
        "published_ts_ms": ts_ms,
        "sentiment": {"compound": 0.6, "label": "positive", "pos": 0.4, "neg": 0.0, "neu": 0.6},
        "volume_zscore_at_publish": 0.5,
        "matched_zscore": 3.4,
        "peak_zscore": 3.9,
        "lag_seconds": 12.5,
        "correlation_strength": "strong",
    }
    Correlation.model_validate(row)
    return row


def make_bar(ticker: str = "AAPL", start_ms: int = BASE_MS, close: float | None = 100.5) -> dict:
    row = {
        "bar_id": stable_id("B", ticker, start_ms),
        "ticker": ticker,
        "start_ms": start_ms,
        "end_ms": start_ms + 60_000,
        "open": 100.0,
        "high": 101.25,
        "low": 99.5,
        "close": close,
        "volume": 1234.0,
        "vwap": 100.3125,
        "trade_count": 17,
        "session": "regular",
    }
    return Bar.model_validate(row).model_dump()


@pytest.fixture
def store_settings(tmp_path: Any) -> Settings:
    """Settings with all local state in a temporary directory."""
    return Settings(data_dir=tmp_path / "state")
