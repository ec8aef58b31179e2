"""The Custom::KafkaTopics function: creates topics (real broker) and answers CloudFormation."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from tradepulse.config import Settings

from .conftest import LambdaContext


def plaintext(bootstrap: str) -> Settings:
    """The session broker has no authentication (the authorizing broker is in tests/cdk/test_msk_acl.py)."""
    return Settings(kafka_bootstrap=bootstrap)


@pytest.fixture
def cloudformation() -> Iterator[dict[str, Any]]:
    """A local stand-in for CloudFormation's pre-signed response URL; collects the PUT bodies."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_port}/response", "received": received}
    finally:
        server.shutdown()
        server.server_close()


def request(
    kind: str,
    url: str,
    names: list[str],
    physical_id: str | None = None,
    *,
    partitions: int = 3,
    retention_ms: int = 3_600_000,
) -> dict[str, Any]:
    event = {
        "RequestType": kind,
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/TradePulse-dev/1",
        "RequestId": uuid.uuid4().hex,
        "LogicalResourceId": "StreamingTopics",
        "ResourceProperties": {
            "ClusterArn": "arn:aws:kafka:us-east-1:123456789012:cluster/tradepulse-dev/abc-1",
            "Topics": [
                {"Name": n, "Partitions": str(partitions), "RetentionMs": str(retention_ms)} for n in names
            ],
        },
    }
    if physical_id:
        event["PhysicalResourceId"] = physical_id
    return event


@pytest.mark.kafka
def test_create_makes_the_topics_and_returns_the_bootstrap(
    kafka_bootstrap: str, cloudformation: dict[str, Any], lambda_context: LambdaContext
) -> None:
    from topics.handler import handle

    names = [f"cr-{uuid.uuid4().hex[:8]}.{n}" for n in ("trades", "news")]
    event = request("Create", cloudformation["url"], names)
    result = handle(
        event, lambda_context, lookup_bootstrap=lambda _arn: kafka_bootstrap, client_settings=plaintext
    )

    (answer,) = cloudformation["received"]
    assert answer["Status"] == "SUCCESS" == result["Status"]
    assert answer["Data"]["BootstrapBrokers"] == kafka_bootstrap
    assert answer["PhysicalResourceId"].endswith("/topics")
    assert (answer["RequestId"], answer["LogicalResourceId"]) == (event["RequestId"], "StreamingTopics")
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert all(len(metadata[n].partitions) == 3 for n in names)

    # Update re-runs creation idempotently and keeps the physical id.
    update = request("Update", cloudformation["url"], names, physical_id=answer["PhysicalResourceId"])
    handle(update, lambda_context, lookup_bootstrap=lambda _arn: kafka_bootstrap, client_settings=plaintext)
    assert cloudformation["received"][1]["Status"] == "SUCCESS"
    assert cloudformation["received"][1]["Data"]["Created"] == ""


def retention(admin: AdminClient, name: str) -> str:
    resource = ConfigResource(ResourceType.TOPIC, name)
    return admin.describe_configs([resource])[resource].result()["retention.ms"].value


@pytest.mark.kafka
def test_update_raises_partitions_and_applies_retention(
    kafka_bootstrap: str, cloudformation: dict[str, Any], lambda_context: LambdaContext
) -> None:
    """Raising topicPartitions/maxTasks or the retention after the first deploy reaches the topics."""
    from topics.handler import handle

    names = [f"cr-{uuid.uuid4().hex[:8]}.{n}" for n in ("trades", "quotes")]
    create = request("Create", cloudformation["url"], names)
    handle(create, lambda_context, lookup_bootstrap=lambda _arn: kafka_bootstrap, client_settings=plaintext)
    physical_id = cloudformation["received"][0]["PhysicalResourceId"]

    update = request(
        "Update", cloudformation["url"], names, physical_id, partitions=6, retention_ms=7_200_000
    )
    handle(update, lambda_context, lookup_bootstrap=lambda _arn: kafka_bootstrap, client_settings=plaintext)
    answer = cloudformation["received"][1]
    assert answer["Status"] == "SUCCESS", answer["Reason"]
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    metadata = admin.list_topics(timeout=10).topics
    assert [len(metadata[n].partitions) for n in names] == [6, 6]
    assert [retention(admin, n) for n in names] == ["7200000", "7200000"]
    assert answer["Data"]["Altered"] == ",".join(sorted(names))


@pytest.mark.kafka
def test_update_refuses_a_partition_decrease_and_changes_nothing(
    kafka_bootstrap: str, cloudformation: dict[str, Any], lambda_context: LambdaContext
) -> None:
    from topics.handler import handle

    names = [f"cr-{uuid.uuid4().hex[:8]}.{n}" for n in ("trades", "news")]
    create = request("Create", cloudformation["url"], names, partitions=4)
    handle(create, lambda_context, lookup_bootstrap=lambda _arn: kafka_bootstrap, client_settings=plaintext)
    physical_id = cloudformation["received"][0]["PhysicalResourceId"]

    update = request("Update", cloudformation["url"], names, physical_id, partitions=2, retention_ms=1000)
    result = handle(
        update, lambda_context, lookup_bootstrap=lambda _arn: kafka_bootstrap, client_settings=plaintext
    )
    answer = cloudformation["received"][1]
    assert answer["Status"] == "FAILED" == result["Status"]
    assert answer["Reason"].startswith("PartitionDecreaseError: Kafka cannot decrease")
    assert f"{names[0]} has 4 partitions, spec asks for 2" in answer["Reason"]
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    metadata = admin.list_topics(timeout=10).topics
    assert [len(metadata[n].partitions) for n in names] == [4, 4]
    assert retention(admin, names[0]) == "3600000"  # refused as a whole: nothing half-applied


def test_failure_is_reported_to_cloudformation(
    cloudformation: dict[str, Any], lambda_context: LambdaContext
) -> None:
    from topics.handler import handle

    def no_cluster(_arn: str) -> str:
        raise RuntimeError("cluster not found")

    result = handle(
        request("Create", cloudformation["url"], ["x"]), lambda_context, lookup_bootstrap=no_cluster
    )
    (answer,) = cloudformation["received"]
    assert answer["Status"] == "FAILED" == result["Status"]
    assert answer["Reason"] == "RuntimeError: cluster not found"


def test_delete_succeeds_without_touching_kafka(
    cloudformation: dict[str, Any], lambda_context: LambdaContext
) -> None:
    from topics.handler import handle

    def unreachable(_arn: str) -> str:
        raise AssertionError("Delete must not look up the cluster")

    handle(
        request("Delete", cloudformation["url"], ["x"], physical_id="pid"),
        lambda_context,
        lookup_bootstrap=unreachable,
    )
    (answer,) = cloudformation["received"]
    assert (answer["Status"], answer["PhysicalResourceId"]) == ("SUCCESS", "pid")
