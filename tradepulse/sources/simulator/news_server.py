"""A Finnhub-compatible `company-news` HTTP endpoint on a minimal asyncio HTTP/1.1 server.

`GET /api/v1/company-news?symbol=AAPL&from=YYYY-MM-DD&to=YYYY-MM-DD&token=KEY` (or the token in the
`X-Finnhub-Token` header) returns Finnhub's article objects, newest first. A missing or wrong token is
401; more than `calls_per_minute` calls in any 60 s window is 429, as Finnhub's free tier does.
The stdlib server keeps the dependency set small and accepts the `//company-news` path that
finnhub-python builds when its base URL ends without a slash. Other APIs can be mounted on path prefixes
(`routes`): the simulator serves Massive's REST trades here too (`trades_api.TradesApi`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

NEWS_PATH = "/api/v1/company-news"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
}

#: (method, target, lower-case headers, base URL "http://host:port") → (status, JSON body, extra headers)
Route = Callable[[str, str, dict[str, str], str], tuple[int, bytes, dict[str, str]]]


class NewsServer:
    """Serves the articles returned by `articles()` (those published so far)."""

    def __init__(
        self,
        articles: Callable[[], list[dict[str, Any]]],
        api_key: str,
        calls_per_minute: int = 60,
        clock: Callable[[], float] = time.monotonic,
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        self._articles = articles
        self.routes = dict(routes or {})
        self._api_key = api_key.encode()
        self.calls_per_minute = calls_per_minute
        self._clock = clock
        self._calls: deque[float] = deque()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.requests = 0
        self.rejected_rate = 0

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._connection, host, port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            # Keep-alive connections outlive Server.close(); end their handlers too.
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                line = await reader.readline()
                if not line.strip():
                    break
                try:
                    method, target, version = line.decode("latin-1").split()
                except ValueError:
                    break
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                if (length := int(headers.get("content-length", "0") or 0)) > 0:
                    await reader.readexactly(length)
                code, body, extra = self.handle(method, target, headers)
                keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                head = [
                    f"HTTP/1.1 {code} {_REASONS.get(code, '')}",
                    "Content-Type: application/json; charset=utf-8",
                    f"Content-Length: {len(body)}",
                    f"Connection: {'keep-alive' if keep else 'close'}",
                ]
                head += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
                await writer.drain()
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    def handle(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        """Route one request; returns (status, JSON body, extra headers)."""
        url = urlsplit(target)
        path = "/" + "/".join(p for p in url.path.split("/") if p)  # finnhub-python sends "//company-news"
        for prefix, route in self.routes.items():
            if path.startswith(prefix):
                host = headers.get("host") or f"127.0.0.1:{self.port}"
                return route(method, path + (f"?{url.query}" if url.query else ""), headers, f"http://{host}")
        if path != NEWS_PATH:
            return 404, orjson.dumps({"error": "Not found"}), {}
        if method != "GET":
            return 405, orjson.dumps({"error": "Method not allowed"}), {}
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        token = query.get("token") or headers.get("x-finnhub-token")
        if not token:
            return 401, orjson.dumps({"error": "Please use an API key."}), {}
        if not hmac.compare_digest(token.encode(), self._api_key):
            return 401, orjson.dumps({"error": "Invalid API key"}), {}
        now = self._clock()
        while self._calls and self._calls[0] <= now - 60.0:
            self._calls.popleft()
        self.requests += 1
        if len(self._calls) >= self.calls_per_minute:
            self.rejected_rate += 1
            reset = self._calls[0] + 60.0 - now
            return (
                429,
                orjson.dumps({"error": "API limit reached. Please try again later. Remaining Limit: 0"}),
                {
                    "X-Ratelimit-Limit": str(self.calls_per_minute),
                    "X-Ratelimit-Remaining": "0",
                    "X-Ratelimit-Reset": str(int(time.time() + reset) + 1),
                    "Retry-After": str(int(reset) + 1),
                },
            )
        self._calls.append(now)
        limits = {
            "X-Ratelimit-Limit": str(self.calls_per_minute),
            "X-Ratelimit-Remaining": str(self.calls_per_minute - len(self._calls)),
        }
        symbol = query.get("symbol", "").upper()
        if not symbol:
            return 422, orjson.dumps({"error": "Please specify a symbol."}), limits
        try:
            lo = date.fromisoformat(query["from"]) if "from" in query else date.min
            hi = date.fromisoformat(query["to"]) if "to" in query else date.max
        except ValueError:
            return 422, orjson.dumps({"error": "Wrong date format. Use YYYY-MM-DD."}), limits
        out = [
            a
            for a in self._articles()
            if symbol in a["related"].split(",")
            and lo <= datetime.fromtimestamp(a["datetime"], UTC).date() <= hi
        ]
        out.sort(key=lambda a: (a["datetime"], a["id"]), reverse=True)
        return 200, orjson.dumps(out), limits
