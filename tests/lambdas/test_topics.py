"""The Custom::KafkaTopics function: creates topics (real broker) and answers CloudFormation."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from .conftest import LambdaContext


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


def request(kind: str, url: str, names: list[str], physical_id: str | None = None) -> dict[str, Any]:
    event = {
        "RequestType": kind,
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/TradePulse-dev/1",
        "RequestId": uuid.uuid4().hex,
        "LogicalResourceId": "StreamingTopics",
        "ResourceProperties": {
            "ClusterArn": "arn:aws:kafka:us-east-1:123456789012:cluster/tradepulse-dev/abc-1",
            "Topics": [{"Name": n, "Partitions": "3", "RetentionMs": "3600000"} for n in names],
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
    result = handle(event, lambda_context, lookup_bootstrap=lambda _arn: kafka_bootstrap, msk_iam=False)

    (answer,) = cloudformation["received"]
    assert answer["Status"] == "SUCCESS" == result["Status"]
    assert answer["Data"]["BootstrapBrokers"] == kafka_bootstrap
    assert answer["PhysicalResourceId"].endswith("/topics")
    assert (answer["RequestId"], answer["LogicalResourceId"]) == (event["RequestId"], "StreamingTopics")
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert all(len(metadata[n].partitions) == 3 for n in names)

    # Update re-runs creation idempotently and keeps the physical id.
    update = request("Update", cloudformation["url"], names, physical_id=answer["PhysicalResourceId"])
    handle(update, lambda_context, lookup_bootstrap=lambda _arn: kafka_bootstrap, msk_iam=False)
    assert cloudformation["received"][1]["Status"] == "SUCCESS"
    assert cloudformation["received"][1]["Data"]["Created"] == ""


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
