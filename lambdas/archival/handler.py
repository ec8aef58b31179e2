"""Archive dead letters that SQS parked (after 5 failed redrives) to the cold store on S3, as Parquet
under `<prefix>/dead-letter-archive/dt=YYYY-MM-DD/hour=HH/` (table `dead_letter_archive`).

Triggered by the parking queue (SQS event source, ReportBatchItemFailures); Powertools'
BatchProcessor reports the letters that could not be archived, so only those come back.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from sqs_letters import letter_from_record

from tradepulse import metrics_emf
from tradepulse.config import Settings
from tradepulse.stores.parquet_cold import ParquetColdStore

logger = Logger()
tracer = Tracer()
metrics = metrics_emf.service_emitter("archival")
processor = BatchProcessor(event_type=EventType.SQS)


class Archiver:
    """Writes each parked letter to the cold store with status `archived`."""

    def __init__(self, settings: Settings, *, s3_client: Any = None) -> None:
        self.cold = ParquetColdStore(
            f"s3://{settings.s3_bucket}/{settings.s3_prefix.strip('/')}",
            s3_client=s3_client,
            region=settings.aws_region,
        )

    def archive(self, record: SQSRecord) -> str:
        letter = letter_from_record(record)
        letter.update(status="archived")
        self.cold.archive_dead_letters([letter])
        logger.info("archived dead letter", extra={"dead_letter_id": letter["dead_letter_id"]})
        return letter["dead_letter_id"]

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        response = process_partial_response(
            event=event, record_handler=self.archive, processor=processor, context=context
        )
        failed = len(response.get("batchItemFailures", []))
        # Counts of this invocation: written now, whatever the emitter's interval.
        metrics.emit(
            {
                metrics_emf.DEAD_LETTERS_ARCHIVED: len(event["Records"]) - failed,
                metrics_emf.DEAD_LETTER_ARCHIVE_FAILURES: failed,
            },
            force=True,
        )
        return response


_archiver: Archiver | None = None


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _archiver
    if _archiver is None:
        _archiver = Archiver(Settings())
    return _archiver(event, context)
