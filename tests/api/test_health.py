"""/health from real signals: the runner heartbeat file, a real Kafka broker (or a closed port), and the
thresholds from Settings."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from fastapi.testclient import TestClient
from moto import mock_aws
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import FakeClock, heartbeat
from tradepulse.api.app import create_app
from tradepulse.api.health import (
    BrokerProbe,
    FileRunnerStatusSource,
    HotStoreRunnerStatusSource,
    RunnerStatus,
    error_name,
    runner_status_path,
)
from tradepulse.bus.status import RunnerMetrics, status_path, write_json_atomic
from tradepulse.config import Settings
from tradepulse.models import DeadLetter
from tradepulse.stores.dlq_queues import SqliteDeadLetterQueue
from tradepulse.stores.sqlite_hot import SqliteHotStore


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteHotStore]:
    s = SqliteHotStore(tmp_path_factory.mktemp("hot") / "hot.sqlite3")
    yield s
    s.close()


@pytest.fixture(scope="module")
def live_settings(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("state"),
        kafka_bootstrap=kafka_bootstrap,
        health_commit_stale_s=30,
        health_lag_degraded=10_000,
        health_write_p99_degraded_ms=100,
    )


@pytest.fixture(scope="module")
def live(live_settings: Settings, store: SqliteHotStore) -> Iterator[TestClient]:
    """The API against the session's real broker; each test writes the heartbeat it needs."""
    with TestClient(create_app(live_settings, store)) as client:
        yield client


@pytest.mark.kafka
def test_healthy_with_fresh_heartbeat_and_reachable_broker(live: TestClient, live_settings: Settings) -> None:
    status = heartbeat(live_settings, consumer_lag=250, write_p99_ms=8.5)
    res = live.get("/health")
    assert res.status_code == 200
    assert res.headers["cache-control"] == "no-store"
    body = res.json()
    assert body["status"] == "healthy"
    assert body["consumer_lag"] == 250
    assert body["dynamo_latency_p99"] == 8.5
    assert body["uptime_seconds"] >= 0 and body["checked_at"].endswith("Z")
    components = body["components"]
    assert (
        components["broker"]["status"] == "ok" and components["broker"]["metrics"]["metadata_latency_ms"] > 0
    )
    assert components["runner"]["status"] == "ok"
    assert components["runner"]["metrics"]["events_per_s"] == status["events_per_s"]
    assert components["consumer_lag"]["status"] == "ok" and components["hot_store"]["status"] == "ok"


@pytest.mark.kafka
def test_reads_the_runners_own_status_document(live: TestClient, live_settings: Settings) -> None:
    # The document the real runner writes (tradepulse.bus.status), not a hand-made one.
    metrics = RunnerMetrics(consumer_lag=42, dlq_depth=1, backpressure_activations=4)
    metrics.write_ms.extend([3.0, 4.0, 5.0])
    metrics.committed(events=500, batch_ms=2.5)
    write_json_atomic(status_path(live_settings.data_dir), metrics.snapshot())
    res = live.get("/health")
    assert res.status_code == 200
    body = res.json()
    assert body["status"] == "healthy" and body["consumer_lag"] == 42
    assert body["dynamo_latency_p99"] == pytest.approx(5.0, abs=0.1)
    runner = body["components"]["runner"]["metrics"]
    assert runner["events_processed"] == 500 and runner["dlq_depth"] == 1
    assert runner["backpressure_activations"] == 4


@pytest.mark.kafka
def test_the_runners_e2e_latency_of_the_last_minute_is_on_health_and_metrics(
    live: TestClient, live_settings: Settings
) -> None:
    # The runner's own document again: e2e percentiles are there in every run, not only under the bench
    # (before issue 19 the runner wrote none, and /health, /metrics and the dashboard showed nothing).
    metrics = RunnerMetrics()
    now_us = time.time_ns() // 1000
    metrics.record_e2e([{"received_ts_us": now_us - ms * 1000} for ms in range(1, 101)], now_us=now_us)
    metrics.committed(events=100, batch_ms=2.5)
    write_json_atomic(status_path(live_settings.data_dir), metrics.snapshot())
    runner = live.get("/health").json()["components"]["runner"]["metrics"]
    assert runner["e2e_latency_p50_ms"] == pytest.approx(50, rel=0.001)
    assert runner["e2e_latency_p99_ms"] == pytest.approx(99, rel=0.001)
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(live.get("/metrics").text)
        for s in family.samples
    }
    assert samples["tradepulse_e2e_latency_p50_seconds"] == pytest.approx(0.050, rel=0.001)
    assert samples["tradepulse_e2e_latency_p99_seconds"] == pytest.approx(0.099, rel=0.001)


@pytest.mark.kafka
def test_lag_over_threshold_is_degraded(live: TestClient, live_settings: Settings) -> None:
    heartbeat(live_settings, consumer_lag=10_001)
    res = live.get("/health")
    assert res.status_code == 200
    assert res.json()["status"] == "degraded"
    assert res.json()["components"]["consumer_lag"]["status"] == "degraded"


@pytest.mark.kafka
def test_slow_hot_store_writes_are_degraded(live: TestClient, live_settings: Settings) -> None:
    heartbeat(live_settings, write_p99_ms=140.0)
    body = live.get("/health").json()
    assert body["status"] == "degraded" and body["dynamo_latency_p99"] == 140.0
    assert body["components"]["hot_store"]["status"] == "degraded"


@pytest.mark.kafka
def test_no_commit_for_too_long_with_lag_is_unhealthy(live: TestClient, live_settings: Settings) -> None:
    now = time.time()
    heartbeat(live_settings, updated_at=now, last_commit_at=now - 45, consumer_lag=900)
    res = live.get("/health")
    assert res.status_code == 503
    body = res.json()
    assert body["status"] == "unhealthy"
    assert (
        body["components"]["runner"]["status"] == "down"
        and "no commit" in body["components"]["runner"]["detail"]
    )


@pytest.mark.kafka
def test_idle_caught_up_runner_is_healthy(live: TestClient, live_settings: Settings) -> None:
    # Nothing to consume means nothing to commit: a live heartbeat with zero lag is healthy.
    now = time.time()
    heartbeat(live_settings, updated_at=now, last_commit_at=now - 600, consumer_lag=0)
    assert live.get("/health").json()["status"] == "healthy"


@pytest.mark.kafka
def test_stale_heartbeat_is_unhealthy(live: TestClient, live_settings: Settings) -> None:
    old = time.time() - 31
    heartbeat(live_settings, updated_at=old, last_commit_at=old)
    res = live.get("/health")
    assert res.status_code == 503
    assert "no heartbeat" in res.json()["components"]["runner"]["detail"]


@pytest.mark.kafka
def test_missing_or_corrupt_heartbeat_is_unhealthy(live: TestClient, live_settings: Settings) -> None:
    path = runner_status_path(live_settings)
    path.write_text('{"consumer_lag": ')  # what a torn write would look like
    res = live.get("/health")
    assert res.status_code == 503 and res.json()["components"]["runner"]["status"] == "down"
    path.unlink()
    res = live.get("/health")
    assert res.status_code == 503 and res.json()["consumer_lag"] is None
    assert res.json()["components"]["consumer_lag"]["status"] == "unknown"


@pytest.mark.kafka
def test_thresholds_come_from_settings(live_settings: Settings, store: SqliteHotStore) -> None:
    strict = live_settings.model_copy(update={"health_lag_degraded": 10, "health_write_p99_degraded_ms": 5})
    heartbeat(live_settings, consumer_lag=11, write_p99_ms=4.0)
    with TestClient(create_app(strict, store)) as client:
        body = client.get("/health").json()
    assert body["status"] == "degraded"
    assert body["components"]["consumer_lag"]["status"] == "degraded"
    assert body["components"]["hot_store"]["status"] == "ok"


def test_unreachable_broker_is_unhealthy(tmp_path: Path, store: SqliteHotStore) -> None:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=f"127.0.0.1:{closed_port()}")
    heartbeat(settings)
    with TestClient(create_app(settings, store)) as client:
        res = client.get("/health")
    assert res.status_code == 503
    body = res.json()
    assert body["status"] == "unhealthy"
    assert body["components"]["broker"]["status"] == "down"
    assert body["components"]["runner"]["status"] == "ok"  # only the broker is at fault


def test_no_broker_configured_is_unhealthy(tmp_path: Path, store: SqliteHotStore) -> None:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=None)
    heartbeat(settings)
    with TestClient(create_app(settings, store)) as client:
        res = client.get("/health")
    assert res.status_code == 503
    assert "no Kafka broker" in res.json()["components"]["broker"]["detail"]


def test_broker_probe_is_cached_between_checks(tmp_path: Path) -> None:
    clock = FakeClock()
    probe = BrokerProbe(
        Settings(data_dir=tmp_path, kafka_bootstrap=f"127.0.0.1:{closed_port()}"), clock=clock
    )
    first = probe.check()
    assert not first.reachable
    clock.advance(2.9)
    assert probe.check() is first  # served from the cache: no second metadata request
    clock.advance(0.2)
    assert probe.check() is not first


def test_heartbeat_file_round_trip_keeps_unknown_fields(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    written = heartbeat(settings, partitions_assigned=6)
    status = FileRunnerStatusSource(runner_status_path(settings)).read()
    assert status is not None
    assert status.last_commit_at == written["last_commit_at"]
    assert status.model_extra == {"partitions_assigned": 6}


def test_hot_store_status_source_reads_the_stores_runner_statuses(
    tmp_path: Path, store: SqliteHotStore
) -> None:
    # SqliteHotStore keeps no runner statuses (locally the file is used): reads as "never reported".
    assert HotStoreRunnerStatusSource(store).read() is None

    class StoreWithStatus(SqliteHotStore):
        def get_runner_statuses(self) -> dict[str, dict[str, Any]]:
            return {
                "0": {"last_commit_at": 123.0, "updated_at": 124.0, "consumer_lag": 7},
                "1": {"last_commit_at": 100.0, "updated_at": 101.0, "consumer_lag": 2},
            }

    with StoreWithStatus(tmp_path / "with-status.sqlite3") as with_status:
        status = HotStoreRunnerStatusSource(with_status).read()
    assert isinstance(status, RunnerStatus) and status.consumer_lag == 7 and status.heartbeat_at == 124.0


def dead_letter(n: int) -> dict[str, object]:
    return DeadLetter(
        dead_letter_id=f"dl-{n}",
        stage="processor",
        payload='{"ev": "T"}',
        error_type="ValidationError",
        reason="price must be > 0",
        first_failure_at="2026-11-24T05:00:00Z",
        last_failure_at="2026-11-24T05:00:00Z",
    ).model_dump()


def test_dlq_depth_comes_from_the_queue_when_the_api_has_one(tmp_path: Path, store: SqliteHotStore) -> None:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=None)
    heartbeat(settings, dlq_depth=3)  # the runner's (older) view
    clock = FakeClock()
    dlq = SqliteDeadLetterQueue(tmp_path / "dlq.sqlite3")
    try:
        dlq.put([dead_letter(1), dead_letter(2)])
        with TestClient(create_app(settings, store, dlq=dlq, clock=clock)) as client:
            component = client.get("/health").json()["components"]["dlq"]
            assert component["metrics"]["dlq_depth"] == 2 and "sqlite queue" in component["detail"]
            dlq.put([dead_letter(3)])
            clock.advance(3.0)  # past the depth cache
            assert "tradepulse_dlq_depth 3.0" in client.get("/metrics").text
    finally:
        dlq.close()


def test_lambda_settings_read_the_dlq_depth_from_sqs(tmp_path: Path, store: SqliteHotStore) -> None:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="tradepulse-dlq")["QueueUrl"]
        for n in range(4):
            sqs.send_message(QueueUrl=url, MessageBody=f"letter {n}")
        settings = Settings(data_dir=tmp_path, kafka_bootstrap=None, dlq_backend="sqs", sqs_dlq_url=url)
        with TestClient(create_app(settings, store)) as client:
            component = client.get("/health").json()["components"]["dlq"]
    assert component["metrics"]["dlq_depth"] == 4 and "sqs queue" in component["detail"]


class UnreachableDynamoStore(SqliteHotStore):
    """A real hot store whose runner-status read fails as DynamoDB's does when its endpoint is down (the
    injected failure; everything else is the real store)."""

    def get_runner_statuses(self) -> dict[str, dict[str, Any]]:
        raise EndpointConnectionError(endpoint_url="https://admin:s3cr3t@dynamodb.us-east-1.amazonaws.com")


def test_hot_store_failing_the_status_read_is_a_503_naming_it(tmp_path: Path) -> None:
    # Before: the exception escaped the handler and /health answered a bare 500.
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=None, hot_store="dynamodb")
    store = UnreachableDynamoStore(tmp_path / "hot.sqlite3")
    try:
        with TestClient(create_app(settings, store)) as client:
            res = client.get("/health")
            metrics = client.get("/metrics")
    finally:
        store.close()
    assert res.status_code == 503 and res.headers["cache-control"] == "no-store"
    body = res.json()
    assert body["status"] == "unhealthy"
    hot = body["components"]["hot_store"]
    assert hot["status"] == "down" and hot["error"] == "EndpointConnectionError"
    assert hot["detail"] == "dynamodb runner status read failed: EndpointConnectionError"
    assert body["components"]["runner"]["status"] == "unknown"
    assert body["consumer_lag"] is None and body["components"]["consumer_lag"]["status"] == "unknown"
    assert "s3cr3t" not in res.text and "amazonaws" not in res.text  # never the connection string
    # The scrape goes on without the runner's numbers (and without claiming the runner never reported).
    assert metrics.status_code == 200 and "tradepulse_runner_up" not in metrics.text
    assert "tradepulse_broker_up 0.0" in metrics.text


def test_error_names_carry_the_aws_error_code_but_never_the_message() -> None:
    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": "s3cr3t"}}, "GetItem")
    assert error_name(throttled) == "ClientError (ThrottlingException)"
    assert error_name(PermissionError(13, "denied", "/secret/path")) == "PermissionError"


def test_unreadable_heartbeat_file_is_a_503_naming_the_runner(tmp_path: Path, store: SqliteHotStore) -> None:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=None)
    runner_status_path(settings).mkdir(parents=True)  # a directory where the file should be
    with TestClient(create_app(settings, store)) as client:
        res = client.get("/health")
    assert res.status_code == 503
    runner = res.json()["components"]["runner"]
    assert runner == {
        "status": "down",
        "detail": "runner status read failed: IsADirectoryError",
        "metrics": {},
        "error": "IsADirectoryError",
    }
    assert str(tmp_path) not in res.text
