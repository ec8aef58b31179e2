"""Massive (formerly Polygon.io) stocks WebSocket client: connect, authenticate, subscribe, stream.

`MassiveClient.frames()` is an async iterator of `ParsedFrame`s that survives disconnects: it reconnects
with exponential backoff and full jitter, re-authenticates and re-subscribes. The consumer drives the
socket — while it does not ask for the next frame nothing is read, so a slow consumer pushes back on
the server through websockets' bounded receive queue and TCP flow control instead of buffering.

Failure policy:
- `auth_failed` is fatal at once (`MassiveAuthError`): retrying a wrong key only gets the account
  throttled, so there is exactly one connection attempt.
- `max_connections` (the account already has its one connection per cluster open) is logged as an
  error and retried with the *maximum* backoff, because the usual cause is a previous instance still
  draining during a restart or deploy; after `max_connections_retries` consecutive refusals it is fatal
  (`MassiveMaxConnectionsError`) so a real second consumer is not silently fought over.
- Any other close or network error reconnects; the backoff resets once a connection stayed healthy.

The API key is only ever put in the auth message; it is never logged, and the URL is logged as is
(Massive URLs carry no credentials).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import orjson
from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tradepulse.errors import SourceError
from tradepulse.retry import backoff_delay
from tradepulse.sources.parse import ParsedFrame, parse_frame

log = logging.getLogger(__name__)
# websockets logs every frame at DEBUG, the auth message (and so the API key) included. Its connection
# logger is pinned at INFO so that running with TRADEPULSE_LOG_LEVEL=DEBUG cannot leak the key.
_ws_log = logging.getLogger(f"{__name__}.websocket")
_ws_log.setLevel(logging.INFO)

# Statuses that mean all is well; anything else is worth a warning (the official client does the same).
OK_STATUSES = frozenset({"connected", "auth_success", "success"})


class MassiveError(SourceError):
    """A fatal Massive feed error: retrying would not help."""


class MassiveAuthError(MassiveError):
    """The server rejected the API key (`auth_failed`)."""


class MassiveMaxConnectionsError(MassiveError):
    """The account's connection limit was hit on every retry (`max_connections`)."""


@dataclass
class ClientStats:
    """Connection counters; read by the ingest service's metrics."""

    connection_attempts: int = 0
    connections: int = 0
    reconnects: int = 0
    frames: int = 0
    max_connections_refusals: int = 0
    last_error: str | None = None


def subscription_params(tickers: Sequence[str], channels: Sequence[str] = ("T", "Q")) -> list[str]:
    """`["T.AAPL", "Q.AAPL", ...]`; a ticker `*` subscribes to the wildcard channel (`T.*`)."""
    return [f"{channel}.{ticker}" for ticker in tickers for channel in channels]


class MassiveClient:
    """A reconnecting client of the Massive stocks WebSocket (or the local simulator)."""

    def __init__(
        self,
        url: str,
        api_key: SecretStr | str,
        subscriptions: Sequence[str],
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 10.0,
        max_connections_retries: int = 3,
        max_frame_bytes: int = 4 * 1024 * 1024,
        open_timeout_s: float = 10.0,
        auth_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self._api_key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self.subscriptions = list(subscriptions)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.max_connections_retries = max_connections_retries
        self.max_frame_bytes = max_frame_bytes
        self.open_timeout_s = open_timeout_s
        self.auth_timeout_s = auth_timeout_s
        self.stats = ClientStats()
        self._ws: ClientConnection | None = None
        self._stopping = False
        self._stop = asyncio.Event()

    async def frames(self) -> AsyncIterator[ParsedFrame]:
        """Parsed frames, across reconnects, until `close()` or a fatal error (raised)."""
        attempt = 0
        while not self._stopping:
            self.stats.connection_attempts += 1
            connected_at: float | None = None
            max_connections = False
            try:
                async with connect(
                    self.url,
                    open_timeout=self.open_timeout_s,
                    # Oversize frames are dead-lettered by parse_frame; the socket limit is only a
                    # memory guard well above that, so they arrive instead of killing the connection.
                    max_size=4 * self.max_frame_bytes,
                    close_timeout=1,
                    logger=_ws_log,
                ) as ws:
                    self._ws = ws
                    await self._handshake(ws)
                    connected_at = time.monotonic()
                    self.stats.connections += 1
                    log.info("massive: streaming %d subscriptions from %s", len(self.subscriptions), self.url)
                    async for raw in ws:
                        received_ts_us = time.time_ns() // 1000
                        self.stats.frames += 1
                        frame = parse_frame(raw, received_ts_us, self.max_frame_bytes)
                        frame.connection = self.stats.connections
                        if frame.statuses:
                            max_connections |= self._on_statuses(frame.statuses)
                        yield frame
                    # The server closed cleanly; for a feed that is still a reason to come back.
                    self.stats.last_error = f"closed by server: {ws.close_code} {ws.close_reason}".strip()
            except MassiveError:
                raise
            except _MaxConnections:
                max_connections = True
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self._ws = None
            if self._stopping:
                return
            if max_connections:
                self.stats.max_connections_refusals += 1
                if self.stats.max_connections_refusals > self.max_connections_retries:
                    raise MassiveMaxConnectionsError(
                        f"massive: connection limit reached on {self.stats.max_connections_refusals} "
                        f"consecutive attempts; another client is using this key's connection"
                    )
                delay = self.backoff_max_s
            else:
                if connected_at is not None and time.monotonic() - connected_at >= self.stable_after_s:
                    attempt = 0
                    self.stats.max_connections_refusals = 0
                delay = self._backoff(attempt)
                attempt += 1
            self.stats.reconnects += 1
            log.warning("massive: disconnected (%s); reconnecting in %.2fs", self.stats.last_error, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    @property
    def api_key(self) -> SecretStr:
        """The key (masked when printed); the REST backfill authenticates with the same one."""
        return self._api_key

    async def close(self) -> None:
        """Stop streaming: the iterator ends after the current frame."""
        self._stopping = True
        self._stop.set()
        if self._ws is not None:
            await self._ws.close()

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self.backoff_initial_s, self.backoff_max_s, min_fraction=0.5)

    async def _handshake(self, ws: ClientConnection) -> None:
        """connected → auth → auth_success → subscribe. Raises MassiveAuthError on auth_failed."""
        async with asyncio.timeout(self.auth_timeout_s):
            await self._expect(ws, "connected")
            await ws.send(
                orjson.dumps({"action": "auth", "params": self._api_key.get_secret_value()}).decode()
            )
            await self._expect(ws, "auth_success")
        if self.subscriptions:
            await ws.send(
                orjson.dumps({"action": "subscribe", "params": ",".join(self.subscriptions)}).decode()
            )

    async def _expect(self, ws: ClientConnection, wanted: str) -> None:
        """Read status frames until `wanted` arrives; fail on the statuses that end the session.

        A whole frame is examined before returning: a refusal may share the frame with the
        `auth_success` it follows.
        """
        while True:
            found = False
            for event in _status_events(await ws.recv()):
                status = event.get("status")
                message = event.get("message", "")
                if status == wanted:
                    found = True
                elif status == "auth_failed":
                    # The server's message says why ("authentication failed"); it never echoes the key.
                    raise MassiveAuthError(f"massive: authentication failed: {message}")
                elif status == "max_connections":
                    log.error("massive: %s", message or "maximum number of connections exceeded")
                    raise _MaxConnections
                elif status not in OK_STATUSES:
                    log.warning("massive: server status %s: %s", status, message)
            if found:
                return

    def _on_statuses(self, statuses: list[dict]) -> bool:
        """Log in-stream status events; True if the server refused us for the connection limit."""
        refused = False
        for event in statuses:
            status, message = event.get("status"), event.get("message", "")
            if status == "max_connections":
                log.error("massive: %s", message or "maximum number of connections exceeded")
                refused = True
            elif status in OK_STATUSES:
                log.debug("massive: %s: %s", status, message)
            else:
                log.warning("massive: server status %s: %s", status, message)
        return refused


class _MaxConnections(Exception):
    """Internal: the server sent `max_connections` during the handshake."""


def _status_events(raw: str | bytes) -> list[dict]:
    try:
        events = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    if isinstance(events, dict):
        events = [events]
    return (
        [e for e in events if isinstance(e, dict) and e.get("ev") == "status"]
        if isinstance(events, list)
        else []
    )
