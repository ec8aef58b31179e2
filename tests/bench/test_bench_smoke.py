"""Smoke test of `tradepulse bench`: a short market-open run through the whole path (simulator, ingest,
runner as their own processes, on the session broker) and a small drain. Asserts only that it completes
with zero loss and writes its report; speed is reported by the bench, never asserted here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from tradepulse.cli.main import cli

pytestmark = pytest.mark.kafka


def bench_without_loss(kafka_bootstrap: str, out: Path, *args: str) -> dict[str, Any]:
    """`tradepulse bench <args>` at 800 ev/s over 20 tickers on the session broker: it succeeds, loses
    nothing and settles; its results.json."""
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            *("--rate", "800", "--tickers", "20", "--no-peers"),
            *args,
            *("--bootstrap", kafka_bootstrap, "--out", str(out)),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    results: dict[str, Any] = orjson.loads((out / "results.json").read_bytes())
    reconcile = results["full_path"]["reconcile"]
    assert reconcile["sent_trades"] > 0 and reconcile["sent_quotes"] > 0
    assert reconcile["events_lost"] == 0 and reconcile["settled"]
    assert reconcile["hot_store_trades"] == reconcile["sent_trades"]
    return results


def test_bench_smoke_completes_with_zero_loss_and_writes_report(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    results = bench_without_loss(
        kafka_bootstrap, out, *("--duration", "15", "--profile", "market_open", "--drain-events", "3000")
    )
    reconcile = results["full_path"]["reconcile"]
    # The runner recorded an end-to-end latency for every trade it committed (sampled, stride-weighted).
    e2e = results["derived"]["e2e_latency_ms"]
    assert e2e["count"] >= reconcile["sent_trades"]
    assert 0 < e2e["p50"] <= e2e["p99"] <= e2e["max"]
    # e2e outside the market-open ramp: the runners' stage histograms as the ramp began (5 s in), read
    # from the file each runner refreshes with its heartbeats; the run ends before the ramp does.
    outside = results["derived"]["e2e_outside_ramp_ms"]
    assert 0 < outside["count"] < e2e["count"]
    assert results["full_path"]["e2e_ramp"]["final"]["total"] == e2e["count"]
    # Feature freshness (trade event time → hot store) of every committed trade's first revision.
    fresh = results["derived"]["freshness_ms"]
    assert fresh["fresh_first"]["count"] >= fresh["fresh_final"]["count"] > 0
    assert 0 < fresh["fresh_first"]["p50"] <= fresh["fresh_first"]["p99"]
    # Backpressure pauses: the runner's count, and per second in the series (the lag chart marks them).
    pauses = results["full_path"]["runner_status"]["backpressure_activations"]
    series = results["derived"]["series"]["backpressure_pauses"]
    assert results["derived"]["runners"]["main"]["backpressure_pauses"] == pauses
    assert len(series) == len(results["derived"]["series"]["t"]) and series == sorted(series)
    assert series[-1] <= pauses
    drain = results["drain"]["systems"]["tradepulse"]
    assert drain["exit_code"] == 0 and drain["events"] == 3000
    summary = (out / "summary.md").read_text()
    assert "events lost" in summary and "| tradepulse |" in summary and "feature freshness" in summary
    assert "| … of the trades committed outside the ramp" in summary
    assert f"| backpressure pauses (median hot-store write over the limit) | {pauses:,} |" in summary
    # 15 s is far shorter than the detector's warm-up: the report says no model scored.
    assert all(sample["model_version"] == 0 for sample in results["full_path"]["samples"])
    assert "| anomaly models in use (`anomaly` stage scoring) | **none** during the run" in summary
    # The runner's loop (its process's main thread) was on a CPU, and the report says how long the
    # processes waited for one (Linux's scheduler statistics).
    processor = results["full_path"]["process_summary"]["processor"]
    assert (
        processor["main_cpu_mean_pct"] > 0
        and 0 <= processor["main_runq_mean_pct"] <= processor["runq_mean_pct"]
    )
    (row,) = [line for line in summary.splitlines() if line.startswith("| processor |")]
    assert f"/ {processor['main_runq_mean_pct']:.0f} ({processor['main_cpu_mean_pct']:.0f}) |" in row
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_with_two_processors_shares_the_partitions_and_merges_their_histograms(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """`--processors 2`: two runner processes in the main group (as `tradepulse up` starts them with
    TRADEPULSE_PROCESSORS=2), each with work, one shared hot store, and the report's percentiles from
    both instances' histograms added together."""
    out = tmp_path / "bench"
    results = bench_without_loss(
        kafka_bootstrap,
        out,
        *("--duration", "10", "--profile", "flat", "--drain-events", "0", "--processors", "2"),
    )
    reconcile = results["full_path"]["reconcile"]
    status = results["full_path"]["runner_status"]
    instances = status["instances"]
    assert set(instances) == {"0", "1"}
    processed = [instance["events_processed"] for instance in instances.values()]
    assert all(processed) and status["events_processed"] == sum(processed)
    # Input messages: every trade and quote, and the vendor's minute bars if a minute closed meanwhile.
    assert status["events_processed"] >= reconcile["sent_trades"] + reconcile["sent_quotes"]
    # Every committed trade's e2e latency, from both instances (each alone has only its partitions').
    e2e = results["derived"]["e2e_latency_ms"]
    assert e2e["count"] >= reconcile["sent_trades"]
    assert all(i["e2e_latency_ms"]["count"] < e2e["count"] for i in instances.values())
    assert e2e["count"] == sum(i["e2e_latency_ms"]["count"] for i in instances.values())
    summary = (out / "summary.md").read_text()
    assert "2 processor instances" in summary and "main runners: 2 instances, histograms added" in summary
    processes = results["full_path"]["process_summary"]
    assert {"processor", "processor-1"} <= set(processes)
