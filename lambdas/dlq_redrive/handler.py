"""Every 15 minutes (EventBridge schedule): redrive the dead letters in the SQS DLQ to Kafka.

The function drains the queue itself (a schedule brings no records) and feeds each batch of up to 10
messages to Powertools' BatchProcessor. Per letter, the policy of `tradepulse.stores.dlq`:
- a permanent letter (validation: it can never succeed) is never redriven: it is archived to S3 at once
  (Parquet, `dead-letter-archive/`, queryable in Athena) and counted (`DeadLetters_permanent`);
- `retry_count` already at TRADEPULSE_DLQ_MAX_REDRIVES (5) → archived to S3;
- otherwise redriven along its route: a `sink:hot` letter is written to DynamoDB again, any other is
  re-published to its source topic with the `tp-dlq-*` headers (a repeat failure returns to the same
  letter with the count and original failure kept); if that fails, the letter goes back to the queue
  with the count + 1 and the attempt in its history, or to the archive when that was its last redrive.
A record whose handling raised (S3 or SQS unavailable) is a partial batch failure: its message is not
deleted and comes back after the visibility timeout; after 5 such receives SQS parks it, and the
archival function takes it from there.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from sqs_letters import letter_from_record, to_record

from tradepulse import metrics_emf
from tradepulse.config import Settings
from tradepulse.stores.base import HotStore
from tradepulse.stores.dlq import (
    PERMANENT,
    attempt_redrive,
    class_of,
    lazy,
    redrive_route,
)
from tradepulse.stores.dlq_queues import SqsDeadLetterQueue
from tradepulse.stores.parquet_cold import ParquetColdStore

logger = Logger()
tracer = Tracer()
metrics = metrics_emf.service_emitter("dlq_redrive")
processor = BatchProcessor(event_type=EventType.SQS)

Publish = Callable[[str, bytes | None, bytes, dict[str, bytes]], None]
#: Stop receiving when less than this is left of the invocation (the last batch must finish).
RESERVE_MS = 60_000


class KafkaPublisher:
    """publish(topic, key, value, headers) on an idempotent producer (MSK IAM auth from settings);
    raises when the broker did not acknowledge the message."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        from tradepulse.bus.clients import producer_config

        self._producer: Any = Producer(producer_config(settings, **{"linger.ms": 0}))

    def __call__(self, topic: str, key: bytes | None, value: bytes, headers: dict[str, bytes]) -> None:
        errors: list[str] = []
        self._producer.produce(
            topic, value, key, headers=headers, on_delivery=lambda e, _m: e and errors.append(str(e))
        )
        if self._producer.flush(30) or errors:
            raise RuntimeError(errors[0] if errors else "delivery not acknowledged within 30 s")

    def close(self) -> None:
        """Drop the producer (librdkafka threads stop when it is freed)."""
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None


class Redriver:
    """One redrive pass over the DLQ. Dependencies are injectable for tests (moto clients, a local broker)."""

    def __init__(
        self,
        settings: Settings,
        *,
        publish: Publish,
        hot: Callable[[], HotStore] | None = None,
        sqs_client: Any = None,
        s3_client: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.sqs_dlq_url or not settings.s3_bucket:
            raise ValueError("TRADEPULSE_SQS_DLQ_URL and TRADEPULSE_S3_BUCKET are required")
        self.settings = settings
        self.dlq = SqsDeadLetterQueue(settings.sqs_dlq_url, client=sqs_client, region=settings.aws_region)
        self.cold = ParquetColdStore(
            f"s3://{settings.s3_bucket}/{settings.s3_prefix.strip('/')}",
            s3_client=s3_client,
            region=settings.aws_region,
        )
        self.publish = publish
        if hot is None:
            from tradepulse.stores.factory import open_hot_store

            hot = lazy(lambda: open_hot_store(settings))
        self.redrive = redrive_route(publish=publish, hot=hot)
        self.clock = clock
        self.max_redrives = settings.dlq_max_redrives
        self._requeued: set[str] = set()
        self._queue_arn = self.dlq.client.get_queue_attributes(
            QueueUrl=settings.sqs_dlq_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]

    def handle_record(self, record: SQSRecord) -> str:
        """One letter through the policy; returns the outcome (raising = partial batch failure)."""
        letter = letter_from_record(record)
        if class_of(letter) == PERMANENT:
            self._archive(letter)
            return "permanent"
        if letter["retry_count"] >= self.max_redrives:
            return self._archive(letter)
        outcome, letter = attempt_redrive(letter, self.redrive, self.clock(), self.max_redrives)
        if outcome == "archive":
            return self._archive(letter)
        if outcome == "failed":
            self.dlq.put([letter])  # SQS messages are immutable: the new state is a new message
            self._requeued.add(letter["dead_letter_id"])
            return "requeued"
        return "redriven"

    def _archive(self, letter: dict[str, Any]) -> str:
        self.cold.archive_dead_letters([dict(letter, status="archived")])
        return "archived"

    def run(self, context: Any = None, *, max_messages: int = 2000) -> dict[str, int]:
        """Drain the queue in batches of 10 until it is empty, `max_messages` were seen, or the
        invocation is about to time out. Returns counts per outcome."""
        self._requeued.clear()
        outcomes: Counter[str] = Counter()
        seen = 0
        deferred: list[str] = []
        while seen < max_messages:
            if context is not None and context.get_remaining_time_in_millis() < RESERVE_MS:
                break
            messages = self.dlq.client.receive_message(
                QueueUrl=self.settings.sqs_dlq_url,
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                AttributeNames=["All"],
                WaitTimeSeconds=0,
            ).get("Messages", [])
            if not messages:
                break
            seen += len(messages)
            # A letter requeued in this pass waits for the next one: skipped here, visible again at the end.
            batch = [m for m in messages if self._letter_id(m) not in self._requeued]
            deferred += [m["ReceiptHandle"] for m in messages if self._letter_id(m) in self._requeued]
            if not batch:
                continue
            records = [to_record(m, self._queue_arn, self.settings.aws_region) for m in batch]
            results: dict[str, str] = {}

            def record_handler(record: SQSRecord, results: dict[str, str] = results) -> str:
                results[record.message_id] = outcome = self.handle_record(record)
                return outcome

            response = process_partial_response(
                event={"Records": records},
                record_handler=record_handler,
                processor=processor,
                context=context,
            )
            failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
            outcomes["failed"] += len(failed)
            outcomes.update(results.values())
            done = [m for m in batch if m["MessageId"] not in failed]
            if done:
                self.dlq.client.delete_message_batch(
                    QueueUrl=self.settings.sqs_dlq_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
                )
        for start in range(0, len(deferred), 10):
            self.dlq.client.change_message_visibility_batch(
                QueueUrl=self.settings.sqs_dlq_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                    for i, handle in enumerate(deferred[start : start + 10])
                ],
            )
        outcomes["deferred"] = len(deferred)
        return dict(outcomes)

    def close(self) -> None:
        close = getattr(self.publish, "close", None)
        if close is not None:
            close()

    @staticmethod
    def _letter_id(message: dict[str, Any]) -> str | None:
        attribute = message.get("MessageAttributes", {}).get("dead_letter_id")
        return attribute.get("StringValue") if attribute else None


_redriver: Redriver | None = None


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
    global _redriver
    if _redriver is None:
        settings = Settings()
        _redriver = Redriver(settings, publish=KafkaPublisher(settings))
    outcomes = _redriver.run(context)
    metrics.emit(
        {metrics_emf.redrive_metric(o): outcomes.get(o, 0) for o in metrics_emf.REDRIVE_OUTCOMES}, force=True
    )
    logger.info("redrive pass done", extra={"outcomes": outcomes})
    return outcomes
