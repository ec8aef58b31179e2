"""The cold-history SQL: partition predicates that bound the scan, one SQL shape for DuckDB and Athena.

moto does not execute Athena SQL, so the Athena text is executed here on DuckDB over real Parquet (with
Athena's `json_format` defined as a DuckDB macro), its results are handed to moto as Athena would return
them (every value a string), and `AthenaColdHistory` must decode them into the rows that were written.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from moto import mock_aws

from tests.api.market import HOUR_MS, anomaly, correlation
from tradepulse import topics
from tradepulse.stores.cold_history import (
    ATHENA,
    DUCKDB,
    HISTORY_DATASETS,
    AthenaColdHistory,
    DuckDBColdHistory,
    HistoryQuery,
    day_windows,
    history_sql,
    partition_predicate,
)
from tradepulse.stores.parquet_cold import DATASETS, SCHEMAS, ParquetColdStore
from tradepulse.stores.sql import connect

NOW_MS = int(datetime(2026, 11, 24, 16, 37, tzinfo=UTC).timestamp() * 1000)


def test_a_seven_day_window_names_eight_dates_and_bounds_the_first_and_last_hour() -> None:
    since = NOW_MS - 168 * HOUR_MS  # 2026-11-17 16:37
    predicate = partition_predicate(since, NOW_MS)
    dates = ", ".join(f"'2026-11-{d}'" for d in range(17, 25))
    assert predicate == (
        f"dt IN ({dates}) AND (dt <> '2026-11-17' OR hour >= 16) AND (dt <> '2026-11-24' OR hour <= 16)"
    )


def test_whole_days_need_no_hour_bounds() -> None:
    midnight = int(datetime(2026, 11, 24, tzinfo=UTC).timestamp() * 1000)
    assert partition_predicate(midnight - 24 * HOUR_MS, midnight) == "dt IN ('2026-11-23')"


def test_the_athena_sql_differs_from_duckdbs_only_in_the_map_to_json_expression() -> None:
    query = HistoryQuery("anomalies", "AAPL", NOW_MS - 100 * HOUR_MS, NOW_MS - 47 * HOUR_MS, 1000)
    athena = history_sql(query, ATHENA)
    assert "json_format(CAST(feature_vector AS JSON)) AS feature_vector" in athena
    assert athena.replace(ATHENA.map_json("feature_vector"), DUCKDB.map_json("feature_vector")) == (
        history_sql(query, DUCKDB)
    )
    assert athena.startswith("SELECT anomaly_id, ticker, ts_ms, anomaly_score")
    assert "FROM anomalies WHERE dt IN ('2026-11-20', " in athena
    assert f"ts_ms >= {NOW_MS - 100 * HOUR_MS} AND ts_ms < {NOW_MS - 47 * HOUR_MS}" in athena
    assert athena.endswith("AND ticker = 'AAPL' ORDER BY ts_ms DESC, anomaly_id LIMIT 1000")
    sentiment = history_sql(HistoryQuery("correlations", "AAPL", 0, HOUR_MS), ATHENA)
    assert "sentiment.label AS sentiment__label" in sentiment and "published_ts_ms < 3600000" in sentiment


def test_a_ticker_is_quoted_as_a_literal() -> None:
    sql = history_sql(HistoryQuery("anomalies", "X' OR '1'='1", 0, HOUR_MS), DUCKDB)
    assert "ticker = 'X'' OR ''1''=''1'" in sql


@pytest.fixture
def cold_rows(tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Anomalies and correlations over 9 days (one every 7 h), archived to a real Parquet cold store."""
    hours = range(0, 9 * 24, 7)
    rows = {
        "anomalies": [anomaly("AAPL", NOW_MS - h * HOUR_MS, i) for i, h in enumerate(hours)],
        "correlations": [
            correlation("AAPL", 100 + i, NOW_MS - h * HOUR_MS, f"news {i}", -0.4, "weak", None, None)
            for i, h in enumerate(hours)
        ],
    }
    cold = ParquetColdStore(tmp_path)
    for topic, name in ((topics.ANOMALIES, "anomalies"), (topics.CORRELATIONS, "correlations")):
        cold.append_batch(topic, rows[name], [(0, i) for i in range(len(rows[name]))])
    cold.close()
    return rows


def athena_results(sql: str, cold_dir: Path) -> dict[str, Any]:
    """The Athena SQL text executed on DuckDB, returned as Athena's GetQueryResults would (strings)."""
    con = connect(cold_dir)
    con.execute("CREATE MACRO json_format(j) AS CAST(j AS VARCHAR)")  # Athena's json_format(JSON)
    cursor = con.execute(sql)
    names = [c[0] for c in cursor.description]
    records = cursor.fetchall()
    con.close()

    def cell(value: Any) -> dict[str, str]:
        return {} if value is None else {"VarCharValue": str(value)}

    return {
        "rows": [{"Data": [{"VarCharValue": n} for n in names]}]
        + [{"Data": [cell(v) for v in record]} for record in records],
        "column_info": [
            {"CatalogName": "hive", "SchemaName": "tradepulse", "TableName": "t", "Name": n, "Label": n,
             "Type": "varchar", "Precision": 0, "Scale": 0, "Nullable": "UNKNOWN", "CaseSensitive": True}
            for n in names
        ],
    }  # fmt: skip


@pytest.mark.parametrize("name", ["anomalies", "correlations"])
def test_athena_sql_run_on_duckdb_decodes_to_the_written_rows(
    name: str, cold_rows: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    since, until = NOW_MS - 168 * HOUR_MS, NOW_MS - 47 * HOUR_MS
    time_field = "ts_ms" if name == "anomalies" else "published_ts_ms"
    expected = sorted(
        (r for r in cold_rows[name] if since <= r[time_field] < until), key=lambda r: -r[time_field]
    )
    assert 10 < len(expected) < len(cold_rows[name])  # the window cuts the data on both sides
    query = HistoryQuery(name, "AAPL", since, until)
    assert DuckDBColdHistory(tmp_path).query(query) == expected

    with mock_aws():
        results = athena_results(history_sql(query, ATHENA), tmp_path)
        requests.post(
            "http://motoapi.amazonaws.com/moto-api/static/athena/query-results",
            json={"results": [results]},
            timeout=5,
        )
        client = boto3.client("athena", region_name="us-east-1")
        client.create_work_group(Name="tradepulse", Configuration={})
        athena = AthenaColdHistory(database="tradepulse", workgroup="tradepulse", client=client)
        assert athena.query(query) == expected
        (execution_id,) = client.list_query_executions(WorkGroup="tradepulse")["QueryExecutionIds"]
        sent = client.get_query_execution(QueryExecutionId=execution_id)["QueryExecution"]
    assert sent["Query"] == history_sql(query, ATHENA)
    assert sent["QueryExecutionContext"]["Database"] == "tradepulse"
    assert json.dumps(expected)  # plain JSON-able rows, like the hot store's


def test_a_file_written_before_a_field_existed_is_read_with_that_field_null(
    cold_rows: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Schema evolution: a correlations file without `peak_zscore` (an optional field added later) next to
    current files; DuckDB falls back to unifying the schemas by name and the old rows read as null."""
    old = correlation("AAPL", 1, NOW_MS - 60 * HOUR_MS, "old news", 0.3, "weak", 1.5, 2.0)
    table = pa.Table.from_pylist([old], schema=SCHEMAS["correlations"]).drop_columns(["peak_zscore"])
    folder = tmp_path / "correlations" / "dt=2026-11-22" / "hour=04"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "legacy.parquet")
    since, until = NOW_MS - 61 * HOUR_MS, NOW_MS - 47 * HOUR_MS
    rows = DuckDBColdHistory(tmp_path).query(HistoryQuery("correlations", "AAPL", since, until))
    by_id = {r["article_id"]: r for r in rows}
    assert by_id[1] == old | {"peak_zscore": None}
    current = [r for r in cold_rows["correlations"] if since <= r["published_ts_ms"] < until]
    assert len(current) >= 1 and all(by_id[r["article_id"]] == r for r in current)


def test_the_history_datasets_are_the_cold_stores() -> None:
    """cold_history keeps its own (pyarrow-free) copy of what it reads; it must be the archive's."""
    archived = {d.name: tuple(d) for d in DATASETS.values()}
    for name, history in HISTORY_DATASETS.items():
        assert tuple(history) == archived[name]


def test_duckdb_reads_newest_day_first_and_stops_at_the_limit(
    cold_rows: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    since, until = NOW_MS - 168 * HOUR_MS, NOW_MS - 47 * HOUR_MS
    in_window = sorted(
        (r for r in cold_rows["anomalies"] if since <= r["ts_ms"] < until), key=lambda r: -r["ts_ms"]
    )
    cold = DuckDBColdHistory(tmp_path)
    assert cold.query(HistoryQuery("anomalies", "AAPL", since, until, limit=3)) == in_window[:3]
    assert cold.queries == 1  # one row every 7 h: the newest day holds three
    cold.queries = 0
    assert cold.query(HistoryQuery("anomalies", "AAPL", since, until, limit=8)) == in_window[:8]
    assert cold.queries == 3
    assert day_windows(since, until)[0] == (since, since // (24 * HOUR_MS) * 24 * HOUR_MS + 24 * HOUR_MS)
    assert len(day_windows(since, until)) == 6 and day_windows(since, until)[-1][1] == until
