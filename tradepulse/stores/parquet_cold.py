"""Cold store: history as Parquet (Snappy) in Hive partitions, on a local folder or S3.

Layout: `<root>/<dataset>/dt=YYYY-MM-DD/hour=HH/<topic>-p<partition>-<first>-<last>.parquet`, where
dt/hour come from the row's event time (UTC) and first–last is a fixed Kafka offset block
[k*N, (k+1)*N − 1] of that partition (N = `cold_block_offsets`).

Where the ticker goes: inside the files, not in the path. A ticker partition would split every hour of
every Kafka partition into thousands of tiny files (one per symbol), which is slow to write, slow to list
on S3 and the classic small-files problem for Athena. Instead rows are sorted by (ticker, event time)
within each file, so Parquet row-group min/max statistics let DuckDB and Athena skip row groups of other
tickers; dt/hour partitions prune by time, the usual query filter.

Idempotence under replay: the file name depends only on (topic, partition, offset block) and the
row's event hour, never on where a flush happened to cut. A flush of a partial block (by time or by
buffered size) writes the rows of the block seen so far; the next flush of the same block merges the
file's previous rows with the new ones (deduplicated by the dataset's natural key) and rewrites the same
name. After a crash the runner replays from its last committed offset, possibly mid-block and with
different batch boundaries; the replayed rows land in the same files and replace themselves, so nothing
is duplicated. Files are written to a temporary name and renamed (local) or written with one PUT (S3),
so a reader never sees half a file. Each row also keeps `kafka_partition` and `kafka_offset` (lineage).

Batches: `append_batch` takes one topic's rows of a micro-batch with their (partition, offset) positions,
converts them to Arrow once (no per-row dict copy or key computation in Python), splits them by
(partition, offset block, event hour) with numpy, and then flushes whatever is due, so a long-running
caller that never calls `flush` itself still writes files by size and time (memory stays bounded).

What is archived: every topic the runner consumes, its input topics and its own output topics
(features, anomalies, correlations, dead letters, bars), which it reads back read_committed for this purpose
(`tradepulse.bus.runner`: an output row then has one stable (partition, offset) and one owner, exactly
like an input row, so the same naming, checkpoints and deduplication make it exactly once). Every write
of a block deduplicates by the dataset's natural key, its first write included: a runner that rewinds
after an aborted transaction may have appended a row twice before any file exists.

Checkpoints: after each flush the store records, per (topic, partition), the next offset it still needs
(`_checkpoints/<topic>-p<partition>.json`, written after the data files). The runner asks `next_offset`
on assignment and re-appends only from there; a checkpoint that lags behind the files (crash in between)
only causes rows to be merged again, never duplicated.

Reserved folders: names starting with `_` are not datasets: `_checkpoints/` (above) and
`_anomaly-checkpoints/` (the runner's anomaly models, `tradepulse.bus.anomaly_checkpoints`). No Glue table
or DuckDB view points at them, Athena and Hive treat `_`-prefixed paths as hidden, and `files` lists only
`*.parquet`.

Why one module of this size: the layout, the dataset table, the Arrow schemas and the one write path
(`append_batch` → blocks → dedupe → checkpoint) are one idempotence argument; splitting them would
scatter the proof that a replay rewrites the same files.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
import types
import typing
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from operator import methodcaller
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from tradepulse import topics
from tradepulse.errors import InvalidArgument
from tradepulse.ids import stable_id
from tradepulse.models import (
    Anomaly,
    Bar,
    Correlation,
    DeadLetter,
    FeatureVector,
    NewsArticle,
    Quote,
    StoredTrade,
    VendorBar,
)
from tradepulse.stores.base import Row

if TYPE_CHECKING:
    import numpy as np

DEAD_LETTERS = "dead-letters"
DEAD_LETTER_ARCHIVE = "dead-letter-archive"


class Dataset(typing.NamedTuple):
    """A cold dataset: its folder, model, event-time field and natural key."""

    name: str
    model: type[BaseModel]
    time_field: str
    key: tuple[str, ...]


DATASETS: dict[str, Dataset] = {
    topics.TRADES: Dataset("trades", StoredTrade, "exchange_ts_ms", ("event_id",)),
    topics.QUOTES: Dataset("quotes", Quote, "exchange_ts_ms", ("event_id",)),
    topics.NEWS: Dataset("news", NewsArticle, "published_ts_ms", ("event_id",)),
    topics.FEATURES: Dataset("features", FeatureVector, "ts_ms", ("ticker", "ts_ms")),
    topics.ANOMALIES: Dataset("anomalies", Anomaly, "ts_ms", ("anomaly_id",)),
    topics.CORRELATIONS: Dataset("correlations", Correlation, "published_ts_ms", ("correlation_id",)),
    topics.DEAD_LETTERS: Dataset(DEAD_LETTERS, DeadLetter, "first_failure_at", ("dead_letter_id",)),
    topics.BARS: Dataset("bars", Bar, "start_ms", ("ticker", "start_ms")),
    topics.VENDOR_BARS: Dataset("vendor_bars", VendorBar, "start_ms", ("ticker", "start_ms")),
}
"""Topic → dataset. The dataset folder is also the DuckDB view / Glue table name (`-` → `_`)."""

ARCHIVE = Dataset(DEAD_LETTER_ARCHIVE, DeadLetter, "first_failure_at", ("dead_letter_id",))
"""Letters the DLQ gave up on or archived by hand (`archive_dead_letters`), with their final status and
redrive history. A folder of its own, not `dead-letters/`: that one holds every letter the runner
published on market.dead-letters exactly once (read back from the topic), and a letter archived later
would otherwise appear there twice."""

ALL_DATASETS: tuple[Dataset, ...] = (*DATASETS.values(), ARCHIVE)
"""Every dataset folder of the cold store: one DuckDB view and one Glue table each."""

ANOMALY_CHECKPOINTS = "_anomaly-checkpoints"
"""Folder of the runner's anomaly model checkpoints (`tradepulse.bus.anomaly_checkpoints`) under the cold
root; `_`-prefixed like `_checkpoints/`, so no dataset scan reads it."""

LINEAGE = [pa.field("kafka_partition", pa.int32()), pa.field("kafka_offset", pa.int64())]


def prefer_jemalloc() -> None:
    """Arrow's allocations from now on in jemalloc, unless `ARROW_DEFAULT_MEMORY_POOL` (Arrow's own
    variable) chooses the allocator or this build of Arrow has no jemalloc. Process-wide: for the
    runner's entry point (`tradepulse.bus.runner.tune_process`).

    The cold store's buffered and cached tables are built, concatenated, sorted and freed all the time.
    Arrow's default allocator, mimalloc, kept the pages of the freed ones; jemalloc, as Arrow configures
    it (freed pages returned to the system after ~1 s by a background thread), does not: in three runs at
    10k–15k ev/s the runner's mean RSS was 16–74 MiB lower (docs/benchmarks.md, "Arrow's allocations in
    jemalloc")."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    with contextlib.suppress(NotImplementedError):  # built without jemalloc: Arrow's default stays
        pa.set_memory_pool(pa.jemalloc_memory_pool())


# --- schemas -------------------------------------------------------------------------------------------


def _arrow_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """Arrow type of a pydantic field annotation, and whether it is nullable."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _arrow_type(inner[0])[0], True
    if origin is typing.Literal:
        return pa.string(), False
    if origin is list:
        return pa.list_(_arrow_type(args[0])[0]), False
    if origin is dict:
        return pa.map_(_arrow_type(args[0])[0], _arrow_type(args[1])[0]), False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(_fields(annotation)), False
    simple = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
    return simple[annotation], False


def _fields(model: type[BaseModel]) -> list[pa.Field]:
    # Every column nullable: schema evolution (a new optional field) stays compatible with old files.
    return [pa.field(name, _arrow_type(info.annotation)[0]) for name, info in model.model_fields.items()]


def arrow_schema(dataset: Dataset) -> pa.Schema:
    """Schema of a dataset's files: the model's fields plus Kafka lineage (dt/hour live in the path).
    The Glue table of each dataset has exactly these columns plus partition keys dt (string), hour (int)."""
    return pa.schema(_fields(dataset.model) + LINEAGE)


SCHEMAS: dict[str, pa.Schema] = {d.name: arrow_schema(d) for d in ALL_DATASETS}
_ROW_SCHEMAS = {name: pa.schema(list(schema)[: -len(LINEAGE)]) for name, schema in SCHEMAS.items()}
"""The schemas without the lineage columns: what `append_batch` converts rows with."""


# --- storage targets -------------------------------------------------------------------------------


class LocalTarget:
    """Files under a local folder; writes are temp file + atomic rename."""

    reads_back_cheaply = True
    """A file just written is in the operating system's page cache: reading it back is a copy, with no
    request, so the store keeps no copy of its own (`ParquetColdStore._written`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def read(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, rel: str, data: bytes, *, sync: bool = False) -> None:
        """`sync`: fsync the file before the rename, so it survives a host crash, not only a process's."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        # Not *.parquet, so a reader globbing the dataset never picks up a half-written file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)

    def list(self, prefix: str, suffix: str = ".parquet") -> list[str]:
        base = self.root / prefix
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob(f"*{suffix}"))

    def delete(self, rel: str) -> None:
        """Local pruning only: `S3Target` has no delete (the processor's role has no s3:DeleteObject;
        lifecycle rules expire objects there)."""
        (self.root / rel).unlink(missing_ok=True)


class S3Target:
    """Objects under s3://bucket/prefix; one PUT per file is atomic for readers."""

    reads_back_cheaply = False
    """Reading an object back is a GET (a request, billed and slow): the store keeps what it wrote of an
    open block instead (`ParquetColdStore._written`)."""

    def __init__(
        self, bucket: str, prefix: str = "", *, client: Any = None, region: str | None = None
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3", region_name=region)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def read(self, rel: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def write(self, rel: str, data: bytes, *, sync: bool = False) -> None:
        """One PUT: durable once it returns, so `sync` changes nothing here."""
        self.client.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data)

    def list(self, prefix: str, suffix: str = ".parquet") -> list[str]:
        keys = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix)
        ):
            keys += [o["Key"][strip:] for o in page.get("Contents", []) if o["Key"].endswith(suffix)]
        return sorted(keys)


Target = LocalTarget | S3Target


def open_target(root: str | Path, *, client: Any = None, region: str | None = None) -> Target:
    """`s3://bucket/prefix` or a local folder."""
    text = str(root)
    if text.startswith("s3://"):
        bucket, _, prefix = text[5:].partition("/")
        return S3Target(bucket, prefix, client=client, region=region)
    return LocalTarget(text)


def cold_root(settings: Any) -> str | Path:
    """The configured cold store location: `s3://<bucket>/<prefix>` or the local `cold_dir`."""
    if settings.cold_store == "s3":
        if not settings.s3_bucket:
            raise InvalidArgument("TRADEPULSE_S3_BUCKET is required for the S3 cold store")
        return f"s3://{settings.s3_bucket}/{settings.s3_prefix.strip('/')}"
    path: Path = settings.cold_dir
    return path


# --- the store ----------------------------------------------------------------------------------------

_HOUR_MS = 3_600_000
MERGE_SLICES = 16
"""A group's buffered slices are copied into one table each time this many more have been appended
(`ParquetColdStore._add_slice`)."""


def _hour_bucket(value: Any) -> int:
    """Event hour (ms // 1 h) of an epoch-ms int or an ISO 8601 string."""
    if isinstance(value, str):
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000) // _HOUR_MS
    return int(value) // _HOUR_MS


def partition_path(hour_bucket: int) -> str:
    """`dt=YYYY-MM-DD/hour=HH` of an event hour."""
    return datetime.fromtimestamp(hour_bucket * 3600, UTC).strftime("dt=%Y-%m-%d/hour=%H")


GroupKey = tuple[str, int, int, int]
"""(topic, partition, offset block, event hour)."""


class ParquetColdStore:
    """ColdStore: buffers rows per (topic, partition, offset block, event hour) and writes Parquet files
    whose names depend only on those, so a replay rewrites the same files."""

    def __init__(
        self,
        root: str | Path,
        *,
        block_offsets: int = 100_000,
        flush_rows: int = 50_000,
        flush_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        s3_client: Any = None,
        region: str | None = None,
    ) -> None:
        self.target = open_target(root, client=s3_client, region=region)
        self.block_offsets = block_offsets
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.clock = clock
        self._tables: dict[GroupKey, list[pa.Table]] = defaultdict(list)  # buffered, per group
        self._fresh: dict[GroupKey, int] = {}  # slices appended to a group since its last merge
        self._first: dict[GroupKey, int] = {}  # first (lowest) buffered offset per group
        self._buffered: dict[tuple[str, int], int] = defaultdict(int)  # rows per (topic, partition)
        self._since: dict[tuple[str, int], float] = {}  # first buffered row per (topic, partition)
        self._max_offset: dict[tuple[str, int], int] = {}
        # On S3 (a target that does not read back cheaply), the bytes last written of each block still
        # open: the next flush of the block rewrites the file with their rows plus the new ones, without
        # reading it back (a GET). Bytes, not the decoded table: about a third of its size where
        # measured, and a slow topic's block stays open for tens of minutes, its rows held all that time
        # (docs/benchmarks.md, session 31). On a local disk the file is read back from the page cache
        # instead, which holds it anyway (those copies were 12–26 MiB at 15k ev/s; session 33).
        self._written: dict[GroupKey, bytes] = {}
        self._durable_next: dict[tuple[str, int], int] = {}
        self.files_written = 0
        self.rows_written = 0

    @classmethod
    def from_settings(cls, settings: Any, **kw: Any) -> ParquetColdStore:
        return cls(
            cold_root(settings),
            block_offsets=settings.cold_block_offsets,
            flush_rows=settings.cold_flush_rows,
            flush_interval_s=settings.cold_flush_interval_s,
            region=settings.aws_region,
            **kw,
        )

    # --- writes ----------------------------------------------------------------------------------

    def append_batch(
        self,
        topic: str,
        rows: list[Row],
        positions: list[tuple[int, int]],
        *,
        start: Mapping[tuple[str, int], int] | None = None,
        flush: bool = True,
        columns: Mapping[str, Any] | None = None,
    ) -> int:
        """Buffer one micro-batch of `topic`: `rows[i]` was consumed at `positions[i]` =
        (partition, offset), in offset order per partition. Rows below `start[(topic, partition)]` are
        skipped (already in a flushed file after a replay). Then flushes what is due (unless
        `flush=False`); returns the files written.

        `columns` optionally holds some fields of the same rows as columns by name (numpy arrays or
        sequences, e.g. the runner's decoded fields), with exactly the rows' values: those fields are
        converted to Arrow from the columns, the others from the rows (the per-row dict walk is most of
        the cost of a batch)."""
        import numpy as np  # the runner's path only: the dead-letter Lambdas load pyarrow without numpy

        n = len(rows)
        if n != len(positions):
            raise InvalidArgument(f"{n} rows but {len(positions)} positions")
        if n:
            pos = np.asarray(positions, dtype=np.int64).reshape(n, 2)
            keep = None
            if start:
                # Per partition of the batch (a handful), not per row.
                partitions, first_of = np.unique(pos[:, 0], return_inverse=True)
                firsts = np.array([start.get((topic, p), 0) for p in partitions.tolist()], dtype=np.int64)
                keep = np.flatnonzero(pos[:, 1] >= firsts[first_of.reshape(-1)])
                if len(keep) == n:
                    keep = None
            if keep is None:
                self._buffer_table(topic, rows, pos, columns)
            elif len(keep):
                # Replayed rows below the checkpoint: convert only the rest, from the rows.
                self._buffer_table(topic, [rows[i] for i in keep], pos[keep], None)
        return self.flush() if flush else 0

    def _buffer_table(
        self, topic: str, rows: list[Row], pos: np.ndarray, columns: Mapping[str, Any] | None
    ) -> None:
        import numpy as np

        dataset = DATASETS[topic]
        field = dataset.time_field
        schema = _ROW_SCHEMAS[dataset.name]
        times = columns.get(field) if columns else None
        if times is None:
            times = [r[field] for r in rows]
        try:
            hours = np.asarray(times, dtype=np.int64) // _HOUR_MS
        except (TypeError, ValueError):  # ISO strings: the per-row parser
            hours = np.array([_hour_bucket(t) for t in times], dtype=np.int64)
        if columns:
            # Same values and types as `from_pylist` (a missing key is null there, and here).
            table = pa.Table.from_arrays(
                [
                    pa.array(columns[f.name], f.type)
                    if f.name in columns
                    else pa.array(list(map(methodcaller("get", f.name), rows)), f.type)
                    for f in schema
                ],
                schema=schema,
            )
        else:
            table = pa.Table.from_pylist(rows, schema=schema)

        table = table.append_column(LINEAGE[0], pa.array(pos[:, 0], pa.int32())).append_column(
            LINEAGE[1], pa.array(pos[:, 1], pa.int64())
        )
        uniq, inverse = _group_rows(pos[:, 0], pos[:, 1] // self.block_offsets, hours)
        if len(uniq) > 1:
            # The groups as contiguous runs, each in the batch's order (a stable sort), then zero-copy
            # slices: at most one `take` per batch instead of one per group (~0.1 ms each whatever
            # the size: the cold thread's largest cost at 15k ev/s). A consumer hands out a fetch's
            # messages in a run per partition, so often there is nothing to reorder. A slice keeps its
            # batch's buffers until the batch's last group is flushed; its groups are flushed by the
            # same limits (block, rows, age), so that is for about as long as the copies lived.
            order = np.argsort(inverse, kind="stable")
            if (np.diff(order) != 1).any():
                table, pos = table.take(order), pos[order]
            ends = np.cumsum(np.bincount(inverse, minlength=len(uniq))).tolist()
        else:
            ends = [len(pos)]
        now = self.clock()
        start = 0
        for (partition, block, hour), end in zip(uniq, ends, strict=True):
            part = table.slice(start, end - start)
            offsets = pos[start:end, 1]
            start = end
            key = (topic, partition, block, hour)
            tp = (topic, partition)
            self._add_slice(key, part)
            self._first.setdefault(key, int(offsets[0]))
            self._buffered[tp] += part.num_rows
            self._since.setdefault(tp, now)
            last = int(offsets[-1])
            if last > self._max_offset.get(tp, -1):
                self._max_offset[tp] = last

    def _add_slice(self, key: GroupKey, part: pa.Table) -> None:
        """Buffer `part` in its group; every `MERGE_SLICES` slices appended since the last merge are
        copied into one table. A slice costs ~6 KB of Arrow and Python objects whatever its rows (a
        commit adds one per group, ~300 a second at 15k ev/s, held until their group is written), and it
        keeps its whole batch's buffers alive; one copy of each row bounds both."""
        parts = self._tables[key]
        parts.append(part)
        fresh = self._fresh.get(key, 0) + 1
        if fresh < MERGE_SLICES:
            self._fresh[key] = fresh
            return
        parts[-fresh:] = [pa.concat_tables(parts[-fresh:]).combine_chunks()]
        self._fresh[key] = 0

    def flush(self, *, force: bool = False) -> int:
        """Write every group whose block is complete, or whose partition has `flush_rows` buffered rows
        or rows older than `flush_interval_s` (everything with force). Returns files written."""
        now = self.clock()
        due_tps = {
            tp
            for tp, count in self._buffered.items()
            if force or count >= self.flush_rows or now - self._since[tp] >= self.flush_interval_s
        }
        written = 0
        rows_written: dict[tuple[str, int], int] = defaultdict(int)
        for key in list(self._tables):
            topic, partition, block, _ = key
            tp = (topic, partition)
            complete = block < self._max_offset[tp] // self.block_offsets
            if complete or tp in due_tps:
                self._first.pop(key, None)
                tables = self._tables.pop(key)
                self._fresh.pop(key, None)
                rows_written[tp] += sum(t.num_rows for t in tables)
                self._write_group(key, tables, final=complete)
                written += 1
        # A due partition is written whole (nothing left); one flushed only for its complete blocks keeps
        # the rest of its rows buffered. (Counted from what was written: recounting every buffered table
        # of every partition here, at each flush, took ~30 % of the cold thread's time under the GIL at
        # 15k ev/s.)
        for tp, count in rows_written.items():
            left = self._buffered[tp] - count
            if left > 0:
                self._buffered[tp] = left
            else:
                del self._buffered[tp]
                self._since.pop(tp, None)
        # Blocks closed by later offsets no longer need their cached bytes.
        for key in [k for k in self._written if k[2] < self._max_offset[k[:2]] // self.block_offsets]:
            del self._written[key]
        if written:
            self._checkpoint(rows_written.keys())
        return written

    def _checkpoint(self, tps: Iterable[tuple[str, int]]) -> None:
        for tp in tps:
            if tp not in self._max_offset:
                continue
            # Appends arrive in offset order per partition, so everything below the oldest row still
            # buffered (or everything appended, if none is) is durably written.
            buffered = [first for k, first in self._first.items() if k[:2] == tp]
            durable = min(buffered) if buffered else self._max_offset[tp] + 1
            if self._durable_next.get(tp) != durable:
                self._durable_next[tp] = durable
                self.target.write(self._checkpoint_name(*tp), orjson.dumps({"next_offset": durable}))

    @staticmethod
    def _checkpoint_name(topic: str, partition: int) -> str:
        return f"_checkpoints/{topic}-p{partition:03d}.json"

    def next_offset(self, topic: str, partition: int) -> int | None:
        """The next offset of (topic, partition) not yet durably written (None = nothing known)."""
        known = self._durable_next.get((topic, partition))
        if known is not None:
            return known
        data = self.target.read(self._checkpoint_name(topic, partition))
        return None if data is None else int(orjson.loads(data)["next_offset"])

    def file_name(self, key: GroupKey) -> str:
        """Relative path of a group's file: a function of (topic, partition, block, event hour) only."""
        topic, partition, block, hour = key
        first = block * self.block_offsets
        last = first + self.block_offsets - 1
        dataset = DATASETS[topic].name
        return f"{dataset}/{partition_path(hour)}/{topic}-p{partition:03d}-{first:020d}-{last:020d}.parquet"

    def _write_group(self, key: GroupKey, tables: list[pa.Table], *, final: bool) -> None:
        dataset = DATASETS[key[0]]
        schema = SCHEMAS[dataset.name]
        rel = self.file_name(key)
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        # Nothing is cached on a local disk or after a restart, and the file may hold rows of this block.
        data = self._written.pop(key, None) or self.target.read(rel)
        if data is not None:
            table = pa.concat_tables([_conform(pq.read_table(io.BytesIO(data)), schema), table])
        # Always, the first write of a block included: the buffer itself may hold a row twice (appended
        # again by a replay that started below rows still buffered), and a file must never.
        table = _sort(_dedupe(table, dataset.key), dataset)
        data = self._put(rel, table)
        if not final and not self.target.reads_back_cheaply:
            self._written[key] = data

    def _put(self, rel: str, table: pa.Table) -> bytes:
        """Write `table` as the Parquet file `rel`; returns the file's bytes."""
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="snappy")
        data = sink.getvalue()
        self.target.write(rel, data)
        self.files_written += 1
        self.rows_written += table.num_rows
        return data

    def archive_dead_letters(self, letters: list[Row]) -> int:
        """Write dead letters under `dead-letter-archive/dt=/hour=/` (by first failure time); the file
        name is derived from the letter ids, so archiving the same letters again rewrites the same file."""
        if not letters:
            return 0
        dataset = ARCHIVE
        by_hour: dict[int, list[Row]] = defaultdict(list)
        for letter in letters:
            by_hour[_hour_bucket(letter[dataset.time_field])].append(letter)
        for hour, rows in by_hour.items():
            name = stable_id(*sorted(r["dead_letter_id"] for r in rows))
            table = _sort(pa.Table.from_pylist(rows, schema=SCHEMAS[dataset.name]), dataset)
            self._put(f"{dataset.name}/{partition_path(hour)}/{dataset.name}-{name}.parquet", table)
        return len(by_hour)

    def files(self, dataset: str = "") -> list[str]:
        """Relative paths of the Parquet files (of one dataset folder, or all)."""
        return self.target.list(dataset)

    def buffered_rows(self) -> int:
        return sum(t.num_rows for ts in self._tables.values() for t in ts)

    def close(self) -> None:
        self.flush(force=True)
        self._written.clear()


def _group_rows(*keys: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    """The distinct rows of the int64 key columns in lexicographic order (as `np.unique(axis=0)`), and
    each row's group index. The columns are offset-packed into one int64 key, so this is one 1-D sort
    instead of a sort of row views (which costs 10× more)."""
    import numpy as np

    lows = [int(k.min()) for k in keys]
    spans = [int(k.max()) - low + 1 for k, low in zip(keys, lows, strict=True)]
    if math.prod(spans) >= 2**62:  # cannot pack (never with partitions, blocks and hours)
        uniq, inverse = np.unique(np.stack(keys, axis=1), axis=0, return_inverse=True)
        return uniq.tolist(), inverse.reshape(-1)
    packed = np.zeros(len(keys[0]), dtype=np.int64)
    for k, low, span in zip(keys, lows, spans, strict=True):
        packed = packed * span + (k - low)
    codes, inverse = np.unique(packed, return_inverse=True)
    groups = []
    for code in codes.tolist():
        parts = []
        for low, span in zip(reversed(lows), reversed(spans), strict=True):
            code, rest = divmod(code, span)
            parts.append(rest + low)
        groups.append(parts[::-1])
    return groups, inverse.reshape(-1)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A file's rows in the current schema: a column added to the model since the file was written (e.g.
    trades' `outlier`) is null there, so the block's next write merges old and new rows."""
    n = table.num_rows
    columns = [table.column(f.name) if f.name in table.column_names else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(columns, names=schema.names).cast(schema)


def _dedupe(table: pa.Table, key: tuple[str, ...]) -> pa.Table:
    """Keep the last row of each key (new rows were concatenated after the old ones)."""
    import pyarrow.compute as pc  # the runner's path only, like numpy (the Lambdas never get here)

    if len(key) == 1 and pc.count_distinct(table[key[0]]).as_py() == table.num_rows:
        return table  # the usual case, nothing to drop: a distinct count is 3-5x cheaper than the group-by
    indexed = table.append_column("__i", pa.array(range(table.num_rows), pa.int64()))
    last = indexed.group_by(list(key), use_threads=False).aggregate([("__i", "max")])
    return table.take(last["__i_max"])  # order does not matter: the caller sorts


def _sort(table: pa.Table, dataset: Dataset) -> pa.Table:
    order = [("ticker", "ascending"), (dataset.time_field, "ascending")]
    return table.sort_by(order) if table.num_rows > 1 else table
