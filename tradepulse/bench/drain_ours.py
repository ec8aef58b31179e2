"""Drain `market.trades` with TradePulse's runner (the real one: core, SQLite hot store, Parquet cold
store, exactly-once transactions) until `--expect` events are committed; write the timing JSON.

Run as `python -m tradepulse.bench.drain_ours --expect N --result FILE` with TRADEPULSE_* settings in the
environment (a fresh data dir and consumer group).
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from tradepulse.bus.heap import tune_malloc
from tradepulse.bus.pipeline import build_runner
from tradepulse.bus.runner import keep_pandas_out, tune_process
from tradepulse.bus.status import RunnerMetrics, write_json_atomic
from tradepulse.config import get_settings


@click.command(help=__doc__)
@click.option("--expect", type=int, required=True, help="Stop once this many events are committed.")
@click.option("--result", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--cprofile",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a cProfile of the run to this file.",
)
def main(expect: int, result: Path, cprofile: Path | None) -> None:
    tune_malloc()  # as `tradepulse process` does
    keep_pandas_out()
    runner = build_runner(get_settings())
    runner.install_signal_handlers()
    tune_process()  # as `tradepulse process` does (process-wide, so not the Runner's business)
    marks: dict[str, float] = {}

    def done(m: RunnerMetrics) -> bool:
        # Called after every poll: the first batch's end starts the clock (its events are not counted).
        if m.events_processed and "first_s" not in marks:
            marks.update(first_s=time.time(), first_batch=m.events_processed, first_cpu_s=time.process_time())
        if m.events_processed >= expect:
            marks.update(last_s=time.time(), last_cpu_s=time.process_time())
            return True
        return False

    if cprofile is None:
        metrics = runner.run(stop_when=done)
    else:
        import cProfile

        with cProfile.Profile() as profile:
            metrics = runner.run(stop_when=done)
        profile.dump_stats(cprofile)
    last_s = marks.get("last_s", time.time())
    refits = runner.processor.refit_stats()  # type: ignore[attr-defined]
    write_json_atomic(
        result,
        {
            "events": metrics.events_processed,
            "first_s": marks.get("first_s", last_s),
            "last_s": last_s,
            "first_batch": marks.get("first_batch", 0),
            # CPU of the whole process (librdkafka threads too) over the same span: steadier than the
            # wall time on a shared machine.
            "cpu_s": marks.get("last_cpu_s", 0.0) - marks.get("first_cpu_s", 0.0),
            "outputs": metrics.outputs_produced,
            "batches": metrics.batches,
            # Per batch (the last 2,048) total milliseconds, and the per-stage histograms' summaries
            # (count, percentiles, total ms), for `scripts/bench_drain.py`.
            "batch_ms": list(metrics.batch_ms),
            "stages_ms": metrics.stages.summary(),
            "semantics": "exactly-once (Kafka transactions), hot + cold store writes",
            # Anomaly refits (background) and how often / how long scoring waited for a due one.
            **refits,
        },
    )


if __name__ == "__main__":
    main()
