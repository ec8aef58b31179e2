"""Benchmark of the embedded stores: SQLite hot-store batched writes and Parquet cold-store writes.

    .venv/bin/python scripts/bench_stores.py [--rows 200000] [--batch 2000]

Prints rows/s and p50/p99 batch latency (SQLite) and rows/s + files (Parquet, incl. the replay merge).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tradepulse import topics
from tradepulse.ids import trade_event_id
from tradepulse.stores.parquet_cold import ParquetColdStore
from tradepulse.stores.sqlite_hot import SqliteHotStore

TICKERS = ["AAPL", "MSFT", "AMZN", "TSLA", "NVDA"]
BASE_MS = 1_767_000_000_000


def trades(n: int) -> list[dict]:
    out = []
    for i in range(n):
        ticker = TICKERS[i % len(TICKERS)]
        ts = BASE_MS + i // 5
        out.append(
            {
                "event_id": trade_event_id(ticker, 4, str(i), ts, i),
                "ticker": ticker,
                "price": 100.0 + (i % 97) * 0.01,
                "size": float(1 + i % 300),
                "exchange": 4,
                "trade_id": str(i),
                "tape": 3,
                "conditions": [12],
                "sequence": i,
                "exchange_ts_ms": ts,
                "received_ts_us": ts * 1000,
                "trf_id": None,
                "trf_ts_ms": None,
            }
        )
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def bench_sqlite(rows: list[dict], batch: int, root: Path) -> None:
    store = SqliteHotStore(root / "hot.sqlite3")
    lat = []
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        t0 = time.perf_counter()
        store.write_batch(trades=rows[i : i + batch])
        lat.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - started
    t0 = time.perf_counter()
    for _ in range(1000):
        store.latest_trade("AAPL")
    read_us = (time.perf_counter() - t0) * 1000
    store.close()
    print(
        f"sqlite  write_batch: {len(rows) / elapsed:,.0f} rows/s  ({len(lat)} batches of {batch}; "
        f"p50 {statistics.median(lat):.2f} ms, p99 {pct(lat, 99):.2f} ms, max {max(lat):.2f} ms)"
    )
    print(f"sqlite  latest_trade: {read_us:.1f} µs per read (mean of 1000)")


def bench_parquet(rows: list[dict], root: Path) -> None:
    store = ParquetColdStore(root / "cold", block_offsets=100_000, flush_rows=50_000, flush_interval_s=1e9)
    started = time.perf_counter()
    for offset, row in enumerate(rows):
        store.append(topics.TRADES, offset % 6, offset // 6, row)
        if offset % 5000 == 4999:
            store.flush()
    store.close()
    elapsed = time.perf_counter() - started
    print(
        f"parquet append+flush: {len(rows) / elapsed:,.0f} rows/s  ({store.files_written} file writes, "
        f"{len(store.files())} files, {store.rows_written:,} rows written incl. partial-block rewrites)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2000)
    args = parser.parse_args()
    rows = trades(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        bench_sqlite(rows, args.batch, Path(tmp))
        bench_parquet(rows, Path(tmp))


if __name__ == "__main__":
    main()
