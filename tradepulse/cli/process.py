"""`tradepulse process`: run the exactly-once micro-batch runner (one consumer-group member)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TYPE_CHECKING

import click

from tradepulse.config import get_settings

if TYPE_CHECKING:
    from tradepulse.bus.status import RunnerMetrics


@click.command()
@click.option(
    "--instance",
    default="0",
    show_default=True,
    help="Stable id of this runner among the group's members (names its transactional producer). "
    "Restart a crashed runner with the same id so it fences its predecessor at once.",
)
@click.option(
    "--progress-s", default=5.0, show_default=True, help="Seconds between progress lines (0 = none)."
)
@click.option(
    "--exit-when-idle",
    type=float,
    default=None,
    help="Exit cleanly after this many seconds without input (draining a topic; benchmarks, tests).",
)
def process(instance: str, progress_s: float, exit_when_idle: float | None) -> None:
    """Consume trades/quotes/news, compute features, anomalies and news correlations, write the stores
    and produce the outputs, exactly once. SIGTERM/SIGINT finish the batch, commit and exit."""
    from tradepulse.bus.admin import MissingTopicsError, require_topics
    from tradepulse.bus.heap import tune_malloc
    from tradepulse.bus.pipeline import build_runner
    from tradepulse.bus.runner import keep_pandas_out, tune_process
    from tradepulse.bus.watchdog import Watchdog
    from tradepulse.stores.retention import RetentionPurger
    from tradepulse.topics import PROCESSOR_TOPICS

    tune_malloc()  # first: before the runner's allocations move glibc's threshold
    keep_pandas_out()
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    try:
        require_topics(settings, PROCESSOR_TOPICS)
    except MissingTopicsError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(3)
    runner = build_runner(settings, instance=instance, commit_watchdog=Watchdog(settings.commit_watchdog_s))
    runner.install_signal_handlers()
    metrics = runner.metrics
    done = threading.Event()

    def report() -> None:
        while not done.wait(progress_s):
            snap = metrics.snapshot()
            click.echo(
                f"[process {instance}] events={snap['events_processed']} "
                f"rate={snap['events_per_s']:.0f}/s lag={snap['consumer_lag']} "
                f"batch p50={snap['batch_p50_ms']:.1f}ms p99={snap['batch_p99_ms']:.1f}ms "
                f"write p99={snap['write_p99_ms']:.1f}ms e2e p50={snap['e2e_latency_p50_ms'] or 0:.1f}ms "
                f"p99={snap['e2e_latency_p99_ms'] or 0:.1f}ms (1 min) "
                f"backpressure={snap['backpressure_activations']} "
                f"dlq={snap['dead_letters']} late={snap['late_events']} model=v{snap['model_version']}",
                err=True,
            )

    reporter = threading.Thread(target=report, name="progress", daemon=True)
    if progress_s > 0:
        reporter.start()

    last_seen = {"events": -1, "assignments": -1, "at": time.monotonic()}

    def idle_for_long(m: RunnerMetrics) -> bool:
        # Idle = no new events since the later of the last event and the last (re)assignment, which
        # may have spent a while rebuilding; never idle without partitions.
        if (
            m.events_processed != last_seen["events"]
            or m.assignments != last_seen["assignments"]
            or m.assigned_partitions == 0
        ):
            last_seen.update(events=m.events_processed, assignments=m.assignments, at=time.monotonic())
        return time.monotonic() - last_seen["at"] > (exit_when_idle or 0)

    click.echo(f"[process {instance}] runner started (transactional id {runner.transactional_id})", err=True)
    tune_process()
    # Retention beside the runner, on its own store object (see tradepulse.stores.retention for why here).
    purger = RetentionPurger.for_settings(runner.hot, settings)
    if purger is not None:
        purger.start()
    try:
        runner.run(stop_when=idle_for_long if exit_when_idle is not None else None)
    finally:
        done.set()
        if purger is not None:
            purger.stop()
    snap = metrics.snapshot()
    click.echo(
        f"[process {instance}] stopped after {snap['events_processed']} events, "
        f"{snap['dead_letters']} dead letters, {snap['backpressure_activations']} backpressure activations",
        err=True,
    )
