"""Build the configured store backends from Settings. AWS backends are imported lazily so the local
pipeline never imports boto3 on its hot path."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tradepulse.config import Settings, get_settings

if TYPE_CHECKING:
    from tradepulse.stores.base import ColdStore, DeadLetterQueue, HotStore


def open_hot_store(settings: Settings | None = None) -> HotStore:
    """SQLite file under `data_dir` (default) or the DynamoDB table."""
    settings = settings or get_settings()
    if settings.hot_store == "dynamodb":
        from tradepulse.stores.dynamo_hot import DynamoHotStore

        return DynamoHotStore.from_settings(settings)
    from tradepulse.stores.sqlite_hot import SqliteHotStore

    return SqliteHotStore(settings.sqlite_path, ttl_hours=settings.hot_ttl_hours)


def open_cold_store(settings: Settings | None = None) -> ColdStore:
    """Parquet under `cold_dir` (default) or under s3://bucket/prefix."""
    from tradepulse.stores.parquet_cold import ParquetColdStore

    return ParquetColdStore.from_settings(settings or get_settings())


def open_dlq(settings: Settings | None = None) -> DeadLetterQueue:
    """SQLite file under `data_dir` (default) or the SQS queue."""
    settings = settings or get_settings()
    if settings.dlq_backend == "sqs":
        from tradepulse.stores.dlq_queues import SqsDeadLetterQueue

        return SqsDeadLetterQueue.from_settings(settings)
    from tradepulse.stores.dlq_queues import SqliteDeadLetterQueue

    return SqliteDeadLetterQueue(settings.data_dir / "dlq.sqlite3")
