"""Benchmark: how many events/s one simulator process (one core) can serve over the WebSocket.

Starts `python -m tradepulse.cli.simulate` pinned to one CPU (taskset, when available) at each target
rate, connects clients subscribed to `T.*,Q.*` from this process, and reports the events/s received
and the delay from event time to receipt (p50/p99), which grows without bound once the server saturates.

    .venv/bin/python scripts/bench_simulator.py --rates 50000,100000,200000,400000 --seconds 10
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time

import click
import numpy as np
import orjson
from websockets.asyncio.client import connect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def client(url: str, seconds: float, counts: list[int], delays: list[float]) -> None:
    async with connect(url, max_size=2**22, compression=None) as ws:
        await ws.recv()
        await ws.send('{"action":"auth","params":"bench"}')
        await ws.recv()
        await ws.send('{"action":"subscribe","params":"T.*,Q.*"}')
        deadline = time.monotonic() + seconds
        warm = time.monotonic() + 2.0  # skip the first seconds (connection and queue warm-up)
        n = frames = 0
        while (now := time.monotonic()) < deadline:
            frame = await ws.recv(decode=False)
            if now < warm:
                continue
            n += frame.count(b'"ev":')
            frames += 1
            if frames % 20 == 0:  # sample the delay of the last event of every 20th frame
                last = orjson.loads(frame)[-1]
                if "t" in last:
                    delays.append(time.time() * 1000 - last["t"])
        counts.append(n)


def run(rate: float, seconds: float, tickers: int, clients: int, cpu: str) -> dict[str, float]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "tradepulse.cli.simulate",
        "--ws-port",
        str(port),
        "--http-port",
        "0",
        "--rate",
        str(rate),
        "--n-tickers",
        str(tickers),
        "--news-interval",
        "0",
        "--backfill-news",
        "0",
        "--ground-truth",
        os.devnull,
        "--progress-every",
        "60",
    ]
    if cpu and shutil.which("taskset"):
        cmd = ["taskset", "-c", cpu, *cmd]
    env = {**os.environ, "TRADEPULSE_SIMULATOR_API_KEY": "bench"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        counts: list[int] = []
        delays: list[float] = []

        async def main() -> None:
            url = f"ws://127.0.0.1:{port}/stocks"
            await asyncio.gather(*(client(url, seconds + 2, counts, delays) for _ in range(clients)))

        asyncio.run(main())
        d = np.array(delays) if delays else np.array([np.nan])
        return {
            "target": rate,
            "received_per_client": sum(counts) / clients / seconds,
            "delay_p50_ms": float(np.percentile(d, 50)),
            "delay_p99_ms": float(np.percentile(d, 99)),
        }
    finally:
        proc.terminate()
        proc.wait(10)


@click.command(help=__doc__)
@click.option("--rates", default="50000,100000,200000", show_default=True)
@click.option("--seconds", type=float, default=10.0, show_default=True)
@click.option("--tickers", type=int, default=500, show_default=True)
@click.option("--clients", type=int, default=1, show_default=True)
@click.option("--cpu", default="0", show_default=True, help="CPU to pin the server to ('' = no pinning).")
def main(rates: str, seconds: float, tickers: int, clients: int, cpu: str) -> None:
    print(f"{'target ev/s':>12} {'received ev/s':>14} {'delay p50 ms':>13} {'delay p99 ms':>13}")
    for rate in (float(r) for r in rates.split(",")):
        r = run(rate, seconds, tickers, clients, cpu)
        print(
            f"{r['target']:>12,.0f} {r['received_per_client']:>14,.0f} {r['delay_p50_ms']:>13.1f} "
            f"{r['delay_p99_ms']:>13.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
