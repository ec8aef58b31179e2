"""Benchmark: simulator → ingest (WebSocket client, parse, validate, dedupe) → Kafka acknowledged.

The simulator runs in its own process (as in production, the feed is not in our process) and offers
`--rate` events/s for `--duration` seconds; it waits rather than drops when the client falls behind,
so the acknowledged rate is the ingest's sustainable throughput. Reports events/s acknowledged by
the broker and the produce→ack latency percentiles (librdkafka's per-message latency).

    .venv/bin/python scripts/bench_ingest.py --rate 100000 --duration 15
    .venv/bin/python scripts/bench_ingest.py --bootstrap localhost:9092   # an existing broker
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path

import click
from hdrh.histogram import HdrHistogram


def _simulator_process(conn, rate: float, duration: float, tickers: int, frame_events: int) -> None:  # type: ignore[no-untyped-def]
    from tradepulse.sources.simulator import SimulatorConfig, make_tickers, run_simulator_in_thread

    sim = run_simulator_in_thread(
        SimulatorConfig(
            seed=7,
            tickers=make_tickers(tickers),
            rate=rate,
            api_key="bench",
            ws_port=0,
            http_port=0,
            duration_s=duration,
            max_events_per_frame=frame_events,
            news_interval_s=0,
        )
    )
    conn.send(sim.ws_url)
    conn.recv()  # "go": the client is about to connect
    sim.wait_clients(1, 30)
    conn.send("streaming")
    sim.wait_finished(duration * 20 + 60)
    conn.send(sim.sent_trades() + sim.sent_quotes())
    conn.recv()
    sim.stop()


@click.command(help=__doc__)
@click.option("--rate", type=float, default=100000, show_default=True, help="Offered events/s (all tickers).")
@click.option("--duration", type=float, default=15.0, show_default=True, help="Seconds of simulated market.")
@click.option("--tickers", type=int, default=100, show_default=True)
@click.option(
    "--frame-events", type=int, default=1000, show_default=True, help="Max events per WebSocket frame."
)
@click.option("--bootstrap", default=None, help="Existing broker; default: start a local one.")
def main(rate: float, duration: float, tickers: int, frame_events: int, bootstrap: str | None) -> None:

    from tradepulse.bus.admin import ensure_topics
    from tradepulse.bus.local_kafka import LocalKafka
    from tradepulse.config import Settings, get_settings
    from tradepulse.sources.ingest import IngestService, client_from_settings
    from tradepulse.stores.factory import open_dlq

    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    broker = None
    if bootstrap is None:
        broker = LocalKafka(workdir / "kafka", heap="1g", libs_root=get_settings().kafka_libs_root)
        bootstrap = broker.start(quiet=True).bootstrap
    parent, child = mp.get_context("spawn").Pipe()
    sim_proc = mp.get_context("spawn").Process(
        target=_simulator_process, args=(child, rate, duration, tickers, frame_events)
    )
    try:
        settings = Settings(kafka_bootstrap=bootstrap, data_dir=workdir / "state", tickers=["*"])
        ensure_topics(settings)
        sim_proc.start()
        ws_url = parent.recv()
        latency_us = HdrHistogram(1, 60_000_000, 3)
        dlq = open_dlq(settings)
        service = IngestService(
            settings,
            dlq=dlq,
            client=client_from_settings(settings, ws_url, "bench", tickers=["*"]),
            on_ack_latency=lambda s: latency_us.record_value(max(1, int(s * 1_000_000))),
        )

        async def run() -> tuple[float, float, int]:
            task = asyncio.create_task(service.run())
            parent.send("go")
            await asyncio.to_thread(parent.recv)
            cpu0, t0 = time.process_time(), time.monotonic()
            sent = await asyncio.to_thread(parent.recv)
            while service.metrics.published + service.metrics.failed < sent:
                await asyncio.sleep(0.01)
            elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
            await service.stop()
            await task
            return elapsed, cpu, sent

        elapsed, cpu, sent = asyncio.run(run())
        parent.send("stop")
        sim_proc.join(30)
        m = service.metrics
        print(f"offered      {rate:,.0f} events/s for {duration:.0f}s, {tickers} tickers")
        print(f"sent         {sent:,} events by the simulator")
        print(
            f"acknowledged {m.published:,} in {elapsed:.2f}s = {m.published / elapsed:,.0f} events/s "
            f"(failed {m.failed}, dlq {m.dead_lettered}, duplicates {m.duplicates})"
        )
        print(
            "ack latency  "
            + "  ".join(
                f"p{p:g}={latency_us.get_value_at_percentile(p) / 1000:.1f}ms" for p in (50, 90, 99, 99.9)
            )
        )
        print(
            f"ingest CPU   {cpu / elapsed * 100:.0f}% of one core, {cpu / max(1, m.published) * 1e6:.1f} µs/event;"
            f" backpressure waits {m.backpressure_waits}; max RSS "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; cores {os.cpu_count()}"
        )
        dlq.close()
    finally:
        if sim_proc.is_alive():
            sim_proc.kill()
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
