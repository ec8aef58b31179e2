"""Orchestration of `tradepulse bench`.

Phase 1, full path, each service its own process (started with `tradepulse up`'s Supervisor):
runner (`tradepulse process`) → simulator (`tradepulse.bench.simproc`, market-open profile, 10× peak) →
ingest (`tradepulse ingest`). Once a second the bench samples the simulator's sent counters, the broker
(high watermarks of the input topics, the runner group's committed offsets), the runner's status file
(rate, lag, hot-store write p99, end-to-end latency percentiles from its HDR histogram) and CPU/RSS of
every process. When the simulator has sent its whole workload and the runner has committed up to the
high watermarks, the services are stopped and the hot store is reconciled against the simulator:
events lost = trades sent − distinct trades in the hot store (+ quotes sent − quotes committed).

Phase 2, drain comparison (`tradepulse.bench.drain`): the topics are re-created, N trades pre-filled, and
TradePulse's runner, the faust-streaming peer and the Quix Streams peer each drain them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tradepulse.bench import drain
from tradepulse.bench.ramp import RampSnapshots, read_e2e
from tradepulse.bench.report import machine_spec, write_report
from tradepulse.bench.sampling import BrokerSampler, ProcessSampler
from tradepulse.bus.admin import ensure_topics, recreate_topics
from tradepulse.bus.local_kafka import LocalKafka
from tradepulse.bus.stages import merge_summaries
from tradepulse.bus.status import STATUS_FILE, stages_path, status_path
from tradepulse.config import Settings, get_settings
from tradepulse.errors import BenchError
from tradepulse.supervisor import Service, Supervisor, port_open, processor_services, python_command
from tradepulse.topics import QUOTES, TRADES, TopicSpec

PY_SPY_RATE_HZ = 50  # `--py-spy` samples per second of the runner


@dataclass
class BenchConfig:
    """One bench run. Rates are events/s (trades + quotes) at profile multiplier 1."""

    out: Path
    rate: float = 5000.0
    tickers: int = 200
    duration_s: float = 120.0
    profile: str = "market_open"
    peers: bool = True
    peers_dir: Path = drain.PEERS_DIR
    """The faust/Quix peer scripts (developer files of the checkout, not package data)."""
    peers_venv: Path = drain.PEERS_VENV
    """The peers' own venv, created on first use."""
    drain_events: int = 200_000
    bootstrap: str | None = None
    """An existing broker (tests); None = start a fresh local broker under `out`."""
    partitions: int = 6
    settle_timeout_s: float = 180.0
    drain_timeout_s: float = 600.0
    seed: int = 42
    keep_state: bool = False
    py_spy: bool = False
    """Sample the runner with py-spy: collapsed stacks in runner-profile.txt, its output in py-spy.log."""
    processors: int = 1
    """Runner processes of the main consumer group (`tradepulse up`'s TRADEPULSE_PROCESSORS): the
    partitions shared between them; the report merges their stage histograms."""
    variants: dict[str, dict[str, str]] = field(default_factory=dict)
    """Extra runners under the same load, name → environment overrides (e.g. TRADEPULSE_BATCH_LINGER_MS):
    each its own process, consumer group and data dir on the same input topics, so runner settings
    are compared in one run. They share the CPU (and the output topics) with the main runner."""
    log: Callable[[str], None] = field(default=print, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("log")
        out["out"] = str(self.out)
        out["peers_dir"], out["peers_venv"] = str(self.peers_dir), str(self.peers_venv)
        return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def _combined_status(statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """One status document for the main group's runner instances (one instance: its own). Counters
    add up; the write p99, the latest e2e window's percentiles and the model version are the highest
    instance's (as /health combines the first two; the window's count and total add up); the rest is
    instance 0's."""
    if len(statuses) == 1:
        return statuses[0]
    combined = dict(statuses[0])
    for counter in ("events_processed", "backpressure_activations"):
        combined[counter] = sum(status.get(counter) or 0 for status in statuses)
    combined["model_version"] = max(status.get("model_version") or 0 for status in statuses)
    lags = [status["consumer_lag"] for status in statuses if status.get("consumer_lag") is not None]
    combined["consumer_lag"] = sum(lags) if lags else None
    writes = [status["write_p99_ms"] for status in statuses if status.get("write_p99_ms") is not None]
    combined["write_p99_ms"] = max(writes) if writes else None
    windows = [status.get("e2e_latency_window_ms") or {} for status in statuses]
    keys = {key for window in windows for key in window}
    combined["e2e_latency_window_ms"] = {
        key: (sum if key in ("count", "total") else max)(window[key] for window in windows if key in window)
        for key in keys
    }
    return combined


def _final_status(data_dir: Path, instances: list[str]) -> dict[str, Any] | None:
    """The main group's status after the runners stopped: `_combined_status`, with the stage summaries
    (`stages_ms`) computed from every instance's whole-run histograms added together (each instance
    leaves them when it stops: `stages_path`). None if an instance left no status."""
    statuses = [_read_json(status_path(data_dir, instance)) for instance in instances]
    if not all(statuses):
        return None
    combined = _combined_status([status for status in statuses if status])
    if len(instances) > 1:
        histograms = [_read_json(stages_path(data_dir, instance)) for instance in instances]
        if not all(histograms):
            raise BenchError("a runner instance left no stage histograms: it did not stop cleanly")
        combined["stages_ms"] = merge_summaries([h for h in histograms if h])
        combined["e2e_latency_ms"] = combined["stages_ms"].get("e2e", {})
        combined["batches"] = sum(status.get("batches") or 0 for status in statuses if status)
        combined["instances"] = {
            instance: status for instance, status in zip(instances, statuses, strict=True)
        }
    return combined


def _hot_store_trades(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM trades").fetchone()[0])


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run both phases; writes results.json, summary.md and bench.png under `config.out`."""
    out = config.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = config.log
    run_id = time.strftime("%Y%m%d-%H%M%S")
    broker: LocalKafka | None = None
    bootstrap = config.bootstrap
    results: dict[str, Any] = {
        "config": config.as_dict(),
        "machine": machine_spec(),
        "started_at": time.time(),
    }
    try:
        if bootstrap is None:
            broker = LocalKafka(out / "broker", heap="1g", libs_root=get_settings().kafka_libs_root)
            log("starting a local Kafka broker")
            bootstrap = broker.start(quiet=True).bootstrap
        settings = Settings(
            kafka_bootstrap=bootstrap,
            data_dir=out / "state",
            topic_partitions=config.partitions,
            consumer_group=f"bench-{run_id}",
        )
        recreate_topics(settings)
        broker_pid = broker.process.pid if broker is not None and broker.process is not None else None
        results["full_path"] = _full_path(config, settings, out, broker_pid)
        if config.drain_events > 0:
            results["drain"] = _drain_phase(config, settings, out, run_id)
    finally:
        if broker is not None:
            broker.stop()
            if not config.keep_state:
                shutil.rmtree(out / "broker", ignore_errors=True)
        if not config.keep_state:
            shutil.rmtree(out / "state", ignore_errors=True)
            for name in config.variants:
                shutil.rmtree(out / f"state-{name}", ignore_errors=True)
            shutil.rmtree(out / "drain-state", ignore_errors=True)
    results["finished_at"] = time.time()
    results["loadavg_end"] = list(os.getloadavg())
    write_report(results, out)
    log(f"results: {out}/results.json, summary.md, bench.png")
    return results


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        "TRADEPULSE_KAFKA_BOOTSTRAP": str(settings.kafka_bootstrap),
        "TRADEPULSE_DATA_DIR": str(settings.data_dir),
        "TRADEPULSE_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "TRADEPULSE_CONSUMER_GROUP": settings.consumer_group,
        "TRADEPULSE_LOG_LEVEL": "WARNING",
        **extra,
    }


def _full_path(config: BenchConfig, settings: Settings, out: Path, broker_pid: int | None) -> dict[str, Any]:
    log = config.log
    ws_port = _free_port()
    sim_stats = out / "simulator-stats.json"
    sim_stats.unlink(missing_ok=True)
    instances = [str(i) for i in range(config.processors)]
    status_files = [status_path(settings.data_dir, instance) for instance in instances]
    stage_files = [stages_path(settings.data_dir, instance) for instance in instances]
    ramp = RampSnapshots(stage_files) if config.profile == "market_open" else None
    env = child_env(settings, TRADEPULSE_SIMULATOR_WS_PORT=str(ws_port))

    def ready(path: Path) -> Callable[[], bool]:
        def check() -> bool:
            status = _read_json(path)
            return bool(status and status.get("assigned_partitions"))

        return check

    supervisor = Supervisor()
    variant_status = {name: out / f"state-{name}" / STATUS_FILE for name in config.variants}
    variant_services = [
        Service(
            f"processor-{name}",
            python_command("process", "--progress-s", "10"),
            ready=ready(variant_status[name]),
            ready_timeout_s=120,
            env=child_env(
                settings.model_copy(
                    update={
                        "data_dir": variant_status[name].parent,
                        "consumer_group": f"{settings.consumer_group}-{name}",
                    }
                ),
                **overrides,
            ),
        )
        for name, overrides in config.variants.items()
    ]
    processors = processor_services(config.processors, "--progress-s", "10")
    for processor, path in zip(processors, status_files, strict=True):
        processor.ready, processor.ready_timeout_s, processor.env = ready(path), 120, dict(env)
    services = [
        *processors,
        *variant_services,
        Service(
            "simulator",
            [
                sys.executable,
                "-m",
                "tradepulse.bench.simproc",
                *("--rate", str(config.rate), "--tickers", str(config.tickers)),
                *("--profile", config.profile, "--duration", str(config.duration_s)),
                *("--port", str(ws_port), "--seed", str(config.seed), "--stats", str(sim_stats)),
            ],
            ready=port_open("127.0.0.1", ws_port),
            env=env,
        ),
        Service("ingest", python_command("ingest", "--tickers", "*", "--progress-s", "10"), env=env),
    ]
    samples: list[dict[str, Any]] = []
    final_broker: dict[str, Any] | None = None
    sampler = BrokerSampler(str(settings.kafka_bootstrap), settings.consumer_group, (TRADES, QUOTES))
    spy = None
    try:
        for service in services:
            supervisor.start(service)
        pids = {s.name: s.process.pid for s in services if s.process is not None}
        if broker_pid is not None:
            pids["kafka"] = broker_pid
        pids["bench"] = os.getpid()
        procs = ProcessSampler(pids, leaf={"bench"})
        if config.py_spy:
            spy = _start_py_spy(
                pids["processor"], out / "runner-profile.txt", config.duration_s + 30, out / "py-spy.log"
            )
        log(
            f"full path: {config.rate:,.0f} ev/s base, {config.tickers} tickers, {config.profile}, "
            f"{config.duration_s:.0f} s"
        )
        t0 = time.time()
        deadline_generation = t0 + config.duration_s + 120
        settle_deadline: float | None = None
        last_line = 0.0
        sim: dict[str, Any] = {}
        while True:
            time.sleep(max(0.0, 1.0 - (time.time() - t0) % 1.0))
            now = time.time()
            sim = _read_json(sim_stats) or sim
            broker_view = sampler.sample()
            status = _combined_status([_read_json(path) or {} for path in status_files])
            if ramp is not None:
                ramp.observe(sim.get("market_start_ms"), now)
            procs.sample(now - t0)
            samples.append(
                {
                    "t": now - t0,
                    "sent": sim.get("sent_trades", 0) + sim.get("sent_quotes", 0),
                    "sent_trades": sim.get("sent_trades", 0),
                    "generated": sim.get("generated", 0),
                    "high": broker_view["high"],
                    "committed": broker_view["committed"],
                    "high_by_topic": broker_view["high_by_topic"],
                    "committed_by_topic": broker_view["committed_by_topic"],
                    "lag": broker_view["high"] - broker_view["committed"],
                    "runner_lag": status.get("consumer_lag"),
                    "runner_events": status.get("events_processed", 0),
                    "write_p99_ms": status.get("write_p99_ms"),
                    "backpressure_pauses": status.get("backpressure_activations", 0),
                    "model_version": status.get("model_version", 0),
                    "e2e_window": status.get("e2e_latency_window_ms") or {},
                    "pending_frames": sim.get("pending_frames", 0),
                    "variants": {
                        name: {
                            "runner_events": (v := _read_json(path) or {}).get("events_processed", 0),
                            "e2e_window": v.get("e2e_latency_window_ms") or {},
                        }
                        for name, path in variant_status.items()
                    },
                }
            )
            for s in services:
                if s.process is not None and s.process.poll() is not None:
                    raise BenchError(f"{s.name} exited with code {s.process.returncode}")
            sent = sim.get("sent_trades", 0) + sim.get("sent_quotes", 0)
            if now - last_line >= 10:
                last_line = now
                log(
                    f"t={now - t0:5.0f}s sent={sent:,} in kafka={broker_view['high']:,} "
                    f"committed={broker_view['committed']:,} lag={samples[-1]['lag']:,}"
                )
            if sim.get("finished"):
                settle_deadline = settle_deadline or now + config.settle_timeout_s
                if broker_view["high"] >= sent and broker_view["committed"] >= broker_view["high"]:
                    break
                if now > settle_deadline:
                    log("settle timeout: the pipeline did not catch up; reporting what it has")
                    break
            elif now > deadline_generation:
                raise BenchError("the simulator did not finish its workload in time")
        final_status = _combined_status([_read_json(path) or {} for path in status_files])
    finally:
        if spy is not None:
            _stop_py_spy(spy)
        supervisor.stop_all()
        # After the runner's last commit (SIGTERM finishes and commits the batch in hand).
        with contextlib.suppress(Exception):
            final_broker = sampler.sample()
        sampler.close()
    final_status = _final_status(settings.data_dir, instances) or final_status
    final_e2e = [read[1] for path in stage_files if (read := read_e2e(path)) is not None]
    profile, profile_error = _py_spy_results(out, log) if spy is not None else (None, None)
    variants_final = {name: _read_json(path) or {} for name, path in variant_status.items()}
    hot_trades = _hot_store_trades(settings.sqlite_path)
    last = final_broker if final_broker is not None else samples[-1]
    sent_trades, sent_quotes = sim.get("sent_trades", 0), sim.get("sent_quotes", 0)
    reconcile = {
        "sent_trades": sent_trades,
        "sent_quotes": sent_quotes,
        "kafka_trades": last["high_by_topic"][TRADES],
        "kafka_quotes": last["high_by_topic"][QUOTES],
        "committed_trades": last["committed_by_topic"][TRADES],
        "committed_quotes": last["committed_by_topic"][QUOTES],
        "hot_store_trades": hot_trades,
        # Lost = never reached Kafka, or committed by the runner but missing from the hot store.
        # What is still in Kafka past the committed offsets (a settle time-out) is backlog, not loss.
        "trades_lost": (sent_trades - last["high_by_topic"][TRADES])
        + max(0, last["committed_by_topic"][TRADES] - hot_trades),
        "quotes_lost": sent_quotes - last["high_by_topic"][QUOTES],
        "backlog_at_end": (last["high"] - last["committed"]),
        "settled": last["committed"] >= last["high"],
    }
    reconcile["events_lost"] = reconcile["trades_lost"] + reconcile["quotes_lost"]
    return {
        "samples": samples,
        "processes": procs.series,
        "process_summary": procs.summary(),
        "reconcile": reconcile,
        "runner_status": final_status,
        "variant_status": variants_final,
        "variant_settings": config.variants,
        # The simulator's last counters, its publish delay (behind schedule) included.
        "simulator": sim,
        "runner_profile": profile,
        "runner_profile_error": profile_error,
        # The e2e histograms around the market-open ramp (`tradepulse.bench.ramp`); None for `flat`.
        "e2e_ramp": ramp.result(final_e2e) if ramp is not None else None,
    }


def _py_spy_results(out: Path, log: Callable[[str], None]) -> tuple[dict[str, Any] | None, str | None]:
    """The runner's `--py-spy` profile summary from out/runner-profile.txt, or None and why: py-spy's
    error line in out/py-spy.log, else its last line (e.g. it cannot attach where ptrace is not
    allowed), which is logged too."""
    profile = profile_summary(out / "runner-profile.txt", PY_SPY_RATE_HZ)
    if profile is not None:
        return profile, None
    log_path = out / "py-spy.log"
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    said = next((line for line in lines if line.lower().startswith("error")), lines[-1] if lines else "")
    reason = f"py-spy recorded no samples of the runner ({said or 'it printed nothing'}; see {log_path})"
    log(reason)
    return None, reason


def profile_summary(path: Path, rate_hz: float, top: int = 15) -> dict[str, Any] | None:
    """Self and inclusive shares of the runner's py-spy samples (collapsed stacks)."""
    if not path.exists():
        return None
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in {f.split(" (")[0] for f in frames}:
            incl[frame] = incl.get(frame, 0) + n
    if not total:
        return None

    def best(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, v / total * 100) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {
        "samples": total,
        "cpu_s": total / rate_hz,
        "self_pct": best(own),
        "inclusive_pct": best(incl),
        "anomaly_score_cpu_s": incl.get("AnomalyDetector.score", 0) / rate_hz,
    }


def _start_py_spy(pid: int, profile: Path, seconds: float, log_path: Path) -> Any:
    import subprocess

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with log_path.open("wb") as log_file:  # the child keeps its own descriptor
        return subprocess.Popen(
            [
                exe,
                "record",
                "-p",
                str(pid),
                "-o",
                str(profile),
                "-d",
                str(int(seconds)),
                "-r",
                str(PY_SPY_RATE_HZ),
                "-f",
                "raw",
                "--nonblocking",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def _stop_py_spy(spy: Any) -> None:
    """Stop a `_start_py_spy` recording and wait for its file: SIGINT, as Control-C, is when py-spy writes
    what it sampled (SIGTERM ends it with nothing written)."""
    spy.send_signal(signal.SIGINT)
    with contextlib.suppress(Exception):
        spy.wait(30)


def _drain_phase(config: BenchConfig, settings: Settings, out: Path, run_id: str) -> dict[str, Any]:
    log = config.log
    recreate_topics(settings)
    log(f"drain: pre-filling market.trades with {config.drain_events:,} trades")
    n = drain.prefill_trades(settings, config.drain_events, config.tickers)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    systems: dict[str, dict[str, Any]] = {}
    ours_dir = out / "drain-state"
    shutil.rmtree(ours_dir, ignore_errors=True)
    ours_settings = settings.model_copy(
        update={"data_dir": ours_dir, "consumer_group": f"drain-ours-{run_id}"}
    )
    log("drain: tradepulse runner")
    systems["tradepulse"] = drain.run_drain(
        "tradepulse",
        [
            sys.executable,
            "-m",
            "tradepulse.bench.drain_ours",
            "--expect",
            str(n),
            "--result",
            str(out / "drain-tradepulse.json"),
        ],
        out / "drain-tradepulse.json",
        env=child_env(ours_settings),
        timeout_s=config.drain_timeout_s,
        log_path=logs / "drain-tradepulse.log",
    )
    if config.peers:
        python = drain.ensure_peers_venv(config.peers_dir, config.peers_venv, log)
        # The broker does not auto-create topics; each peer writes its features to its own topic.
        ensure_topics(
            settings,
            [
                TopicSpec(f"bench.{name}.features", settings.topic_partitions, settings.topic_retention_ms)
                for name in drain.PEERS
            ],
        )
        for name in drain.PEERS:
            script = drain.peer_script(config.peers_dir, name)
            log(f"drain: {name} peer")
            result_path = out / f"drain-{name}.json"
            systems[name] = drain.run_drain(
                name,
                [
                    str(python),
                    str(script),
                    *("--bootstrap", str(settings.kafka_bootstrap), "--expect", str(n)),
                    *("--group", f"drain-{name}-{run_id}", "--result", str(result_path)),
                    *("--state-dir", str(out / f"drain-state-{name}")),
                    "--partitions",
                    str(settings.topic_partitions),
                ],
                result_path,
                env={"PYTHONPATH": ""},
                timeout_s=config.drain_timeout_s,
                log_path=logs / f"drain-{name}.log",
            )
            shutil.rmtree(out / f"drain-state-{name}", ignore_errors=True)
    ours = systems["tradepulse"].get("events_per_s", 0.0)
    for result in systems.values():
        peer = result.get("events_per_s", 0.0)
        result["tradepulse_ratio"] = ours / peer if peer else None
    return {"events": n, "systems": systems}


__all__ = ["BenchConfig", "run_bench"]
