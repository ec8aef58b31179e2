"""Reading history back from the cold store: the API's look-back windows beyond the hot store's TTL.

One SQL text per query, generated here for two engines: DuckDB over the local Parquet (the views of
`tradepulse.stores.sql`) and Athena over the Glue tables (same names, same columns, same dt/hour
partitions). The engines differ in one expression only: how a MAP column becomes JSON text
(`Dialect.map_json`); everything else is the dialect-neutral SQL of `tradepulse.stores.sql`.

Cost is bounded by partition pruning: the WHERE clause names the partitions of the window explicitly,
`dt IN (<each UTC date of the window>)` plus the hour bounds of its first and last day, before the
event-time filter. Athena's partition projection (see `cdk/storage.py`) turns those literals into at
most 8 dates × 24 hours of S3 prefixes, so a 7-day query reads 7 days of one dataset, never the table;
DuckDB's hive partitioning skips the other folders the same way.

Rows come back as the dataset's model dicts (`tradepulse.models`), validated by the model, exactly as the
hot store returns them: struct columns are selected field by field (`sentiment.label AS
sentiment__label`) and re-nested, MAP columns travel as JSON text. Athena returns every value as a
string; the model's (lax) validation turns it back into the field's type, so both engines share one
decoding path.

Athena client: boto3's Athena API directly (start_query_execution → get_query_execution →
get_query_results). awswrangler needs pandas + numpy + pyarrow: ~128 MB of stripped pyarrow (our Arrow
layer: the archival bundle is 159 MB, the API's 31 MB, as `tests/ship` measures) plus pandas 84 MB and
numpy 73 MB unzipped, ~316 MB for the API function, above Lambda's 250 MB limit. pyathena would add
fsspec and a dependency outside the lock for a loop of three calls. boto3 ships with the runtime.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from pydantic import BaseModel

from tradepulse.errors import InvalidArgument, StoreError
from tradepulse.models import Anomaly, Correlation
from tradepulse.stores.base import Row

_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS


@dataclass(frozen=True)
class Dialect:
    name: str
    map_json: Callable[[str], str]
    """SQL expression: a MAP column → its JSON object as text."""


DUCKDB = Dialect("duckdb", lambda column: f"CAST(to_json({column}) AS VARCHAR)")
ATHENA = Dialect("athena", lambda column: f"json_format(CAST({column} AS JSON))")


@dataclass(frozen=True)
class HistoryQuery:
    """Rows of one dataset with event time in [since_ms, until_ms), newest first, at most `limit`."""

    dataset: str  # a HISTORY_DATASETS name: "anomalies", "correlations"
    ticker: str | None
    since_ms: int
    until_ms: int
    limit: int = 1000


class HistoryDataset(typing.NamedTuple):
    """A cold dataset the API reads history from: its folder / table, model, event time, natural key."""

    name: str
    model: type[BaseModel]
    time_field: str
    key: tuple[str, ...]


HISTORY_DATASETS: dict[str, HistoryDataset] = {
    d.name: d
    for d in (
        HistoryDataset("anomalies", Anomaly, "ts_ms", ("anomaly_id",)),
        HistoryDataset("correlations", Correlation, "published_ts_ms", ("correlation_id",)),
    )
}
"""The datasets the API reads beyond the hot TTL (`/history` looks back 30 min at most, so features never
need it), with the same fields as their entries in `parquet_cold.DATASETS` (a test ties them). Not imported
from there: `parquet_cold` loads pyarrow, which the Lambda API's layer does not carry (it queries
Athena and never touches Parquet itself)."""


def dataset(name: str) -> HistoryDataset:
    try:
        return HISTORY_DATASETS[name]
    except KeyError:
        raise InvalidArgument(f"cold dataset {name!r} is not readable as history") from None


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _select_list(model: type[BaseModel], dialect: Dialect) -> list[str]:
    """The model's fields as select expressions: structs flattened to `<field>__<sub>`, maps as JSON."""
    columns = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            columns += [f"{name}.{sub} AS {name}__{sub}" for sub in annotation.model_fields]
        elif typing.get_origin(annotation) is dict:
            columns.append(f"{dialect.map_json(name)} AS {name}")
        else:
            columns.append(name)
    return columns


def window_dates(since_ms: int, until_ms: int) -> list[str]:
    """The UTC dates (YYYY-MM-DD, the `dt` partitions) that [since_ms, until_ms) touches."""
    return [_date(day * _DAY_MS) for day in range(since_ms // _DAY_MS, (until_ms - 1) // _DAY_MS + 1)]


def day_windows(since_ms: int, until_ms: int) -> list[tuple[int, int]]:
    """[since_ms, until_ms) cut at UTC midnights, oldest first."""
    cuts = [since_ms, *range((since_ms // _DAY_MS + 1) * _DAY_MS, until_ms, _DAY_MS), until_ms]
    return list(itertools.pairwise(cuts))


def partition_predicate(since_ms: int, until_ms: int) -> str:
    """The dt/hour partitions of [since_ms, until_ms): every UTC date listed, the first and last day
    bounded by hour. Literal values only, so Athena's partition projection and DuckDB's hive
    partitioning prune without reading the data."""
    first_hour = since_ms // _HOUR_MS
    last_hour = (until_ms - 1) // _HOUR_MS
    days = window_dates(since_ms, until_ms)
    first, last = days[0], days[-1]
    parts = [f"dt IN ({', '.join(_quote(d) for d in days)})"]
    if first_hour % 24:
        parts.append(f"(dt <> {_quote(first)} OR hour >= {first_hour % 24})")
    if last_hour % 24 != 23:
        parts.append(f"(dt <> {_quote(last)} OR hour <= {last_hour % 24})")
    return " AND ".join(parts)


def _date(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d")


def history_sql(query: HistoryQuery, dialect: Dialect) -> str:
    """The SQL text of a history query on `dialect`."""
    if query.until_ms <= query.since_ms:
        raise InvalidArgument(f"empty window [{query.since_ms}, {query.until_ms})")
    d = dataset(query.dataset)
    where = [
        partition_predicate(query.since_ms, query.until_ms),
        f"{d.time_field} >= {int(query.since_ms)}",
        f"{d.time_field} < {int(query.until_ms)}",
    ]
    if query.ticker is not None:
        where.append(f"ticker = {_quote(query.ticker)}")
    table = d.name.replace("-", "_")
    return (
        f"SELECT {', '.join(_select_list(d.model, dialect))} FROM {table} "
        f"WHERE {' AND '.join(where)} "
        f"ORDER BY {d.time_field} DESC, {', '.join(d.key)} LIMIT {int(query.limit)}"
    )


def decode(dataset_name: str, record: dict[str, Any]) -> Row:
    """One result row (column name → value, strings from Athena) → the dataset's model dict."""
    model = dataset(dataset_name).model
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            values[name] = {sub: record[f"{name}__{sub}"] for sub in annotation.model_fields}
        elif typing.get_origin(annotation) is dict:
            text = record[name]
            values[name] = None if text is None else orjson.loads(text)
        else:
            values[name] = record[name]
    return model.model_validate(values).model_dump()


class ColdHistory(Protocol):
    """Runs history queries on the cold store."""

    def query(self, query: HistoryQuery) -> list[Row]:
        """The rows of the window, newest first (model dicts)."""


class DuckDBColdHistory:
    """DuckDB over the local Parquet cold store (`settings.cold_dir`).

    Newest day first: the window is read one UTC day at a time, from its end, until `limit` rows are
    found. A busy ticker's newest 1000 anomalies are minutes old, so the query reads one day of files
    instead of the whole window (DuckDB has to decode every file it reads: one file holds all tickers
    of a partition hour). Each day is one query with the same SQL text as Athena's, over a view named
    like the dataset on that day's `dt=` folder only, on a fresh connection (it sees the files present
    at that moment). Athena instead gets the whole window in one query: its per-query overhead is
    seconds, and partition pruning already bounds what it reads.

    The view reads the files with their own schema first; only if that fails (a file written before a
    model gained a field lacks its column) does it unify the files' schemas by column name, which reads
    every file's footer first (measured: 224 ms instead of 11 ms for 240 files)."""

    def __init__(self, cold_dir: str | Path) -> None:
        self.cold_dir = Path(cold_dir)
        self.queries = 0

    def query(self, query: HistoryQuery) -> list[Row]:
        rows: list[Row] = []
        for since_ms, until_ms in reversed(day_windows(query.since_ms, query.until_ms)):
            day = dataclasses.replace(
                query, since_ms=since_ms, until_ms=until_ms, limit=query.limit - len(rows)
            )
            rows += self._query_day(day)
            if len(rows) >= query.limit:
                break
        return rows

    def _query_day(self, query: HistoryQuery) -> list[Row]:
        import duckdb  # not on the Lambda API's path (it queries Athena)

        (date,) = window_dates(query.since_ms, query.until_ms)
        folder = self.cold_dir / dataset(query.dataset).name / f"dt={date}"
        if not any(folder.glob("hour=*/*.parquet")):
            return []
        sql = history_sql(query, DUCKDB)
        globs = [str(folder / "hour=*" / "*.parquet")]
        self.queries += 1
        try:
            return self._run(query.dataset, sql, globs, union_by_name=False)
        except duckdb.Error:
            return self._run(query.dataset, sql, globs, union_by_name=True)

    @staticmethod
    def _run(name: str, sql: str, globs: list[str], *, union_by_name: bool) -> list[Row]:
        import duckdb

        con = duckdb.connect(":memory:")
        try:
            files = "[" + ", ".join(_quote(g) for g in globs) + "]"
            con.execute(
                f"CREATE VIEW {name.replace('-', '_')} AS SELECT * FROM read_parquet({files}, "
                "hive_partitioning = true, hive_types = {'dt': VARCHAR, 'hour': INTEGER}, "
                f"union_by_name = {str(union_by_name).lower()})"
            )
            cursor = con.execute(sql)
            names = [c[0] for c in cursor.description]
            return [decode(name, dict(zip(names, row, strict=True))) for row in cursor.fetchall()]
        finally:
            con.close()


class AthenaQueryFailed(StoreError):
    """An Athena query ended FAILED or CANCELLED, or did not finish in time."""


class AthenaColdHistory:
    """Athena over the Glue tables, through boto3 (the workgroup holds the result location and the
    per-query scan cutoff)."""

    def __init__(
        self,
        *,
        database: str,
        workgroup: str,
        client: Any = None,
        region: str | None = None,
        timeout_s: float = 20.0,
        poll_s: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._region = region
        self.database = database
        self.workgroup = workgroup
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._sleep = sleep
        self._clock = clock

    @property
    def client(self) -> Any:
        """The boto3 Athena client, made on first use: most API requests never query history, and a
        client costs tens of ms of the Lambda's cold start."""
        if self._client is None:
            import boto3

            self._client = boto3.client("athena", region_name=self._region)
        return self._client

    def query(self, query: HistoryQuery) -> list[Row]:
        sql = history_sql(query, ATHENA)
        started = self.client.start_query_execution(
            QueryString=sql,
            QueryExecutionContext={"Database": self.database},
            WorkGroup=self.workgroup,
        )
        query_id = started["QueryExecutionId"]
        self._wait(query_id)
        return [decode(query.dataset, record) for record in self._records(query_id)]

    def _wait(self, query_id: str) -> None:
        deadline = self._clock() + self.timeout_s
        delay = self.poll_s
        while True:
            status = self.client.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Status"]
            state = status["State"]
            if state == "SUCCEEDED":
                return
            if state in ("FAILED", "CANCELLED"):
                raise AthenaQueryFailed(f"Athena query {query_id} {state}: {status.get('StateChangeReason')}")
            if self._clock() >= deadline:
                self.client.stop_query_execution(QueryExecutionId=query_id)
                raise AthenaQueryFailed(f"Athena query {query_id} still {state} after {self.timeout_s:g} s")
            self._sleep(delay)
            delay = min(delay * 2, 1.0)

    def _records(self, query_id: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        names: list[str] | None = None
        paginator = self.client.get_paginator("get_query_results")
        for page in paginator.paginate(QueryExecutionId=query_id):
            rows = page["ResultSet"]["Rows"]
            if names is None:
                names = [c["Name"] for c in page["ResultSet"]["ResultSetMetadata"]["ColumnInfo"]]
                rows = rows[1:]  # the first row of the first page repeats the column names
            for row in rows:
                values = [cell.get("VarCharValue") for cell in row["Data"]]
                records.append(dict(zip(names, values, strict=True)))
        return records


def open_cold_history(settings: Any) -> ColdHistory:
    """DuckDB over `settings.cold_dir` (local cold store) or Athena (S3 cold store)."""
    if settings.cold_store == "s3":
        return AthenaColdHistory(
            database=settings.glue_database,
            workgroup=settings.athena_workgroup,
            region=settings.aws_region,
        )
    return DuckDBColdHistory(settings.cold_dir)
