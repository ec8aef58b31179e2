"""DuckDB over the cold store: views per dataset with Hive partitions, and the dialect-neutral examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stores.conftest import BASE_MS, make_anomaly, make_correlation, make_feature, make_trade
from tradepulse import topics
from tradepulse.config import Settings
from tradepulse.stores.dlq import DeadLetterPolicy, make_dead_letter
from tradepulse.stores.dlq_queues import SqliteDeadLetterQueue
from tradepulse.stores.parquet_cold import ParquetColdStore
from tradepulse.stores.sql import EXAMPLE_QUERIES, VIEWS, run_query

HOUR = 3_600_000


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small cold store: trades of two tickers over two hours of one day plus one on the next day,
    features, anomalies and correlations."""
    root = tmp_path_factory.mktemp("cold")
    store = ParquetColdStore(root, block_offsets=4)
    trades = [
        make_trade("AAPL", 1, BASE_MS, 100.0),  # 09:20
        make_trade("AAPL", 2, BASE_MS + 30_000, 102.0),  # same minute
        make_trade("AAPL", 3, BASE_MS + 60_000, 101.0),  # next minute
        make_trade("MSFT", 1, BASE_MS + HOUR, 400.0),  # 10:20
        make_trade("MSFT", 2, BASE_MS + 24 * HOUR, 410.0),  # next day
    ]
    for o, t in enumerate(trades):
        store.append_batch(topics.TRADES, [t], [(o % 2, o)], flush=False)
    features = [make_feature("AAPL", BASE_MS), make_feature("MSFT", BASE_MS + HOUR)]
    store.append_batch(topics.FEATURES, features, [(0, 0), (0, 1)], flush=False)
    anomalies = [make_anomaly("AAPL", BASE_MS, -0.8), make_anomaly("MSFT", BASE_MS + HOUR, -0.7)]
    store.append_batch(topics.ANOMALIES, anomalies, [(0, 0), (0, 1)], flush=False)
    strong = make_correlation("AAPL", 1, BASE_MS)
    none = dict(make_correlation("MSFT", 2, BASE_MS + 10), correlation_strength="none")
    store.append_batch(topics.CORRELATIONS, [strong, none], [(0, 0), (0, 1)], flush=False)
    store.close()
    return root


def test_views_expose_hive_partitions(lake: Path) -> None:
    df = run_query(
        "SELECT dt, hour, COUNT(*) AS n FROM trades GROUP BY dt, hour ORDER BY dt, hour", cold_dir=lake
    )
    assert df.to_dict("records") == [
        {"dt": "2025-12-29", "hour": 9, "n": 3},
        {"dt": "2025-12-29", "hour": 10, "n": 1},
        {"dt": "2025-12-30", "hour": 9, "n": 1},
    ]


def test_daily_summary(lake: Path) -> None:
    df = run_query(EXAMPLE_QUERIES["daily_summary"].format(dt="2025-12-29"), cold_dir=lake)
    assert df["ticker"].tolist() == ["AAPL", "MSFT"]
    assert df["trades"].tolist() == [3, 1]
    assert df["volume"].tolist() == [30.0, 10.0]
    assert df["vwap"].tolist() == pytest.approx([101.0, 400.0])
    assert (df.loc[0, "low"], df.loc[0, "high"]) == (100.0, 102.0)


def test_minute_bars(lake: Path) -> None:
    df = run_query(EXAMPLE_QUERIES["minute_bars"], cold_dir=lake)
    aapl = df[df.ticker == "AAPL"]
    minute = BASE_MS // 60_000 * 60_000
    assert aapl["minute_ms"].tolist() == [minute, minute + 60_000]
    assert aapl["trades"].tolist() == [2, 1]
    assert len(df) == 4


def test_anomalies_per_hour_and_join_with_features(lake: Path) -> None:
    df = run_query(EXAMPLE_QUERIES["anomalies_per_hour"], cold_dir=lake)
    assert df[["hour", "ticker", "anomalies"]].values.tolist() == [[9, "AAPL", 1], [10, "MSFT", 1]]
    assert df["worst_score"].tolist() == pytest.approx([-0.8, -0.7])
    joined = run_query(EXAMPLE_QUERIES["anomaly_features"], cold_dir=lake)
    assert joined["ticker"].tolist() == ["AAPL", "MSFT"]
    assert joined["volume_zscore"].tolist() == pytest.approx([1.25, 1.25])


def test_news_impact_reads_struct_fields(lake: Path) -> None:
    df = run_query(EXAMPLE_QUERIES["news_impact"], cold_dir=lake)
    assert df.to_dict("records") == [
        {
            "ticker": "AAPL",
            "headline": "Apple beats estimates",
            "sentiment": "positive",
            "compound": 0.6,
            "peak_zscore": 3.9,
            "lag_seconds": 12.5,
        }
    ]


def test_every_view_exists_even_without_files(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    for view in VIEWS:
        df = run_query(f"SELECT * FROM {view}", settings)
        assert df.empty and {"dt", "hour"} <= set(df.columns)
    assert run_query("SELECT COUNT(*) AS n FROM trades", settings)["n"].tolist() == [0]


def test_archived_dead_letters_are_queryable(tmp_path: Path) -> None:
    """The DLQ policy archives to the cold store; the archive is the dead_letter_archive view."""
    clock = lambda: BASE_MS / 1000 + 10_000  # noqa: E731
    dlq = SqliteDeadLetterQueue(tmp_path / "dlq.sqlite3")
    cold = ParquetColdStore(tmp_path / "cold")
    policy = DeadLetterPolicy(dlq, redrive=lambda r: None, archive=cold.archive_dead_letters, clock=clock)
    dlq.put([make_dead_letter(stage="sink:hot", payload="x", reason="disk full", now_s=BASE_MS / 1000)])
    policy.archive_pending()
    df = run_query("SELECT stage, reason, status, dt FROM dead_letter_archive", cold_dir=tmp_path / "cold")
    assert df.to_dict("records") == [
        {"stage": "sink:hot", "reason": "disk full", "status": "archived", "dt": "2025-12-29"}
    ]
    assert dlq.letters("archived")[0]["reason"] == "disk full"
    dlq.close()
