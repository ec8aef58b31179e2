"""API latency benchmark against a running TradePulse API (`tradepulse api` or `make up`).

    .venv/bin/python scripts/bench_api.py --url http://127.0.0.1:8000 --ticker AAPL --requests 2000

Reports client-side p50/p95/p99 per endpoint for sequential requests on one keep-alive connection, with
the server-side cache warm (cached endpoints) and for the uncached ones, then the throughput of N
concurrent clients on /quotes.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import click
import httpx
import numpy as np


def percentiles(samples_ms: list[float]) -> str:
    p50, p95, p99 = np.percentile(samples_ms, [50, 95, 99])
    return f"p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  p99 {p99:6.2f} ms"


def sequential(client: httpx.Client, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        res = client.get(path)
        out.append((time.perf_counter() - started) * 1000)
        if res.status_code >= 500 and not (path == "/health" and res.status_code == 503):
            raise SystemExit(f"{path}: HTTP {res.status_code}")
    return out


def concurrent(url: str, path: str, clients: int, per_client: int) -> float:
    """Requests/s of `clients` threads, each on its own keep-alive connection."""

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            for _ in range(per_client):
                client.get(path)

    with ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
        return clients * per_client / (time.perf_counter() - started)


@click.command(help=__doc__)
@click.option("--url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--ticker", default="AAPL", show_default=True)
@click.option("--requests", type=int, default=1000, show_default=True)
@click.option("--clients", type=int, default=16, show_default=True)
def main(url: str, ticker: str, requests: int, clients: int) -> None:
    t = ticker
    paths = [
        f"/quotes/{t}",
        f"/aggregations/{t}",
        f"/features/{t}",
        f"/history/{t}?minutes=15",
        f"/anomalies/{t}?hours=24",
        f"/sentiment/{t}?hours=24",
        "/health",
    ]
    with httpx.Client(base_url=url, timeout=10) as client:
        for path in paths:
            sequential(client, path, 20)  # warm up connections, cache, SQLite reader
            print(f"{path:32s} {percentiles(sequential(client, path, requests))}")
    rate = concurrent(url, f"/quotes/{t}", clients, max(1, requests // clients))
    print(f"/quotes/{t} with {clients} concurrent clients: {rate:,.0f} req/s")


if __name__ == "__main__":
    main()
