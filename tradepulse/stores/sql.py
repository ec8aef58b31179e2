"""SQL over the cold store: DuckDB locally, the same SQL on Athena against the Glue tables.

Each dataset is a view named after it (trades, quotes, news, features, anomalies, correlations,
dead_letters, bars, vendor_bars, dead_letter_archive) over `read_parquet(..., hive_partitioning = true)`, with the partition columns typed as
in Glue: `dt` string (YYYY-MM-DD) and `hour` integer. A dataset without files yet is an empty view with
the right columns, so queries never fail just because nothing has been flushed.

Keep queries dialect-neutral so they run unchanged on DuckDB and Athena (Trino):
- times are epoch-ms BIGINT columns; bucket with `CAST(FLOOR(ts / 60000.0) AS BIGINT)` (plain `/` on
  integers is integer division on Athena but not on DuckDB);
- filter partitions with string/integer literals (`dt = '2026-01-05' AND hour = 14`);
- struct fields with dots (`c.sentiment.label`), single-quoted strings, `COUNT/SUM/MIN/MAX/AVG`,
  `GROUP BY` ordinals or names; avoid engine-specific functions (no `approx_quantile`, `epoch_ms`,
  `date_trunc` on integers, `QUALIFY`, `::` casts).

`EXAMPLE_QUERIES` below are such queries; `tests/stores/test_sql.py` runs each of them on DuckDB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from tradepulse.stores.parquet_cold import ALL_DATASETS, SCHEMAS

VIEWS: dict[str, str] = {d.name.replace("-", "_"): d.name for d in ALL_DATASETS}
"""View / Glue table name → dataset folder."""

EXAMPLE_QUERIES: dict[str, str] = {
    "daily_summary": (
        "SELECT ticker, COUNT(*) AS trades, SUM(size) AS volume, "
        "SUM(price * size) / SUM(size) AS vwap, MIN(price) AS low, MAX(price) AS high "
        "FROM trades WHERE dt = '{dt}' GROUP BY ticker ORDER BY ticker"
    ),
    "minute_bars": (
        "SELECT ticker, CAST(FLOOR(exchange_ts_ms / 60000.0) AS BIGINT) * 60000 AS minute_ms, "
        "COUNT(*) AS trades, SUM(size) AS volume, MAX(price) AS high, MIN(price) AS low "
        "FROM trades GROUP BY 1, 2 ORDER BY 1, 2"
    ),
    "anomalies_per_hour": (
        "SELECT dt, hour, ticker, COUNT(*) AS anomalies, MIN(anomaly_score) AS worst_score "
        "FROM anomalies GROUP BY dt, hour, ticker ORDER BY dt, hour, ticker"
    ),
    "anomaly_features": (
        "SELECT a.ticker, a.ts_ms, a.anomaly_score, f.volume_zscore, f.price_momentum "
        "FROM anomalies a JOIN features f ON f.ticker = a.ticker AND f.ts_ms = a.ts_ms "
        "ORDER BY a.ts_ms, a.ticker"
    ),
    "news_impact": (
        "SELECT c.ticker, c.headline, c.sentiment.label AS sentiment, c.sentiment.compound AS compound, "
        "c.peak_zscore, c.lag_seconds FROM correlations c "
        "WHERE c.correlation_strength IN ('strong', 'moderate') "
        "ORDER BY c.published_ts_ms DESC LIMIT 20"
    ),
}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(cold_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per dataset under `cold_dir`."""
    root = Path(cold_dir)
    con = duckdb.connect(":memory:")
    for view, folder in VIEWS.items():
        files = root / folder
        if files.exists() and any(files.glob("dt=*/hour=*/*.parquet")):
            con.execute(
                f"CREATE VIEW {view} AS SELECT * FROM read_parquet("
                f"{_quote(str(files / 'dt=*' / 'hour=*' / '*.parquet'))}, hive_partitioning = true, "
                "hive_types = {'dt': VARCHAR, 'hour': INTEGER}, union_by_name = true)"
            )
        else:
            empty = SCHEMAS[folder].empty_table()
            empty = empty.append_column("dt", pa.array([], pa.string()))
            empty = empty.append_column("hour", pa.array([], pa.int32()))
            con.register(f"__empty_{view}", empty)
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM __empty_{view}")
    return con


def run_query(sql: str, settings: Any = None, *, cold_dir: str | Path | None = None) -> pd.DataFrame:
    """Run SQL over the local cold store (`settings.cold_dir`, or `cold_dir`) and return a DataFrame."""
    if cold_dir is None:
        if settings is None:
            from tradepulse.config import get_settings

            settings = get_settings()
        cold_dir = settings.cold_dir
    con = connect(cold_dir)
    try:
        return con.execute(sql).df()
    finally:
        con.close()
