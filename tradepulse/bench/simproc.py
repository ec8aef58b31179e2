"""The benchmark's simulator process: the market simulator with a 10× market-open peak, writing its sent
counters to a JSON file twice a second (the bench reconciles them against the hot store).

Run as `python -m tradepulse.bench.simproc --stats FILE ...`; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import click

from tradepulse.bus.status import write_json_atomic
from tradepulse.sources.simulator import MarketModel, Simulator, SimulatorConfig, make_tickers
from tradepulse.sources.simulator.market import Profile

#: The market-open burst peaks at this multiple of the base rate (the simulator's default is 9×).
PEAK_MULTIPLIER = 10.0


class BenchSimulator(Simulator):
    """The simulator with the bench's peak multiplier (the profile shape is the simulator's own)."""

    #: When the profile's clock started (wall-clock ms), once the ingest service has subscribed.
    market_start_ms: int | None = None

    def _make_source(self) -> MarketModel:
        config = self.config.market_config()
        config.peak_multiplier = PEAK_MULTIPLIER
        return MarketModel(config)

    async def _produce(self) -> None:
        # The profile's clock starts when the ingest service has subscribed, not at bind time, so no
        # part of the workload is generated for nobody.
        assert self.ws is not None and self.source is not None
        while not any(s.wants_data for s in list(self.ws.sessions)):
            await asyncio.sleep(0.01)
        source = self.source
        assert isinstance(source, MarketModel)  # what _make_source builds
        source.start_ms = source.now_ms = int(time.time() * 1000)
        self.sim_now_ms = self.market_start_ms = source.start_ms
        await super()._produce()


async def _main(args: SimArgs) -> None:
    config = SimulatorConfig(
        seed=args.seed,
        tickers=make_tickers(args.tickers),
        rate=args.rate,
        api_key=os.environ.get("TRADEPULSE_SIMULATOR_API_KEY", "tradepulse-local"),
        ws_port=args.port,
        http_port=0,
        profile=args.profile,
        duration_s=args.duration,
        news_interval_s=args.news_interval,
        # Keep the market from pausing on a slow reader as long as possible: a full queue would slow
        # the offered load instead of building lag, which is what the bench must see.
        client_queue_frames=100_000,
    )
    sim = BenchSimulator(config)
    await sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stats_path = Path(args.stats)
    started = None
    try:
        while not stop.is_set():
            stats = sim.stats()
            if started is None and stats["clients"]:
                started = time.time()
            write_json_atomic(
                stats_path,
                {
                    **stats,
                    "at": time.time(),
                    "port": sim.ws.port if sim.ws else None,
                    "generation_done": sim.generation_done.is_set(),
                    "finished": sim.finished.is_set(),
                    "market_start_ms": sim.market_start_ms,
                },
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        await sim.stop()


@dataclass(frozen=True)
class SimArgs:
    rate: float
    tickers: int
    profile: Profile
    duration: float
    port: int
    seed: int
    news_interval: float
    stats: str


@click.command(help=__doc__)
@click.option("--rate", type=float, required=True)
@click.option("--tickers", type=int, required=True)
@click.option("--profile", type=click.Choice(["flat", "market_open"]), default="flat", show_default=True)
@click.option("--duration", type=float, required=True)
@click.option("--port", type=int, required=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--news-interval", type=float, default=30.0, show_default=True)
@click.option("--stats", required=True)
def main(
    rate: float,
    tickers: int,
    profile: Profile,  # click.Choice admits exactly these
    duration: float,
    port: int,
    seed: int,
    news_interval: float,
    stats: str,
) -> None:
    asyncio.run(_main(SimArgs(rate, tickers, profile, duration, port, seed, news_interval, stats)))


if __name__ == "__main__":
    main()
