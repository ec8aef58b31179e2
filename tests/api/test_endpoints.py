"""Every endpoint and status code path against a real SQLite hot store filled through write_batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import FakeClock, filled_store, heartbeat
from tests.api.market import HOUR_MS, Market, trade
from tradepulse.api.app import create_app
from tradepulse.api.responses import iso_ms
from tradepulse.config import Settings
from tradepulse.stores.sqlite_hot import SqliteHotStore

BAD_TICKERS = ["aapl", "1AAPL", "AAPLEXTRALONG", "AA-PL", ".AAPL", "A%20B"]
TICKER_ENDPOINTS = [
    "/quotes/{}",
    "/aggregations/{}",
    "/features/{}",
    "/anomalies/{}",
    "/sentiment/{}",
    "/history/{}",
    "/outliers/{}",
]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # No broker configured: /health reports it down, which these tests do not depend on (see test_health).
    return Settings(data_dir=tmp_path_factory.mktemp("state"), kafka_bootstrap=None)


@pytest.fixture(scope="module")
def client(settings: Settings, market_store: tuple[SqliteHotStore, Market]) -> Iterator[TestClient]:
    store, _ = market_store
    with TestClient(create_app(settings, store, clock=FakeClock())) as c:
        yield c


@pytest.fixture(scope="module")
def market(market_store: tuple[SqliteHotStore, Market]) -> Market:
    return market_store[1]


# --- 200s: the answers are the stored rows --------------------------------------------------------


def test_quote_is_the_latest_trade(client: TestClient, market: Market) -> None:
    latest = market.trades["AAPL"][-1]
    res = client.get("/quotes/AAPL")
    assert res.status_code == 200
    body = res.json()
    assert body["ticker"] == "AAPL"
    assert body["price"] == latest["price"]
    assert body["volume"] == latest["size"]
    assert body["sequence_number"] == latest["sequence"]
    assert body["timestamp_ms"] == latest["exchange_ts_ms"]
    assert body["timestamp"].endswith("Z")
    assert res.headers["cache-control"] == "max-age=1"


def test_dotted_ticker_is_valid(client: TestClient, market: Market) -> None:
    res = client.get("/quotes/BRK.B")
    assert res.status_code == 200
    assert res.json()["price"] == market.trades["BRK.B"][0]["price"]


def test_aggregations_are_the_latest_feature_vector(client: TestClient, market: Market) -> None:
    f = market.features["MSFT"][-1]
    res = client.get("/aggregations/MSFT")
    assert res.status_code == 200
    body = res.json()
    for name in ("vwap_1min", "vwap_5min", "rolling_avg_5min", "volume_zscore", "price_momentum"):
        assert body[name] == f[name], name
    assert (body["window_start_ms"], body["window_end_ms"]) == (f["window_start_ms"], f["window_end_ms"])
    assert res.headers["cache-control"] == "max-age=5"


def test_features_are_the_whole_current_vector(client: TestClient, market: Market) -> None:
    f = market.features["AAPL"][-1]
    res = client.get("/features/AAPL")
    assert res.status_code == 200
    body = res.json()
    assert {k: v for k, v in body.items() if k != "timestamp"} == f
    assert res.headers["cache-control"] == "max-age=1"


def test_history_is_oldest_first_columns(client: TestClient, market: Market) -> None:
    res = client.get("/history/AAPL", params={"minutes": 15})
    assert res.status_code == 200
    body = res.json()
    stored = market.features["AAPL"]
    assert body["ts_ms"] == [f["ts_ms"] for f in stored]
    assert body["price"] == [f["price"] for f in stored]
    assert body["volume_zscore"] == [f["volume_zscore"] for f in stored]
    short = client.get("/history/AAPL", params={"minutes": 2}).json()
    assert 110 <= len(short["ts_ms"]) <= 121 and short["ts_ms"] == body["ts_ms"][-len(short["ts_ms"]) :]


def test_anomalies_respect_the_window_and_are_newest_first(client: TestClient, market: Market) -> None:
    res = client.get("/anomalies/AAPL")
    assert res.status_code == 200
    assert res.headers["cache-control"] == "no-store"
    body = res.json()
    recent = sorted(
        (a for a in market.anomalies["AAPL"] if a["ts_ms"] > market.now_ms - 24 * HOUR_MS),
        key=lambda a: -a["ts_ms"],
    )
    assert body["hours"] == 24 and body["count"] == 2 == len(recent)
    assert [a["anomaly_id"] for a in body["anomalies"]] == [a["anomaly_id"] for a in recent]
    first = body["anomalies"][0]
    assert first["anomaly_score"] == recent[0]["anomaly_score"] < first["threshold"]
    assert first["feature_vector"] == recent[0]["feature_vector"] and first["model_version"] == 3
    # 48 h reaches the 30 h old anomaly too
    assert client.get("/anomalies/AAPL", params={"hours": 48}).json()["count"] == 3


def test_outliers_respect_the_window_and_are_newest_first(client: TestClient, market: Market) -> None:
    res = client.get("/outliers/AAPL")
    assert res.status_code == 200 and res.headers["cache-control"] == "no-store"
    body = res.json()
    recent = market.outliers["AAPL"][1]
    assert body["count"] == 1 and body["hours"] == 24
    (item,) = body["outliers"]
    assert (item["event_id"], item["price"], item["reason"]) == (recent["event_id"], 115.5, "below_band")
    assert item["reference_price"] == 231.2 and item["band_usd"] == pytest.approx(23.12)
    assert item["deviation_pct"] == pytest.approx((115.5 - 231.2) / 231.2 * 100)
    assert item["timestamp"] == iso_ms(recent["exchange_ts_ms"])
    both = client.get("/outliers/AAPL", params={"hours": 48}).json()
    assert [o["price"] for o in both["outliers"]] == [115.5, 342.0]  # newest first
    assert client.get("/outliers/MSFT").json() == {"ticker": "MSFT", "hours": 24, "count": 0, "outliers": []}
    assert client.get("/outliers/AAPL", params={"hours": 49}).status_code == 422  # the hot store's 48 h


def test_known_ticker_without_anomalies_or_news_is_an_empty_200(client: TestClient) -> None:
    res = client.get("/anomalies/MSFT")
    assert res.status_code == 200 and res.json()["anomalies"] == [] and res.json()["count"] == 0
    res = client.get("/sentiment/MSFT")
    assert res.status_code == 200
    assert res.json()["articles"] == [] and res.json()["summary"]["average_compound"] is None


def test_sentiment_articles_and_summary(client: TestClient, market: Market) -> None:
    res = client.get("/sentiment/AAPL")
    assert res.status_code == 200
    assert res.headers["cache-control"] == "no-store"
    body = res.json()
    assert [a["article_id"] for a in body["articles"]] == [9001, 9002, 9003]  # newest first, 24 h
    strong = next(a for a in body["articles"] if a["article_id"] == 9001)
    assert strong["correlation_strength"] == "strong"
    assert strong["sentiment"]["label"] == "positive" and strong["sentiment"]["score"] == 0.77
    assert strong["lag_seconds"] == 4.0 and strong["volume_zscore_at_publish"] == 5.8
    summary = body["summary"]
    assert summary["articles"] == 3
    assert summary["by_label"] == {"positive": 1, "negative": 1, "neutral": 1}
    assert summary["by_strength"] == {"strong": 1, "moderate": 1, "weak": 0, "none": 1}
    assert [s["article_id"] for s in summary["strong_correlations"]] == [9001]
    assert summary["average_compound"] == pytest.approx((0.77 - 0.52 + 0.0) / 3, abs=1e-4)
    week = client.get("/sentiment/AAPL", params={"hours": 168}).json()
    assert week["summary"]["articles"] == 4 and week["summary"]["by_strength"]["weak"] == 1


def test_tickers_lists_every_ticker_with_its_last_price(client: TestClient, market: Market) -> None:
    res = client.get("/tickers")
    assert res.status_code == 200
    got = {t["ticker"]: t["price"] for t in res.json()["tickers"]}
    assert got == {t: rows[-1]["price"] for t, rows in market.trades.items()}


# --- 404s and 422s ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", TICKER_ENDPOINTS)
def test_unknown_ticker_is_404_with_a_clear_message(client: TestClient, path: str) -> None:
    res = client.get(path.format("ZZZZ"))
    assert res.status_code == 404
    assert "ZZZZ" in res.json()["detail"] and "no " in res.json()["detail"]


def test_ticker_with_trades_but_no_features_is_404_for_features(client: TestClient) -> None:
    for path in ("/aggregations/BRK.B", "/features/BRK.B", "/history/BRK.B"):
        res = client.get(path)
        assert res.status_code == 404, path
        assert "BRK.B" in res.json()["detail"]


@pytest.mark.parametrize("bad", BAD_TICKERS)
@pytest.mark.parametrize("path", TICKER_ENDPOINTS)
def test_invalid_ticker_is_422(client: TestClient, path: str, bad: str) -> None:
    res = client.get(path.format(bad))
    assert res.status_code == 422
    assert res.json()["detail"][0]["loc"] == ["path", "ticker"]


@pytest.mark.parametrize("path", ["/anomalies/AAPL", "/sentiment/AAPL"])
@pytest.mark.parametrize("hours", ["0", "169", "-1", "abc", "2.5"])
def test_hours_out_of_range_is_422(client: TestClient, path: str, hours: str) -> None:
    res = client.get(path, params={"hours": hours})
    assert res.status_code == 422
    assert res.json()["detail"][0]["loc"] == ["query", "hours"]


@pytest.mark.parametrize("hours", ["1", "168"])
def test_hours_bounds_are_inclusive(client: TestClient, hours: str) -> None:
    assert client.get("/anomalies/AAPL", params={"hours": hours}).status_code == 200
    assert client.get("/sentiment/AAPL", params={"hours": hours}).status_code == 200


# --- server-side cache --------------------------------------------------------------------------------


def test_server_cache_serves_within_ttl_and_refreshes_after(tmp_path: Path) -> None:
    store, market = filled_store(tmp_path / "hot.sqlite3")
    clock = FakeClock()
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=None)
    try:
        with TestClient(create_app(settings, store, clock=clock)) as client:
            first = client.get("/quotes/AAPL")
            assert first.headers["x-cache"] == "MISS"
            newer = trade("AAPL", market.now_ms + 500, 999.5, 10, 99_999)
            store.write_batch(trades=[newer])

            cached = client.get("/quotes/AAPL")
            assert cached.headers["x-cache"] == "HIT"
            assert cached.json() == first.json()  # the store changed, the cached answer did not

            clock.advance(1.001)  # past the 1 s TTL
            fresh = client.get("/quotes/AAPL")
            assert fresh.headers["x-cache"] == "MISS"
            assert fresh.json()["price"] == 999.5

            # aggregations: 5 s TTL
            agg = client.get("/aggregations/AAPL")
            changed = market.features["AAPL"][-1] | {"ts_ms": market.now_ms + 500, "vwap_1min": 1.25}
            store.write_batch(features=[changed])
            clock.advance(4.9)
            assert client.get("/aggregations/AAPL").headers["x-cache"] == "HIT"
            assert client.get("/aggregations/AAPL").json() == agg.json()
            clock.advance(0.2)
            refreshed = client.get("/aggregations/AAPL")
            assert refreshed.headers["x-cache"] == "MISS" and refreshed.json()["vwap_1min"] == 1.25

            # a 404 is not cached: the ticker answers as soon as it has data
            assert client.get("/quotes/NEWCO").status_code == 404
            store.write_batch(trades=[trade("NEWCO", market.now_ms, 12.0, 5, 1)])
            assert client.get("/quotes/NEWCO").status_code == 200

            # uncached endpoints never report a cache state
            assert "x-cache" not in client.get("/anomalies/AAPL").headers
    finally:
        store.close()


# --- schema, docs, dashboard, metrics -------------------------------------------------------------------


def test_openapi_and_docs(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) >= {
        "/quotes/{ticker}",
        "/aggregations/{ticker}",
        "/anomalies/{ticker}",
        "/features/{ticker}",
        "/sentiment/{ticker}",
        "/history/{ticker}",
        "/outliers/{ticker}",
        "/tickers",
        "/health",
        "/metrics",
    }
    quote = schema["paths"]["/quotes/{ticker}"]["get"]
    assert {"200", "404", "422"} <= set(quote["responses"])
    assert "503" in schema["paths"]["/health"]["get"]["responses"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_dashboard_and_vendored_chart_library_are_served_locally(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/vendor/uPlot.iife.min.js" in page.text
    assert "http://" not in page.text.replace("http://www.w3.org", "")  # no CDN
    lib = client.get("/static/vendor/uPlot.iife.min.js")
    assert lib.status_code == 200 and "uPlot" in lib.text
    assert client.get("/static/dashboard.js").status_code == 200


def test_metrics_exposes_pipeline_and_api_signals(client: TestClient, settings: Settings) -> None:
    status = heartbeat(
        settings,
        events_processed=777_000,
        consumer_lag=4321,
        dlq_depth=9,
        backpressure_activations=5,
        outliers={"above_band": 4, "below_band": 2},
        unknown_conditions=12,
    )
    client.get("/quotes/AAPL")
    client.get("/quotes/ZZZZ")
    res = client.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(res.text)
        for s in family.samples
    }
    assert samples[("tradepulse_events_processed_total", ())] == 777_000
    assert samples[("tradepulse_consumer_lag_messages", ())] == 4321
    assert samples[("tradepulse_dlq_depth", ())] == 9
    assert samples[("tradepulse_backpressure_activations_total", ())] == 5
    assert samples[("tradepulse_unknown_condition_trades_total", ())] == 12
    assert samples[("tradepulse_events_per_second", ())] == status["events_per_s"]
    assert samples[("tradepulse_hot_store_write_p99_seconds", ())] == pytest.approx(
        status["write_p99_ms"] / 1000
    )
    assert samples[("tradepulse_e2e_latency_p99_seconds", ())] == pytest.approx(0.048)
    assert samples[("tradepulse_outliers_total", (("reason", "above_band"),))] == 4
    assert samples[("tradepulse_outliers_total", (("reason", "below_band"),))] == 2
    assert samples[("tradepulse_runner_up", ())] == 1
    assert samples[("tradepulse_broker_up", ())] == 0  # no broker configured in this module
    route_404 = (("method", "GET"), ("route", "/quotes/{ticker}"), ("status", "404"))
    assert samples[("tradepulse_api_requests_total", route_404)] >= 1
    assert samples[("tradepulse_api_request_duration_seconds_count", (("route", "/quotes/{ticker}"),))] >= 2
