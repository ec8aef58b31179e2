"""Look-back windows beyond the hot store's TTL: /anomalies and /sentiment answered from the real SQLite
hot store plus the real Parquet cold store (written by `ParquetColdStore.append_batch`, read by DuckDB),
merged without duplicates at the seam."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.market import HOUR_MS, anomaly, correlation, trade
from tradepulse import topics
from tradepulse.api.app import create_app
from tradepulse.api.history import History
from tradepulse.api.responses import AnomaliesResponse, SentimentResponse
from tradepulse.config import Settings
from tradepulse.stores.cold_history import DuckDBColdHistory
from tradepulse.stores.parquet_cold import ParquetColdStore
from tradepulse.stores.sqlite_hot import SqliteHotStore

NOW_MS = 1_764_000_000_000 + 37 * 60_000  # a fixed wall clock, mid-hour


# Age of each row (hours before NOW) and where it lives.
COLD_ONLY = [160.0, 100.0, 49.5]  # older than the TTL; the hot store purged them
BOTH = [48.5, 47.5]  # around the seam: archived, and still in the hot store (one not purged yet)
HOT_ONLY = [3.0, 0.5]  # newer than the cold store's last flush
OUTSIDE = [170.0]  # in the cold store, older than the longest window (168 h)


def at(hours_ago: float) -> int:
    return NOW_MS - int(hours_ago * HOUR_MS)


def archive(cold: ParquetColdStore, topic: str, rows: list[dict[str, Any]]) -> None:
    cold.append_batch(topic, rows, [(0, i) for i in range(len(rows))])
    cold.flush(force=True)


@pytest.fixture
def seam(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, dict[str, Any]], dict[str, dict[str, Any]]]]:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=None)
    anomalies = {h: anomaly("AAPL", at(h), i) for i, h in enumerate(COLD_ONLY + BOTH + HOT_ONLY + OUTSIDE)}
    articles = {
        h: correlation("AAPL", 7000 + i, at(h), f"headline {i}", 0.5, "moderate", 2.5, 3.0)
        for i, h in enumerate(COLD_ONLY + BOTH + HOT_ONLY + OUTSIDE)
    }
    # Another ticker's cold rows inside the window must not leak into AAPL's answer.
    other = [anomaly("MSFT", at(90.0), 99)]
    cold = ParquetColdStore(settings.cold_dir)
    archive(cold, topics.ANOMALIES, [anomalies[h] for h in OUTSIDE + COLD_ONLY + BOTH] + other)
    archive(cold, topics.CORRELATIONS, [articles[h] for h in OUTSIDE + COLD_ONLY + BOTH])
    cold.close()
    store = SqliteHotStore(settings.sqlite_path)
    store.write_batch(
        trades=[trade("AAPL", at(0.1), 230.0, 100, 1)],
        anomalies=[anomalies[h] for h in BOTH + HOT_ONLY],
        correlations=[articles[h] for h in BOTH + HOT_ONLY],
    )
    try:
        with TestClient(create_app(settings, store, wall_clock=lambda: NOW_MS / 1000)) as client:
            yield client, anomalies, articles
    finally:
        store.close()


def cold_queries(client: TestClient) -> int:
    return client.app.state.context.history.cold_queries  # type: ignore[attr-defined, no-any-return]


def test_anomalies_across_the_seam_come_from_hot_and_cold_once_each(seam: Any) -> None:
    client, anomalies, _ = seam
    body = client.get("/anomalies/AAPL", params={"hours": 168}).json()
    expected = sorted(COLD_ONLY + BOTH + HOT_ONLY)  # newest first = fewest hours ago first
    assert [a["anomaly_id"] for a in body["anomalies"]] == [anomalies[h]["anomaly_id"] for h in expected]
    assert body["count"] == len(expected) == 7 and body["hours"] == 168
    AnomaliesResponse.model_validate(body)  # extra="forbid": exactly the documented schema
    # Rows read back from Parquet are the rows that were written (map and all).
    oldest = body["anomalies"][-1]
    written = anomalies[160.0]
    assert oldest["ts_ms"] == written["ts_ms"] and oldest["feature_vector"] == written["feature_vector"]
    assert oldest["model_version"] == written["model_version"]
    assert oldest["anomaly_score"] == written["anomaly_score"] and oldest["event_id"] == written["event_id"]
    assert cold_queries(client) == 1


def test_sentiment_across_the_seam_keeps_the_response_schema(seam: Any) -> None:
    client, _, articles = seam
    body = client.get("/sentiment/AAPL", params={"hours": 168}).json()
    expected = sorted(COLD_ONLY + BOTH + HOT_ONLY)
    assert [a["article_id"] for a in body["articles"]] == [articles[h]["article_id"] for h in expected]
    oldest = body["articles"][-1]
    assert oldest["sentiment"]["label"] == "positive" and oldest["sentiment"]["compound"] == 0.5
    assert oldest["published_at"] == articles[160.0]["published_at"]
    assert body["summary"]["articles"] == 7
    SentimentResponse.model_validate(body)  # extra="forbid": exactly the documented schema


def test_a_window_within_the_ttl_never_queries_the_cold_store(seam: Any) -> None:
    client, anomalies, _ = seam
    for hours in (1, 24, 48):
        body = client.get("/anomalies/AAPL", params={"hours": hours}).json()
        client.get("/sentiment/AAPL", params={"hours": hours})
        in_window = sorted(h for h in BOTH + HOT_ONLY if h <= hours)
        assert [a["anomaly_id"] for a in body["anomalies"]] == [anomalies[h]["anomaly_id"] for h in in_window]
    assert cold_queries(client) == 0
    client.get("/anomalies/AAPL", params={"hours": 49})
    assert cold_queries(client) == 1


def test_a_window_just_past_the_ttl_gets_the_purged_rows_back(seam: Any) -> None:
    client, anomalies, _ = seam
    body = client.get("/anomalies/AAPL", params={"hours": 50}).json()
    expected = sorted([49.5, *BOTH, *HOT_ONLY])
    assert [a["anomaly_id"] for a in body["anomalies"]] == [anomalies[h]["anomaly_id"] for h in expected]


def test_a_full_answer_from_the_hot_store_skips_the_cold_query(tmp_path: Path) -> None:
    """A busy ticker: the hot store's newest `limit` rows are all newer than the cold window, so no cold
    row could make the cut; with one row fewer in the hot store, the cold store is asked."""
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=None)
    cold = ParquetColdStore(settings.cold_dir)
    archive(cold, topics.ANOMALIES, [anomaly("AAPL", at(100.0), 0)])
    cold.close()
    with SqliteHotStore(settings.sqlite_path) as store:
        store.write_batch(anomalies=[anomaly("AAPL", at(h), i) for i, h in enumerate((1.0, 2.0, 3.0))])
        history = History(store, DuckDBColdHistory(settings.cold_dir), ttl_ms=48 * HOUR_MS, limit=3)
        full = history.anomalies("AAPL", at(168.0), NOW_MS)
        assert [a["ts_ms"] for a in full] == [at(3.0), at(2.0), at(1.0)] and history.cold_queries == 0
        history.limit = 4
        merged = history.anomalies("AAPL", at(168.0), NOW_MS)
        assert [a["ts_ms"] for a in merged] == [at(100.0), at(3.0), at(2.0), at(1.0)]
        assert history.cold_queries == 1
