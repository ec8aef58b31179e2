"""Least privilege (issue 14, defect 11): each service's secrets, S3, Athena/Glue and DynamoDB grants are
exactly what its code calls. The calls are recorded from the real store and API code running on moto
(every botocore operation the clients make), mapped to IAM actions, and compared with the synthesized
template. Kafka and SQS grants are checked elsewhere (tests/cdk/test_stack.py and the MSK ACL tests)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws

from cdk.storage import HISTORY_GLUE_ACTIONS, HISTORY_QUERY_ACTIONS
from tests.api.market import build_market, write_market
from tests.aws import create_hot_table
from tests.cdk.conftest import policy_actions, resources, synth_template
from tests.stores.conftest import BASE_MS, make_anomaly, make_bar, make_correlation, make_feature, make_trade
from tradepulse import topics
from tradepulse.api.app import create_app
from tradepulse.bus.anomaly_checkpoints import CheckpointStore
from tradepulse.bus.status import RunnerMetrics, publish_status
from tradepulse.config import Settings
from tradepulse.core.anomaly import Checkpoint
from tradepulse.stores.cold_history import AthenaColdHistory
from tradepulse.stores.dlq import make_dead_letter
from tradepulse.stores.dynamo_hot import DynamoHotStore
from tradepulse.stores.parquet_cold import ParquetColdStore, S3Target

TABLE = "tradepulse-hot"
BUCKET = "tradepulse-cold"
# botocore operation → the IAM action that authorizes it (S3 names differ from its API names).
S3_ACTIONS = {"GetObject": "s3:GetObject", "HeadObject": "s3:GetObject", "PutObject": "s3:PutObject",
              "ListObjectsV2": "s3:ListBucket", "DeleteObject": "s3:DeleteObject",
              "DeleteObjects": "s3:DeleteObject"}  # fmt: skip
# Only these services' grants are this test's business.
SCOPE = ("dynamodb:", "s3:", "athena:", "glue:", "secretsmanager:")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return synth_template(tmp_path_factory.mktemp("prod"), env="prod")


def scoped(granted: dict[str, set[str]]) -> dict[str, set[str]]:
    return {action: res for action, res in granted.items() if action.startswith(SCOPE)}


def recording(client: Any, calls: set[str], prefix: str) -> Any:
    """`client`, recording the IAM action of every operation it sends into `calls`."""

    def record(model: Any, **_: Any) -> None:
        name = model.name
        calls.add(S3_ACTIONS.get(name, f"s3:{name}") if prefix == "s3" else f"{prefix}:{name}")

    client.meta.events.register("before-call", record)
    return client


@pytest.fixture
def aws() -> Iterator[Callable[[str], Any]]:
    with mock_aws():
        yield lambda service: boto3.client(service, region_name="us-east-1")


def processor_calls(aws: Callable[[str], Any]) -> set[str]:
    """What the processor's hot and cold stores call, over every code path they have: a full batch (trades,
    features, anomalies, correlations, bars, twice for the duplicate paths), the heartbeat, a cold store
    that flushes, dies, restarts from its checkpoints, and archives dead letters, and the anomaly model
    checkpoints saved and restored on the cold bucket."""
    calls: set[str] = set()
    ddb = aws("dynamodb")
    create_hot_table(ddb, TABLE)
    hot = DynamoHotStore(TABLE, client=recording(ddb, calls, "dynamodb"), trades_mode="latest")
    batch = {
        "trades": [make_trade(seq=i, ts_ms=BASE_MS + i) for i in range(30)],
        "features": [make_feature(ts_ms=BASE_MS + 1000 * i) for i in range(3)],
        "anomalies": [make_anomaly()],
        "correlations": [make_correlation()],
        "bars": [make_bar()],
    }
    for _ in range(2):
        hot.write_batch(**batch)
    publish_status(RunnerMetrics().snapshot(), Path("/dev/null"), hot, instance="ip-10-0-1-2")
    hot.close()

    s3 = aws("s3")
    s3.create_bucket(Bucket=BUCKET)
    client = recording(s3, calls, "s3")
    root = f"s3://{BUCKET}/tradepulse"
    rows = [make_trade(seq=o, ts_ms=BASE_MS + o) for o in range(10)]
    first = ParquetColdStore(root, block_offsets=10, s3_client=client)
    assert first.next_offset(topics.TRADES, 3) is None  # no checkpoint yet: NoSuchKey
    first.append_batch(topics.TRADES, rows[:6], [(3, offset) for offset in range(6)], flush=False)
    first.flush(force=True)  # then the process dies
    second = ParquetColdStore(root, block_offsets=10, s3_client=client)
    second.append_batch(topics.TRADES, rows[4:], [(3, offset) for offset in range(4, 10)], flush=False)
    second.archive_dead_letters(
        [
            make_dead_letter(
                stage="processor",
                payload=b"{",
                error_type="bad_json",
                reason="not JSON",
                source_topic=topics.TRADES,
                source_partition=3,
                source_offset=11,
            )
        ]
    )
    second.close()
    assert second.files("trades") and second.next_offset(topics.TRADES, 3) == 10
    # The anomaly model checkpoints, on the same target: saved, then restored by another task.
    checkpoints = CheckpointStore(S3Target(BUCKET, "tradepulse", client=client))
    for offset in range(0, 4000, 600):
        checkpoints.save(Checkpoint("3", offset, BASE_MS + offset, b"model state"))
    restored = CheckpointStore(S3Target(BUCKET, "tradepulse", client=client))
    assert restored.latest("3", 1799) == b"model state" and restored.offsets("3")[-1] == 3600
    return calls


def api_calls(aws: Callable[[str], Any], tmp_path: Path) -> set[str]:
    """What the API calls when every endpoint (market data, /health, /metrics) is requested; the 168 h
    windows reach past the hot TTL, so they query Athena."""
    calls: set[str] = set()
    ddb = aws("dynamodb")
    create_hot_table(ddb, TABLE)
    writer = DynamoHotStore(TABLE, client=ddb)
    write_market(writer, build_market(int(time.time() * 1000)))
    publish_status(RunnerMetrics().snapshot(), tmp_path / "status.json", writer, instance="ip-10-0-1-2")
    store = DynamoHotStore(TABLE, client=recording(aws("dynamodb"), calls, "dynamodb"))
    settings = Settings(data_dir=tmp_path, hot_store="dynamodb", cold_store="s3", kafka_bootstrap=None)
    athena = aws("athena")
    athena.create_work_group(Name=settings.athena_workgroup, Configuration={})
    cold = AthenaColdHistory(
        database=settings.glue_database,
        workgroup=settings.athena_workgroup,
        client=recording(athena, calls, "athena"),
    )
    paths = ["/quotes/AAPL", "/aggregations/MSFT", "/features/AAPL", "/history/AAPL?minutes=15",
             "/anomalies/AAPL?hours=48", "/anomalies", "/sentiment/AAPL?hours=168", "/sentiment",
             "/tickers", "/quotes/ZZZZ", "/health", "/metrics", "/"]  # fmt: skip
    with TestClient(create_app(settings, store, cold_history=cold)) as client:
        for path in paths:
            assert client.get(path).status_code < 500 or path == "/health", path
    return calls


def test_recording_sees_every_call() -> None:
    """The recorder itself: an S3 delete and a DynamoDB scan are seen as their IAM actions."""
    calls: set[str] = set()
    with mock_aws():
        s3 = recording(boto3.client("s3", region_name="us-east-1"), calls, "s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.delete_object(Bucket=BUCKET, Key="x")
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        create_hot_table(ddb, TABLE)
        recording(ddb, calls, "dynamodb").scan(TableName=TABLE)
    assert {"s3:DeleteObject", "s3:CreateBucket", "dynamodb:Scan"} <= calls


def test_processor_gets_exactly_what_its_stores_call(template: dict[str, Any], aws: Any) -> None:
    called = processor_calls(aws)
    assert called == {"dynamodb:BatchWriteItem", "dynamodb:PutItem", "s3:GetObject", "s3:PutObject",
                      "s3:ListBucket"}  # fmt: skip
    granted = scoped(policy_actions(template, "ProcessorTaskTaskRole"))
    assert set(granted) == called, f"extra: {set(granted) - called}, missing: {called - set(granted)}"
    table = logical(template, "AWS::DynamoDB::Table", "HotTable")
    bucket = logical(template, "AWS::S3::Bucket", "ColdBucket")
    for action in ("dynamodb:BatchWriteItem", "dynamodb:PutItem"):
        assert granted[action] == {json.dumps({"Fn::GetAtt": [table, "Arn"]})}  # no index, no other table
    for action in ("s3:GetObject", "s3:PutObject"):
        (objects,) = granted[action]
        assert bucket in objects and objects.endswith('"/tradepulse/*"]]}')  # the cold prefix only
    assert granted["s3:ListBucket"] == {json.dumps({"Fn::GetAtt": [bucket, "Arn"]})}


def test_api_gets_exactly_what_it_calls(template: dict[str, Any], aws: Any, tmp_path: Path) -> None:
    called = api_calls(aws, tmp_path)
    assert called == {"dynamodb:Query", *HISTORY_QUERY_ACTIONS}
    granted = scoped(policy_actions(template, "LambdasApiFnServiceRole"))
    # What Athena itself does with the caller's credentials (moto runs no query, so nothing records it).
    on_behalf = {*HISTORY_GLUE_ACTIONS, "s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload",
                 "s3:ListBucket", "s3:GetBucketLocation"}  # fmt: skip
    expected = called | on_behalf
    assert set(granted) == expected, f"extra: {set(granted) - expected}, missing: {expected - set(granted)}"
    bucket = logical(template, "AWS::S3::Bucket", "ColdBucket")
    objects = granted["s3:GetObject"]
    assert len(objects) == 3 and all(bucket in o for o in objects)
    assert {o.rsplit('"', 2)[-2] for o in objects} == {
        "/tradepulse/anomalies/*",
        "/tradepulse/correlations/*",
        "/athena-results/*",
    }  # the two history datasets and the query results, never the trades or the dead letters
    (results,) = granted["s3:PutObject"]
    assert results.endswith('"/athena-results/*"]]}')
    tables = {r for r in granted["glue:GetTable"] if "table/" in r}
    assert len(tables) == 2 and all("anomalies" in t or "correlations" in t for t in tables)


def test_ingest_and_news_each_read_only_their_own_provider_key(template: dict[str, Any]) -> None:
    """ECS reads a container's secrets with the task's execution role, and GetSecretValue is granted on
    the whole secret even when the container names one JSON key: so one secret per provider. The task
    role reads the same secret (and no other) while it holds the placeholder (first deploy)."""
    massive = logical(template, "AWS::SecretsManager::Secret", "MassiveApiKey")
    finnhub = logical(template, "AWS::SecretsManager::Secret", "FinnhubApiKey")
    expected = {"ingest": ("MASSIVE_API_KEY", massive), "news": ("FINNHUB_API_KEY", finnhub)}
    for service in ("ingest", "news", "processor"):
        definition = container(template, service)
        secrets = {s["Name"]: json.dumps(s["ValueFrom"]) for s in definition.get("Secrets", [])}
        execution = scoped(policy_actions(template, f"{service.capitalize()}TaskExecutionRole"))
        task = scoped(policy_actions(template, f"{service.capitalize()}TaskTaskRole"))
        if service == "processor":
            assert secrets == {} and execution == {}
            assert not any(a.startswith("secretsmanager:") for a in task)
            continue
        variable, secret = expected[service]
        assert list(secrets) == [variable]
        assert secret in secrets[variable] and f":{variable}::" in secrets[variable]
        for role, actions in (("execution", execution), ("task", task)):
            readable = {r for a, res in actions.items() if a.startswith("secretsmanager:") for r in res}
            assert readable == {json.dumps({"Ref": secret})}, f"{service}'s {role} role can read {readable}"


def logical(template: dict[str, Any], type_: str, contains: str) -> str:
    (lid,) = [lid for lid in resources(template, type_) if contains in lid]
    return lid


def container(template: dict[str, Any], name: str) -> dict[str, Any]:
    (definition,) = [
        r["Properties"]["ContainerDefinitions"][0]
        for r in resources(template, "AWS::ECS::TaskDefinition").values()
        if r["Properties"]["ContainerDefinitions"][0]["Name"] == name
    ]
    return definition
