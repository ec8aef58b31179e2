"""A WebSocket server speaking the Massive (formerly Polygon.io) stocks protocol.

Protocol, as the real cluster behaves:

- on connect: `[{"ev":"status","status":"connected","message":"Connected Successfully"}]`
- `{"action":"auth","params":KEY}` → `auth_success` / `auth_failed` (then the server closes); over
  the connection limit, a `max_connections` status and close
- `{"action":"subscribe","params":"T.AAPL,Q.*"}` → one `success` status per channel
  (`subscribed to: T.AAPL`); `unsubscribe` likewise (`unsubscribed to: T.AAPL`)
- data frames are JSON arrays holding many events, sent as text frames.
- `AM.<ticker>` / `AM.*`: the per-minute aggregates (`ev: "AM"`) of the minutes that ended with a tick,
  one frame after that tick's trades and quotes (`aggregates.py`).

Plain HTTP GETs of Massive's REST trades endpoint (`/v3/trades/{ticker}`, see `trades_api`) are answered
on the same port when a `rest` handler is given, so a client that knows only the WebSocket URL (an ingest
started with `--url`) can backfill from the same simulator.

Events are produced once per tick by a source (market model or replay) and fanned out to every
authenticated session according to its subscriptions. A frame is counted as sent only once
`send()` returned, so tests can reconcile what a client published with what the server sent.
A session whose queue is full makes `dispatch()` wait: a client that stops reading pauses the
market instead of losing events (the real service would disconnect it as a slow consumer).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import numpy as np
import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tradepulse.sources.simulator.conditions_api import CONDITIONS_PATH, ConditionsApi
from tradepulse.sources.simulator.market import KIND_TRADE, Block
from tradepulse.sources.simulator.trades_api import TRADES_PREFIX, TradesApi

log = logging.getLogger(__name__)

WS_PATHS = ("/", "/stocks", "/stocks/")


def status(state: str, message: str) -> bytes:
    """One status event as a frame (a JSON array, like every frame of the feed)."""
    return orjson.dumps([{"ev": "status", "status": state, "message": message}])


CONNECTED = status("connected", "Connected Successfully")
AUTH_SUCCESS = status("auth_success", "authenticated")
AUTH_FAILED = status("auth_failed", "authentication failed")
MAX_CONNECTIONS = status(
    "max_connections",
    "Maximum number of websocket connections exceeded. You have reached the connection limit for your "
    "account. Please contact support at https://massive.com/contact to increase your limit.",
)
NOT_AUTHORIZED = status("error", "not authorized")
CLOSE_POLICY = 1008


@dataclass
class _Item:
    frame: str
    block: Block
    sel: np.ndarray | None  # indices into the block; None = the whole block
    trades: int
    quotes: int


@dataclass(eq=False)
class Session:
    """One client connection."""

    ws: ServerConnection
    n_symbols: int
    queue_frames: int
    authed: bool = False
    subs: set[str] = field(default_factory=set)
    dropping: bool = False
    closed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sender: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(self.queue_frames)
        self.t_mask = np.zeros(self.n_symbols, bool)
        self.q_mask = np.zeros(self.n_symbols, bool)
        self.am_mask = np.zeros(self.n_symbols, bool)
        self.signature: frozenset[str] = frozenset()

    def update_masks(self, index: dict[str, int]) -> None:
        for mask, prefix in ((self.t_mask, "T."), (self.q_mask, "Q."), (self.am_mask, "AM.")):
            mask[:] = f"{prefix}*" in self.subs
            for sub in self.subs:
                if sub.startswith(prefix) and (i := index.get(sub[len(prefix) :])) is not None:
                    mask[i] = True
        self.signature = frozenset(s for s in self.subs if s.split(".", 1)[0] in ("T", "Q", "AM"))

    @property
    def wants_data(self) -> bool:
        return self.authed and not self.closed and not self.dropping and bool(self.signature)


class MassiveWsServer:
    """The protocol server. `dispatch(block)` fans a block of events out to the subscribed sessions."""

    def __init__(
        self,
        symbols: list[str],
        api_key: str,
        *,
        max_connections: int | None = None,
        max_events_per_frame: int = 1000,
        queue_frames: int = 1000,
        record_sent: bool = False,
        resend_blocks: int = 0,
        rest: TradesApi | None = None,
        conditions: ConditionsApi | None = None,
    ) -> None:
        self.symbols = list(symbols)
        self.rest = rest
        self.conditions = conditions  # GET /v3/reference/conditions, like Massive's REST
        self._sym_array = np.array(self.symbols, dtype=object)
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self._api_key = api_key
        self.max_connections = max_connections
        self.max_events_per_frame = max_events_per_frame
        self.queue_frames = queue_frames
        self.record_sent = record_sent
        self.sessions: set[Session] = set()
        self.sent_trades = 0
        self.sent_quotes = 0
        self.sent_trade_keys: set[tuple[str, int]] = set()
        self.sent_quote_keys: set[tuple[str, int]] = set()
        self.connections_total = 0
        self._server: Server | None = None
        # The last blocks dispatched, resent to every new subscription (see `SimulatorConfig.resend_blocks`).
        self._history: deque[Block] = deque(maxlen=max(resend_blocks, 1))
        self._resend = resend_blocks > 0
        # Held while fanning out a block and while queueing a resend, so that a new subscription gets the
        # history strictly before any newer block (per-ticker order is kept).
        self._dispatch_lock = asyncio.Lock()
        self.data_subscribed = asyncio.Event()
        """Set once any session has subscribed to a data channel."""

    # ------------------------------------------------------------------ lifecycle
    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (0 = a free port); both `/` and `/stocks` accept WebSocket clients."""
        self._server = await serve(
            self._handler,
            host,
            port,
            process_request=self._check_path,
            compression=None,  # the real feed is uncompressed; deflate would cost most of the CPU
            max_size=2**20,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        route = None
        if self.rest is not None and path.startswith(TRADES_PREFIX):
            route = self.rest.handle
        elif self.conditions is not None and path.rstrip("/") == CONDITIONS_PATH:
            route = self.conditions.handle
        if route is not None:
            headers = {k.lower(): v for k, v in request.headers.raw_items()}
            host = headers.get("host") or f"127.0.0.1:{self.port}"
            code, body, extra = route("GET", request.path, headers, f"http://{host}")
            status = HTTPStatus(code)
            response_headers = Headers(
                [
                    ("Connection", "close"),
                    ("Content-Length", str(len(body))),
                    ("Content-Type", "application/json; charset=utf-8"),
                    *extra.items(),
                ]
            )
            return Response(status.value, status.phrase, response_headers, body)
        if path not in WS_PATHS:
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown path; use /stocks\n")
        return None

    @property
    def authenticated(self) -> int:
        return sum(1 for s in self.sessions if s.authed and not s.closed)

    # ------------------------------------------------------------------ protocol
    async def _handler(self, ws: ServerConnection) -> None:
        session = Session(ws, len(self.symbols), self.queue_frames)
        self.sessions.add(session)
        self.connections_total += 1
        try:
            await self._send(session, CONNECTED)
            async for raw in ws:
                if not await self._on_message(session, raw):
                    break
        except ConnectionClosed:
            pass
        finally:
            self._close_session(session)

    async def _send(self, session: Session, frame: bytes) -> None:
        async with session.lock:
            if not session.dropping:
                await session.ws.send(frame, text=True)

    async def _on_message(self, session: Session, raw: str | bytes) -> bool:
        """Handle one client message; False ends the session."""
        try:
            msg = orjson.loads(raw)
            action, params = msg["action"], msg.get("params", "")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await self._send(session, status("error", "invalid message"))
            return True
        if action == "auth":
            return await self._auth(session, params)
        if action in ("subscribe", "unsubscribe"):
            if not session.authed:
                await self._send(session, NOT_AUTHORIZED)
                return True
            channels = [c.strip() for c in str(params).split(",") if c.strip()]
            for ch in channels:
                if action == "subscribe":
                    session.subs.add(ch)
                else:
                    session.subs.discard(ch)
            async with self._dispatch_lock:
                session.update_masks(self._index)
                if session.wants_data:
                    self.data_subscribed.set()
                if action == "subscribe" and self._resend and session.wants_data:
                    for block in list(self._history):
                        for item in self._frames(block, session):
                            if session.closed:  # the client died mid-replay: release the lock
                                break
                            await session.queue.put(item)
            verb = "subscribed to" if action == "subscribe" else "unsubscribed to"
            for ch in channels:
                await self._send(session, status("success", f"{verb}: {ch}"))
            return True
        await self._send(session, status("error", f"unknown action: {action}"))
        return True

    async def _auth(self, session: Session, key: object) -> bool:
        if session.authed:
            await self._send(session, AUTH_SUCCESS)
            return True
        if not isinstance(key, str) or not hmac.compare_digest(key.encode(), self._api_key.encode()):
            await self._send(session, AUTH_FAILED)
            await session.ws.close(CLOSE_POLICY, "authentication failed")
            return False
        if self.max_connections is not None and self.authenticated >= self.max_connections:
            await self._send(session, MAX_CONNECTIONS)
            await session.ws.close(CLOSE_POLICY, "max_connections")
            return False
        session.authed = True
        session.sender = asyncio.create_task(self._sender(session))
        await self._send(session, AUTH_SUCCESS)
        return True

    def _close_session(self, session: Session) -> None:
        session.closed = True
        self.sessions.discard(session)
        # Unblock a dispatch() waiting on this session's full queue.
        while not session.queue.empty():
            session.queue.get_nowait()
        if session.sender is not None:
            session.sender.cancel()

    # ------------------------------------------------------------------ data path
    async def _sender(self, session: Session) -> None:
        while True:
            item = await session.queue.get()
            async with session.lock:
                if session.dropping or session.closed:
                    return
                try:
                    await session.ws.send(item.frame)
                except Exception as exc:
                    # Close now: its handler may be busy in a replay and not notice, and a dispatch or
                    # replay blocked on this full queue must be released. Any error, not only
                    # ConnectionClosed: a connection that dies mid-write can make websockets raise others
                    # (AttributeError from aborting a closed transport, seen under SIGSTOP throttling),
                    # and a dead sender with an open session stalled the whole market.
                    if not isinstance(exc, ConnectionClosed):
                        log.warning("simulator: closing a session whose send failed: %r", exc)
                    self._close_session(session)
                    return
                self._account(item)

    def _account(self, item: _Item) -> None:
        self.sent_trades += item.trades
        self.sent_quotes += item.quotes
        if not self.record_sent:
            return
        b = item.block
        sel = slice(None) if item.sel is None else item.sel
        kind, sym, q = b.kind[sel], b.sym[sel], b.q[sel]
        is_t = kind == KIND_TRADE
        self.sent_trade_keys.update(zip(self._sym_array[sym[is_t]].tolist(), q[is_t].tolist(), strict=True))
        self.sent_quote_keys.update(zip(self._sym_array[sym[~is_t]].tolist(), q[~is_t].tolist(), strict=True))

    def _frames(self, block: Block, session: Session) -> list[_Item]:
        """The frames of `block` this session's subscriptions select (cached per subscription set)."""
        cached = block.frame_cache.get(session.signature)
        if cached is not None:
            return cached
        is_t = block.kind == KIND_TRADE
        mask = np.where(is_t, session.t_mask[block.sym], session.q_mask[block.sym])
        fragments = block.fragments()
        items: list[_Item] = []
        n, step = len(block), self.max_events_per_frame
        if mask.all() and n <= step:
            if n:
                t = int(is_t.sum())
                items.append(_Item("[" + ",".join(fragments) + "]", block, None, t, n - t))
        else:
            idx = np.flatnonzero(mask)
            for a in range(0, len(idx), step):
                sel = idx[a : a + step]
                t = int(is_t[sel].sum())
                frame = "[" + ",".join([fragments[i] for i in sel.tolist()]) + "]"
                items.append(_Item(frame, block, sel, t, len(sel) - t))
        if block.aggregates and session.am_mask.any():
            chosen = [a for a in block.aggregates if session.am_mask[self._index[a["sym"]]]]
            if chosen:
                # No trades or quotes in it: an empty selection, so `_account` records none.
                items.append(_Item(orjson.dumps(chosen).decode(), block, np.empty(0, np.int64), 0, 0))
        block.frame_cache[session.signature] = items
        return items

    async def dispatch(self, block: Block) -> None:
        """Queue the block's frames for every subscribed session (waits while a session's queue is full)."""
        if not len(block) and not block.aggregates:
            return
        async with self._dispatch_lock:
            if self._resend:
                self._history.append(block)
            for session in list(self.sessions):
                if not session.wants_data:
                    continue
                for item in self._frames(block, session):
                    if session.closed or session.dropping:
                        break
                    await session.queue.put(item)

    def pending_frames(self) -> int:
        return sum(s.queue.qsize() for s in self.sessions if not s.closed and not s.dropping)

    async def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every live session's queue is sent; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending_frames() or any(s.lock.locked() for s in self.sessions):
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def drop_connections(self, drain_timeout: float = 2.0) -> int:
        """Abort every client socket without a close frame (like a network failure).

        Frames already handed to `send()` are flushed to the kernel first, so everything counted as
        sent reaches the client; queued frames are discarded and not counted.
        """
        sessions = list(self.sessions)
        for s in sessions:
            s.dropping = True
        loop = asyncio.get_running_loop()
        for s in sessions:
            async with s.lock:
                transport = s.ws.transport
                deadline = loop.time() + drain_timeout
                while transport.get_write_buffer_size() and loop.time() < deadline:
                    await asyncio.sleep(0.002)
                transport.abort()
            self._close_session(s)
        return len(sessions)

    def stats(self) -> dict[str, Any]:
        return {
            "clients": self.authenticated,
            "connections_total": self.connections_total,
            "sent_trades": self.sent_trades,
            "sent_quotes": self.sent_quotes,
            "pending_frames": self.pending_frames(),
        }
