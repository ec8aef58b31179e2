"""Benchmark of cold history reads: a 7-day anomaly window from the local Parquet cold store (DuckDB),
and `/anomalies?hours=168` through the real API where the answer needs rows older than the hot TTL.

    .venv/bin/python scripts/bench_history.py [--days 8] [--off-hours 50] [--per-second 8] [--repeat 20]

The scenario: a laptop pipeline that ran for a week, was off for the last `--off-hours` (50), and has
just been restarted. The cold store holds the week (filled through `ParquetColdStore.append_batch` the
way the runner archives `market.anomalies`: 6 Kafka partitions, one flush per event hour, so the files
are the runner's, one per partition × offset block × event hour); the hot store holds the 30 minutes
since the restart. The default volume is the local simulator's: ~800 trades/s scored, 1 % flagged ≈ 8
anomalies/s over 5 tickers (~690k a day), plus a sparse ticker RARE with one anomaly an hour, whose
7-day window never reaches 1000 rows (so DuckDB reads the whole window: the worst case).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np
from fastapi.testclient import TestClient

from tradepulse import topics
from tradepulse.api.app import create_app
from tradepulse.config import Settings
from tradepulse.ids import stable_id
from tradepulse.stores.cold_history import DuckDBColdHistory, HistoryQuery
from tradepulse.stores.parquet_cold import ParquetColdStore
from tradepulse.stores.sqlite_hot import SqliteHotStore

HOUR_MS = 3_600_000
PARTITIONS = 6
TICKERS = ["AAPL", "MSFT", "AMZN", "TSLA", "NVDA", "META", "GOOG", "NFLX", "AMD", "INTC"]


def anomaly(ticker: str, ts_ms: int, n: int) -> dict:
    return {
        "anomaly_id": stable_id("A", ticker, ts_ms, n),
        "ticker": ticker,
        "ts_ms": ts_ms,
        "anomaly_score": -0.7 - (n % 100) / 1000,
        "threshold": -0.62,
        "feature_vector": {"price": 100.0 + n % 50, "volume_zscore": 4.0 + n % 7},
        "model_version": 1 + n // 100_000,
        "event_id": stable_id("T", ticker, ts_ms, n),
    }


def fill_cold(cold_dir: Path, end_ms: int, days: int, per_second: float, tickers: list[str]) -> int:
    """Anomalies of `tickers` (Poisson, `per_second` in all) and one of RARE per hour, for the `days`
    before `end_ms`."""
    cold = ParquetColdStore(cold_dir, flush_interval_s=1e9, flush_rows=10**9)
    offsets = [0] * PARTITIONS
    rng = np.random.default_rng(42)
    total = 0
    start_hour = (end_ms - days * 24 * HOUR_MS) // HOUR_MS
    tickers = [*tickers, "RARE"]
    for hour in range(start_hour, end_ms // HOUR_MS):
        count = int(rng.poisson(per_second * 3600))
        times = np.sort(rng.integers(hour * HOUR_MS, (hour + 1) * HOUR_MS, count))
        which = rng.integers(0, len(tickers) - 1, count)
        times, which = np.append(times, hour * HOUR_MS + 1), np.append(which, len(tickers) - 1)
        count += 1
        rows, positions = [], []
        for i, (ts, t) in enumerate(zip(times.tolist(), which.tolist(), strict=True)):
            partition = t % PARTITIONS
            rows.append(anomaly(tickers[t], ts, total + i))
            positions.append((partition, offsets[partition]))
            offsets[partition] += 1
        cold.append_batch(topics.ANOMALIES, rows, positions, flush=False)
        cold.flush(force=True)
        total += count
    cold.close()
    return total


def timed(fn: object, repeat: int) -> tuple[float, float, object]:
    samples, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))], result


@click.command()
@click.option("--days", default=8, show_default=True, help="Days back the cold store's anomalies start.")
@click.option("--off-hours", default=50, show_default=True, help="Hours the pipeline was off before now.")
@click.option("--per-second", default=8.0, show_default=True, help="Anomalies per second, all tickers.")
@click.option("--tickers", "n_tickers", default=5, show_default=True)
@click.option("--repeat", default=20, show_default=True)
def main(days: int, off_hours: int, per_second: float, n_tickers: int, repeat: int) -> None:
    tickers = TICKERS[:n_tickers]
    now_ms = int(time.time() * 1000)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), kafka_bootstrap=None)
        started = time.perf_counter()
        end_ms = now_ms - off_hours * HOUR_MS
        total = fill_cold(settings.cold_dir, end_ms, days - off_hours // 24, per_second, tickers)
        files = sum(1 for _ in (settings.cold_dir / "anomalies").rglob("*.parquet"))
        size = sum(p.stat().st_size for p in (settings.cold_dir / "anomalies").rglob("*.parquet"))
        print(
            f"cold store: {total:,} anomalies, {len(tickers)} tickers + RARE, up to {off_hours} h ago, {files} files, "
            f"{size / 1e6:.0f} MB (written in {time.perf_counter() - started:.0f} s)"
        )
        for ticker in ("AAPL", "RARE"):
            cold = DuckDBColdHistory(settings.cold_dir)
            query = HistoryQuery("anomalies", ticker, now_ms - 168 * HOUR_MS, now_ms - 47 * HOUR_MS)
            p50, p95, rows = timed(lambda q=query, c=cold: c.query(q), repeat)
            print(f"cold read of a 7-day window (121 h of it cold), {ticker}: p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
                  f"{len(rows)} rows, {cold.queries // repeat} day(s) read")  # type: ignore[arg-type]  # fmt: skip

        with SqliteHotStore(settings.sqlite_path) as store:
            recent = [anomaly("AAPL", now_ms - i * 6_000, 10**9 + i) for i in range(300)]  # 30 min
            store.write_batch(anomalies=recent, features=[{"ticker": "AAPL", "ts_ms": now_ms}])
            with TestClient(create_app(settings, store)) as client:
                for hours, label in ((24, "hot only"), (168, "hot + cold")):
                    p50, p95, res = timed(
                        lambda h=hours: client.get("/anomalies/AAPL", params={"hours": h}), repeat
                    )
                    body = res.json()  # type: ignore[attr-defined]
                    old = sum(1 for a in body["anomalies"] if a["ts_ms"] < now_ms - 48 * HOUR_MS)
                    print(
                        f"GET /anomalies/AAPL?hours={hours} ({label}): p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
                        f"{body['count']} rows, {old} older than 48 h"
                    )


if __name__ == "__main__":
    main()
