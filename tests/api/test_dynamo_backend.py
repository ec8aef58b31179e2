"""The same app over the DynamoDB hot store (moto), as in Lambda: every read endpoint answers exactly
what it answers over SQLite for the same market written through the same interface, and /health reads
the runner's heartbeat from the table."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws

from tests.api.market import build_market, write_market
from tests.aws import create_hot_table
from tradepulse.api.app import create_app
from tradepulse.api.health import HotStoreRunnerStatusSource
from tradepulse.bus.status import RunnerMetrics, publish_status
from tradepulse.config import Settings
from tradepulse.stores.dynamo_hot import DynamoHotStore
from tradepulse.stores.sqlite_hot import SqliteHotStore

TABLE = "tradepulse-hot"
PATHS = [
    "/quotes/AAPL",
    "/quotes/BRK.B",
    "/aggregations/MSFT",
    "/features/AAPL",
    "/history/AAPL?minutes=15",
    "/anomalies/AAPL?hours=48",
    "/anomalies/MSFT",
    "/sentiment/AAPL?hours=168",
    "/tickers",
    "/quotes/ZZZZ",
    "/features/BRK.B",
    "/sentiment/ZZZZ",
]


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, TestClient]]:
    market = build_market(int(time.time() * 1000))
    tmp: Path = tmp_path_factory.mktemp("ddb")
    with mock_aws():
        ddb: Any = boto3.client("dynamodb", region_name="us-east-1")
        create_hot_table(ddb, TABLE)
        dynamo = DynamoHotStore(TABLE, client=ddb)
        sqlite = SqliteHotStore(tmp / "hot.sqlite3")
        for store in (dynamo, sqlite):
            write_market(store, market)
        dynamo_settings = Settings(data_dir=tmp, hot_store="dynamodb", kafka_bootstrap=None)
        sqlite_settings = Settings(data_dir=tmp, hot_store="sqlite", kafka_bootstrap=None)
        with (
            TestClient(create_app(dynamo_settings, dynamo)) as on_dynamo,
            TestClient(create_app(sqlite_settings, sqlite)) as on_sqlite,
        ):
            yield on_dynamo, on_sqlite
        dynamo.close()
        sqlite.close()


@pytest.mark.parametrize("path", PATHS)
def test_dynamodb_backend_answers_like_sqlite(clients: tuple[TestClient, TestClient], path: str) -> None:
    on_dynamo, on_sqlite = clients
    a, b = on_dynamo.get(path), on_sqlite.get(path)
    assert a.status_code == b.status_code
    assert a.json() == b.json()
    assert a.headers.get("cache-control") == b.headers.get("cache-control")


def test_dynamodb_app_reads_the_runner_status_from_the_store(clients: tuple[TestClient, TestClient]) -> None:
    on_dynamo, _ = clients
    assert isinstance(on_dynamo.app.state.health.runner_source, HotStoreRunnerStatusSource)


@pytest.mark.kafka
def test_dynamodb_health_comes_from_the_runner_status_in_the_store(
    clients: tuple[TestClient, TestClient], kafka_bootstrap: str, tmp_path: Path
) -> None:
    # As in AWS: the runner's status file is on another machine; the API only sees the table.
    store: DynamoHotStore = clients[0].app.state.hot_store
    runner_file = tmp_path / "runner" / "runner-status.json"
    settings = Settings(
        data_dir=tmp_path / "api",
        hot_store="dynamodb",
        kafka_bootstrap=kafka_bootstrap,
        health_commit_stale_s=30,
    )
    with TestClient(create_app(settings, store)) as api:
        never = api.get("/health")
        assert never.status_code == 503
        assert "never reported" in never.json()["components"]["runner"]["detail"]
        assert never.json()["components"]["broker"]["status"] == "ok"

        metrics = RunnerMetrics(consumer_lag=42, dlq_depth=1, backpressure_activations=4)
        metrics.write_ms.extend([3.0, 4.0, 5.0])
        metrics.committed(events=500, batch_ms=2.5)
        publish_status(metrics.snapshot(), runner_file, store)
        fresh = api.get("/health")
        assert fresh.status_code == 200
        body = fresh.json()
        assert body["status"] == "healthy" and body["consumer_lag"] == 42
        assert body["dynamo_latency_p99"] == pytest.approx(5.0, abs=0.1)
        runner = body["components"]["runner"]["metrics"]
        assert runner["events_processed"] == 500 and runner["backpressure_activations"] == 4

        old = time.time() - 31
        publish_status(metrics.snapshot() | {"updated_at": old, "last_commit_at": old}, runner_file, store)
        stale = api.get("/health")
        assert stale.status_code == 503
        assert "no heartbeat" in stale.json()["components"]["runner"]["detail"]
    assert not (tmp_path / "api").exists()  # nothing was read from (or written to) the API's data dir
