"""The scheduled DLQ redrive function: SQS (moto) → BatchProcessor → Kafka (real broker) or S3 archive."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer

from tradepulse import topics
from tradepulse.config import Settings
from tradepulse.stores.dlq import DLQ_RETRIES_HEADER, make_dead_letter
from tradepulse.stores.dlq_queues import SqsDeadLetterQueue

from .conftest import REGION, LambdaContext


def put_letter(
    aws: dict[str, Any],
    *,
    retry_count: int = 0,
    source_topic: str | None = topics.TRADES,
    error_type: str = "DeliveryFailed",  # transient: Kafka did not take it in time
) -> dict[str, Any]:
    letter = make_dead_letter(
        stage="ingest",
        payload=json.dumps({"probe": uuid.uuid4().hex}),
        error_type=error_type,
        reason="delivery to market.trades failed: Local: Message timed out",
        source_topic=source_topic,
        ticker="AAPL",
        now_s=1_767_000_000,
    )
    letter["retry_count"] = retry_count
    SqsDeadLetterQueue(aws["queue_url"], client=aws["sqs"]).put([letter])
    return letter


def queued(aws: dict[str, Any]) -> list[dict[str, Any]]:
    return SqsDeadLetterQueue(aws["queue_url"], client=aws["sqs"]).letters(None)


def archived(aws: dict[str, Any]) -> list[dict[str, Any]]:
    keys = [o["Key"] for o in aws["s3"].list_objects_v2(Bucket=aws["bucket"]).get("Contents", [])]
    rows = []
    for key in keys:
        assert key.startswith("tradepulse/dead-letter-archive/dt=2025-12-29/hour=09/") and key.endswith(
            ".parquet"
        )
        body = aws["s3"].get_object(Bucket=aws["bucket"], Key=key)["Body"].read()
        rows += pq.read_table(io.BytesIO(body)).to_pylist()
    return rows


def settings_for(aws: dict[str, Any], **extra: Any) -> Settings:
    return Settings(sqs_dlq_url=aws["queue_url"], s3_bucket=aws["bucket"], aws_region=REGION, **extra)


def failing_publish(*_args: Any) -> None:
    raise RuntimeError("broker unreachable")


def redriver(aws: dict[str, Any], publish: Any = failing_publish, **settings: Any):  # type: ignore[no-untyped-def]
    from dlq_redrive.handler import Redriver

    return Redriver(
        settings_for(aws, **settings), publish=publish, sqs_client=aws["sqs"], s3_client=aws["s3"]
    )


def test_letter_that_used_its_redrives_is_archived_as_parquet(
    aws: dict[str, Any], lambda_context: LambdaContext
) -> None:
    letter = put_letter(aws, retry_count=5)
    outcomes = redriver(aws).run(lambda_context)
    assert outcomes == {"archived": 1, "deferred": 0, "failed": 0}
    assert queued(aws) == []
    (row,) = archived(aws)
    assert row["dead_letter_id"] == letter["dead_letter_id"]
    assert (row["status"], row["retry_count"], row["payload"]) == ("archived", 5, letter["payload"])


def test_failed_redrive_requeues_the_letter_with_one_more_retry(
    aws: dict[str, Any], lambda_context: LambdaContext
) -> None:
    letter = put_letter(aws, retry_count=2)
    outcomes = redriver(aws).run(lambda_context)
    # The requeued copy is received again in the same pass but waits for the next one.
    assert outcomes == {"requeued": 1, "deferred": 1, "failed": 0}
    (again,) = queued(aws)
    assert again["dead_letter_id"] == letter["dead_letter_id"]
    # The original failure stays; the failed attempt is in the history.
    assert (again["retry_count"], again["error_type"], again["reason"]) == (
        3,
        letter["error_type"],
        letter["reason"],
    )
    assert [(h["outcome"], h["error_type"], h["reason"]) for h in again["history"]] == [
        ("failed", "RuntimeError", "broker unreachable")
    ]
    assert archived(aws) == []


def test_fifth_failed_redrive_archives(aws: dict[str, Any], lambda_context: LambdaContext) -> None:
    put_letter(aws, retry_count=4)
    assert redriver(aws).run(lambda_context)["archived"] == 1
    (row,) = archived(aws)
    assert row["retry_count"] == 5 and row["error_type"] == "DeliveryFailed"
    assert [h["error_type"] for h in row["history"]] == ["RuntimeError"]
    assert queued(aws) == []


def test_permanent_letter_is_archived_at_once_never_redriven(
    aws: dict[str, Any], lambda_context: LambdaContext
) -> None:
    published: list[Any] = []
    letter = put_letter(aws, source_topic=None, error_type="InvalidEvent")
    outcomes = redriver(aws, publish=lambda *msg: published.append(msg)).run(lambda_context)
    assert outcomes == {"permanent": 1, "deferred": 0, "failed": 0}
    assert published == [] and queued(aws) == []
    (row,) = archived(aws)
    assert (row["dead_letter_id"], row["failure_class"], row["retry_count"]) == (
        letter["dead_letter_id"],
        "permanent",
        0,
    )
    assert (row["error_type"], row["reason"]) == ("InvalidEvent", letter["reason"])


def test_sink_hot_letter_is_written_to_dynamodb_again(
    aws: dict[str, Any], lambda_context: LambdaContext
) -> None:
    import boto3

    from tests.aws import create_hot_table
    from tests.stores.conftest import make_trade
    from tradepulse.stores.dynamo_hot import DynamoHotStore

    ddb = boto3.client("dynamodb", region_name=REGION)
    create_hot_table(ddb, "tradepulse-hot")
    trade = make_trade("AAPL", seq=7)
    letter = make_dead_letter(
        stage="sink:hot",
        payload=json.dumps({"kind": "trade", "row": trade}),
        error_type="ProvisionedThroughputExceededException",
        reason="throttled",
        ticker="AAPL",
        now_s=1_767_000_000,
    )
    SqsDeadLetterQueue(aws["queue_url"], client=aws["sqs"]).put([letter])
    store = DynamoHotStore("tradepulse-hot", client=ddb, sleep=lambda s: None)
    from dlq_redrive.handler import Redriver

    outcomes = Redriver(
        settings_for(aws),
        publish=failing_publish,
        hot=lambda: store,
        sqs_client=aws["sqs"],
        s3_client=aws["s3"],
    ).run(lambda_context)
    assert outcomes == {"redriven": 1, "deferred": 0, "failed": 0}
    assert store.latest_trade("AAPL") == trade and queued(aws) == []
    store.close()


def test_unprocessable_message_is_a_partial_batch_failure(
    aws: dict[str, Any], lambda_context: LambdaContext
) -> None:
    aws["sqs"].send_message(QueueUrl=aws["queue_url"], MessageBody="not a dead letter")
    put_letter(aws, retry_count=5)
    outcomes = redriver(aws).run(lambda_context)
    assert outcomes["failed"] == 1 and outcomes["archived"] == 1
    attrs = aws["sqs"].get_queue_attributes(QueueUrl=aws["queue_url"], AttributeNames=["All"])["Attributes"]
    # The good letter was deleted; the bad one stays (in flight until its visibility timeout, then
    # back for the next pass; SQS parks it after 5 receives).
    assert (attrs["ApproximateNumberOfMessages"], attrs["ApproximateNumberOfMessagesNotVisible"]) == (
        "0",
        "1",
    )


def test_run_stops_before_the_invocation_times_out(aws: dict[str, Any]) -> None:
    put_letter(aws, retry_count=5)
    assert redriver(aws).run(LambdaContext(remaining_ms=10_000)) == {"deferred": 0}
    assert len(queued(aws)) == 1


def consume_one(bootstrap: str, topic: str, payload: str) -> Any:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    try:
        for _ in range(300):
            message = consumer.poll(0.1)
            if message is not None and not message.error() and message.value().decode() == payload:
                return message
    finally:
        consumer.close()
    raise AssertionError(f"{payload} never reached {topic}")


@pytest.mark.kafka
def test_handler_redrives_to_kafka_and_emits_metrics(
    aws: dict[str, Any],
    kafka_settings: Settings,
    lambda_context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dlq_redrive import handler as module

    letter = put_letter(aws, retry_count=1)
    monkeypatch.setenv("TRADEPULSE_SQS_DLQ_URL", aws["queue_url"])
    monkeypatch.setenv("TRADEPULSE_S3_BUCKET", aws["bucket"])
    monkeypatch.setenv("TRADEPULSE_KAFKA_BOOTSTRAP", kafka_settings.kafka_bootstrap or "")
    monkeypatch.setenv("TRADEPULSE_DATA_DIR", str(kafka_settings.data_dir))
    monkeypatch.setattr(module, "_redriver", None)  # a fresh container

    try:
        outcomes = module.handler({"source": "aws.events", "detail-type": "Scheduled Event"}, lambda_context)
    finally:
        if module._redriver is not None:
            module._redriver.close()  # stop the container's producer before the session broker stops

    assert outcomes["redriven"] == 1 and queued(aws) == []
    message = consume_one(kafka_settings.kafka_bootstrap or "", topics.TRADES, letter["payload"])
    assert message.key() == b"AAPL"
    assert dict(message.headers())[DLQ_RETRIES_HEADER] == b"2"
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert any(m.get("DeadLetters_redriven") == [1.0] or m.get("DeadLetters_redriven") == 1.0 for m in emf)
    assert emf[-1]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "TradePulse"
