"""Massive's `GET /v3/reference/conditions`, served by the simulator from the shipped snapshot.

The table is the one the feature core applies (`tradepulse/core/data/conditions.json`), so
`tradepulse conditions refresh` against the simulator round-trips it. Like Massive: the key as
`apiKey` or `Authorization: Bearer`; filters `asset_class`, `data_type`, `id`, `sip`; `limit`
(default 10, at most 1000) with a `next_url` carrying a `cursor` while more results follow; results
ordered by `id` (`order=asc|desc`).
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

import orjson

from tradepulse.core.conditions import read_snapshot
from tradepulse.errors import InvalidArgument
from tradepulse.sources.simulator.rest import Reply, authorize, decode_cursor, encode_cursor, error

CONDITIONS_PATH = "/v3/reference/conditions"
DEFAULT_LIMIT = 10
MAX_LIMIT = 1000


class ConditionsApi:
    """The condition table of the snapshot, as Massive's REST endpoint (see the module docstring)."""

    def __init__(self, api_key: str, results: list[dict[str, Any]] | None = None) -> None:
        self._api_key = api_key.encode()
        self.results = results if results is not None else read_snapshot()["results"]
        self.requests = 0

    def handle(self, method: str, target: str, headers: dict[str, str], base_url: str) -> Reply:
        """Answer one request; `headers` have lower-case names."""
        url = urlsplit(target)
        if url.path.rstrip("/") != CONDITIONS_PATH:
            return error(404, "Not found")
        if method != "GET":
            return error(405, "Method not allowed")
        query, denied = authorize(url.query, headers, self._api_key)
        if denied is not None:
            return denied
        self.requests += 1
        if "cursor" in query:
            try:
                state = decode_cursor(query["cursor"])
                query, offset = dict(state["query"]), int(state["offset"])
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                return error(400, "invalid cursor")
        else:
            offset = 0
        try:
            rows, limit = self._select(query)
        except ValueError as exc:
            return error(400, str(exc))
        page = rows[offset : offset + limit]
        body: dict[str, Any] = {
            "results": page,
            "status": "OK",
            "request_id": uuid.uuid4().hex,
            "count": len(page),
        }
        if offset + limit < len(rows):
            state = {"query": query, "offset": offset + limit}
            cursor = encode_cursor(state)
            body["next_url"] = f"{base_url}{CONDITIONS_PATH}?cursor={cursor}"
        return 200, orjson.dumps(body), {}

    def _select(self, query: dict[str, str]) -> tuple[list[dict[str, Any]], int]:
        rows = list(self.results)
        if "asset_class" in query:
            rows = [r for r in rows if r.get("asset_class") == query["asset_class"]]
        if "data_type" in query:
            rows = [r for r in rows if query["data_type"] in r.get("data_types", ())]
        if "sip" in query:
            rows = [r for r in rows if query["sip"] in r.get("sip_mapping", {})]
        if "id" in query:
            try:
                wanted = int(query["id"])
            except ValueError:
                raise InvalidArgument("id must be an integer") from None
            rows = [r for r in rows if r.get("id") == wanted]
        order = query.get("order", "asc")
        if order not in ("asc", "desc"):
            raise InvalidArgument(f"order must be asc or desc, got {order!r}")
        rows.sort(key=lambda r: r["id"], reverse=order == "desc")
        try:
            limit = int(query.get("limit", DEFAULT_LIMIT))
        except ValueError:
            raise InvalidArgument("limit must be an integer") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgument(f"limit must be between 1 and {MAX_LIMIT}")
        return rows, limit
