"""What the simulator's Massive-like REST endpoints share: the reply type, Massive's error body, the API
key check (Bearer header or `apiKey` query parameter, as Massive accepts both) and opaque page cursors."""

from __future__ import annotations

import base64
import hmac
import uuid
from typing import Any
from urllib.parse import parse_qs

import orjson

Reply = tuple[int, bytes, dict[str, str]]


def error(status: int, message: str) -> Reply:
    """Massive's error body."""
    return status, orjson.dumps({"status": "ERROR", "request_id": uuid.uuid4().hex, "error": message}), {}


def authorize(
    query_string: str, headers: dict[str, str], api_key: bytes
) -> tuple[dict[str, str], Reply | None]:
    """The request's query parameters (first value each), and the 401 reply for a missing or wrong key
    or None when the key is right (constant-time compare); `headers` have lower-case names."""
    query = {k: v[0] for k, v in parse_qs(query_string, keep_blank_values=True).items()}
    return query, check_api_key(query, headers, api_key)


def check_api_key(query: dict[str, str], headers: dict[str, str], api_key: bytes) -> Reply | None:
    """The 401 reply for a missing or wrong key, or None when the key is right."""
    auth = headers.get("authorization", "")
    key = auth[7:].strip() if auth[:7].lower() == "bearer " else query.get("apiKey", "")
    if not key:
        return error(401, "API Key was not provided")
    if not hmac.compare_digest(key.encode(), api_key):
        return error(401, "Unknown API Key")
    return None


def encode_cursor(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(state)).decode().rstrip("=")


def decode_cursor(cursor: str) -> Any:
    """The state of a cursor (raises ValueError or orjson.JSONDecodeError when it is not one)."""
    return orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
