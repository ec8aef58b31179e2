"""Runner throughput: drain a pre-filled input topic through the full exactly-once runner.

Starts a throw-away local broker (or uses TRADEPULSE_KAFKA_BOOTSTRAP), fills market.trades/quotes/news
with a simulator recording, then runs the real runner (core + anomaly detector + news join, SQLite hot
store, Parquet cold store, one Kafka transaction per batch) until it has consumed everything, and
reports events/s and batch latency percentiles.

    .venv/bin/python scripts/bench_runner.py --events 200000 --batch 5000 --tickers 200

Prints events/s, batch p50/p99, the time per stage (decode, core, sinks, commit, cold flush) and the
process RSS over the drain.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path

import click
import numpy as np
import orjson
from confluent_kafka import Producer

from tradepulse.bus.admin import ensure_topics
from tradepulse.bus.clients import producer_config
from tradepulse.bus.local_kafka import LocalKafka
from tradepulse.bus.pipeline import build_runner
from tradepulse.bus.runner import tune_process
from tradepulse.bus.stages import BATCH_PARTS
from tradepulse.config import Settings, get_settings
from tradepulse.sources.news import article_records
from tradepulse.sources.parse import quote_record, trade_record
from tradepulse.sources.simulator.market import MarketConfig, MarketModel, make_tickers
from tradepulse.topics import NEWS, QUOTES, TRADES


def recording(events: int, tickers: list[str]) -> list[tuple[str, str, bytes]]:
    """About `events` topic messages from the simulator (rate 2,000 events/s of simulated time)."""
    model = MarketModel(MarketConfig(seed=5, tickers=tickers, rate=2000, start_ms=1_767_000_000_000))
    out: list[tuple[str, str, bytes]] = []
    while len(out) < events:
        block = model.next_block()
        for wire in block.records():
            received = wire["t"] * 1000
            rec = trade_record(wire, received) if wire["ev"] == "T" else quote_record(wire, received)
            out.append((TRADES if wire["ev"] == "T" else QUOTES, rec["ticker"], orjson.dumps(rec)))
        for item in block.news:
            for rec in article_records(item, item["related"], set(tickers), block.end_ms * 1000):
                out.append((NEWS, rec["ticker"], orjson.dumps(rec)))
    return out[:events]


def fill(settings: Settings, messages: list[tuple[str, str, bytes]]) -> None:
    producer = Producer(producer_config(settings))
    for topic, key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0


def run(settings: Settings, events: int) -> None:
    tickers = settings.tickers
    t0 = time.perf_counter()
    messages = recording(events, tickers)
    print(f"recording: {len(messages)} events, {len(tickers)} tickers ({time.perf_counter() - t0:.1f}s)")
    ensure_topics(settings)
    t0 = time.perf_counter()
    fill(settings, messages)
    total = len(messages)
    del messages
    _release_freed_memory()  # so the RSS samples below are (mostly) the runner's
    print(f"pre-filled topics in {time.perf_counter() - t0:.1f}s")

    runner = build_runner(settings, instance="bench")
    tune_process()  # as `tradepulse process` does (process-wide, so not the Runner's business)
    started: dict[str, float] = {}
    rss: list[tuple[int, float]] = []  # (events processed, RSS MiB), about once a second

    def done(metrics) -> bool:  # type: ignore[no-untyped-def]
        if metrics.events_processed and "first" not in started:
            started["first"] = started["rss"] = time.perf_counter()
        if "rss" in started and time.perf_counter() - started["rss"] >= 1.0:
            started["rss"] = time.perf_counter()
            rss.append((metrics.events_processed, _rss_mib()))
        return metrics.events_processed >= total

    t_start = time.perf_counter()
    metrics = runner.run(stop_when=done)
    t_end = time.perf_counter()
    drain_s = t_end - started["first"]
    batch = np.fromiter(metrics.batch_ms, dtype=float)
    print(
        f"runner: {metrics.events_processed} events in {drain_s:.2f}s = "
        f"{metrics.events_processed / drain_s:,.0f} events/s (group join + first assignment "
        f"{started['first'] - t_start:.1f}s excluded)"
    )
    print(
        f"batches: {metrics.batches} (batch_max_messages={settings.batch_max_messages}), "
        f"batch latency p50 {np.percentile(batch, 50):.1f} ms, p99 {np.percentile(batch, 99):.1f} ms, "
        f"max {batch.max():.1f} ms; hot-store write p99 {np.percentile(list(metrics.write_ms), 99):.1f} ms"
    )
    print(
        f"outputs produced: {metrics.outputs_produced}, dead letters {metrics.dead_letters}, "
        f"backpressure activations {metrics.backpressure_activations}, model v{metrics.model_version}"
    )
    stages = metrics.stages.summary()
    wall = sum(stages[stage]["total"] for stage in BATCH_PARTS)
    print("per stage (ms per batch p50 / p99, share of the loop's time):")
    for stage in BATCH_PARTS:
        s = stages[stage]
        print(f"  {stage:<12} {s['p50']:8.1f} / {s['p99']:8.1f}  {s['total'] / max(wall, 1e-9):6.1%}")
    print(f"runner RSS at the end: {_rss_mib():.0f} MiB (peak {_peak_rss_mib():.0f} MiB)")
    if len(rss) >= 4:
        # The drift after the first quarter: window state and buffers are warm by then.
        warm = rss[len(rss) // 4]
        print(
            f"RSS during the drain: {rss[0][1]:.0f} MiB at {rss[0][0]:,} events, {warm[1]:.0f} MiB at "
            f"{warm[0]:,}, {rss[-1][1]:.0f} MiB at {rss[-1][0]:,} (max {max(r for _, r in rss):.0f}); "
            f"drift after warm-up {(rss[-1][1] - warm[1]) / warm[1]:+.1%}"
        )


def _release_freed_memory() -> None:
    """Return the recording's freed heap to the OS (glibc keeps it otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@click.command(help=__doc__)
@click.option("--events", type=int, default=200000, show_default=True)
@click.option("--batch", type=int, default=5000, show_default=True, help="batch_max_messages")
@click.option("--partitions", type=int, default=6, show_default=True)
@click.option(
    "--tickers", type=int, default=0, show_default=True, help="simulated tickers (default: settings)"
)
def main(events: int, batch: int, partitions: int, tickers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as tmp:
        data = Path(tmp)
        bootstrap = os.environ.get("TRADEPULSE_KAFKA_BOOTSTRAP")
        broker = None
        if not bootstrap:
            broker = LocalKafka(data / "kafka", heap="1g", libs_root=get_settings().kafka_libs_root)
            bootstrap = broker.start(quiet=True).bootstrap
        try:
            settings = Settings(
                kafka_bootstrap=bootstrap,
                data_dir=data / "state",
                topic_partitions=partitions,
                batch_max_messages=batch,
                consumer_group=f"bench-{uuid.uuid4().hex[:8]}",
            )
            if tickers:
                settings = settings.model_copy(update={"tickers": make_tickers(tickers)})
            run(settings, events)
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    main()
