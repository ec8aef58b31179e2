"""Hot-store retention while the runner is live: a real `tradepulse process` on the real broker purges
SQLite rows older than the TTL on its schedule, while it goes on writing new ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.api.market import HOUR_MS, anomaly, correlation, trade
from tests.bus.test_runner import own_group, produce
from tests.bus.test_runner_processes import finish, status, wait_until
from tests.stores.conftest import make_feature
from tradepulse.config import Settings
from tradepulse.stores.retention import RetentionPurger
from tradepulse.stores.sqlite_hot import SqliteHotStore
from tradepulse.topics import TRADES

REPO = Path(__file__).resolve().parents[2]


def test_the_purger_calls_the_store_on_its_interval(tmp_path: Path) -> None:
    now_ms = int(time.time() * 1000)
    with SqliteHotStore(tmp_path / "hot.sqlite3", ttl_hours=48) as store:
        store.write_batch(anomalies=[anomaly("AAPL", now_ms - 50 * HOUR_MS, 1), anomaly("AAPL", now_ms, 2)])
        with RetentionPurger(store, 0.05, chunk_rows=1) as purger:
            deadline = time.monotonic() + 10
            while purger.rows_purged == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert purger.rows_purged == 1 and store.count("anomalies") == 1


def test_only_the_sqlite_backend_gets_a_purger(tmp_path: Path) -> None:
    with SqliteHotStore(tmp_path / "hot.sqlite3") as store:
        assert RetentionPurger.for_settings(store, Settings(data_dir=tmp_path)) is not None
        assert (
            RetentionPurger.for_settings(store, Settings(data_dir=tmp_path, hot_purge_interval_s=0)) is None
        )
        assert RetentionPurger.for_settings(store, Settings(data_dir=tmp_path, hot_store="dynamodb")) is None


@pytest.mark.kafka
def test_rows_older_than_the_ttl_disappear_while_the_runner_is_live(kafka_settings: Settings) -> None:
    settings = own_group(kafka_settings)
    now_ms = int(time.time() * 1000)
    expired = [now_ms - h * HOUR_MS for h in (49, 60, 100)]
    kept = now_ms - 2 * HOUR_MS
    with SqliteHotStore(settings.sqlite_path, ttl_hours=48) as seed:
        seed.write_batch(
            trades=[trade("OLD", ts + i, 10.0, 1, i) for ts in expired for i in range(100)]
            + [trade("AAPL", kept, 200.0, 1, 1)],
            features=[make_feature("OLD", ts + 1000 * i) for ts in expired for i in range(100)]
            + [make_feature("AAPL", kept)],
            anomalies=[anomaly("AAPL", ts, i) for i, ts in enumerate([*expired, kept])],
            correlations=[
                correlation("AAPL", i, ts, f"news {i}", 0.2, "weak", None, None)
                for i, ts in enumerate([*expired, kept])
            ],
        )
    env = os.environ | {
        "TRADEPULSE_KAFKA_BOOTSTRAP": str(settings.kafka_bootstrap),
        "TRADEPULSE_CONSUMER_GROUP": settings.consumer_group,
        "TRADEPULSE_DATA_DIR": str(settings.data_dir),
        "TRADEPULSE_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "TRADEPULSE_HOT_TTL_HOURS": "48",
        "TRADEPULSE_HOT_PURGE_INTERVAL_S": "1",
        "TRADEPULSE_HOT_PURGE_CHUNK_ROWS": "64",  # several chunks per table
    }
    runner = subprocess.Popen(
        [sys.executable, "-m", "tradepulse.cli.main", "process", "--progress-s", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    hot = SqliteHotStore(settings.sqlite_path, ttl_hours=48)
    try:
        wait_until(lambda: status(settings, "0").get("assigned_partitions", 0) > 0, 120, "assignment", runner)
        live = [trade("MSFT", now_ms - 1000 + i, 400.0, 5, i) for i in range(200)]
        produce(settings, [(TRADES, t["ticker"], t) for t in live])

        def purged_while_writing() -> bool:
            return {t["event_id"] for t in live} <= hot.trade_ids() and (
                hot.count("trades") == 1 + len(live)
                and hot.feature_history("OLD", 0) == []
                and [a["ts_ms"] for a in hot.anomalies("AAPL", 0)] == [kept]
                and [c["published_ts_ms"] for c in hot.correlations("AAPL", 0)] == [kept]
            )

        wait_until(purged_while_writing, 120, "the expired rows to be purged", runner)
        assert runner.poll() is None  # purged by the live runner process
        assert hot.latest_trade("AAPL") is not None and "OLD" not in hot.tickers()
        assert [f["ts_ms"] for f in hot.feature_history("AAPL", 0)] == [kept]
    finally:
        hot.close()
        runner.send_signal(signal.SIGTERM)
    out = finish(runner)
    assert "hot store purge: " in out  # the runner process logged its purges
