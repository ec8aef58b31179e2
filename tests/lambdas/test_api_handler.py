"""The API function: an API Gateway HTTP API (payload v2) event through Mangum into the FastAPI app."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import LambdaContext


def http_event(path: str) -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": "api.example.com", "accept": "application/json"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "api.example.com",
            "http": {
                "method": "GET",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "t",
            },
            "requestId": "r1",
            "routeKey": "$default",
            "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000",
            "timeEpoch": 1767225600000,
        },
        "isBase64Encoded": False,
    }


def test_tickers_route_through_mangum(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: LambdaContext
) -> None:
    monkeypatch.setenv("TRADEPULSE_DATA_DIR", str(tmp_path))  # an empty local hot store
    from tradepulse.config import get_settings

    get_settings.cache_clear()
    try:
        from api.handler import handler

        response = handler(http_event("/tickers"), lambda_context)
    finally:
        get_settings.cache_clear()
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == {"tickers": []}
