"""The archival function: parked dead letters (SQS event, moto) → Parquet under dead-letter-archive/ on S3."""

from __future__ import annotations

import io
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.test_metrics_emf import parse_emf, values
from tradepulse import metrics_emf
from tradepulse.bus.status import RunnerMetrics
from tradepulse.stores.dlq import make_dead_letter
from tradepulse.stores.dlq_queues import SqsDeadLetterQueue

from .conftest import REGION, LambdaContext


def parked_event(aws: dict[str, Any], bodies: list[str] | None = None) -> dict[str, Any]:
    """An SQS event of the parking queue as the event source mapping delivers it: one letter parked by
    SQS after failed redrives, plus raw messages."""
    from sqs_letters import to_record

    letter = make_dead_letter(
        stage="sink:hot", payload=b"\xff\x00binary", error_type="ThrottlingError", reason="throttled",
        source_topic="market.features", ticker="MSFT", now_s=1_767_000_000,
    )  # fmt: skip
    letter["retry_count"] = 3
    SqsDeadLetterQueue(aws["parking_url"], client=aws["sqs"]).put([letter])
    for body in bodies or []:
        aws["sqs"].send_message(QueueUrl=aws["parking_url"], MessageBody=body)
    messages = aws["sqs"].receive_message(
        QueueUrl=aws["parking_url"],
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        AttributeNames=["All"],
    )["Messages"]
    arn = f"arn:aws:sqs:{REGION}:123456789012:tradepulse-dlq-parking"
    return {"Records": [to_record(m, arn, REGION) for m in messages], "letter": letter}


@pytest.fixture
def archival(aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from archival import handler as module

    monkeypatch.setenv("TRADEPULSE_S3_BUCKET", aws["bucket"])
    monkeypatch.setattr(module, "_archiver", None)
    return module


def test_parked_letter_is_archived_with_its_payload(
    aws: dict[str, Any], archival: Any, lambda_context: LambdaContext
) -> None:
    event = parked_event(aws)
    assert archival.handler({"Records": event["Records"]}, lambda_context) == {"batchItemFailures": []}
    (key,) = [o["Key"] for o in aws["s3"].list_objects_v2(Bucket=aws["bucket"])["Contents"]]
    assert key.startswith("tradepulse/dead-letter-archive/dt=2025-12-29/hour=09/dead-letter-archive-")
    (row,) = pq.read_table(
        io.BytesIO(aws["s3"].get_object(Bucket=aws["bucket"], Key=key)["Body"].read())
    ).to_pylist()
    letter = event["letter"]
    assert (row["dead_letter_id"], row["status"], row["retry_count"]) == (
        letter["dead_letter_id"],
        "archived",
        3,
    )
    assert row["payload"] == letter["payload"]  # base64 of the binary payload, unchanged


def test_message_that_is_no_dead_letter_is_reported_as_failed(
    aws: dict[str, Any], archival: Any, lambda_context: LambdaContext
) -> None:
    event = parked_event(aws, bodies=["garbage"])
    response = archival.handler({"Records": event["Records"]}, lambda_context)
    garbage = next(r["messageId"] for r in event["Records"] if r["body"] == "garbage")
    assert response == {"batchItemFailures": [{"itemIdentifier": garbage}]}
    assert len(aws["s3"].list_objects_v2(Bucket=aws["bucket"])["Contents"]) == 1  # the good one was archived


def emf_shape(doc: dict[str, Any]) -> dict[str, Any]:
    """What an EMF document looks like, without its metric names and values: the members of `_aws` and
    of its directive, the namespace and dimensions, each metric's definition keys and value type."""
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    names = [m["Name"] for m in directive["Metrics"]]
    return {
        "_aws": sorted(doc["_aws"]),
        "directive": sorted(directive),
        "namespace": directive["Namespace"],
        "dimensions": directive["Dimensions"],
        "definitions": {tuple(sorted(m)) for m in directive["Metrics"]},
        "members": sorted(set(doc) - set(names)),
        "value_types": {type(doc[name]).__name__ for name in names},
    }


def test_function_metrics_are_written_like_the_services(
    aws: dict[str, Any],
    archival: Any,
    lambda_context: LambdaContext,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One EMF writer for the TradePulse namespace: the function's document (one archived, one failed)
    passes the specification check and has the shape of a service's (the processor's)."""
    event = parked_event(aws, bodies=["garbage"])
    archival.handler({"Records": event["Records"]}, lambda_context)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    function_doc = parse_emf(line + "\n")
    assert values(function_doc) == {
        metrics_emf.DEAD_LETTERS_ARCHIVED: 1.0,
        metrics_emf.DEAD_LETTER_ARCHIVE_FAILURES: 1.0,
    }
    out = io.StringIO()
    metrics_emf.EmfEmitter("processor", stream=out).emit_runner(RunnerMetrics().snapshot())
    service_doc = parse_emf(out.getvalue())
    assert emf_shape(function_doc) == emf_shape(service_doc)
