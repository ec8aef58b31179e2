"""`tradepulse query "SQL"` (DuckDB over the local cold store) and `tradepulse dlq list|redrive|archive`."""

from __future__ import annotations

import click

from tradepulse.config import get_settings
from tradepulse.errors import BusError


@click.command()
@click.argument("sql")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True
)
def query(sql: str, fmt: str) -> None:
    """Run SQL over the cold store (views: trades, quotes, news, features, anomalies, correlations,
    dead_letters; partition columns dt, hour)."""
    import duckdb

    from tradepulse.stores.sql import run_query

    try:
        df = run_query(sql, get_settings())
    except duckdb.Error as exc:
        raise click.ClickException(str(exc)) from exc
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(df.to_json(orient="records", lines=True), nl=False)
    else:
        click.echo(df.to_string(index=False) if len(df) else "(no rows)")


@click.group()
def dlq() -> None:
    """Dead-letter queue: inspect, redrive, archive."""


@dlq.command("list")
@click.option("--status", type=click.Choice(["pending", "redriven", "archived", "all"]), default="pending")
@click.option("--limit", type=int, default=50, show_default=True)
def list_letters(status: str, limit: int) -> None:
    """Show dead letters (oldest first)."""
    from tradepulse.stores.factory import open_dlq

    queue = open_dlq(get_settings())
    try:
        letters = queue.letters(None if status == "all" else status, limit)
        click.echo(f"{queue.depth()} pending")
        for x in letters:
            source = (
                f"{x['source_topic']}[{x['source_partition']}]@{x['source_offset']}"
                if x["source_topic"]
                else "-"
            )
            click.echo(
                f"{x['dead_letter_id']}  {x['status']:<8} retries={x['retry_count']}  {x['stage']:<10} "
                f"{source}  {x['error_type']}: {x['reason'][:80]}  last={x['last_failure_at']}"
            )
    finally:
        queue.close()


@dlq.command()
@click.option("--force", is_flag=True, help="Redrive every pending letter now, not only those 15 min old.")
def redrive(force: bool) -> None:
    """Re-publish due letters to their source topics; archive those that failed 5 redrives."""
    from confluent_kafka import KafkaError, Message, Producer

    from tradepulse.bus.clients import producer_config
    from tradepulse.stores.dlq import DeadLetterPolicy, republisher
    from tradepulse.stores.factory import open_cold_store, open_dlq

    settings = get_settings()
    producer = Producer(producer_config(settings))

    def publish(topic: str, key: bytes | None, value: bytes, headers: dict[str, bytes]) -> None:
        errors: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(str(err))

        kafka_headers: dict[str, str | bytes | None] = dict(headers)
        producer.produce(topic, value, key, headers=kafka_headers, on_delivery=on_delivery)
        producer.flush(30)
        if errors:
            raise BusError(errors[0])

    queue, cold = open_dlq(settings), open_cold_store(settings)
    try:
        policy = DeadLetterPolicy.from_settings(
            queue, settings, redrive=republisher(publish), archive=cold.archive_dead_letters
        )
        report = policy.redrive_due(force=force)
    finally:
        cold.close()
        queue.close()
    click.echo(
        f"redriven {len(report.redriven)}, failed {len(report.failed)}, archived {len(report.archived)}, "
        f"not due {report.not_due}"
    )


@dlq.command()
def archive() -> None:
    """Archive every pending letter to the cold store (dead-letters/) now."""
    from tradepulse.stores.dlq import DeadLetterPolicy
    from tradepulse.stores.factory import open_cold_store, open_dlq

    settings = get_settings()
    queue, cold = open_dlq(settings), open_cold_store(settings)
    try:
        policy = DeadLetterPolicy.from_settings(
            queue, settings, redrive=lambda letter: None, archive=cold.archive_dead_letters
        )
        archived = policy.archive_pending()
    finally:
        cold.close()
        queue.close()
    click.echo(f"archived {len(archived)}")
