"""The Lambda entry point (`lambdas/api/handler.py`, Mangum over create_app()) driven with API Gateway
HTTP API (payload v2) events. The app is configured from the environment exactly as in Lambda: the read
endpoints with the SQLite backend (a real store), /health with the DynamoDB backend on moto, where the
runner's heartbeat is an item in the table."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import boto3
import pytest
from mangum import Mangum
from moto import mock_aws

from tests.api.market import Market, build_market, write_market
from tests.aws import create_hot_table
from tests.paths import REPO_ROOT
from tradepulse.bus.status import RunnerMetrics, publish_status
from tradepulse.config import Settings, get_settings
from tradepulse.stores.dynamo_hot import DynamoHotStore
from tradepulse.stores.sqlite_hot import SqliteHotStore

HANDLER = REPO_ROOT / "lambdas" / "api" / "handler.py"

# Powertools' metrics wrapper warns when an invocation emitted no custom metric; irrelevant here.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def http_api_event(path: str, query: str = "") -> dict[str, Any]:
    """A minimal but complete API Gateway HTTP API payload-format-2.0 event."""
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {
            "accept": "application/json",
            "host": "abc123.execute-api.us-east-1.amazonaws.com",
            "user-agent": "pytest",
            "x-forwarded-proto": "https",
            "x-forwarded-port": "443",
        },
        "queryStringParameters": dict(p.split("=", 1) for p in query.split("&")) if query else None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": "GET",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "pytest",
            },
            "requestId": "req-1",
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }


def load_handler(mp: pytest.MonkeyPatch, name: str, env: dict[str, str]) -> ModuleType:
    """Import the handler module (which builds the app from settings) with `env` set as in Lambda."""
    for key, value in env.items():
        mp.setenv(key, value)
    # What the Lambda environment sets for the Powertools wrappers around the handler.
    mp.setenv("POWERTOOLS_SERVICE_NAME", "tradepulse-api")
    mp.setenv("POWERTOOLS_METRICS_NAMESPACE", "TradePulse")
    mp.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    get_settings.cache_clear()
    spec = importlib.util.spec_from_file_location(name, HANDLER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lambda_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, Market]]:
    data_dir = tmp_path_factory.mktemp("lambda")
    market = build_market(int(time.time() * 1000))
    with SqliteHotStore(Settings(data_dir=data_dir).sqlite_path) as store:
        write_market(store, market)
    with pytest.MonkeyPatch.context() as mp:
        env = {"TRADEPULSE_HOT_STORE": "sqlite", "TRADEPULSE_DATA_DIR": str(data_dir)}
        module = load_handler(mp, "tradepulse_lambda_api_handler", env | {"TRADEPULSE_KAFKA_BOOTSTRAP": ""})
        yield module, market
    get_settings.cache_clear()
    asgi_app(module).state.hot_store.close()


@pytest.fixture(scope="module")
def dynamo_lambda(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ModuleType, DynamoHotStore]]:
    """The handler over a DynamoDB table (moto) and a reachable broker, and the runner's view of the table."""
    table = "tradepulse-hot"
    with mock_aws(), pytest.MonkeyPatch.context() as mp:
        ddb: Any = boto3.client("dynamodb", region_name="us-east-1")
        create_hot_table(ddb, table)
        env = {
            "TRADEPULSE_HOT_STORE": "dynamodb",
            "TRADEPULSE_DYNAMODB_TABLE": table,
            "AWS_REGION": "us-east-1",
            "TRADEPULSE_DATA_DIR": str(tmp_path_factory.mktemp("lambda-ddb")),
            "TRADEPULSE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        }
        module = load_handler(mp, "tradepulse_lambda_api_handler_ddb", env)
        runner_side = DynamoHotStore(table, client=ddb)
        yield module, runner_side
        runner_side.close()
        asgi_app(module).state.hot_store.close()
    get_settings.cache_clear()


def asgi_app(module: ModuleType) -> Any:
    """The FastAPI app inside the handler module's Mangum adapter."""
    adapter = next(v for v in vars(module).values() if isinstance(v, Mangum))
    return adapter.app


def invoke(module: ModuleType, path: str, query: str = "") -> dict[str, Any]:
    context = SimpleNamespace(
        function_name="tradepulse-api",
        function_version="$LATEST",
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:tradepulse-api",
        memory_limit_in_mb=512,
        aws_request_id="req-1",
        log_group_name="/aws/lambda/tradepulse-api",
        log_stream_name="2026/11/24/[$LATEST]abc",
        get_remaining_time_in_millis=lambda: 29_000,
    )
    return module.handler(http_api_event(path, query), context)


def test_quote_through_api_gateway_event(lambda_env: tuple[ModuleType, Market]) -> None:
    module, market = lambda_env
    out = invoke(module, "/quotes/AAPL")
    assert out["statusCode"] == 200
    assert out["headers"]["cache-control"] == "max-age=1"
    body = json.loads(out["body"])
    assert body["price"] == market.trades["AAPL"][-1]["price"]
    assert body["sequence_number"] == market.trades["AAPL"][-1]["sequence"]


def test_query_strings_and_errors_through_api_gateway_event(lambda_env: tuple[ModuleType, Market]) -> None:
    module, _ = lambda_env
    week = invoke(module, "/sentiment/AAPL", "hours=168")
    assert week["statusCode"] == 200 and json.loads(week["body"])["summary"]["articles"] == 4
    assert invoke(module, "/anomalies/AAPL", "hours=500")["statusCode"] == 422
    assert invoke(module, "/quotes/aapl")["statusCode"] == 422
    missing = invoke(module, "/quotes/ZZZZ")
    assert missing["statusCode"] == 404 and "ZZZZ" in json.loads(missing["body"])["detail"]


def test_health_in_lambda_reports_real_state(lambda_env: tuple[ModuleType, Market]) -> None:
    # No runner heartbeat and no broker configured in this environment: that is unhealthy, honestly.
    module, _ = lambda_env
    out = invoke(module, "/health")
    assert out["statusCode"] == 503
    body = json.loads(out["body"])
    assert body["components"]["runner"]["status"] == "down"
    assert body["components"]["broker"]["status"] == "down"


@pytest.mark.kafka
def test_health_in_lambda_reads_the_runner_status_from_dynamodb(
    dynamo_lambda: tuple[ModuleType, DynamoHotStore], tmp_path: Path
) -> None:
    module, runner_side = dynamo_lambda
    assert isinstance(asgi_app(module).state.hot_store, DynamoHotStore)
    missing = invoke(module, "/health")
    assert missing["statusCode"] == 503
    body = json.loads(missing["body"])
    assert body["components"]["runner"]["status"] == "down"
    assert "never reported" in body["components"]["runner"]["detail"]
    assert body["components"]["broker"]["status"] == "ok"

    # What the ECS runner does after a commit: the file on its own disk and the item in the table.
    metrics = RunnerMetrics(consumer_lag=12)
    metrics.committed(events=300, batch_ms=1.5)
    publish_status(metrics.snapshot(), tmp_path / "runner-status.json", runner_side)
    healthy = invoke(module, "/health")
    assert healthy["statusCode"] == 200
    body = json.loads(healthy["body"])
    assert body["status"] == "healthy" and body["consumer_lag"] == 12
    assert body["components"]["runner"]["metrics"]["events_processed"] == 300


@pytest.mark.kafka
def test_health_in_lambda_is_a_503_naming_dynamodb_when_the_table_is_gone(
    dynamo_lambda: tuple[ModuleType, DynamoHotStore],
) -> None:
    module, runner_side = dynamo_lambda
    ddb = runner_side.client
    ddb.delete_table(TableName=runner_side.table)  # DynamoDB answers, but not with the runner status
    try:
        out = invoke(module, "/health")
        scrape = invoke(module, "/metrics")
    finally:
        create_hot_table(ddb, runner_side.table)
    assert out["statusCode"] == 503
    body = json.loads(out["body"])
    assert body["status"] == "unhealthy"
    hot = body["components"]["hot_store"]
    assert hot["status"] == "down" and hot["error"] == "ResourceNotFoundException"
    assert "dynamodb" in hot["detail"] and body["components"]["runner"]["status"] == "unknown"
    assert body["components"]["broker"]["status"] == "ok"  # only the store is at fault
    assert runner_side.table not in out["body"]  # the error class, not the message naming the table
    assert scrape["statusCode"] == 200


def test_dashboard_and_openapi_through_api_gateway_event(lambda_env: tuple[ModuleType, Market]) -> None:
    module, _ = lambda_env
    page = invoke(module, "/")
    assert page["statusCode"] == 200 and "TradePulse" in page["body"]
    schema = invoke(module, "/openapi.json")
    assert schema["statusCode"] == 200 and "/quotes/{ticker}" in json.loads(schema["body"])["paths"]


def test_handler_builds_the_app_from_settings(lambda_env: tuple[ModuleType, Market]) -> None:
    module, _ = lambda_env
    state = asgi_app(module).state
    assert isinstance(state.hot_store, SqliteHotStore)
    assert Path(state.settings.data_dir) == Path(state.hot_store.path).parent
