"""`tradepulse query "SQL"` (DuckDB over the local cold store) and `tradepulse dlq list|redrive|archive`."""

from __future__ import annotations

import functools

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
    dead_letters, bars, vendor_bars, dead_letter_archive; partition columns dt, hour)."""
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
@click.option("--class", "failure_class", type=click.Choice(["transient", "permanent", "all"]), default="all")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--history", "show_history", is_flag=True, help="Show each letter's redrive attempts.")
def list_letters(status: str, failure_class: str, limit: int, show_history: bool) -> None:
    """Show dead letters (oldest first) with their original failure."""
    from tradepulse.stores.factory import open_dlq

    queue = open_dlq(get_settings())
    try:
        letters = queue.letters(
            None if status == "all" else status, limit, None if failure_class == "all" else failure_class
        )
        counts = queue.counts()
        click.echo(
            f"{queue.depth()} pending ({counts['transient']} transient, {counts['permanent']} permanent)"
        )
        for x in letters:
            source = (
                f"{x['source_topic']}[{x['source_partition']}]@{x['source_offset']}"
                if x["source_topic"]
                else "-"
            )
            click.echo(
                f"{x['dead_letter_id']}  {x['status']:<8} {x['failure_class']:<9} "
                f"retries={x['retry_count']}  {x['stage']:<10} {source}  "
                f"{x['error_type']}: {x['reason'][:80]}  last={x['last_failure_at']}"
            )
            for attempt in x["history"] if show_history else ():
                why = f"  {attempt['error_type']}: {attempt['reason'][:80]}" if attempt["error_type"] else ""
                where = f" in {attempt['stage']}" if attempt.get("stage") else ""
                click.echo(f"    {attempt['at']}  {attempt['outcome']}{where}{why}")
    finally:
        queue.close()


@dlq.command()
@click.option("--force", is_flag=True, help="Redrive every pending transient letter now, not only due ones.")
def redrive(force: bool) -> None:
    """Redrive due transient letters (sink:hot → the hot store; others → their source topic); archive
    those whose 5th redrive failed. Permanent letters (validation) are never redriven."""
    from confluent_kafka import KafkaError, Message, Producer

    from tradepulse.bus.clients import producer_config
    from tradepulse.stores.dlq import DeadLetterPolicy, lazy, redrive_route
    from tradepulse.stores.factory import open_cold_store, open_dlq, open_hot_store

    settings = get_settings()
    # Connected on first use: redriving only sink:hot letters needs no broker.
    connect = functools.cache(lambda: Producer(producer_config(settings)))

    def publish(topic: str, key: bytes | None, value: bytes, headers: dict[str, bytes]) -> None:
        errors: list[str] = []
        producer = connect()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(str(err))

        kafka_headers: dict[str, str | bytes | None] = dict(headers)
        producer.produce(topic, value, key, headers=kafka_headers, on_delivery=on_delivery)
        if producer.flush(30) or errors:
            raise BusError(errors[0] if errors else "delivery not acknowledged within 30 s")

    hot = lazy(lambda: open_hot_store(settings))
    queue, cold = open_dlq(settings), open_cold_store(settings)
    try:
        policy = DeadLetterPolicy.from_settings(
            queue,
            settings,
            redrive=redrive_route(publish=publish, hot=hot),
            archive=cold.archive_dead_letters,
        )
        report = policy.redrive_due(force=force)
    finally:
        if hot.cache_info().currsize:
            hot().close()
        cold.close()
        queue.close()
    click.echo(
        f"redriven {len(report.redriven)}, failed {len(report.failed)}, archived {len(report.archived)}, "
        f"not due {report.not_due}, permanent (not redriven) {report.permanent}"
    )


@dlq.command()
@click.option(
    "--class",
    "failure_class",
    type=click.Choice(["transient", "permanent", "all"]),
    default="all",
    show_default=True,
)
def archive(failure_class: str) -> None:
    """Archive every pending letter (of one class) to the cold store (dead-letter-archive/) now."""
    from tradepulse.stores.dlq import DeadLetterPolicy
    from tradepulse.stores.factory import open_cold_store, open_dlq

    settings = get_settings()
    queue, cold = open_dlq(settings), open_cold_store(settings)
    try:
        policy = DeadLetterPolicy.from_settings(
            queue, settings, redrive=lambda letter: None, archive=cold.archive_dead_letters
        )
        archived = policy.archive_pending(None if failure_class == "all" else failure_class)
    finally:
        cold.close()
        queue.close()
    click.echo(f"archived {len(archived)}")
