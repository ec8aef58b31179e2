"""The simulator's Finnhub-compatible company-news endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tradepulse.sources.simulator import SimulatorConfig, SimulatorHandle, run_simulator_in_thread

KEY = "news-key"
FIELDS = {"category", "datetime", "headline", "id", "image", "related", "source", "summary", "url"}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    handle = run_simulator_in_thread(
        SimulatorConfig(
            seed=4,
            api_key=KEY,
            ws_port=0,
            http_port=0,
            rate=100,
            backfill_news=40,
            news_calls_per_minute=1000,
        )
    )
    yield handle
    handle.stop()


def dates() -> dict[str, str]:
    today = datetime.now(UTC).date()
    return {"from": (today - timedelta(days=1)).isoformat(), "to": (today + timedelta(days=1)).isoformat()}


def test_token_as_parameter_or_header(sim: SimulatorHandle) -> None:
    url = sim.news_base_url + "/company-news"
    by_param = httpx.get(url, params={"symbol": "AAPL", "token": KEY, **dates()})
    by_header = httpx.get(url, params={"symbol": "AAPL", **dates()}, headers={"X-Finnhub-Token": KEY})
    assert by_param.status_code == by_header.status_code == 200
    assert by_param.headers["content-type"].startswith("application/json")
    articles = by_param.json()
    assert articles == by_header.json() and articles
    expected = [r for r in sim.ground_truth if r["type"] == "news" and r["ticker"] == "AAPL"]
    assert sorted(a["id"] for a in articles) == sorted(r["article_id"] for r in expected)
    for a in articles:
        assert set(a) == FIELDS
        assert isinstance(a["id"], int) and isinstance(a["datetime"], int)
        assert "AAPL" in a["related"].split(",") and a["headline"] and a["url"].startswith("https://")
    assert [a["datetime"] for a in articles] == sorted((a["datetime"] for a in articles), reverse=True)


def test_date_range_and_unknown_symbol(sim: SimulatorHandle) -> None:
    url = sim.news_base_url + "/company-news"
    old = httpx.get(url, params={"symbol": "AAPL", "from": "2001-01-01", "to": "2001-01-31", "token": KEY})
    assert old.status_code == 200 and old.json() == []
    assert httpx.get(url, params={"symbol": "ZZZZ", "token": KEY, **dates()}).json() == []
    assert httpx.get(url, params={"token": KEY}).status_code == 422
    assert httpx.get(sim.news_base_url + "/quote", params={"symbol": "AAPL", "token": KEY}).status_code == 404


def test_missing_or_wrong_token_is_401(sim: SimulatorHandle) -> None:
    url = sim.news_base_url + "/company-news"
    assert httpx.get(url, params={"symbol": "AAPL"}).status_code == 401
    wrong = httpx.get(url, params={"symbol": "AAPL", "token": "nope"})
    assert wrong.status_code == 401 and "error" in wrong.json()


def test_rate_limit_is_429_over_the_window() -> None:
    with (
        run_simulator_in_thread(
            SimulatorConfig(api_key=KEY, ws_port=0, http_port=0, rate=10, news_calls_per_minute=3)
        ) as sim,
        httpx.Client(base_url=sim.news_base_url) as client,
    ):
        codes = [
            client.get("/company-news", params={"symbol": "MSFT", "token": KEY}).status_code for _ in range(5)
        ]
        assert codes == [200, 200, 200, 429, 429]
        limited = client.get("/company-news", params={"symbol": "MSFT", "token": KEY})
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
