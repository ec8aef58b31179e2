"""/health with several processor runners named like ECS tasks (defect 4): on ECS each processor task
runs `--instance <hostname>` and publishes its heartbeat under that name; /health must list every runner
whatever its name, say which one is missing, and sum the pipeline numbers over the live ones. Checked on
both backends: SQLite (heartbeat files in the data dir) and DynamoDB (moto: `STATUS` items).

Before: the API read instance "0" only, so with hostname-named runners it answered 503 "never reported"."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws

from tests.aws import create_hot_table
from tradepulse.api.app import create_app
from tradepulse.bus.status import RunnerMetrics, publish_status, status_path
from tradepulse.config import Settings
from tradepulse.stores.dynamo_hot import DynamoHotStore
from tradepulse.stores.sqlite_hot import SqliteHotStore

pytestmark = pytest.mark.kafka  # a real broker, so that only the runners decide the answer

TASK_A = "ip-10-0-1-23.ec2.internal"
TASK_B = "ip-10-0-2-7.ec2.internal"
TASK_GONE = "ip-10-0-3-99.ec2.internal"


def runner_status(
    lag: int, events: int, *, now: float, age_s: float = 0.0, stopped: bool = False
) -> dict[str, Any]:
    """A heartbeat as the runner builds it (`RunnerMetrics.snapshot`), `age_s` old at `now`."""
    metrics = RunnerMetrics(consumer_lag=lag)
    metrics.committed(events=events, batch_ms=2.0)
    metrics.write_ms.extend([4.0, 6.0])
    if stopped:
        metrics.stopped_at = now
    return metrics.snapshot() | {"updated_at": now - age_s, "last_commit_at": now - age_s}


@pytest.fixture(params=["sqlite", "dynamodb"])
def backend(request: pytest.FixtureRequest, kafka_bootstrap: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """(settings, store, publish(status, instance)) of one hot-store backend, publishing the way the
    runner does (`publish_status`: the instance's file, plus the store when it holds heartbeats). With
    DynamoDB the runner's files are on another machine: the API's data dir stays empty."""
    runner_dir = tmp_path / ("state" if request.param == "sqlite" else "runner-task")
    settings = Settings(
        data_dir=tmp_path / "state",
        kafka_bootstrap=kafka_bootstrap,
        hot_store=request.param,
        health_commit_stale_s=30,
        health_runner_forget_s=900,
    )
    with mock_aws():
        if request.param == "dynamodb":
            ddb: Any = boto3.client("dynamodb", region_name="us-east-1")
            create_hot_table(ddb, "tradepulse-hot")
            store: Any = DynamoHotStore("tradepulse-hot", client=ddb)
        else:
            store = SqliteHotStore(tmp_path / "hot.sqlite3")

        def publish(status: dict[str, Any], instance: str) -> None:
            publish_status(status, status_path(runner_dir, instance), store, instance)

        # The instant the test's heartbeats are aged from and /health judges them at: ages are exact
        # however long the store and the app take (moto can take a second on a busy box).
        now = time.time()
        yield {"settings": settings, "store": store, "publish": publish, "now": now}
        store.close()


def health(backend: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    app = create_app(backend["settings"], backend["store"], wall_clock=lambda: backend["now"])
    with TestClient(app) as client:
        res = client.get("/health")
    return res.status_code, res.json()


def test_every_hostname_named_runner_is_reported_and_summed(backend: dict[str, Any]) -> None:
    backend["publish"](runner_status(lag=40, events=1_000, now=backend["now"]), TASK_A)
    backend["publish"](runner_status(lag=2, events=500, now=backend["now"]), TASK_B)
    code, body = health(backend)
    assert code == 200, body["components"]["runner"]
    assert body["status"] == "healthy"
    components = body["components"]
    assert components[f"runner:{TASK_A}"]["status"] == "ok"
    assert components[f"runner:{TASK_B}"]["status"] == "ok"
    assert components[f"runner:{TASK_A}"]["metrics"]["consumer_lag"] == 40
    runner = components["runner"]
    assert runner["status"] == "ok" and "(2 runners)" in runner["detail"]
    assert runner["metrics"]["runners_live"] == 2 and runner["metrics"]["runners_missing"] == 0
    assert runner["metrics"]["events_processed"] == 1_500
    assert body["consumer_lag"] == 42  # summed over the runners


def test_a_stale_runner_is_missing_while_the_others_serve(backend: dict[str, Any]) -> None:
    backend["publish"](runner_status(lag=40, events=1_000, now=backend["now"]), TASK_A)
    backend["publish"](runner_status(lag=2, events=500, now=backend["now"]), TASK_B)
    backend["publish"](
        runner_status(lag=9_000, events=7, age_s=120, now=backend["now"]), TASK_GONE
    )  # crashed 2 min ago
    code, body = health(backend)
    assert code == 200 and body["status"] == "degraded"
    components = body["components"]
    gone = components[f"runner:{TASK_GONE}"]
    assert gone["status"] == "down" and "no heartbeat for 120 s" in gone["detail"]
    runner = components["runner"]
    assert runner["status"] == "degraded"
    assert runner["detail"].startswith(f"2 of 3 runners live; missing: {TASK_GONE} (no heartbeat for")
    assert runner["metrics"]["runners_live"] == 2 and runner["metrics"]["runners_missing"] == 1
    assert body["consumer_lag"] == 42  # the lost runner's last lag is not the pipeline's


def test_all_runners_silent_is_unhealthy(backend: dict[str, Any]) -> None:
    backend["publish"](runner_status(lag=0, events=1, age_s=60, now=backend["now"]), TASK_A)
    backend["publish"](runner_status(lag=0, events=1, age_s=45, now=backend["now"]), TASK_B)
    code, body = health(backend)
    assert code == 503
    assert body["components"]["runner"]["status"] == "down"
    assert "no heartbeat from any of 2 runners for 45 s" in body["components"]["runner"]["detail"]


def test_a_stuck_runner_is_unhealthy(backend: dict[str, Any]) -> None:
    backend["publish"](runner_status(lag=10, events=1_000, now=backend["now"]), TASK_A)
    stuck = runner_status(lag=500, events=10, now=backend["now"]) | {"last_commit_at": backend["now"] - 40}
    backend["publish"](stuck, TASK_B)
    code, body = health(backend)
    assert code == 503
    assert body["components"]["runner"]["detail"] == f"{TASK_B}: no commit for 40 s with 500 messages of lag"


def test_stopped_and_long_gone_runners_are_not_listed(backend: dict[str, Any]) -> None:
    """A task that stopped gracefully (a deploy) left; one silent past the forget window was replaced."""
    backend["publish"](runner_status(lag=1, events=10, now=backend["now"]), TASK_A)
    backend["publish"](runner_status(lag=0, events=10, stopped=True, now=backend["now"]), TASK_B)
    backend["publish"](runner_status(lag=0, events=10, age_s=3_600, now=backend["now"]), TASK_GONE)
    code, body = health(backend)
    assert code == 200 and body["status"] == "healthy"
    assert sorted(k for k in body["components"] if k.startswith("runner:")) == [f"runner:{TASK_A}"]


def test_only_stopped_runners_is_unhealthy_but_not_never_reported(backend: dict[str, Any]) -> None:
    backend["publish"](runner_status(lag=0, events=10, stopped=True, now=backend["now"]), TASK_A)
    code, body = health(backend)
    assert code == 503
    assert body["components"]["runner"]["detail"].startswith("no runner is running")
