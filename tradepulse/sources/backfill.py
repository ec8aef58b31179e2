"""Backfill of trades from Massive's REST API (`GET /v3/trades/{stocksTicker}`) after a (re)connect.

The Massive WebSocket does not replay: whatever traded while no ingest was connected (a disconnect, a
`kill -9` and restart) never arrives on the socket. The REST trades endpoint has it. `TradesRestClient`
pages through a ticker's trades in a time range the way Massive documents it:

- `timestamp.gte` / `timestamp.lte` in Unix nanoseconds, `order=asc`, `sort=timestamp`, `limit` ≤ 50000;
- the response's `next_url` is followed until it is absent. It carries only a `cursor`, not the key,
  so the key is sent again with every page — in the `Authorization: Bearer` header, as the official
  client does, never as the `apiKey` query parameter: URLs end up in logs and exception messages.
  Only the path and query of `next_url` are used, against the configured base URL, so the key is
  never sent to another host; a `next_url` that repeats ends the paging (a known Polygon bug looped).
- 429 and 5xx answers, network errors and timeouts are retried with backoff (a number of times, or
  until a deadline: ingest retries for `ingest_backfill_max_s`, since a backfill that gives up loses its
  ticker's gap); other errors end the backfill of that ticker (`BackfillError`).

Only trades are backfilled: a quote is superseded by the next one, so the first live quote after a gap
restores the current book, while a lost trade is lost volume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
from pydantic import SecretStr

from tradepulse.errors import InvalidArgument, SourceError
from tradepulse.retry import backoff_delay

log = logging.getLogger(__name__)

TRADES_PATH = "/v3/trades/"
MAX_PAGE_LIMIT = 50_000
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class BackfillError(SourceError):
    """The REST API refused a request for a reason retrying does not fix (bad key, plan, query)."""


@dataclass(frozen=True)
class Window:
    """The part of a ticker's gap to backfill: SIP time (ms) from `start_ms` to `end_ms` inclusive (None:
    up to the newest trade REST has). `clipped` = the gap began before the backfill horizon; trades older
    than `start_ms` are not fetched."""

    start_ms: int
    end_ms: int | None
    clipped: bool


def backfill_window(
    last_ms: int | None, floor_ms: int | None, now_ms: int, max_s: float, *, open_end: bool = False
) -> Window | None:
    """Which trades to fetch for a ticker whose last published trade is at `last_ms` (None: none known).

    Without a last trade, `floor_ms` is the time from which ingest would have seen one of the ticker's
    trades had there been any (see `IngestService`); without either there is no known gap. The window
    starts at the last trade's millisecond itself (the WebSocket's times are whole ms; the trades of
    that ms already published are dropped by sequence) and never more than `max_s` before `now_ms`.
    All times are the feed's (exchange/SIP time): `now_ms` is the feed's clock where the live stream
    takes over, not the wall clock. `open_end`: the live stream has not said where it takes over (a
    quiet connection); the window reaches to REST's newest trade, and `now_ms` is the newest feed time
    known, which only sets the horizon.
    """
    start = last_ms if last_ms is not None else floor_ms
    if start is None or max_s <= 0:
        return None
    horizon = now_ms - int(max_s * 1000)
    if open_end:
        return Window(max(start, horizon), None, start < horizon)
    if start >= now_ms:
        return None
    return Window(max(start, horizon), now_ms, start < horizon)


def redact(url: str) -> str:
    """`url` without its query (where an `apiKey` or a cursor would be): safe to log."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else parts.path


class TradesRestClient:
    """Pages through Massive's (or the simulator's) `/v3/trades/{ticker}`; `async with` or `aclose()`."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | str,
        *,
        page_limit: int = MAX_PAGE_LIMIT,
        timeout_s: float = 10.0,
        retries: int = 3,
        retry_deadline_s: float | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 8.0,
    ) -> None:
        """`retries`: transient failures (429, 5xx, network errors, timeouts) retried per request;
        `retry_deadline_s`: instead, retried for this long since the request's first attempt."""
        if not 1 <= page_limit <= MAX_PAGE_LIMIT:
            raise InvalidArgument(f"page_limit must be in 1..{MAX_PAGE_LIMIT}, got {page_limit}")
        self.base_url = base_url.rstrip("/")
        key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self.page_limit = page_limit
        self.retries = retries
        self.retry_deadline_s = retry_deadline_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.requests = 0
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key.get_secret_value()}"},
            timeout=timeout_s,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> TradesRestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def pages(
        self, ticker: str, start_ns: int, end_ns: int | None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The ticker's trades with start_ns ≤ SIP time ≤ end_ns (None: no upper bound), oldest first, one
        page at a time."""
        query: dict[str, int | str] = {"timestamp.gte": start_ns}
        if end_ns is not None:
            query["timestamp.lte"] = end_ns
        query |= {"order": "asc", "sort": "timestamp", "limit": self.page_limit}
        target = f"{TRADES_PATH}{quote(ticker, safe='')}?" + urlencode(query)
        seen: set[str] = set()
        while True:
            body = await self._get(target)
            results = body.get("results") or []
            if not isinstance(results, list):
                raise BackfillError(f"{ticker}: `results` is not a list")
            yield results
            next_url = body.get("next_url")
            if not next_url:
                return
            target = self._follow(next_url)
            if target in seen:
                log.warning(
                    "backfill: %s: next_url repeats itself; stopping after %d pages", ticker, len(seen)
                )
                return
            seen.add(target)

    def _follow(self, next_url: str) -> str:
        parts = urlsplit(next_url)
        if not parts.path.startswith(TRADES_PATH):
            raise BackfillError(f"unexpected next_url path {parts.path!r}")
        # The key goes in the header only, whatever the URL carries.
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "apiKey"]
        return parts.path + ("?" + urlencode(query) if query else "")

    async def _get(self, target: str) -> dict[str, Any]:
        attempt, started = 0, time.monotonic()
        while True:
            self.requests += 1
            try:
                response = await self._http.get(target)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    try:
                        body = response.json()
                    except ValueError as exc:
                        raise BackfillError(f"{redact(target)}: response is not JSON: {exc}") from None
                    if not isinstance(body, dict):
                        raise BackfillError(f"{redact(target)}: response is not a JSON object")
                    return body
                problem = f"HTTP {response.status_code}: {error_message(response)}"
                if response.status_code not in _RETRY_STATUSES:
                    raise BackfillError(f"{redact(target)}: {problem}")
            if (
                attempt >= self.retries
                if self.retry_deadline_s is None
                else time.monotonic() - started >= self.retry_deadline_s
            ):
                raise BackfillError(f"{redact(target)}: {problem} (after {attempt + 1} attempts)")
            delay = backoff_delay(attempt, self.backoff_initial_s, self.backoff_max_s, min_fraction=0.5)
            log.warning("backfill: %s: %s; retrying in %.2fs", redact(target), problem, delay)
            attempt += 1
            await asyncio.sleep(delay)


def error_message(response: httpx.Response) -> str:
    """Massive's error text (`error` or `message`), short; never the request URL."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body.get("status") or "")[:200]
    return ""
