"""Finnhub company-news poller → `market.news` (one NewsArticle per (article, ticker), keyed by ticker).

Every `news_poll_interval_s` it asks `GET {base}/company-news?symbol=&from=&to=` for each ticker.
- Rate: a token bucket refilled at `finnhub_calls_per_minute / 60` per second with room for one call,
  so requests are spread evenly over the minute rather than burst; retries spend tokens too.
- HTTP 429 (and 5xx / network errors): back off (Retry-After if given, else exponential with jitter)
  and retry the same request, a bounded number of times; then that ticker waits for the next round.
- Dedupe: (article id, ticker) pairs are recorded in SQLite under `data_dir` once Kafka acknowledged
  them, so a restart does not republish (a crash between ack and record republishes at most those
  few, with the same deterministic event ids, which consumers dedupe).
- An article whose `related` names several tracked tickers becomes one event per ticker.
- The token goes in the `X-Finnhub-Token` header (Finnhub accepts header or query parameter), which
  keeps it out of URLs and therefore out of httpx's request logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from confluent_kafka import KafkaError, Message, Producer
from pydantic import SecretStr

from tradepulse.bus.clients import producer_config
from tradepulse.config import Settings
from tradepulse.errors import InvalidArgument, SourceError
from tradepulse.ids import news_event_id
from tradepulse.retry import backoff_delay
from tradepulse.sources.parse import Reject
from tradepulse.stores.base import DeadLetterQueue
from tradepulse.stores.dlq import make_dead_letter
from tradepulse.topics import NEWS

log = logging.getLogger(__name__)


@dataclass
class NewsMetrics:
    """Counters of one poller."""

    rounds: int = 0
    requests: int = 0
    rate_limited: int = 0  # HTTP 429 responses
    http_errors: int = 0  # other failed requests (5xx, network, bad body)
    published: int = 0  # (article, ticker) events acknowledged by Kafka
    failed: int = 0  # delivery failed
    duplicates: int = 0  # pairs already published (this run or before a restart)
    dead_lettered: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def news_endpoint(settings: Settings) -> tuple[str, SecretStr | None]:
    """(base URL, token) of Finnhub, or of the simulator's compatible endpoint when there is no key."""
    if settings.finnhub_api_key is None and settings.use_simulator:
        return (
            f"http://{settings.simulator_host}:{settings.simulator_http_port}/api/v1",
            settings.simulator_api_key,
        )
    return settings.finnhub_base_url, settings.finnhub_api_key


class TokenBucket:
    """`rate` tokens per second, at most `capacity` stored. `acquire()` waits for one."""

    def __init__(self, rate: float, capacity: float = 1.0) -> None:
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._last = time.monotonic()

    async def acquire(self) -> None:
        while True:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await asyncio.sleep((1 - self._tokens) / self.rate)


class SeenArticles:
    """Persistent set of published (article id, ticker) pairs (SQLite)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (article_id INTEGER NOT NULL, ticker TEXT NOT NULL,"
            " seen_ms INTEGER NOT NULL, PRIMARY KEY (article_id, ticker)) WITHOUT ROWID"
        )
        self._db.commit()

    def contains(self, article_id: int, ticker: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM seen WHERE article_id = ? AND ticker = ?", (article_id, ticker)
        ).fetchone()
        return row is not None

    def add(self, pairs: Iterable[tuple[int, str]]) -> None:
        now_ms = int(time.time() * 1000)
        self._db.executemany(
            "INSERT OR IGNORE INTO seen VALUES (?, ?, ?)", [(a, t, now_ms) for a, t in pairs]
        )
        self._db.commit()

    def prune(self, older_than_ms: int) -> None:
        """Forget pairs recorded before the cut-off (far older than any `from` date we query)."""
        self._db.execute("DELETE FROM seen WHERE seen_ms < ?", (older_than_ms,))
        self._db.commit()

    def close(self) -> None:
        self._db.close()


class InvalidArticle(SourceError, ValueError):
    """A Finnhub news item that does not validate (dead-lettered as "InvalidArticle")."""


class InvalidResponse(SourceError, ValueError):
    """A Finnhub response body of the wrong shape (retried like a transport error)."""


def article_records(
    item: dict[str, Any], symbol: str, tracked: set[str], received_ts_us: int
) -> list[dict[str, Any]]:
    """One `models.NewsArticle` dict per ticker the item is about: the queried symbol plus every
    tracked ticker in `related`. Raises InvalidArticle for an item that does not validate."""
    article_id, published, headline = item.get("id"), item.get("datetime"), item.get("headline")
    if type(article_id) is not int:
        raise InvalidArticle(f"field 'id' must be an integer, got {article_id!r}")
    if isinstance(published, bool) or not isinstance(published, int | float) or published <= 0:
        raise InvalidArticle(f"field 'datetime' must be positive UNIX seconds, got {published!r}")
    if not isinstance(headline, str) or not headline.strip():
        raise InvalidArticle("field 'headline' must be a non-empty string")
    related_raw = item.get("related") or ""
    if not isinstance(related_raw, str):
        raise InvalidArticle(f"field 'related' must be a comma-separated string, got {related_raw!r}")
    related = [t.strip() for t in related_raw.split(",") if t.strip()]
    tickers = list(dict.fromkeys([symbol, *(t for t in related if t in tracked)]))
    published_ts_ms = int(published * 1000)
    published_at = datetime.fromtimestamp(published_ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    common = {
        "article_id": article_id,
        "related": related,
        "headline": headline,
        "summary": _text(item, "summary"),
        "source": _text(item, "source"),
        "url": _text(item, "url"),
        "image": _text(item, "image"),
        "category": _text(item, "category"),
        "published_at": published_at,
        "published_ts_ms": published_ts_ms,
        "received_ts_us": received_ts_us,
    }
    return [{"event_id": news_event_id(article_id, t), "ticker": t, **common} for t in tickers]


def _text(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    return value if isinstance(value, str) else ""


class NewsPoller:
    """Polls company news for every ticker and publishes new articles. `await run()` / `await stop()`."""

    def __init__(
        self,
        settings: Settings,
        *,
        dlq: DeadLetterQueue | None = None,
        base_url: str | None = None,
        token: SecretStr | str | None = None,
        tickers: Sequence[str] | None = None,
        max_retries: int = 6,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        request_timeout_s: float = 10.0,
    ) -> None:
        default_url, default_token = news_endpoint(settings)
        token = token if token is not None else default_token
        if token is None:
            raise InvalidArgument("no Finnhub token: set FINNHUB_API_KEY (or run the simulator without keys)")
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.base_url = (base_url or default_url).rstrip("/")
        self.settings = settings
        self.tickers = list(tickers or settings.tickers)
        self.dlq = dlq
        self.max_retries = max_retries
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.request_timeout_s = request_timeout_s
        self.metrics = NewsMetrics()
        self.bucket = TokenBucket(settings.finnhub_calls_per_minute / 60.0)
        self.seen = SeenArticles(settings.data_dir / "news_seen.sqlite3")
        self._producer = Producer(producer_config(settings))
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Poll rounds every `news_poll_interval_s` until `stop()`."""
        self.seen.prune(int((time.time() - 30 * 86400) * 1000))
        try:
            async with self._http() as http:
                while not self._stop.is_set():
                    started = time.monotonic()
                    await self.poll_once(http)
                    remaining = self.settings.news_poll_interval_s - (time.monotonic() - started)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), max(0.0, remaining))
        finally:
            self.close()

    async def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Flush and release the producer and the dedupe store (the poller cannot be reused)."""
        self._producer.flush(30)
        self._producer.close()
        self.seen.close()

    async def poll_once(self, http: httpx.AsyncClient | None = None) -> int:
        """One round over every ticker; returns how many (article, ticker) events were published."""
        if http is None:
            async with self._http() as client:
                return await self.poll_once(client)
        self.metrics.rounds += 1
        published = 0
        today = datetime.now(UTC).date()
        for symbol in self.tickers:
            if self._stop.is_set():
                break
            items = await self._fetch(http, symbol, today)
            if items is not None:
                published += await self._publish(symbol, items)
        return published

    def _http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers={"X-Finnhub-Token": self._token.get_secret_value()}, timeout=self.request_timeout_s
        )

    async def _fetch(self, http: httpx.AsyncClient, symbol: str, today: date) -> list[Any] | None:
        """The company-news list for a symbol, retrying 429/5xx/network errors; None if it gave up."""
        params = {
            "symbol": symbol,
            "from": (today - timedelta(days=self.settings.news_lookback_days)).isoformat(),
            "to": today.isoformat(),
        }
        for attempt in range(self.max_retries + 1):
            await self.bucket.acquire()
            self.metrics.requests += 1
            retry_after: float | None = None
            try:
                response = await http.get(f"{self.base_url}/company-news", params=params)
                if response.status_code == 429:
                    self.metrics.rate_limited += 1
                    retry_after = _retry_after(response)
                    problem = "HTTP 429 (rate limited)"
                elif response.status_code >= 500:
                    self.metrics.http_errors += 1
                    problem = f"HTTP {response.status_code}"
                else:
                    response.raise_for_status()  # other 4xx: retrying would not help
                    body = response.json()
                    if not isinstance(body, list):
                        raise InvalidResponse(f"expected a JSON list, got {type(body).__name__}")
                    return body
            except httpx.HTTPStatusError as exc:
                self.metrics.http_errors += 1
                log.error("news: %s for %s; skipping this round", exc.response.status_code, symbol)
                return None
            except (httpx.TransportError, ValueError) as exc:
                self.metrics.http_errors += 1
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == self.max_retries:
                break
            delay = self._backoff(attempt, retry_after)
            log.warning("news: %s for %s; retrying in %.2fs", problem, symbol, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return None
        log.error("news: giving up on %s this round after %d attempts", symbol, self.max_retries + 1)
        return None

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        return backoff_delay(attempt, self.backoff_initial_s, self.backoff_max_s, min_fraction=0.5)

    async def _publish(self, symbol: str, items: list[Any]) -> int:
        received_ts_us = time.time_ns() // 1000
        tracked = set(self.tickers)
        records: list[dict[str, Any]] = []
        rejects: list[Reject] = []
        for item in items:
            try:
                if not isinstance(item, dict):
                    raise InvalidArticle(f"item is not an object: {type(item).__name__}")
                records.extend(article_records(item, symbol, tracked, received_ts_us))
            except ValueError as exc:
                rejects.append(Reject(orjson.dumps(item).decode(), str(exc), "InvalidArticle", symbol))
        if rejects:
            self._dead_letter(rejects)
        fresh, batch_ids = [], set()
        for record in records:
            if record["event_id"] in batch_ids or self.seen.contains(record["article_id"], record["ticker"]):
                self.metrics.duplicates += 1
            else:
                batch_ids.add(record["event_id"])
                fresh.append(record)
        if not fresh:
            return 0
        delivered: list[tuple[int, str]] = []

        def on_delivery(err: KafkaError | None, msg: Message, record: dict[str, Any]) -> None:
            if err is None:
                delivered.append((record["article_id"], record["ticker"]))
            else:
                self.metrics.failed += 1
                log.error("news: delivery of article %s failed: %s", record["article_id"], err.str())

        for record in fresh:
            self._producer.produce(
                NEWS,
                orjson.dumps(record),
                record["ticker"],
                on_delivery=functools.partial(on_delivery, record=record),
            )
        # News is a trickle; waiting for the acks keeps "recorded as seen" ⇒ "in Kafka".
        await asyncio.to_thread(self._producer.flush, 30)
        self.seen.add(delivered)
        self.metrics.published += len(delivered)
        return len(delivered)

    def _dead_letter(self, rejects: list[Reject]) -> None:
        self.metrics.dead_lettered += len(rejects)
        for reject in rejects[:3]:
            log.warning("news: invalid article: %s", reject.reason)
        if self.dlq is not None:
            self.dlq.put(
                [
                    make_dead_letter(
                        stage="news",
                        payload=r.payload,
                        error_type=r.error_type,
                        reason=r.reason,
                        ticker=r.ticker,
                    )
                    for r in rejects
                ]
            )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
