"""Benchmark of the embedded stores: SQLite hot-store batched writes and Parquet cold-store writes.

    .venv/bin/python scripts/bench_stores.py [--rows 200000] [--batch 2000] [--mixed-batches 120]

Prints rows/s and p50/p99 batch latency (SQLite) and rows/s + files (Parquet, incl. the replay merge).

`--contended-batches` times the hot store's write of a 500-message batch alone and while another thread
runs Python code, as the runner's cold thread does: every statement SQLite runs releases the GIL, and
taking it back can wait for the busy thread's switch interval (5 ms).

The mixed case replays the runner's micro-batch: 5,000 messages of which ~40 % trades and ~60 %
quotes over 200 tickers, plus one feature snapshot per ticker and a few anomalies per batch. Trades,
features and anomalies go to the hot store in one `write_batch` (the latency backpressure watches);
trades and quotes go to the cold store, per row (`append`) and per batch (`append_batch`).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import click

from tradepulse import topics
from tradepulse.ids import quote_event_id, stable_id, trade_event_id
from tradepulse.percentiles import nearest_rank
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


MIXED_TICKERS = [f"T{i:03d}" for i in range(200)]


def mixed_batch(b: int, size: int = 5000) -> dict[str, list[dict]]:
    """Batch `b` of the runner-like workload: 40 % trades, 60 % quotes, 200 features, 5 anomalies."""
    n_trades = size * 2 // 5
    n_quotes = size - n_trades
    first = b * size
    ts0 = BASE_MS + b * 250  # ~20,000 ev/s of event time
    out_trades, out_quotes = [], []
    for i in range(n_trades):
        seq = first + i
        ticker = MIXED_TICKERS[(seq * 7) % 200]
        ts = ts0 + i * 250 // n_trades
        out_trades.append(
            {
                "event_id": trade_event_id(ticker, 4, str(seq), ts, seq),
                "ticker": ticker,
                "price": 100.0 + (seq % 97) * 0.01,
                "size": float(1 + seq % 300),
                "exchange": 4,
                "trade_id": str(seq),
                "tape": 3,
                "conditions": [12],
                "sequence": seq,
                "exchange_ts_ms": ts,
                "received_ts_us": ts * 1000,
                "trf_id": None,
                "trf_ts_ms": None,
            }
        )
    for i in range(n_quotes):
        seq = first + n_trades + i
        ticker = MIXED_TICKERS[(seq * 11) % 200]
        ts = ts0 + i * 250 // n_quotes
        out_quotes.append(
            {
                "event_id": quote_event_id(ticker, ts, seq),
                "ticker": ticker,
                "bid_price": 99.99,
                "bid_size": 100.0,
                "bid_exchange": 11,
                "ask_price": 100.01,
                "ask_size": 200.0,
                "ask_exchange": 12,
                "conditions": [],
                "indicators": [],
                "tape": 3,
                "sequence": seq,
                "exchange_ts_ms": ts,
                "received_ts_us": ts * 1000,
            }
        )
    second = ts0 // 1000 * 1000
    features = [
        {
            "ticker": t,
            "ts_ms": second,
            "price": 100.0,
            "volume": 1200.0,
            "vwap_1min": 99.99,
            "vwap_5min": 99.98,
            "rolling_avg_5min": 99.97,
            "volume_zscore": 0.5,
            "price_momentum": 0.1,
            "trade_frequency": 42,
            "vwap_deviation_bps": 2.0,
            "bid_ask_spread": 0.02,
            "window_start_ms": second - 300_000,
            "window_end_ms": second,
            "late_events": 0,
        }
        for t in MIXED_TICKERS
    ]
    anomalies = [
        {
            "anomaly_id": stable_id("A", t, ts0),
            "ticker": t,
            "ts_ms": ts0,
            "anomaly_score": -0.7,
            "threshold": -0.6,
            "feature_vector": {"volume_zscore": 4.2, "price_momentum": 1.1},
            "model_version": 3,
            "event_id": stable_id("T", t, ts0),
        }
        for t in MIXED_TICKERS[b % 40 :: 40]
    ]
    return {"trades": out_trades, "quotes": out_quotes, "features": features, "anomalies": anomalies}


def bench_mixed(batches: int, root: Path, size: int = 5000) -> None:
    """The runner's micro-batch against both stores; prints messages/s and write p50/p99 per batch."""
    data = [mixed_batch(b, size) for b in range(batches)]
    hot_rows = sum(len(d["trades"]) + len(d["features"]) + len(d["anomalies"]) for d in data)
    store = SqliteHotStore(root / "mixed.sqlite3")
    lat = []
    started = time.perf_counter()
    for d in data:
        t0 = time.perf_counter()
        store.write_batch(trades=d["trades"], features=d["features"], anomalies=d["anomalies"])
        lat.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - started
    t0 = time.perf_counter()
    for i in range(1000):
        store.latest_trade(MIXED_TICKERS[i % 200])
    read_us = (time.perf_counter() - t0) * 1000
    store.close()
    print(
        f"mixed   sqlite write_batch: {hot_rows / elapsed:,.0f} rows/s, {batches * size / elapsed:,.0f} "
        f"msgs/s  ({batches} batches of {size} msgs = {hot_rows // batches} hot rows; "
        f"p50 {nearest_rank(lat, 50):.1f} ms, p99 {nearest_rank(lat, 99):.1f} ms, max {max(lat):.1f} ms)"
    )
    print(f"mixed   sqlite latest_trade: {read_us:.1f} µs per read (mean of 1000, 200 tickers)")
    for mode in ("append_batch",):  # the runner's path (the per-row `append` is gone)
        cold = ParquetColdStore(root / f"cold-{mode}", flush_rows=50_000, flush_interval_s=1e9)
        lat = []
        started = time.perf_counter()
        for b, d in enumerate(data):
            t0 = time.perf_counter()
            for topic, rows in ((topics.TRADES, d["trades"]), (topics.QUOTES, d["quotes"])):
                # 6 partitions, offsets consecutive per partition, as the runner sees them
                pos = [(i % 6, (b * len(rows) + i) // 6) for i in range(len(rows))]
                cold.append_batch(topic, rows, pos)
            lat.append((time.perf_counter() - t0) * 1000)
        cold.close()
        elapsed = time.perf_counter() - started
        print(
            f"mixed   parquet {mode}: {batches * size / elapsed:,.0f} rows/s incl. flushes "
            f"(p50 {nearest_rank(lat, 50):.1f} ms, p99 {nearest_rank(lat, 99):.1f} ms per batch; "
            f"{cold.files_written} file writes)"
        )


def bench_contended(batches: int, root: Path, size: int = 500) -> None:
    """The hot store's write of a runner-sized batch, alone and with a thread that runs Python code."""
    data = [mixed_batch(b, size) for b in range(batches)]
    busy = threading.Event()

    def python_work() -> None:
        while busy.is_set():
            {i: i * 2 for i in range(100)}

    for contended in (False, True):
        store = SqliteHotStore(root / f"contended-{contended}.sqlite3")
        if contended:
            busy.set()
            threading.Thread(target=python_work, daemon=True).start()
        lat = []
        for d in data:
            t0 = time.perf_counter()
            store.write_batch(trades=d["trades"], features=d["features"], anomalies=d["anomalies"])
            lat.append((time.perf_counter() - t0) * 1000)
        busy.clear()
        store.close()
        print(
            f"sqlite  write_batch of {size} msgs {'with a busy thread' if contended else 'alone'} (switch "
            f"interval {sys.getswitchinterval() * 1000:g} ms): p50 {nearest_rank(lat, 50):.1f} ms, "
            f"p99 {nearest_rank(lat, 99):.1f} ms over {batches} batches"
        )


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
        f"p50 {nearest_rank(lat, 50):.2f} ms, p99 {nearest_rank(lat, 99):.2f} ms, max {max(lat):.2f} ms)"
    )
    print(f"sqlite  latest_trade: {read_us:.1f} µs per read (mean of 1000)")


def bench_parquet(rows: list[dict], root: Path) -> None:
    store = ParquetColdStore(root / "cold", block_offsets=100_000, flush_rows=50_000, flush_interval_s=1e9)
    started = time.perf_counter()
    for first in range(0, len(rows), 5000):  # batches of 5000, as the runner appends them
        chunk = rows[first : first + 5000]
        offsets = range(first, first + len(chunk))
        store.append_batch(topics.TRADES, chunk, [(offset % 6, offset // 6) for offset in offsets])
    store.close()
    elapsed = time.perf_counter() - started
    print(
        f"parquet append+flush: {len(rows) / elapsed:,.0f} rows/s  ({store.files_written} file writes, "
        f"{len(store.files())} files, {store.rows_written:,} rows written incl. partial-block rewrites)"
    )


@click.command(help=__doc__)
@click.option("--rows", "n_rows", type=int, default=200000, show_default=True)
@click.option("--batch", type=int, default=2000, show_default=True)
@click.option(
    "--mixed-batches", type=int, default=120, show_default=True, help="5,000-message batches (0 = skip)"
)
@click.option(
    "--contended-batches",
    type=int,
    default=60,
    show_default=True,
    help="500-message batches written alone and beside a busy thread (0 = skip)",
)
def main(n_rows: int, batch: int, mixed_batches: int, contended_batches: int) -> None:
    rows = trades(n_rows)
    with tempfile.TemporaryDirectory() as tmp:
        bench_sqlite(rows, batch, Path(tmp))
        bench_parquet(rows, Path(tmp))
        if mixed_batches:
            bench_mixed(mixed_batches, Path(tmp))
        if contended_batches:
            bench_contended(contended_batches, Path(tmp))


if __name__ == "__main__":
    main()
