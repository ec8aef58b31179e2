"""`tradepulse up`: the whole local pipeline with one command."""

from __future__ import annotations

import sys
import time

import click

from tradepulse.bus.admin import describe_topics, ensure_topics
from tradepulse.cli.kafka import local_broker
from tradepulse.config import Settings, get_settings
from tradepulse.errors import TradePulseError
from tradepulse.supervisor import Service, Supervisor, port_open, processor_services, python_command


def pipeline_services(available: set[str], settings: Settings | None = None) -> list[Service]:
    """The services of the local pipeline in readiness order, limited to the commands that exist."""
    settings = settings or get_settings()
    services: list[Service] = []
    if settings.use_simulator and "simulate" in available:
        services.append(
            Service(
                "simulator",
                python_command("simulate"),
                ready=port_open(settings.simulator_host, settings.simulator_ws_port),
            )
        )
    for name, command in (("ingest", "ingest"), ("news", "news")):
        if command in available:
            services.append(Service(name, python_command(command)))
    if "process" in available:
        services.extend(processor_services(settings.processors))
    if "api" in available:
        services.append(
            Service("api", python_command("api"), ready=port_open(settings.api_host, settings.api_port))
        )
    return services


@click.command()
def up() -> None:
    """Run everything locally: Kafka, simulator (without API keys), ingest, news, processor, API."""
    # The subcommands of the group `up` runs under (`tradepulse`, tradepulse.cli.main) are the services
    # that can be started; read from click's context so that this module does not import main back. The
    # group's list, not its `commands` dict: it imports its subcommands only when one is looked up.
    root = click.get_current_context().find_root()
    commands = set(root.command.list_commands(root)) if isinstance(root.command, click.Group) else set()
    settings = get_settings()
    supervisor = Supervisor()
    supervisor.install_signal_handlers()
    broker = local_broker(settings)
    started = time.monotonic()
    reason = "startup failed"
    try:
        supervisor.log("up", f"starting Kafka (data in {settings.data_dir}/kafka)")
        info = broker.start(quiet=True)
        # Children find the broker through broker.json; pin it so they never guess. A new Settings, not
        # an edit of the process-wide cached one (other readers of get_settings() keep what they read).
        settings = settings.model_copy(update={"kafka_bootstrap": settings.kafka_bootstrap or info.bootstrap})
        created = ensure_topics(settings)
        supervisor.log(
            "up",
            f"kafka {info.kafka_version} ready on {info.bootstrap}"
            + (f", created {len(created)} topics" if created else ""),
        )
        for state in describe_topics(settings):
            supervisor.log(
                "up", f"  topic {state.name:<22} partitions={state.partitions} messages={state.messages}"
            )
        source = (
            "market simulator (no MASSIVE_API_KEY set)" if settings.use_simulator else "Massive live feed"
        )
        supervisor.log("up", f"source: {source}")
        if settings.processors > settings.topic_partitions:
            supervisor.log(
                "up",
                f"TRADEPULSE_PROCESSORS={settings.processors} > {settings.topic_partitions} partitions: "
                f"{settings.processors - settings.topic_partitions} processor instances will have no work",
            )
        for service in pipeline_services(commands, settings):
            service.env["TRADEPULSE_KAFKA_BOOTSTRAP"] = info.bootstrap
            if supervisor.stopping.is_set():
                break
            supervisor.start(service)
        supervisor.log("up", f"pipeline up in {time.monotonic() - started:.1f}s — Ctrl-C stops everything")
        if "api" in commands:
            supervisor.log(
                "up", f"dashboard: http://{settings.api_host}:{settings.api_port}/   API docs: /docs"
            )
        reason = supervisor.wait()
    except TradePulseError as exc:  # KafkaSetupError, a service that exits or is not ready (CliError)
        click.secho(f"error: {exc}", fg="red", err=True)
        reason = str(exc)
    finally:
        supervisor.log("up", f"shutting down ({reason})")
        supervisor.stop_all()
        broker.stop()
        supervisor.log("up", "kafka stopped; all processes ended")
    if reason not in ("stop requested",):
        sys.exit(1)
