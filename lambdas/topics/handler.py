"""Custom::KafkaTopics: create the TradePulse topics on MSK Serverless at deploy time and return the
SASL/IAM bootstrap brokers (CloudFormation has no attribute for them on serverless clusters).

Properties: ClusterArn, Topics = [{Name, Partitions, RetentionMs}]. Create and Update bring the topics
to the properties (`tradepulse.bus.admin.apply_topic_specs`): missing topics are created, partition
counts raised, retention/cleanup configs set. A partition decrease fails the deployment with a reason
(Kafka cannot remove partitions) before anything is changed. Delete does nothing (topics go with the
cluster).
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from tradepulse.bus.admin import TopicChanges, apply_topic_specs
from tradepulse.config import Settings
from tradepulse.topics import TopicSpec

logger = Logger()


def topic_specs(properties: dict[str, Any]) -> list[TopicSpec]:
    """TopicSpecs from the resource properties (CloudFormation passes every scalar as a string)."""
    return [TopicSpec(t["Name"], int(t["Partitions"]), int(t["RetentionMs"])) for t in properties["Topics"]]


def msk_settings(bootstrap: str) -> Settings:
    """Client settings of the function: IAM auth (its role) to the cluster's SASL/IAM brokers."""
    return Settings(
        kafka_bootstrap=bootstrap, kafka_msk_iam=True, aws_region=os.environ.get("AWS_REGION", "us-east-1")
    )


def apply_topics(properties: dict[str, Any], settings: Settings) -> TopicChanges:
    """Create/grow/reconfigure the topics. MSK Serverless fixes the replication factor, so ask for the
    broker default (-1)."""
    return apply_topic_specs(settings, topic_specs(properties), replication=-1)


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
    client_settings: Callable[[str], Settings] = msk_settings,
) -> dict[str, str]:
    """Run one custom-resource request and always answer CloudFormation (a missing answer would hang
    the stack for an hour)."""
    properties = event["ResourceProperties"]
    physical_id = event.get("PhysicalResourceId") or f"{properties['ClusterArn']}/topics"
    data: dict[str, str] = {}
    try:
        if event["RequestType"] in ("Create", "Update"):
            bootstrap = lookup_bootstrap(properties["ClusterArn"])
            changes = apply_topics(properties, client_settings(bootstrap))
            logger.info(
                "topics ready",
                extra={
                    "topics_created": changes.created,
                    "partitions_raised": changes.partitions,
                    "configs_set": changes.configs,
                },
            )
            data = {
                "BootstrapBrokers": bootstrap,
                "Created": ",".join(changes.created),
                "Altered": ",".join(sorted(set(changes.partitions) | set(changes.configs))),
            }
    except Exception as exc:
        logger.exception("topic creation/update failed")
        send_response(event, context, "FAILED", physical_id, reason=f"{type(exc).__name__}: {exc}")
        return {"Status": "FAILED"}
    send_response(event, context, "SUCCESS", physical_id, data)
    return {"Status": "SUCCESS", **data}


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    return handle(event, context)
