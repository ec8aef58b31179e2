"""Fixtures of the Lambda handler tests: handlers are imported as the Lambda runtime imports them
(`lambdas/` is the code root, e.g. `dlq_redrive.handler`), AWS is moto, Kafka is the session broker."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

LAMBDAS_DIR = Path(__file__).resolve().parents[2] / "lambdas"
if str(LAMBDAS_DIR) not in sys.path:
    sys.path.insert(0, str(LAMBDAS_DIR))
# What the stack sets on every function; Powertools reads them when the handler modules are imported.
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "TradePulse")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")

REGION = "us-east-1"


@dataclass
class LambdaContext:
    """The attributes of the Lambda context object that Powertools and the handlers read."""

    function_name: str = "tradepulse-test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:tradepulse-test"
    aws_request_id: str = "request-1"
    log_stream_name: str = "2026/01/01/[$LATEST]test"
    remaining_ms: int = 300_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """moto with a DLQ (+ parking queue) and a cold bucket, like the stack's; yields their names."""
    import boto3
    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        sqs = boto3.client("sqs", region_name=REGION)
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="tradepulse-cold")
        queue_url = sqs.create_queue(QueueName="tradepulse-dlq", Attributes={"VisibilityTimeout": "600"})[
            "QueueUrl"
        ]
        parking_url = sqs.create_queue(QueueName="tradepulse-dlq-parking")["QueueUrl"]
        yield {
            "sqs": sqs,
            "s3": s3,
            "bucket": "tradepulse-cold",
            "queue_url": queue_url,
            "parking_url": parking_url,
        }
