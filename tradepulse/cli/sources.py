"""`tradepulse ingest` (Massive WebSocket → Kafka) and `tradepulse news` (Finnhub → Kafka)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import click

from tradepulse.config import Settings, get_settings
from tradepulse.gc_tuning import tune_gc
from tradepulse.metrics_emf import emitter_from_settings


def _setup(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # httpx logs every request line at INFO; keep the progress lines readable.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _await_api_key(settings: Settings, name: str) -> Settings:
    """The settings with a real provider key: a placeholder is re-read from the secret until set."""
    from tradepulse.sources.api_keys import PlaceholderKeyError, wait_for_api_key

    try:
        return wait_for_api_key(settings, name)
    except PlaceholderKeyError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


def _require_topics(settings: Settings, names: tuple[str, ...]) -> None:
    """Exit with a clear message if a topic the service uses is missing (services never create topics:
    on MSK a principal sees only what it may describe and has no CreateTopic)."""
    from tradepulse.bus.admin import MissingTopicsError, require_topics

    try:
        require_topics(settings, names)
    except MissingTopicsError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(3)


async def _run_until_signal(
    run: Awaitable[None], stop: Callable[[], Awaitable[None]], progress: Callable[[], None], every_s: float
) -> None:
    """Run a service; SIGINT/SIGTERM call its stop(); print a progress line every `every_s` seconds."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(stop()))
    task = asyncio.ensure_future(run)
    while every_s > 0 and not task.done():
        await asyncio.wait({task}, timeout=every_s)
        progress()
    await task


@click.command()
@click.option("--url", default=None, help="WebSocket URL (default: Massive, or the simulator without a key).")
@click.option("--tickers", default=None, help="Comma-separated tickers; '*' for all (default: settings).")
@click.option(
    "--progress-s", default=5.0, show_default=True, help="Seconds between progress lines (0 = none)."
)
def ingest(url: str | None, tickers: str | None, progress_s: float) -> None:
    """Stream Massive trades and quotes into Kafka (market.trades / market.quotes).

    Invalid events go to the dead-letter queue; SIGINT/SIGTERM flush the producer and exit.
    """
    from tradepulse.sources.ingest import IngestService, client_from_settings
    from tradepulse.sources.massive import MassiveError
    from tradepulse.stores.factory import open_dlq
    from tradepulse.topics import INGEST_TOPICS

    settings = get_settings()
    _setup(settings)
    settings = _await_api_key(settings, "MASSIVE_API_KEY")
    _require_topics(settings, INGEST_TOPICS)
    ticker_list = [t.strip() for t in tickers.split(",") if t.strip()] if tickers else None
    dlq = open_dlq(settings)
    service = IngestService(
        settings, dlq=dlq, client=client_from_settings(settings, url, tickers=ticker_list)
    )
    source = "simulator" if settings.use_simulator and url is None else "massive"
    click.echo(f"[ingest] {source} {service.client.url} → Kafka", err=True)
    last = {"published": 0, "at": time.monotonic()}
    emf = emitter_from_settings(settings, "ingest")

    def progress(final: bool = False) -> None:
        m = service.metrics
        if emf is not None:  # the last call always sends, so a failure just before exit is counted
            emf.emit_producer(m.published, m.failed, force=final)
        now = time.monotonic()
        rate = (m.published - last["published"]) / max(1e-9, now - last["at"])
        last.update(published=m.published, at=now)
        click.echo(
            f"[ingest] received={m.received} published={m.published} rate={rate:.0f}/s failed={m.failed} "
            f"dlq={m.dead_lettered} duplicates={m.duplicates} reconnects={m.reconnects} "
            f"backpressure_waits={m.backpressure_waits} queue={m.queue_depth} "
            f"backfilled={m.backfilled} backfill_errors={m.backfill_errors}",
            err=True,
        )

    tune_gc()  # set up: out of the collector's walks, which now run rarely (tradepulse.gc_tuning)
    try:
        asyncio.run(_run_until_signal(service.run(), service.stop, progress, progress_s))
    except MassiveError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    finally:
        dlq.close()
    progress(final=True)


@click.command()
@click.option("--base-url", default=None, help="Finnhub API base (default: settings, or the simulator).")
@click.option("--once", is_flag=True, help="Poll every ticker once and exit.")
@click.option(
    "--progress-s", default=30.0, show_default=True, help="Seconds between progress lines (0 = none)."
)
def news(base_url: str | None, once: bool, progress_s: float) -> None:
    """Poll Finnhub company news for every ticker and publish new articles to market.news."""
    from tradepulse.sources.news import NewsPoller, news_endpoint
    from tradepulse.stores.factory import open_dlq
    from tradepulse.topics import NEWS_TOPICS

    settings = get_settings()
    _setup(settings)
    settings = _await_api_key(settings, "FINNHUB_API_KEY")
    if news_endpoint(settings)[1] is None:
        # Not an error for `tradepulse up` with only a Massive key: news is optional, so stay idle
        # (exiting would make the supervisor stop the whole pipeline).
        click.echo("[news] no FINNHUB_API_KEY set: news polling disabled", err=True)
        if not once:
            with contextlib.suppress(KeyboardInterrupt):
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return
    _require_topics(settings, NEWS_TOPICS)
    dlq = open_dlq(settings)
    poller = NewsPoller(settings, dlq=dlq, base_url=base_url)
    click.echo(f"[news] polling {len(poller.tickers)} tickers at {poller.base_url}", err=True)

    emf = emitter_from_settings(settings, "news")

    def progress(final: bool = False) -> None:
        m = poller.metrics
        if emf is not None:
            emf.emit_producer(m.published, m.failed, force=final)
        click.echo(
            f"[news] rounds={m.rounds} requests={m.requests} published={m.published} "
            f"duplicates={m.duplicates} rate_limited={m.rate_limited} errors={m.http_errors} "
            f"dlq={m.dead_lettered}",
            err=True,
        )

    async def poll_once() -> None:
        try:
            await poller.poll_once()
        finally:
            poller.close()

    try:
        asyncio.run(
            _run_until_signal(poll_once() if once else poller.run(), poller.stop, progress, progress_s)
        )
    finally:
        dlq.close()
    progress(final=True)
