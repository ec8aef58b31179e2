"""What the simulator's Massive-like REST endpoints share: the reply type, Massive's error body, the API
key check (Bearer header or `apiKey` query parameter, as Massive accepts both) and opaque page cursors."""

from __future__ import annotations

import base64
import hmac
import uuid
from typing import Any

import orjson

Reply = tuple[int, bytes, dict[str, str]]


def error(status: int, message: str) -> Reply:
    """Massive's error body."""
    return status, orjson.dumps({"status": "ERROR", "request_id": uuid.uuid4().hex, "error": message}), {}


def check_api_key(query: dict[str, str], headers: dict[str, str], api_key: bytes) -> Reply | None:
    """The 401 reply for a missing or wrong key, or None when the key is right (constant-time compare);
    `headers` have lower-case names."""
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
