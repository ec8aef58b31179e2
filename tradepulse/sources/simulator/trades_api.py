"""Massive's REST trades endpoint over the simulator's recent history: `GET /v3/trades/{stocksTicker}`.

What a feed handler needs to backfill a gap, as the real API behaves:

- auth: `Authorization: Bearer KEY` or the `apiKey` query parameter; 401 `{"status":"ERROR",...}` without
- `timestamp` (a nanosecond timestamp, or a `YYYY-MM-DD` day; the simulator's days are UTC),
  `timestamp.gte` / `.gt` / `.lte` / `.lt` (nanoseconds or a day), `order` = `asc` | `desc` (default desc:
  newest first), `sort` = `timestamp`, `limit` (default 1000, at most 50000)
- `{"results": [...], "status": "OK", "request_id": ..., "next_url": ...}`; `next_url` (absent on the
  last page) carries only an opaque `cursor` (the query and the position), never the key, so a client
  sends its key again with every page
- a result: `conditions` (omitted when empty), `exchange`, `id`, `participant_timestamp`, `price`,
  `sequence_number`, `sip_timestamp`, `size`, `tape`, and `trf_id` / `trf_timestamp` for off-exchange
  (TRF) prints. Timestamps are Unix nanoseconds; the WebSocket sends the same SIP/TRF instants in ms.

The simulator's trades only have millisecond times, so each gets a deterministic sub-millisecond part
(from its position within the tick): the REST time floors to exactly the WebSocket's `t`, so both paths
give a trade the same event id. History is bounded by time and by count (whichever is hit first).
"""

from __future__ import annotations

import bisect
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
import orjson

from tradepulse.errors import InvalidArgument
from tradepulse.sources.simulator.market import CONDITION_SETS, KIND_TRADE, Block
from tradepulse.sources.simulator.rest import Reply, authorize, decode_cursor, encode_cursor, error

TRADES_PREFIX = "/v3/trades/"
MAX_LIMIT = 50_000
DEFAULT_LIMIT = 1000
_NS_PER_MS = 1_000_000
_NS_PER_DAY = 86_400 * 1_000_000_000
_FOREVER = 2**63 - 1


@dataclass(slots=True)
class _Chunk:
    """The trades of one block, in time order, as aligned columns."""

    sym: np.ndarray
    ns: np.ndarray  # SIP timestamp (ns)
    q: np.ndarray
    p: np.ndarray
    s: np.ndarray
    x: np.ndarray
    z: np.ndarray
    i: np.ndarray  # trade ids (ints for the synthetic market, strings for a replay)
    conditions: list[tuple[int, ...]]
    trfi: np.ndarray  # 0 = not a TRF print
    trf_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.ns)

    def row(self, k: int, symbol: str) -> dict[str, Any]:
        ns, q = int(self.ns[k]), int(self.q[k])
        out: dict[str, Any] = {}
        if self.conditions[k]:
            out["conditions"] = list(self.conditions[k])
        size = self.s[k].item()
        out.update(
            exchange=int(self.x[k]),
            id=str(self.i[k]),
            # The venue's own clock runs a little ahead of the SIP stamp; deterministic per trade.
            participant_timestamp=ns - 1000 * (1 + q * 7919 % 997),
            price=float(self.p[k]),
            sequence_number=q,
            sip_timestamp=ns,
            size=int(size) if float(size).is_integer() else size,
            tape=int(self.z[k]),
        )
        if self.trfi[k]:
            out.update(trf_id=int(self.trfi[k]), trf_timestamp=int(self.trf_ns[k]))
        return out


def _model_chunk(block: Block) -> _Chunk:
    tr = block.trades
    assert tr is not None
    tick_ms = block.end_ms - block.start_ms
    # t = start + floor(u × tick); the remainder of u × tick is the sub-millisecond part.
    sub = ((tr["u"] * tick_ms - (tr["t"] - block.start_ms)) * _NS_PER_MS).astype(np.int64)
    ns = tr["t"].astype(np.int64) * _NS_PER_MS + np.clip(sub, 0, _NS_PER_MS - 1)
    trf_ns = tr["trft"].astype(np.int64) * _NS_PER_MS
    return _Chunk(
        sym=tr["sym"],
        ns=ns,
        q=tr["q"],
        p=tr["p"],
        s=tr["s"],
        x=tr["x"],
        z=tr["z"],
        i=tr["i"],
        conditions=[CONDITION_SETS[c] for c in tr["c"].tolist()],
        trfi=tr["trfi"],
        trf_ns=trf_ns,
    )


def _records_chunk(block: Block, index: dict[str, int]) -> _Chunk:
    """A block known only by its wire records (a replay): trades keep their recorded millisecond times."""
    is_t = block.kind == KIND_TRADE
    rows = [r for r, t in zip(block.records(), is_t.tolist(), strict=True) if t]
    return _Chunk(
        sym=np.array([index[r["sym"]] for r in rows], np.int64),
        ns=np.array([r["t"] * _NS_PER_MS for r in rows], np.int64),
        q=np.array([r["q"] for r in rows], np.int64),
        p=np.array([r["p"] for r in rows], float),
        s=np.array([r["s"] for r in rows], float),
        x=np.array([r["x"] for r in rows], np.int64),
        z=np.array([r["z"] for r in rows], np.int64),
        i=np.array([r["i"] for r in rows], object),
        conditions=[tuple(r.get("c", ())) for r in rows],
        trfi=np.array([r.get("trfi", 0) for r in rows], np.int64),
        trf_ns=np.array([r.get("trft", 0) * _NS_PER_MS for r in rows], np.int64),
    )


class TradesApi:
    """Recent trades of the simulated market, served as Massive's `/v3/trades/{ticker}`."""

    def __init__(
        self, symbols: list[str], api_key: str, *, history_s: float = 900.0, max_trades: int = 1_000_000
    ) -> None:
        self.symbols = list(symbols)
        self._index = {s: k for k, s in enumerate(self.symbols)}
        self._api_key = api_key.encode()
        self.history_ns = int(history_s * 1e9)
        self.max_trades = max_trades
        self._chunks: deque[_Chunk] = deque()
        self._first_ns: deque[int] = deque()  # per chunk, for bisecting by time
        self._last_ns: deque[int] = deque()
        self.trades = 0
        self.requests = 0

    # ------------------------------------------------------------------ history
    def add(self, block: Block) -> None:
        """Record the trades of a block (call before it is sent: REST knows a trade once it happened)."""
        chunk = _model_chunk(block) if block.trades is not None else _records_chunk(block, self._index)
        if not len(chunk):
            return
        self._chunks.append(chunk)
        self._first_ns.append(int(chunk.ns.min()))
        self._last_ns.append(int(chunk.ns.max()))
        self.trades += len(chunk)
        horizon = self._last_ns[-1] - self.history_ns
        while self._chunks and (self._last_ns[0] < horizon or self.trades > self.max_trades):
            self.trades -= len(self._chunks.popleft())
            self._first_ns.popleft()
            self._last_ns.popleft()

    def query(
        self,
        ticker: str,
        lo_ns: int,
        hi_ns: int,
        order: str,
        limit: int,
        after: tuple[int, int] | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to `limit` trades of `ticker` with lo ≤ SIP time ≤ hi in `order`, strictly past `after`
        (SIP ns, sequence) in that order; and whether more follow."""
        k = self._index.get(ticker)
        if k is None:
            return [], False
        if after is not None:  # start the scan at the cursor, not at the query's edge
            lo_ns, hi_ns = (max(lo_ns, after[0]), hi_ns) if order == "asc" else (lo_ns, min(hi_ns, after[0]))
        out: list[dict[str, Any]] = []
        for chunk, rows in self._scan(k, lo_ns, hi_ns, order == "asc"):
            for r in rows:
                key = (int(chunk.ns[r]), int(chunk.q[r]))
                if after is not None and (key <= after if order == "asc" else key >= after):
                    continue
                if len(out) == limit:
                    return out, True
                out.append(chunk.row(r, ticker))
        return out, False

    def _scan(self, k: int, lo: int, hi: int, ascending: bool) -> Iterator[tuple[_Chunk, list[int]]]:
        if ascending:
            start = bisect.bisect_left(self._last_ns, lo)
            indices: range = range(start, len(self._chunks))
        else:
            stop = bisect.bisect_right(self._first_ns, hi)
            indices = range(stop - 1, -1, -1)
        for c in indices:
            chunk = self._chunks[c]
            if (ascending and self._first_ns[c] > hi) or (not ascending and self._last_ns[c] < lo):
                return
            rows = np.flatnonzero((chunk.sym == k) & (chunk.ns >= lo) & (chunk.ns <= hi)).tolist()
            if rows:
                yield chunk, rows if ascending else rows[::-1]

    # ------------------------------------------------------------------ HTTP
    def handle(self, method: str, target: str, headers: dict[str, str], base_url: str) -> Reply:
        """Answer one request for `/v3/trades/{ticker}`; `headers` have lower-case names."""
        url = urlsplit(target)
        ticker = url.path[len(TRADES_PREFIX) :].strip("/")
        if method != "GET":
            return error(405, "Method not allowed")
        query, denied = authorize(url.query, headers, self._api_key)
        if denied is not None:
            return denied
        self.requests += 1
        if not ticker or "/" in ticker:
            return error(404, "Not found")
        try:
            lo, hi, order, limit, after = _parse_query(query)
        except ValueError as exc:
            return error(400, str(exc))
        results, more = self.query(ticker, lo, hi, order, limit, after)
        body: dict[str, Any] = {"results": results, "status": "OK", "request_id": uuid.uuid4().hex}
        if more:
            last = results[-1]
            cursor = encode_cursor(
                {
                    "lo": lo,
                    "hi": hi,
                    "order": order,
                    "limit": limit,
                    "after": [last["sip_timestamp"], last["sequence_number"]],
                }
            )
            body["next_url"] = f"{base_url}{TRADES_PREFIX}{quote(ticker)}?cursor={cursor}"
        return 200, orjson.dumps(body), {}


def _decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        state = decode_cursor(cursor)
        return {
            "lo": int(state["lo"]),
            "hi": int(state["hi"]),
            "order": str(state["order"]),
            "limit": int(state["limit"]),
            "after": (int(state["after"][0]), int(state["after"][1])),
        }
    except (ValueError, KeyError, TypeError, IndexError, orjson.JSONDecodeError):
        raise InvalidArgument("invalid cursor") from None


def _parse_query(query: dict[str, str]) -> tuple[int, int, str, int, tuple[int, int] | None]:
    """(lo ns, hi ns, order, limit, cursor position) of a request; ValueError names what is wrong."""
    if "cursor" in query:
        s = _decode_cursor(query["cursor"])
        return s["lo"], s["hi"], s["order"], s["limit"], s["after"]
    lo, hi = 0, _FOREVER
    if "timestamp" in query:
        lo, hi = _day_or_ns(query["timestamp"], "timestamp")
    for op in ("gte", "gt", "lte", "lt"):
        raw = query.get(f"timestamp.{op}")
        if raw is None:
            continue
        first, last = _day_or_ns(raw, f"timestamp.{op}")
        if op == "gte":
            lo = max(lo, first)
        elif op == "gt":
            lo = max(lo, last + 1)
        elif op == "lte":
            hi = min(hi, last)
        else:
            hi = min(hi, first - 1)
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidArgument(f"order must be asc or desc, got {order!r}")
    if query.get("sort", "timestamp") != "timestamp":
        raise InvalidArgument("sort must be timestamp")
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise InvalidArgument("limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_LIMIT}")
    return lo, hi, order, limit, None


def _day_or_ns(raw: str, name: str) -> tuple[int, int]:
    """A nanosecond timestamp as (ns, ns), or a YYYY-MM-DD day as its first and last nanosecond (UTC)."""
    if raw.isdigit():
        return int(raw), int(raw)
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise InvalidArgument(f"{name} must be a nanosecond timestamp or YYYY-MM-DD, got {raw!r}") from None
    first = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000_000
    return first, first + _NS_PER_DAY - 1
