"""Custom::KafkaTopics: create the TradePulse topics on MSK Serverless at deploy time and return the
SASL/IAM bootstrap brokers (CloudFormation has no attribute for them on serverless clusters).

Properties: ClusterArn, Topics = [{Name, Partitions, RetentionMs}]. Creation is idempotent (existing
topics are left alone), so Update re-runs it; Delete does nothing (topics go with the cluster).
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from tradepulse.bus.admin import ensure_topics
from tradepulse.config import Settings
from tradepulse.topics import TopicSpec

logger = Logger()


def topic_specs(properties: dict[str, Any]) -> list[TopicSpec]:
    """TopicSpecs from the resource properties (CloudFormation passes every scalar as a string)."""
    return [TopicSpec(t["Name"], int(t["Partitions"]), int(t["RetentionMs"])) for t in properties["Topics"]]


def create_topics(properties: dict[str, Any], bootstrap: str, *, msk_iam: bool = True) -> list[str]:
    """Create the missing topics; returns the names created. MSK Serverless fixes the replication
    factor, so ask for the broker default (-1)."""
    settings = Settings(
        kafka_bootstrap=bootstrap,
        kafka_msk_iam=msk_iam,
        aws_region=os.environ.get("AWS_REGION", "us-east-1"),
    )
    return ensure_topics(settings, topic_specs(properties), replication=-1)


def msk_bootstrap(cluster_arn: str) -> str:
    """SASL/IAM bootstrap brokers of an MSK cluster."""
    import boto3

    return boto3.client("kafka").get_bootstrap_brokers(ClusterArn=cluster_arn)["BootstrapBrokerStringSaslIam"]


def send_response(
    event: dict[str, Any],
    context: Any,
    status: str,
    physical_id: str,
    data: dict[str, str] | None = None,
    reason: str | None = None,
) -> None:
    """PUT the result to CloudFormation's pre-signed response URL."""
    body = json.dumps(
        {
            "Status": status,
            "Reason": (reason or f"See CloudWatch log stream {getattr(context, 'log_stream_name', '?')}")[
                :1000
            ],
            "PhysicalResourceId": physical_id,
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "Data": data or {},
        }
    ).encode()
    request = urllib.request.Request(
        event["ResponseURL"],
        data=body,
        method="PUT",
        headers={"content-type": "", "content-length": str(len(body))},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def handle(
    event: dict[str, Any],
    context: Any,
    *,
    lookup_bootstrap: Callable[[str], str] = msk_bootstrap,
    msk_iam: bool = True,
) -> dict[str, str]:
    """Run one custom-resource request and always answer CloudFormation (a missing answer would hang
    the stack for an hour)."""
    properties = event["ResourceProperties"]
    physical_id = event.get("PhysicalResourceId") or f"{properties['ClusterArn']}/topics"
    data: dict[str, str] = {}
    try:
        if event["RequestType"] in ("Create", "Update"):
            bootstrap = lookup_bootstrap(properties["ClusterArn"])
            created = create_topics(properties, bootstrap, msk_iam=msk_iam)
            logger.info("topics ready", extra={"topics_created": created})
            data = {"BootstrapBrokers": bootstrap, "Created": ",".join(created)}
    except Exception as exc:
        logger.exception("topic creation failed")
        send_response(event, context, "FAILED", physical_id, reason=f"{type(exc).__name__}: {exc}")
        return {"Status": "FAILED"}
    send_response(event, context, "SUCCESS", physical_id, data)
    return {"Status": "SUCCESS", **data}


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    return handle(event, context)
