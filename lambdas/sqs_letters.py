"""Shared by the DLQ functions: dead letters in SQS messages and SQS event records.

Wire format (`tradepulse.stores.dlq_queues.SqsDeadLetterQueue`): body = the original payload, the rest of the
DeadLetter row in the `context` message attribute.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from tradepulse.stores.dlq_queues import from_message


def letter_from_record(record: SQSRecord) -> dict[str, Any]:
    """The DeadLetter row of an SQS event record."""
    context = record.message_attributes["context"]
    if context is None or context.string_value is None:
        raise ValueError(
            f"message {record.message_id} is not a TradePulse dead letter (no context attribute)"
        )
    return from_message(
        {"Body": record.body, "MessageAttributes": {"context": {"StringValue": context.string_value}}}
    )


def to_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """The SQS event record (what a queue trigger delivers) of a ReceiveMessage message."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {
            name: {"stringValue": a.get("StringValue"), "dataType": a["DataType"]}
            for name, a in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
