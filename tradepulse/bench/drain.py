"""The drain comparison: the same pre-filled `market.trades` topic (N trades, the ingest's exact payloads)
drained by each system from the earliest offset with its own consumer group, on the same broker.

Each system runs as its own process and writes a result JSON: events, the first/last processing times
and the outputs it produced. Throughput = events after the first one / time from the first to the last
(start-up, group join and rebuild are excluded for everyone).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from tradepulse.bench import PEERS_DIR as PEERS_DIR
from tradepulse.bench import PEERS_VENV as PEERS_VENV
from tradepulse.bus.clients import producer_config
from tradepulse.config import Settings
from tradepulse.errors import BenchError
from tradepulse.sources.parse import trade_record
from tradepulse.sources.simulator import MarketConfig, MarketModel, make_tickers
from tradepulse.topics import TRADES

#: The peers: `<peers_dir>/<name>_peer.py`, each run with the peers' venv.
PEERS = ("faust", "quix")


def peer_script(peers_dir: Path, name: str) -> Path:
    return peers_dir / f"{name}_peer.py"


def prefill_trades(settings: Settings, n: int, tickers: int, seed: int = 7) -> int:
    """Produce `n` trades (market model → Massive wire events → ingest records) to market.trades."""
    # Spread over ~2 minutes of event time, so windows close and every system emits features.
    model = MarketModel(
        MarketConfig(seed=seed, tickers=make_tickers(tickers), rate=max(n / 120, 100), trade_fraction=1.0)
    )
    producer = Producer(producer_config(settings))
    sent = 0
    while sent < n:
        received_us = time.time_ns() // 1000
        for event in model.next_block().records():
            if event.get("ev") != "T" or sent >= n:
                continue
            row = trade_record(event, received_us)
            while True:
                try:
                    producer.produce(TRADES, key=row["ticker"].encode(), value=orjson.dumps(row))
                    break
                except BufferError:
                    producer.poll(0.05)
            sent += 1
        producer.poll(0)
    if producer.flush(60):
        raise BenchError("prefill: messages still undelivered after 60 s")
    return sent


def ensure_peers_venv(peers_dir: Path, venv: Path, log: Any = print) -> Path:
    """The peers' own venv (faust-streaming and quixstreams pin their own dependencies); created once."""
    requirements = peers_dir / "requirements.txt"
    if not requirements.exists():
        raise FileNotFoundError(
            f"benchmark peers not found in {peers_dir}/: run from the repository root, or pass --no-peers"
        )
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.exists() and marker.read_text() == requirements.read_text():
        return python
    log(f"creating {venv} (faust-streaming, quixstreams)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    marker.write_text(requirements.read_text())
    return python


def run_drain(
    name: str, argv: list[str], result_path: Path, *, env: dict[str, str], timeout_s: float, log_path: Path
) -> dict[str, Any]:
    """Run one drainer to completion; returns its result JSON plus the wall time and exit code."""
    result_path.unlink(missing_ok=True)
    started = time.monotonic()
    with log_path.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=os.environ | env)
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    result: dict[str, Any] = {"system": name, "exit_code": code, "wall_s": time.monotonic() - started}
    if result_path.exists():
        result.update(orjson.loads(result_path.read_bytes()))
        events, span = result.get("events", 0), result.get("last_s", 0) - result.get("first_s", 0)
        result["events_per_s"] = (events - result.get("first_batch", 1)) / span if span > 0 else 0.0
    else:
        result["error"] = f"no result (exit {code}); see {log_path.name}"
    return result
