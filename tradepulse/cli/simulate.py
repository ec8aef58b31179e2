"""`tradepulse simulate`: the local market simulator in the foreground (Ctrl-C stops it)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from tradepulse.config import get_settings

if TYPE_CHECKING:
    from tradepulse.sources.simulator import SimulatorConfig


@click.command()
@click.option("--host", default=None, help="Bind address [settings: simulator_host].")
@click.option("--ws-port", type=int, default=None, help="Massive WebSocket port [simulator_ws_port].")
@click.option("--http-port", type=int, default=None, help="Finnhub news HTTP port [simulator_http_port].")
@click.option("--rate", type=float, default=None, help="Base events/s over all tickers [simulator_rate].")
@click.option("--seed", type=int, default=None, help="Random seed [simulator_seed].")
@click.option("--tickers", default=None, help="Comma-separated tickers [tickers].")
@click.option("--n-tickers", type=int, default=None, help="Use N tickers (defaults + synthetic symbols).")
@click.option("--profile", type=click.Choice(["flat", "market_open"]), default="flat", show_default=True)
@click.option(
    "--duration",
    type=float,
    default=None,
    help="Generate N simulated seconds, then exit once clients got them.",
)
@click.option(
    "--ground-truth",
    type=click.Path(path_type=Path),
    default=None,
    help="Ground-truth JSON lines file [<data_dir>/simulator/ground_truth.jsonl].",
)
@click.option(
    "--news-interval", type=float, default=30.0, show_default=True, help="Mean seconds between news."
)
@click.option("--backfill-news", type=int, default=10, show_default=True, help="Articles from the last hour.")
@click.option("--max-connections", type=int, default=None, help="Authenticated connection limit.")
@click.option(
    "--replay",
    "replay_root",
    type=click.Path(path_type=Path),
    default=None,
    help="Replay recorded trades from this cold-store root instead of simulating.",
)
@click.option("--speed", type=float, default=1.0, show_default=True, help="Replay speed (N× real time).")
@click.option(
    "--bad-tick-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of trades replaced by labelled bad ticks, half impossible, half fat fingers.",
)
@click.option(
    "--progress-every", type=float, default=5.0, show_default=True, help="Seconds between progress lines."
)
def simulate(
    host: str | None,
    ws_port: int | None,
    http_port: int | None,
    rate: float | None,
    seed: int | None,
    tickers: str | None,
    n_tickers: int | None,
    profile: Literal["flat", "market_open"],  # click.Choice admits exactly these
    duration: float | None,
    ground_truth: Path | None,
    news_interval: float,
    backfill_news: int,
    max_connections: int | None,
    replay_root: Path | None,
    speed: float,
    bad_tick_rate: float,
    progress_every: float,
) -> None:
    """Serve a synthetic market over the Massive WebSocket protocol and Finnhub company-news HTTP."""
    from tradepulse.sources.simulator import SimulatorConfig, make_tickers

    settings = get_settings()
    symbols = (
        [t.strip().upper() for t in tickers.split(",") if t.strip()] if tickers else list(settings.tickers)
    )
    if n_tickers:
        symbols = make_tickers(n_tickers)
    config = SimulatorConfig(
        seed=settings.simulator_seed if seed is None else seed,
        tickers=symbols,
        rate=settings.simulator_rate if rate is None else rate,
        api_key=settings.simulator_api_key,
        host=host or settings.simulator_host,
        ws_port=settings.simulator_ws_port if ws_port is None else ws_port,
        http_port=settings.simulator_http_port if http_port is None else http_port,
        ground_truth_path=ground_truth or settings.data_dir / "simulator" / "ground_truth.jsonl",
        profile=profile,
        max_connections=max_connections,
        duration_s=duration,
        news_interval_s=news_interval,
        backfill_news=backfill_news,
        news_calls_per_minute=settings.finnhub_calls_per_minute,
        replay_root=replay_root,
        replay_speed=speed,
        bad_tick_rate=bad_tick_rate,
    )
    asyncio.run(_run(config, progress_every))


async def _run(config: SimulatorConfig, progress_every: float) -> None:
    from tradepulse.sources.simulator import Simulator

    sim = Simulator(config)
    await sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    source = "replay " + str(config.replay_root) if config.replay_root else f"{len(config.tickers)} tickers"
    _say(
        f"simulator: {source}, ws {sim.ws_url}/stocks, news {sim.news_base_url}/company-news, "
        f"rate {config.rate:,.0f} ev/s ({config.profile}), seed {config.seed}"
    )
    finisher: asyncio.Task[None] | None = None
    if config.duration_s is not None or config.replay_root is not None:
        # A bounded run exits once every client has been sent everything.
        async def finish() -> None:
            await sim.finished.wait()
            stop.set()

        finisher = asyncio.create_task(finish())
    last = sim.stats()
    last_t = time.monotonic()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), progress_every)
            now, stats = time.monotonic(), sim.stats()
            dt = max(now - last_t, 1e-9)
            sent = stats["sent_trades"] + stats["sent_quotes"] - last["sent_trades"] - last["sent_quotes"]
            lag = (time.time() * 1000 - stats["sim_now_ms"]) / 1000 if not config.replay_root else 0.0
            _say(
                f"simulator: sent {sent / dt:,.0f} ev/s, generated {(stats['generated'] - last['generated']) / dt:,.0f}"
                f" ev/s, clients {stats['clients']}, queued frames {stats['pending_frames']}, "
                f"news {stats['articles']}, lag {lag:.2f}s"
            )
            last, last_t = stats, now
    finally:
        if finisher is not None:
            finisher.cancel()
        await sim.stop()
        _say("simulator: stopped")


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    simulate()
