"""`tradepulse conditions refresh`: re-fetch Massive's trade-condition table into the package snapshot.

Pages through `GET /v3/reference/conditions?asset_class=stocks&data_type=trade&limit=1000` (the key in
the `Authorization: Bearer` header, as for the trades backfill; only the path and query of `next_url`
are followed, against the configured base URL), checks that the result parses as condition rules
(`ConditionRules.from_response`), and writes it in the snapshot's shape: the API body plus a
`snapshot` block (endpoint, retrieval date, source, `row_sources` = `api` for every row).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
from pydantic import SecretStr

from tradepulse.core.conditions import ConditionRules
from tradepulse.errors import SourceError
from tradepulse.sources.backfill import error_message

CONDITIONS_PATH = "/v3/reference/conditions"
QUERY = {"asset_class": "stocks", "data_type": "trade"}
PAGE_LIMIT = 1000  # Massive's maximum
MAX_PAGES = 100  # the stock table is ~60 rows: one page; a looping next_url must not run forever


class ConditionsRefreshError(SourceError):
    """The conditions endpoint could not be read (network, key, unexpected answer)."""


def fetch_conditions(
    base_url: str,
    api_key: SecretStr,
    *,
    timeout_s: float = 10.0,
    page_limit: int = PAGE_LIMIT,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Every stock trade condition from `base_url`, as one response body (`results`, `count`)."""
    base = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key.get_secret_value()}"}
    results: list[dict[str, Any]] = []
    target: str | None = f"{CONDITIONS_PATH}?{urlencode(QUERY | {'limit': str(page_limit)})}"
    seen: set[str] = set()
    with httpx.Client(base_url=base, headers=headers, timeout=timeout_s) as http:
        while target is not None and target not in seen and len(seen) < MAX_PAGES:
            seen.add(target)
            body = _get(http, base, target)
            page = body.get("results")
            if not isinstance(page, list):
                raise ConditionsRefreshError(f"{base}{CONDITIONS_PATH}: the answer has no 'results' list")
            results.extend(page)
            progress(f"page {len(seen)}: {len(page)} conditions ({len(results)} so far)")
            next_url = body.get("next_url")
            target = _follow(next_url) if isinstance(next_url, str) and next_url else None
    return {"status": "OK", "count": len(results), "results": results}


def snapshot_document(body: dict[str, Any], base_url: str, today: dt.date | None = None) -> dict[str, Any]:
    """The snapshot file's content for a fetched body (validated as condition rules first)."""
    ConditionRules.from_response(body)  # InvalidArgument when the table is unusable
    results = sorted(body["results"], key=lambda r: (r.get("id", -1), r.get("asset_class", "")))
    return {
        "snapshot": {
            "endpoint": f"GET {CONDITIONS_PATH}?{urlencode(QUERY | {'limit': str(PAGE_LIMIT)})}",
            "retrieved": (today or dt.datetime.now(dt.UTC).date()).isoformat(),
            "produced_by": f"tradepulse conditions refresh from {base_url.rstrip('/')}",
            "row_sources": {str(r["id"]): "api" for r in results if isinstance(r.get("id"), int)},
        },
        "status": "OK",
        "count": len(results),
        "results": results,
    }


def write_snapshot(document: dict[str, Any], path: Path) -> None:
    """Write atomically (temp file + rename): a reader never sees half a table."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def _get(http: httpx.Client, base: str, target: str) -> dict[str, Any]:
    where = f"{base}{urlsplit(target).path}"  # never the query: it may carry a cursor
    try:
        response = http.get(target)
    except httpx.HTTPError as exc:
        raise ConditionsRefreshError(f"{where}: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise ConditionsRefreshError(f"{where}: HTTP {response.status_code}: {error_message(response)}")
    try:
        body = response.json()
    except ValueError as exc:
        raise ConditionsRefreshError(f"{where}: the answer is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ConditionsRefreshError(f"{where}: the answer is not a JSON object")
    return body


def _follow(next_url: str) -> str:
    parts = urlsplit(next_url)
    if parts.path.rstrip("/") != CONDITIONS_PATH:
        raise ConditionsRefreshError(f"unexpected next_url path {parts.path!r}")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "apiKey"]
    return parts.path + ("?" + urlencode(query) if query else "")
