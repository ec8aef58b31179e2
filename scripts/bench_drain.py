"""Drain-only benchmark of our runner: `tradepulse bench` phase 2 without the full path or the peers.

Starts a throw-away local broker (or uses `--bootstrap`), re-creates the topics, pre-fills `market.trades`
once with the drain's trades (`tradepulse.bench.drain.prefill_trades`), then drains them `--runs` times
with `tradepulse.bench.drain_ours` (the real runner: core, SQLite hot store, Parquet cold store, one Kafka
transaction per batch), each run in its own process with a fresh consumer group and data dir, exactly
as the bench measures it. Prints events/s per run, their median and spread, batch p50/p99 and the
share of each stage of the runner's batch time (plus the time between batches: consume and polling).

    .venv/bin/python scripts/bench_drain.py --events 200000 --tickers 200 --runs 3
    .venv/bin/python scripts/bench_drain.py --runs 1 --py-spy      # + collapsed stacks per run
    .venv/bin/python scripts/bench_drain.py --runs 1 --cprofile    # + a cProfile per run
    .venv/bin/python scripts/bench_drain.py --anomaly-refits       # models live within the 2-min market

The drain's market spans ~2 minutes, shorter than the anomaly warm-up (300 s): by default no model is
fitted. `--anomaly-refits` scales the anomaly settings down (`ANOMALY_REFITS`) so that models are fitted
every 10 s of market time from 20 s on, which shows what refits cost a catch-up: a drain runs through
market time many times faster than real time, so scoring waits for fits that are due (how often and how
long is printed per run).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from tradepulse.bench import drain
from tradepulse.bench.harness import child_env, profile_summary
from tradepulse.bus.admin import recreate_topics
from tradepulse.bus.local_kafka import LocalKafka
from tradepulse.bus.stages import BATCH_PARTS
from tradepulse.config import Settings, get_settings

SPY_RATE_HZ = 100
ANOMALY_REFITS = {
    "TRADEPULSE_ANOMALY_WARMUP_S": "10",
    "TRADEPULSE_ANOMALY_SAMPLE_MS": "100",
    "TRADEPULSE_ANOMALY_MIN_TRAIN": "100",
    "TRADEPULSE_ANOMALY_REFIT_INTERVAL_S": "10",
    "TRADEPULSE_ANOMALY_REFIT_DELAY_S": "2",
}


@dataclass(frozen=True)
class DrainOptions:
    batch: int  # TRADEPULSE_BATCH_MAX_MESSAGES (0: default)
    py_spy: bool
    cprofile: bool
    timeout: float
    anomaly_refits: bool = False  # scaled-down anomaly settings (ANOMALY_REFITS)


def one_drain(settings: Settings, n: int, out: Path, run: int, args: DrainOptions) -> dict[str, Any]:
    """One drain by a fresh runner process; the result JSON of `drain_ours` plus events/s."""
    tag = f"run{run}"
    state = out / f"state-{tag}"
    shutil.rmtree(state, ignore_errors=True)
    ours = settings.model_copy(
        update={"data_dir": state, "consumer_group": f"drain-bench-{uuid.uuid4().hex[:8]}"}
    )
    result_path = out / f"drain-{tag}.json"
    (out / f"spy-{tag}.txt").unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "tradepulse.bench.drain_ours",
        "--expect",
        str(n),
        "--result",
        str(result_path),
    ]
    if args.cprofile:
        argv += ["--cprofile", str(out / f"drain-{tag}.prof")]
    if args.py_spy:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        argv = [
            spy,
            "record",
            "-r",
            str(SPY_RATE_HZ),
            "-f",
            "raw",
            "-o",
            str(out / f"spy-{tag}.txt"),
            "--",
            *argv,
        ]
    extra = {"TRADEPULSE_BATCH_MAX_MESSAGES": str(args.batch)} if args.batch else {}
    if args.anomaly_refits:
        extra |= ANOMALY_REFITS
    result = drain.run_drain(
        "tradepulse",
        argv,
        result_path,
        env=child_env(ours, **extra),
        timeout_s=args.timeout,
        log_path=out / f"drain-{tag}.log",
    )
    shutil.rmtree(state, ignore_errors=True)
    return result


def describe(result: dict[str, Any]) -> str:
    """events/s, batch p50/p99 and stage shares of one drain."""
    if "error" in result:
        return f"FAILED: {result['error']}"
    batch = np.asarray(result.get("batch_ms") or [0.0])
    span_ms = (result["last_s"] - result["first_s"]) * 1000
    counted = batch[1:]  # the first batch ends before the clock starts
    between = max(span_ms - counted.sum(), 0.0)
    parts = [
        f"{result['events_per_s']:,.0f} ev/s, {result['events_per_s'] * span_ms / 1000 / max(result['cpu_s'], 1e-9):,.0f} "
        f"ev/CPU-s ({result['events']:,} events, {result['batches']} batches, "
        f"batch p50 {np.percentile(batch, 50):.1f} ms p99 {np.percentile(batch, 99):.1f} ms)",
        f"    anomaly refits: {result.get('refits', 0)} ({result.get('refit_s', 0.0):.1f} s on the refit thread); "
        f"scoring waited for a due one {result.get('refit_waits', 0)} times, "
        f"{result.get('refit_wait_s', 0.0):.2f} s in all ({result.get('refit_wait_s', 0.0) * 1000 / max(span_ms, 1e-9):.1%} of the drain)",
    ]
    shares = []
    for stage, summary in result.get("stages_ms", {}).items():
        if stage in BATCH_PARTS and summary["count"]:
            shares.append(
                f"{stage} {summary['total'] / span_ms:5.1%} (p50 {summary['p50']:.1f} / "
                f"p99 {summary['p99']:.1f} ms)"
            )
    shares.append(f"between batches {between / span_ms:5.1%}")
    parts.append("    share of wall: " + ", ".join(shares))
    return "\n".join(parts)


@click.command(help=__doc__)
@click.option("--events", type=int, default=200000, show_default=True)
@click.option("--tickers", type=int, default=200, show_default=True)
@click.option("--partitions", type=int, default=6, show_default=True)
@click.option("--runs", type=int, default=3, show_default=True)
@click.option(
    "--batch", type=int, default=0, show_default=True, help="TRADEPULSE_BATCH_MAX_MESSAGES (0: default)"
)
@click.option("--bootstrap", help="An existing broker (default: start a throw-away one).")
@click.option("--out", type=click.Path(path_type=Path), help="Keep results, logs and profiles here.")
@click.option("--py-spy", is_flag=True, help="py-spy collapsed stacks of each run.")
@click.option("--cprofile", is_flag=True, help="A cProfile of each run.")
@click.option("--timeout", type=float, default=600.0, show_default=True)
@click.option(
    "--anomaly-refits", is_flag=True, help="Scaled-down anomaly settings: models live in the drain."
)
def main(
    events: int,
    tickers: int,
    partitions: int,
    runs: int,
    batch: int,
    bootstrap: str | None,
    out: Path | None,
    py_spy: bool,
    cprofile: bool,
    timeout: float,
    anomaly_refits: bool,
) -> None:
    options = DrainOptions(
        batch=batch, py_spy=py_spy, cprofile=cprofile, timeout=timeout, anomaly_refits=anomaly_refits
    )
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        out = out.resolve() if out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        broker = None
        bootstrap = bootstrap
        if not bootstrap:
            broker = LocalKafka(Path(tmp) / "kafka", heap="1g", libs_root=get_settings().kafka_libs_root)
            bootstrap = broker.start(quiet=True).bootstrap
        try:
            settings = Settings(kafka_bootstrap=bootstrap, data_dir=out, topic_partitions=partitions)
            recreate_topics(settings)
            t0 = time.perf_counter()
            n = drain.prefill_trades(settings, events, tickers)
            print(f"pre-filled {n:,} trades ({tickers} tickers) in {time.perf_counter() - t0:.1f}s")
            rates = []
            for run in range(1, runs + 1):
                load = os.getloadavg()
                result = one_drain(settings, n, out, run, options)
                print(f"run {run} (load {load[0]:.2f}): {describe(result)}")
                rates.append(result.get("events_per_s", 0.0))
                spy = profile_summary(out / f"spy-run{run}.txt", rate_hz=SPY_RATE_HZ, top=25)
                if spy:
                    print(f"    py-spy: {spy['samples']} samples; inclusive % / self %:")
                    for (frame, incl), (own_frame, own) in zip(
                        spy["inclusive_pct"], spy["self_pct"], strict=False
                    ):
                        print(f"      {incl:5.1f}  {frame[:70]:<70} {own:5.1f}  {own_frame[:90]}")
            if rates:
                print(
                    f"median {statistics.median(rates):,.0f} ev/s over {len(rates)} runs "
                    f"(min {min(rates):,.0f}, max {max(rates):,.0f}); load now {os.getloadavg()[0]:.2f}"
                )
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    main()
