"""Bench report: derived metrics, results.json, summary.md, bench.png (and docs/benchmarks.md)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import click
import numpy as np
import orjson

from tradepulse.bench.ramp import outside_ramp
from tradepulse.bus.stages import BATCH_PARTS, E2E_PARTS, FRESHNESS_STAGES, RECORD_STAGES, STAGES
from tradepulse.sources.simulator.market import OPEN_RAMP_S

LAG_TARGET_S = 1.0
BURST_END_S = 60.0  # the market-open plateau ends 60 s after the first event


def machine_spec() -> dict[str, Any]:
    """nproc, memory, CPU model and the load average when the run started."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        free = ""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "free_h": free,
        "loadavg_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _rates(t: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """Per-interval rate of a cumulative counter (events/s), aligned with t[1:]."""
    dt = np.diff(t)
    return np.where(dt > 0, np.diff(counter) / np.where(dt > 0, dt, 1), 0.0)


def _rolling_mean(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) < n:
        return np.array([x.mean()]) if len(x) else x
    return np.convolve(x, np.ones(n) / n, mode="valid")


WINDOW_FILL_S = 360.0
"""Seconds until the runner's window state is full (5-minute windows + the size-cap minute)."""


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers from the raw samples."""
    fp = results["full_path"]
    samples = fp["samples"]
    t = np.array([s["t"] for s in samples], dtype=float)
    sent = np.array([s["sent"] for s in samples], dtype=float)
    high = np.array([s["high"] for s in samples], dtype=float)
    committed = np.array([s["committed"] for s in samples], dtype=float)
    lag = np.array([s["lag"] for s in samples], dtype=float)
    runner_rate = _rates(t, committed)
    offered_rate = _rates(t, sent)
    ingest_rate = _rates(t, high)
    # Lag in seconds of data: how long ago the broker's high watermark was where the runner's committed
    # offset is now (the age of the oldest uncommitted event, at 1 s resolution).
    reached = np.searchsorted(high, committed, side="left")
    lag_s = np.where(lag > 0, t - t[np.minimum(reached, len(t) - 1)], 0.0)
    # The workload runs from the first sent event to the last; sustained = what the runner committed
    # over that window plus the catch-up after it, per second of the window.
    active = np.nonzero(sent > 0)[0]
    first = int(active[0]) if len(active) else 0
    done = int(np.argmax(sent >= sent[-1])) if len(sent) else 0
    caught = int(np.argmax(committed >= committed[-1])) if len(committed) else 0
    window_s = max(t[max(done, caught)] - t[first], 1e-9) if len(t) else 0.0
    sustained = committed[-1] / window_s if len(committed) else 0.0
    peak_runner = float(_rolling_mean(runner_rate, 5).max()) if len(runner_rate) else 0.0
    peak_offered = float(_rolling_mean(offered_rate, 5).max()) if len(offered_rate) else 0.0
    t_rel = t - (t[first] if len(t) else 0.0)
    after_burst = (t_rel >= BURST_END_S) & (lag_s >= LAG_TARGET_S)
    recovery_s = float(t_rel[after_burst].max() - BURST_END_S) if after_burst.any() else 0.0
    procs = fp["process_summary"]
    rss_drift = {}
    for name, series in fp["processes"].items():
        # RSS from the end of the warm-up to the end of the run. The runner's state grows until its
        # 5-minute windows (and the z-score's size-cap minute) are full, so the warm-up is that long,
        # but at least 20 % and at most half of the run.
        rss = np.array([s["rss_mib"] for s in series], dtype=float)
        ts = np.array([s["t"] for s in series], dtype=float)
        if len(rss) >= 5:
            span = ts[-1] - ts[0]
            warm_s = min(max(0.2 * span, WINDOW_FILL_S), 0.5 * span)
            base = float(rss[int(np.searchsorted(ts, ts[0] + warm_s))])
            rss_drift[name] = (rss[-1] - base) / base * 100 if base else 0.0
    status = fp.get("runner_status", {})
    runners = {"main": status, **fp.get("variant_status", {})}
    versions = [s.get("model_version") for s in samples]
    return {
        "stages_ms": status.get("stages_ms", {}),
        "publish_delay_ms": (fp.get("simulator") or {}).get("publish_delay_ms", {}),
        "runners": {name: runner_summary(s) for name, s in runners.items()},
        "workload_s": float(window_s),
        "events_total": int(committed[-1]) if len(committed) else 0,
        "sustained_events_per_s": float(sustained),
        "peak_runner_events_per_s_5s": peak_runner,
        "peak_offered_events_per_s_5s": peak_offered,
        "mean_offered_events_per_s": float(sent[-1] / window_s) if len(sent) else 0.0,
        "max_lag_events": int(lag.max()) if len(lag) else 0,
        "max_lag_s": float(lag_s.max()) if len(lag_s) else 0.0,
        "lag_s_over_target_after_burst_s": recovery_s,
        "e2e_latency_ms": status.get("e2e_latency_ms", {}),
        "e2e_outside_ramp_ms": outside_ramp(fp.get("e2e_ramp")),
        "freshness_ms": {stage: status.get("stages_ms", {}).get(stage, {}) for stage in FRESHNESS_STAGES},
        "anomaly_models": {
            "recorded": any(v is not None for v in versions),
            "first_in_use_s": next((float(t_rel[i]) for i, v in enumerate(versions) if v), None),
            "version_at_end": status.get("model_version"),
        },
        "write_p99_ms_max": max((s["write_p99_ms"] or 0.0) for s in samples) if samples else 0.0,
        "write_p99_ms_final": status.get("write_p99_ms"),
        "rss_drift_pct": rss_drift,
        "processes": procs,
        "events_lost": fp["reconcile"]["events_lost"],
        "series": {
            "t": t_rel.tolist(),
            "runner_rate": [0.0, *runner_rate.tolist()],
            "offered_rate": [0.0, *offered_rate.tolist()],
            "ingest_rate": [0.0, *ingest_rate.tolist()],
            "lag_events": lag.tolist(),
            "lag_s": lag_s.tolist(),
            "e2e_p50": [s["e2e_window"].get("p50") for s in samples],
            "e2e_p99": [s["e2e_window"].get("p99") for s in samples],
            # Cumulative pauses seen by each sample (older results have none).
            "backpressure_pauses": [s.get("backpressure_pauses", 0) for s in samples],
        },
    }


def runner_summary(status: dict[str, Any]) -> dict[str, Any]:
    """One runner's headline latencies from its final status (the run's histograms)."""
    stages = status.get("stages_ms", {})
    batch = stages.get("batch", {})
    batches = status.get("batches", 0)
    return {
        "e2e_ms": status.get("e2e_latency_ms", {}),
        "batch_p50_ms": batch.get("p50"),
        "batch_p99_ms": batch.get("p99"),
        "batches": batches,
        "backpressure_pauses": status.get("backpressure_activations", 0),
        "events": status.get("events_processed", 0),
        "events_per_batch": status.get("events_processed", 0) / batches if batches else None,
        "stage_p50_ms": {k: v.get("p50") for k, v in stages.items()},
        "stage_p99_ms": {k: v.get("p99") for k, v in stages.items()},
    }


def stage_markdown(d: dict[str, Any], fp: dict[str, Any]) -> list[str]:
    """The stage breakdown table, the publish delay, and the runner variants compared under one load."""
    stages = d.get("stages_ms") or {}
    if not stages:
        return []
    parts_total = sum(stages.get(stage, {}).get("total", 0.0) for stage in BATCH_PARTS)
    instances = len(fp.get("runner_status", {}).get("instances") or {}) or 1
    whose = "main runner" if instances == 1 else f"main runners: {instances} instances, histograms added"
    lines = [
        "",
        f"#### Stage breakdown ({whose}, whole run; `tradepulse.bus.stages`)",
        "",
        "| stage | per | count | p50 | p90 | p99 | p99.9 | max (ms) | share of the runner loop |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stage in STAGES:
        h = stages.get(stage)
        if not h:
            continue
        share = f"{h['total'] / parts_total:.1%}" if stage in BATCH_PARTS and parts_total else ""
        lines.append(
            f"| {stage} | {'record' if stage in RECORD_STAGES else 'batch'} | {_fmt(int(h['count']))} | "
            f"{_fmt(h['p50'], 2)} | {_fmt(h['p90'], 2)} | {_fmt(h['p99'], 2)} | {_fmt(h['p99_9'], 2)} | "
            f"{_fmt(h['max'], 1)} | {share} |"
        )
    delay = d.get("publish_delay_ms") or {}
    if delay.get("count"):
        lines += [
            "",
            f"Publish delay (simulator behind its schedule, per block of events, OpenMessaging-style): p50 "
            f"{_fmt(delay['p50'], 2)} / p99 {_fmt(delay['p99'], 2)} / max {_fmt(delay['max'], 1)} ms "
            f"over {_fmt(int(delay['count']))} blocks.",
        ]
    runners = d.get("runners") or {}
    if len(runners) > 1:
        settings = fp.get("variant_settings", {})
        stage_cols = ("batch_wait", "core", "hot_write", "commit_wait", "commit")
        lines += [
            "",
            "#### Runner variants, same load (each its own process and consumer group, all at once)",
            "",
            "| runner | settings | e2e p50 / p99 / p99.9 (ms) | batch p50 / p99 (ms) | batches | events/batch | pauses | "
            + " | ".join(f"{c} p50 / p99" for c in stage_cols)
            + " |",
            "| --- | --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in stage_cols) + " |",
        ]
        for name, r in runners.items():
            e2e = r["e2e_ms"] or {}
            env = ", ".join(f"{k}={v}" for k, v in settings.get(name, {}).items()) or "defaults"
            lines.append(
                f"| {name} | {env} | {_fmt(e2e.get('p50'))} / {_fmt(e2e.get('p99'))} / {_fmt(e2e.get('p99_9'))} | "
                f"{_fmt(r['batch_p50_ms'])} / {_fmt(r['batch_p99_ms'])} | {_fmt(r['batches'])} | "
                f"{_fmt(r['events_per_batch'], 0)} | {_fmt(r.get('backpressure_pauses', 0))} | "
                + " | ".join(
                    f"{_fmt(r['stage_p50_ms'].get(c), 2)} / {_fmt(r['stage_p99_ms'].get(c), 2)}"
                    for c in stage_cols
                )
                + " |"
            )
        main = runners.get("main", {}).get("e2e_ms") or {}
        for name, r in runners.items():
            e2e = r["e2e_ms"] or {}
            if name != "main" and e2e.get("p50") and main.get("p50"):
                lines.append(
                    f"\nmain ÷ {name}: e2e p50 {main['p50'] / e2e['p50']:.2f}×, p99 "
                    f"{main['p99'] / e2e['p99']:.2f}× (below 1: the main runner is faster)."
                )
    return lines


def write_report(results: dict[str, Any], out: Path) -> None:
    """results.json (raw + derived), summary.md and bench.png."""
    results["derived"] = derive(results)
    (out / "results.json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    (out / "summary.md").write_text(summary_markdown(results))
    plot(results, out / "bench.png")


def _lag_seconds(lag_s: float) -> str:
    """Lag in seconds of data, measured at the 1 s sampling resolution (0 means under a second)."""
    return "< 1 s" if lag_s < 1.0 else f"{lag_s:.0f} s"


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "—"
    if isinstance(x, int | np.integer):
        return f"{x:,}"
    return f"{x:,.{digits}f}"


def summary_markdown(results: dict[str, Any]) -> str:
    cfg, d, fp = results["config"], results["derived"], results["full_path"]
    rec = fp["reconcile"]
    e2e = d["e2e_latency_ms"] or {}
    m = results["machine"]
    lines = [
        f"### Run: base {cfg['rate']:,.0f} ev/s, {cfg['tickers']} tickers, profile `{cfg['profile']}`, "
        f"{cfg['duration_s']:.0f} s"
        + (f", {processors} processor instances" if (processors := cfg.get("processors", 1)) > 1 else ""),
        "",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}"
        + (
            f", at end {', '.join(f'{x:.2f}' for x in results['loadavg_end'])}"
            if "loadavg_end" in results
            else ""
        ),
        "",
        "#### Full path (simulator WebSocket → ingest → Kafka → runner → hot store)",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| events through the runner (trades + quotes) | {_fmt(d['events_total'])} |",
        f"| workload window | {d['workload_s']:.0f} s |",
        f"| offered rate, mean / peak (5 s) | {_fmt(d['mean_offered_events_per_s'], 0)} / "
        f"{_fmt(d['peak_offered_events_per_s_5s'], 0)} ev/s |",
        f"| sustained throughput (committed / window) | {_fmt(d['sustained_events_per_s'], 0)} ev/s |",
        f"| peak throughput (runner, 5 s) | {_fmt(d['peak_runner_events_per_s_5s'], 0)} ev/s |",
        f"| e2e latency p50 / p90 / p99 / p99.9 / max (WebSocket receive → hot-store commit) | "
        f"{_fmt(e2e.get('p50'))} / {_fmt(e2e.get('p90'))} / {_fmt(e2e.get('p99'))} / "
        f"{_fmt(e2e.get('p99_9'))} / {_fmt(e2e.get('max'))} ms ({_fmt(e2e.get('count'))} trades) |",
        *outside_ramp_rows(d),
        *freshness_rows(d),
        anomaly_models_row(d),
        f"| consumer lag max | {_fmt(d['max_lag_events'])} events = {_lag_seconds(d['max_lag_s'])} of data |",
        "| last lag ≥ 1 s, seconds after t = 60 s (the burst's plateau ends; not a sum) | "
        f"{d['lag_s_over_target_after_burst_s']:.0f} s |",
        f"| hot-store write p99 (max of 1 s samples / final) | {_fmt(d['write_p99_ms_max'])} / "
        f"{_fmt(d['write_p99_ms_final'])} ms |",
        f"| backpressure pauses (median hot-store write over the limit) | {_fmt(d['runners']['main']['backpressure_pauses'])} |",
        f"| events lost (simulator sent − delivered) | **{rec['events_lost']}** "
        f"(trades sent {rec['sent_trades']:,}, in Kafka {rec['kafka_trades']:,}, committed "
        f"{rec['committed_trades']:,}, in hot store {rec['hot_store_trades']:,}; quotes sent "
        f"{rec['sent_quotes']:,}, in Kafka {rec['kafka_quotes']:,}, committed {rec['committed_quotes']:,}) |",
        f"| caught up at the end | {'yes' if rec.get('settled') else 'no: ' + format(rec.get('backlog_at_end', 0), ',') + ' events still in Kafka (backlog, not loss) at the settle time-out'} |",
        "",
        "| process | CPU mean / max (% of one core) | waiting for a CPU, mean (% of one core): all threads / "
        "main thread (main thread on a CPU) | RSS first / last / max (MiB) | RSS drift after warm-up (windows full) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, p in d["processes"].items():
        drift = d["rss_drift_pct"].get(name)
        waits = (
            f"{p['runq_mean_pct']:.0f} / {p['main_runq_mean_pct']:.0f} ({p['main_cpu_mean_pct']:.0f})"
            if "runq_mean_pct" in p
            else "—"
        )
        lines.append(
            f"| {name} | {p['cpu_mean_pct']:.0f} / {p['cpu_max_pct']:.0f} | {waits} | "
            f"{p['rss_first_mib']:.0f} / {p['rss_last_mib']:.0f} / {p['rss_max_mib']:.0f} | "
            f"{'—' if drift is None else f'{drift:+.1f} %'} |"
        )
    lines += stage_markdown(d, fp)
    drain = results.get("drain")
    if drain:
        lines += [
            "",
            f"#### Drain: the same pre-filled market.trades ({drain['events']:,} trades), same broker",
            "",
            "| system | events/s | TradePulse × | outputs | wall (s) | semantics |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, r in drain["systems"].items():
            ratio = r.get("tradepulse_ratio")
            lines.append(
                f"| {name} | {_fmt(r.get('events_per_s'), 0)} | "
                f"{'—' if ratio is None or name == 'tradepulse' else f'{ratio:.1f}×'} | "
                f"{_fmt(r.get('outputs'))} | {r['wall_s']:.1f} | {r.get('semantics', r.get('error', ''))} |"
            )
    lines += profile_lines(fp)
    prof = fp.get("runner_profile")
    if prof and d["events_total"]:
        lines.append(
            f"\nAnomaly scoring (batched IsolationForest): {prof['anomaly_score_cpu_s']:.2f} s CPU for "
            f"{d['events_total']:,} events = "
            f"{prof['anomaly_score_cpu_s'] * 1000 / d['events_total']:.4f} ms/event amortised."
        )
    return "\n".join(lines) + "\n"


def profile_lines(fp: dict[str, Any]) -> list[str]:
    """The runner's py-spy profile (`--py-spy`), or why there is none; nothing if none was asked for."""
    prof = fp.get("runner_profile")
    if prof:
        return [
            "",
            f"#### Runner profile (py-spy, {prof['samples']:,} samples = {prof['cpu_s']:.0f} s on CPU)",
            "",
            "| function (inclusive) | % of samples |",
            "| --- | --- |",
            *(f"| `{name}` | {pct:.1f} |" for name, pct in prof["inclusive_pct"]),
        ]
    if fp.get("runner_profile_error"):
        return ["", f"#### Runner profile: none. {fp['runner_profile_error']}"]
    return []


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["derived"]["series"]
    t = s["t"]
    fig = plt.figure(figsize=(11, 12))
    grid = fig.add_gridspec(4, 1, height_ratios=[1, 1, 1, 1.1])
    ax1 = fig.add_subplot(grid[0])
    ax2 = fig.add_subplot(grid[1], sharex=ax1)
    ax3 = fig.add_subplot(grid[2], sharex=ax1)
    plot_stages(results, fig.add_subplot(grid[3]))
    ax1.plot(t, s["offered_rate"], label="offered (simulator sent)", lw=1)
    ax1.plot(t, s["ingest_rate"], label="ingest → Kafka", lw=1)
    ax1.plot(t, s["runner_rate"], label="runner committed", lw=1.5)
    ax1.set_ylabel("events/s")
    ax1.legend(loc="upper right")
    ax1.grid(alpha=0.3)
    ax2.plot(t, s["lag_s"], color="tab:red", lw=1.2, label="lag (s of data)")
    ax2.axhline(LAG_TARGET_S, color="grey", ls="--", lw=0.8)
    ax2.set_ylabel("consumer lag (s)")
    ax2b = ax2.twinx()
    ax2b.plot(t, s["lag_events"], color="tab:orange", lw=0.8, alpha=0.6, label="lag (events)")
    ax2b.set_ylabel("lag (events)")
    pauses = s.get("backpressure_pauses") or []
    started = [t[i] for i in range(1, len(pauses)) if pauses[i] > pauses[i - 1]]
    for n, at in enumerate(started):  # a backpressure pause started within this second
        ax2.axvline(at, color="tab:purple", lw=0.8, alpha=0.6, label="backpressure pause" if n == 0 else None)
    ax2.legend(loc="upper left")
    ax2b.legend(loc="upper right")
    ax2.grid(alpha=0.3)
    p50 = [np.nan if v is None else v for v in s["e2e_p50"]]
    p99 = [np.nan if v is None else v for v in s["e2e_p99"]]
    ax3.plot(t, p50, label="e2e p50 (1 s window)", lw=1)
    ax3.plot(t, p99, label="e2e p99 (1 s window)", lw=1)
    ax3.set_yscale("log")
    ax3.set_ylabel("latency (ms)")
    ax3.set_xlabel("seconds since the first event")
    ax3.legend(loc="upper right")
    ax3.grid(alpha=0.3, which="both")
    cfg = results["config"]
    fig.suptitle(
        f"tradepulse bench: base {cfg['rate']:,.0f} ev/s, {cfg['tickers']} tickers, {cfg['profile']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_stages(results: dict[str, Any], ax: Any) -> None:
    """Stacked bars: the per-stage p50 and p99 of what a trade's e2e latency is made of, per runner,
    with the measured e2e percentile as a marker (percentiles do not add up: the stack of p99s is an
    upper bound of the e2e p99, the stack of p50s only a rough guide to the e2e p50)."""
    import matplotlib.pyplot as plt

    fp = results["full_path"]
    runners = {"main": fp.get("runner_status", {}), **fp.get("variant_status", {})}
    labels: list[str] = []
    colors = plt.get_cmap("tab10")
    x = 0
    for name, status in runners.items():
        stages = status.get("stages_ms") or {}
        for q in ("p50", "p99"):
            bottom = 0.0
            for i, stage in enumerate(E2E_PARTS):
                value = (stages.get(stage) or {}).get(q, 0.0) or 0.0
                ax.bar(x, value, bottom=bottom, color=colors(i), label=stage if x == 0 else None)
                bottom += value
            e2e = (stages.get("e2e") or {}).get(q)
            if e2e:
                ax.plot(
                    [x - 0.4, x + 0.4],
                    [e2e, e2e],
                    color="black",
                    lw=2,
                    label="e2e measured" if x == 0 else None,
                )
            labels.append(f"{name}\n{q}")
            x += 1
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("ms")
    ax.set_title("stage breakdown of e2e latency (stacked per-stage percentiles; black: e2e measured)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(alpha=0.3, axis="y")


DOC_HEADER = """# Benchmarks

Generated by `tradepulse bench` from a real run on the machine below (`{command}`); re-run it to
reproduce. Numbers are this machine's, with its load at the time — other processes were running.

**What is measured.** Phase 1 runs the whole local path, each service its own process: the market
simulator (Massive WebSocket protocol; profile `flat`: the base rate throughout, or `market_open`: base
rate, smooth ramp to 10× from 5 s to 35 s, plateau to 60 s, then an exponential decay back towards the
base with a 4-minute time constant)
→ `tradepulse ingest` → Kafka (local KRaft broker, 6 partitions) → `tradepulse process` (the
exactly-once runner: features, news join, SQLite hot store, Parquet cold store, output topics in
transactions). End-to-end latency is per trade, from the ingest's WebSocket receive (`received_ts_us`)
to the runner's hot-store commit, recorded in a log-bucketed histogram by the runner (strided sample of
≤ 256 trades per batch, each weighted by the stride); the runner times every stage the same way
(`tradepulse.bus.stages`: ingest, kafka, batch wait, decode, features, anomaly, core, hot write, cold
append, produce, commit, cold flush; the stage breakdown below), and the simulator records how far it
fell behind its own schedule (publish delay). In a `market_open` run the e2e of the trades committed
outside the ramp (before 5 s or after 35 s; the ramp's backlog, committed after it, counts as outside) is
the run's histogram minus what the runner had recorded between the ramp's start and end, read from the
stage histograms it leaves with every heartbeat (`tradepulse.bench.ramp`). The anomaly detector scores a
ticker only once its stream has a model (its warm-up and training events take ~10 min at the defaults):
the report says from when a model was in use, so that a shorter run is not read as one with scoring
(its `anomaly` stage, its memory). Lag and throughput come from
the broker (the runner group's committed offsets, then the high watermarks, in that order so the lag is
never negative); loss is reconciled against the simulator's sent counters. `--variant NAME:KEY=VALUE` runs more runners with
other settings under the same load (each its own consumer group) and compares them. Each process's CPU
and RSS are sampled once a second, and on Linux how long its threads were runnable but waited for a CPU
(`/proc/<pid>/task/<tid>/schedstat`): Σ over its threads, and its main thread's (the runner's loop, the
ingest's event loop) beside that thread's time on a CPU, so a stage's wall time splits into work and
waiting for the box. Phase 2 drains the same pre-filled `market.trades` with our runner and with the
faust-streaming and Quix Streams peers (`benchmarks/peers/`, same feature set, each in its own
process, from the earliest offset with its own consumer group).

## Machine

```
nproc: {nproc}
CPU: {cpu}
{free}
load average at start: {load}
```

## Targets (reported, never asserted in tests)

{targets}

## Results

{summary}
"""


def outside_ramp_rows(d: dict[str, Any]) -> list[str]:
    """The market-open run's e2e outside the ramp (`tradepulse.bench.ramp`), if measured."""
    h = d.get("e2e_outside_ramp_ms") or {}
    if not h.get("count"):
        return []
    start, end = OPEN_RAMP_S
    return [
        f"| … of the trades committed outside the ramp (before t = {start:.0f} s or after t = {end:.0f} s: "
        f"its backlog counts) p50 / p90 / p99 / p99.9 / max | {_fmt(h['p50'])} / {_fmt(h['p90'])} / "
        f"{_fmt(h['p99'])} / {_fmt(h['p99_9'])} / {_fmt(h['max'])} ms ({_fmt(int(h['count']))} trades) |"
    ]


def freshness_rows(d: dict[str, Any]) -> list[str]:
    """The feature-freshness rows of the summary table (runner stages `fresh_first`, `fresh_final`)."""
    what = {
        "fresh_first": "feature freshness p50 / p99 / max (trade event time → hot-store commit of the "
        "first feature revision containing it)",
        "fresh_final": "… of its final revision (after the second's end + late grace)",
    }
    rows = []
    for stage, label in what.items():
        h = (d.get("freshness_ms") or {}).get(stage) or {}
        if h.get("count"):
            rows.append(
                f"| {label} | {_fmt(h['p50'])} / {_fmt(h['p99'])} / {_fmt(h['max'])} ms "
                f"({_fmt(int(h['count']))} trades) |"
            )
    return rows


def anomaly_models_row(d: dict[str, Any]) -> str:
    """The summary table's row on the anomaly models: the `anomaly` stage scores a ticker only once its
    stream has a model, which takes the detector's warm-up and training events (~10 min at the
    defaults), so a shorter run's stage breakdown and memory have no scoring in them."""
    models = d.get("anomaly_models") or {}
    if not models.get("recorded"):
        value = "not recorded (results from before issue 19's session 41)"
    elif models.get("first_in_use_s") is None:
        value = (
            "**none** during the run: a ticker is scored once TRADEPULSE_ANOMALY_WARMUP_S have passed since its "
            "first trade and its stream's model has TRADEPULSE_ANOMALY_MIN_TRAIN of its training events (one per "
            "TRADEPULSE_ANOMALY_SAMPLE_MS): ~10 min at the defaults; the `anomaly` stage did no scoring"
        )
    else:
        value = (
            f"from t = {models['first_in_use_s']:.0f} s (highest model version at the end "
            f"{_fmt(models.get('version_at_end'))})"
        )
    return f"| anomaly models in use (`anomaly` stage scoring) | {value} |"


def targets_table(results: dict[str, Any]) -> str:
    d = results["derived"]
    e2e = d["e2e_latency_ms"] or {}
    drain = (results.get("drain") or {}).get("systems", {})
    fresh = (d.get("freshness_ms") or {}).get("fresh_first") or {}
    outside = d.get("e2e_outside_ramp_ms") or {}
    rows = [
        (
            "≥ 50,000 events/s sustained, lag < 1 s",
            f"{d['sustained_events_per_s']:,.0f} ev/s, max lag {_lag_seconds(d['max_lag_s'])}",
        ),
        (
            "10× burst: zero loss, lag < 1 s within 60 s after it, e2e p99 ≤ 1 s outside the ramp",
            f"lost {d['events_lost']}, last lag ≥ 1 s {d['lag_s_over_target_after_burst_s']:.0f} s after t = 60 s, "
            + (
                f"e2e p99 outside the ramp {_fmt(outside['p99'])} ms"
                if outside.get("count")
                else "e2e outside the ramp not measured"
            )
            if results["config"]["profile"] != "flat"
            else "not measured: a `flat` run has no burst (`--profile market_open`)",
        ),
        (
            "e2e p50 ≤ 10 ms, p99 ≤ 50 ms (at 15,000 ev/s)",
            f"p50 {_fmt(e2e.get('p50'))} ms, p99 {_fmt(e2e.get('p99'))} ms at {results['config']['rate']:,.0f} ev/s base",
        ),
        (
            "feature freshness p99 ≤ 1 s (late trades as later revisions)",
            f"p50 {_fmt(fresh.get('p50'))} ms, p99 {_fmt(fresh.get('p99'))} ms",
        ),
        (
            "≥ 10× faust, ≥ 3× Quix (throughput)",
            ", ".join(
                f"{k} {v['tradepulse_ratio']:.1f}×"
                for k, v in drain.items()
                if k != "tradepulse" and v.get("tradepulse_ratio")
            )
            or "peers not run",
        ),
        ("RSS flat (±10 %)", ", ".join(f"{k} {v:+.1f} %" for k, v in d["rss_drift_pct"].items())),
    ]
    prof = results["full_path"].get("runner_profile")
    if prof and d["events_total"]:
        per_event = prof["anomaly_score_cpu_s"] * 1000 / d["events_total"]
        rows.append(("anomaly scoring ≤ 0.02 ms/event amortised", f"{per_event:.4f} ms/event (py-spy share)"))
    return "| target | measured |\n| --- | --- |\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


def write_docs(results: dict[str, Any], path: Path, command: str, extra: str = "") -> None:
    """docs/benchmarks.md from a run's results."""
    m = results["machine"]
    path.write_text(
        DOC_HEADER.format(
            command=command,
            nproc=m["nproc"],
            cpu=m["cpu_model"],
            free=m["free_h"],
            load=", ".join(f"{x:.2f}" for x in m["loadavg_start"]),
            targets=targets_table(results),
            summary=summary_markdown(results).replace("### ", "### ").strip(),
        )
        + (f"\n{extra.strip()}\n" if extra.strip() else "")
    )


@click.command()
@click.argument("results_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--docs", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--command", default="tradepulse bench", show_default=True)
@click.option(
    "--notes",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Markdown appended to the docs page.",
)
def main(results_dir: Path, docs: Path | None, command: str, notes: Path | None) -> None:
    """Re-render a results folder (summary.md, bench.png; optionally docs) from its results.json."""
    results = orjson.loads((results_dir / "results.json").read_bytes())
    write_report(results, results_dir)
    if docs:
        extra = notes.read_text() if notes else ""
        write_docs(results, docs, command, extra)


if __name__ == "__main__":
    main()
