"""`tradepulse kafka start|stop|status|fetch` and `tradepulse topics`: the local broker and topics."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

import click

from tradepulse.bus.admin import TopicState, describe_topics, ensure_topics
from tradepulse.bus.clients import NoBrokerError, bootstrap_servers
from tradepulse.bus.local_kafka import KafkaSetupError, LocalKafka, kafka_version
from tradepulse.config import Settings, get_settings


def local_broker(settings: Settings | None = None) -> LocalKafka:
    """The local broker of the configured data dir, with the configured jar cache."""
    settings = settings or get_settings()
    return LocalKafka(
        settings.data_dir,
        port=settings.kafka_port,
        controller_port=settings.kafka_controller_port,
        heap=settings.kafka_heap,
        libs_root=settings.kafka_libs_root,
    )


def fail(message: str) -> None:
    """Print one clear error line and exit non-zero."""
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


@click.group()
def kafka() -> None:
    """The local single-node Apache Kafka (KRaft) broker."""


@kafka.command()
def fetch() -> None:
    """Download the broker jars from Maven Central into the local cache."""
    try:
        seconds = local_broker().fetch()
    except KafkaSetupError as exc:
        fail(str(exc))
    click.echo(f"kafka {kafka_version()} jars ready ({seconds:.1f}s)")


@kafka.command()
@click.option("--foreground", is_flag=True, help="Stay attached; Ctrl-C stops the broker.")
def start(foreground: bool) -> None:
    """Start the broker (formats storage on first run) and create the topics."""
    broker = local_broker()
    started = time.monotonic()
    try:
        info = broker.start(quiet=True)
        created = ensure_topics(get_settings())
    except KafkaSetupError as exc:
        fail(str(exc))
    click.echo(
        f"kafka {info.kafka_version} ready on {info.bootstrap} (pid {info.pid}) in {time.monotonic() - started:.1f}s"
    )
    if created:
        click.echo(f"created topics: {', '.join(created)}")
    if foreground:
        try:
            while broker.process is not None and broker.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            broker.stop()
            click.echo("kafka stopped")


@kafka.command()
def stop() -> None:
    """Stop the local broker."""
    if local_broker().stop():
        click.echo("kafka stopped")
    else:
        click.echo("kafka is not running")


@kafka.command()
def status() -> None:
    """Show the broker and its topics (works from any shell)."""
    settings = get_settings()
    try:
        bootstrap = bootstrap_servers(settings)
        states = describe_topics(settings)
    except NoBrokerError as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"broker at {settings.kafka_bootstrap or 'local'} not reachable: {exc}")
    click.echo(f"kafka at {bootstrap}")
    _print_topics(states)


@click.command()
def topics() -> None:
    """Create missing topics from configuration and list them."""
    settings = get_settings()
    try:
        created = ensure_topics(settings)
        states = describe_topics(settings)
    except NoBrokerError as exc:
        fail(str(exc))
    if created:
        click.echo(f"created: {', '.join(created)}")
    _print_topics(states)


def _print_topics(states: Iterable[TopicState]) -> None:
    click.echo(f"{'topic':<24}{'partitions':>11}{'messages':>12}")
    for state in states:
        click.echo(f"{state.name:<24}{state.partitions:>11}{state.messages:>12}")
