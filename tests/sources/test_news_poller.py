"""News poller against the simulator's Finnhub-compatible HTTP server and a real Kafka broker."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer

from tradepulse.bus.clients import consumer_config
from tradepulse.config import Settings
from tradepulse.ids import news_event_id
from tradepulse.models import NewsArticle
from tradepulse.sources.news import NewsPoller, TokenBucket
from tradepulse.sources.simulator.news_server import NewsServer
from tradepulse.stores.factory import open_dlq
from tradepulse.topics import NEWS

pytestmark = pytest.mark.kafka

TOKEN = "news-secret-token"
NOW_S = int(time.time())


def article(article_id: int, related: str, **extra: Any) -> dict[str, Any]:
    return {
        "category": "company",
        "datetime": NOW_S - 60 - article_id,
        "headline": f"Headline {article_id}",
        "id": article_id,
        "image": "",
        "related": related,
        "source": "Wire",
        "summary": "summary",
        "url": f"https://example.test/{article_id}",
        **extra,
    }


def consume(settings: Settings, topic: str, *, expect: int, idle_s: float = 1.5) -> list[Any]:
    """Everything in `topic` (read_committed), waiting for at least `expect` and then `idle_s` quiet."""
    consumer = Consumer(consumer_config(settings, f"test-{uuid.uuid4()}"))
    consumer.subscribe([topic])
    out, deadline, last = [], time.monotonic() + 60, time.monotonic()
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                if len(out) >= expect and time.monotonic() - last > idle_s:
                    break
                continue
            assert msg.error() is None, msg.error()
            out.append(msg)
            last = time.monotonic()
    finally:
        consumer.close()
    return out


@pytest.fixture
def news_settings(kafka_settings: Settings) -> Iterator[Settings]:
    # The server under test enforces its own limit; the poller's bucket must not slow the test down.
    yield kafka_settings.model_copy(update={"tickers": ["AAPL", "MSFT"], "finnhub_calls_per_minute": 60_000})


async def serve(articles: list[dict[str, Any]], **kwargs: Any) -> NewsServer:
    server = NewsServer(lambda: articles, TOKEN, **kwargs)
    await server.start("127.0.0.1", 0)
    return server


def poller(settings: Settings, server: NewsServer, **kwargs: Any) -> NewsPoller:
    return NewsPoller(
        settings,
        dlq=open_dlq(settings),
        base_url=f"http://127.0.0.1:{server.port}/api/v1",
        token=TOKEN,
        **kwargs,
    )


def test_split_per_ticker_and_no_republish_after_restart(
    news_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    articles = [
        article(1, "AAPL,MSFT"),  # → one event for each
        article(2, "AAPL"),
        article(3, "MSFT,ZZZZ"),  # ZZZZ is not tracked: MSFT only
        article(4, "AAPL", headline=""),  # invalid → DLQ, not published
    ]

    async def scenario() -> tuple[int, int, int]:
        server = await serve(articles)
        try:
            first = poller(news_settings, server)
            published_first = await first.poll_once()
            first.close()
            assert first.metrics.dead_lettered == 1
            # A restarted poller (same data dir) sees the same articles and publishes nothing...
            second = poller(news_settings, server)
            published_again = await second.poll_once()
            assert second.metrics.duplicates == 6  # 3 pairs via AAPL + 3 via MSFT (article 1 twice)
            # ...but a genuinely new article still goes out.
            articles.append(article(5, "MSFT"))
            published_new = await second.poll_once()
            second.close()
            return published_first, published_again, published_new
        finally:
            await server.close()

    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(scenario()) == (4, 0, 1)
    assert TOKEN not in caplog.text

    messages = consume(news_settings, NEWS, expect=5)
    events = [NewsArticle.model_validate(orjson.loads(m.value())) for m in messages]
    pairs = sorted((e.article_id, e.ticker) for e in events)
    assert pairs == [(1, "AAPL"), (1, "MSFT"), (2, "AAPL"), (3, "MSFT"), (5, "MSFT")]
    for message, event in zip(messages, events, strict=True):
        assert message.key().decode() == event.ticker
        assert event.event_id == news_event_id(event.article_id, event.ticker)
        assert event.published_ts_ms == articles[event.article_id - 1]["datetime"] * 1000
        assert event.published_at.endswith("Z")
    assert next(e for e in events if e.article_id == 1).related == ["AAPL", "MSFT"]

    dlq = open_dlq(news_settings)
    [letter] = dlq.pending()
    dlq.close()
    assert letter["stage"] == "news" and "headline" in letter["reason"]
    assert orjson.loads(letter["payload"])["id"] == 4


def test_http_429_backs_off_and_retries_until_served(news_settings: Settings) -> None:
    articles = [article(1, "AAPL"), article(2, "MSFT")]
    # The server allows 1 call per 60 s of *its* clock, which advances 25 s per request: every call
    # that lands less than 60 s after the last accepted one is refused with 429 and a Retry-After.
    ticks = iter(range(0, 10_000, 25))

    async def scenario() -> NewsPoller:
        server = await serve(articles, calls_per_minute=1, clock=lambda: float(next(ticks)))
        try:
            p = poller(news_settings, server, backoff_initial_s=0.001, backoff_max_s=0.01)
            await p.poll_once()
            p.close()
            assert p.metrics.rate_limited == server.rejected_rate > 0
            return p
        finally:
            await server.close()

    result = asyncio.run(scenario())
    assert result.metrics.published == 2  # both tickers got through despite the refusals
    assert result.metrics.requests == 2 + result.metrics.rate_limited
    assert len(consume(news_settings, NEWS, expect=2)) == 2


def test_token_bucket_spreads_calls() -> None:
    async def take(n: int) -> float:
        bucket = TokenBucket(rate=50.0, capacity=1.0)
        started = time.monotonic()
        for _ in range(n):
            await bucket.acquire()
        return time.monotonic() - started

    # Room for one call: the 5 calls after the first wait 1/50 s each (no burst).
    assert asyncio.run(take(6)) >= 5 / 50 * 0.95
