"""Parquet cold store through `append_batch` (the runner's path): Hive layout, Snappy, flush by
block/size/time/close, replay without duplicates, local and S3 (moto)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from tests.stores.conftest import BASE_MS, make_anomaly, make_trade
from tradepulse import topics
from tradepulse.config import Settings
from tradepulse.stores import parquet_cold
from tradepulse.stores.dlq import make_dead_letter
from tradepulse.stores.factory import open_cold_store
from tradepulse.stores.parquet_cold import MERGE_SLICES, ParquetColdStore

HOUR = 3_600_000
# BASE_MS is 2025-12-29 09:20 UTC
T9 = BASE_MS
T10 = BASE_MS + HOUR


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def trades_at(offsets, ts=lambda o: T9 + o, tickers=("MSFT", "AAPL")) -> list[dict]:
    return [make_trade(tickers[o % len(tickers)], seq=o, ts_ms=ts(o), price=100 + o) for o in offsets]


def read_rows(root: Path, dataset: str = "trades") -> list[dict]:
    rows = []
    for f in sorted((root / dataset).rglob("*.parquet")):
        rows += pq.read_table(f, partitioning=None).to_pylist()
    return rows


def test_layout_snappy_sorted_and_round_trip(tmp_path: Path) -> None:
    store = ParquetColdStore(tmp_path, block_offsets=1000)
    rows = trades_at(range(6), ts=lambda o: T9 if o < 4 else T10)
    store.append_batch(topics.TRADES, rows, [(2, o) for o in range(6)], flush=False)
    store.append_batch(topics.TRADES, [make_trade("TSLA", seq=1)], [(5, 42)], flush=False)
    store.append_batch(topics.ANOMALIES, [make_anomaly()], [(0, 7)], flush=False)
    assert store.flush() == 0  # nothing due yet: no complete block, no size/time limit
    store.close()
    assert store.files() == [
        "anomalies/dt=2025-12-29/hour=09/market.anomalies-p000-00000000000000000000-00000000000000000999.parquet",
        "trades/dt=2025-12-29/hour=09/market.trades-p002-00000000000000000000-00000000000000000999.parquet",
        "trades/dt=2025-12-29/hour=09/market.trades-p005-00000000000000000000-00000000000000000999.parquet",
        "trades/dt=2025-12-29/hour=10/market.trades-p002-00000000000000000000-00000000000000000999.parquet",
    ]
    first = tmp_path / store.files()[1]
    meta = pq.ParquetFile(first).metadata
    assert meta.row_group(0).column(0).compression == "SNAPPY"
    table = pq.read_table(first, partitioning=None)
    assert table.column("ticker").to_pylist() == ["AAPL", "AAPL", "MSFT", "MSFT"]  # sorted by ticker
    back = {r["event_id"]: r for r in read_rows(tmp_path)}
    for o, row in enumerate(rows):
        # `outlier` is null: these rows come without the runner's flag.
        assert back[row["event_id"]] == {**row, "outlier": None, "kafka_partition": 2, "kafka_offset": o}
    (anomaly,) = read_rows(tmp_path, "anomalies")
    assert anomaly["feature_vector"] == list(make_anomaly()["feature_vector"].items())  # Parquet map
    assert not list(tmp_path.rglob("*.tmp"))


def test_complete_blocks_flush_and_the_open_block_waits(tmp_path: Path) -> None:
    clock = Clock()
    store = ParquetColdStore(tmp_path, block_offsets=10, flush_rows=1000, flush_interval_s=60, clock=clock)
    store.append_batch(topics.TRADES, trades_at(range(15)), [(0, o) for o in range(15)], flush=False)
    assert store.flush() == 1  # offsets 0–9 form a complete block
    assert len(read_rows(tmp_path)) == 10 and store.buffered_rows() == 5
    clock.now = 59
    assert store.flush() == 0
    clock.now = 60  # the open block is flushed by time
    assert store.flush() == 1
    assert store.buffered_rows() == 0 and len(read_rows(tmp_path)) == 15


def test_after_its_complete_blocks_are_written_a_partition_counts_only_the_rows_left(tmp_path: Path) -> None:
    """The size limit applies to what is still buffered: rows written with a complete block no longer
    count toward it (nor do they toward the next flush's)."""
    store = ParquetColdStore(tmp_path, block_offsets=10, flush_rows=20, flush_interval_s=60, clock=Clock())

    def append(offsets: range) -> None:
        store.append_batch(topics.TRADES, trades_at(offsets), [(0, o) for o in offsets], flush=False)

    append(range(15))
    assert store.flush() == 1  # block 0 (offsets 0–9); 5 rows left, below the limit
    append(range(15, 27))  # 17 buffered: block 1 is complete, block 2 open (offsets 20–26)
    assert store.flush() == 1 and store.buffered_rows() == 7
    assert sorted(r["kafka_offset"] for r in read_rows(tmp_path)) == list(range(20))
    append(range(27, 40))  # 20 buffered: the limit
    assert store.flush() == 2 and store.buffered_rows() == 0
    assert sorted(r["kafka_offset"] for r in read_rows(tmp_path)) == list(range(40))


def test_size_limit_flushes_a_partial_block_and_later_flushes_extend_the_same_file(tmp_path: Path) -> None:
    store = ParquetColdStore(tmp_path, block_offsets=100, flush_rows=4, flush_interval_s=1e9, clock=Clock())
    rows = trades_at(range(10))
    positions = [(0, o) for o in range(10)]
    assert store.append_batch(topics.TRADES, rows[:3], positions[:3]) == 0
    assert store.append_batch(topics.TRADES, rows[3:4], positions[3:4]) == 1
    assert store.append_batch(topics.TRADES, rows[4:], positions[4:]) == 1
    store.close()
    assert len(store.files()) == 1
    assert sorted(r["kafka_offset"] for r in read_rows(tmp_path)) == list(range(10))


def _run(root: Path, events: list[tuple[int, dict]], flush_after: set[int], **kw) -> ParquetColdStore:
    store = ParquetColdStore(
        root, block_offsets=10, flush_rows=10**6, flush_interval_s=1e9, clock=Clock(), **kw
    )
    for o, row in events:
        store.append_batch(topics.TRADES, [row], [(1, o)], flush=False)
        if o in flush_after:
            store.flush(force=True)
    return store


def test_replay_after_a_crash_rewrites_the_same_files_without_duplicates(tmp_path: Path) -> None:
    # Event times cross an hour boundary inside a block, and one event is late (back in hour 09).
    def ts(o: int) -> int:
        return T9 + 40 * 60_000 + o * 60_000 if o != 27 else T9

    events = list(enumerate(trades_at(range(35), ts=ts)))
    clean = _run(tmp_path / "clean", events, flush_after={9, 19, 29})
    clean.close()

    crashed = tmp_path / "crashed"
    # First run: flushes at 7 and 16, then dies (kill -9) with 17–22 buffered and lost.
    _run(crashed, events[:23], flush_after={7, 16})
    # The runner had committed offset 13; the restarted process replays from there with other
    # batch boundaries, and is itself flushed at 21 and 33 before closing.
    replay = _run(crashed, events[13:], flush_after={21, 33})
    replay.close()

    assert replay.files() == clean.files()
    for rel in clean.files():
        a = pq.read_table(tmp_path / "clean" / rel, partitioning=None).to_pylist()
        b = pq.read_table(crashed / rel, partitioning=None).to_pylist()
        assert a == b, rel
    rows = read_rows(crashed)
    assert len(rows) == 35 and len({r["event_id"] for r in rows}) == 35
    # Files are per (block, event hour): block 0 spans hours 09 and 10, the late event stays in 09.
    assert {rel.split("/")[2] for rel in clean.files()} == {"hour=09", "hour=10"}
    late = next(r for r in rows if r["kafka_offset"] == 27)
    assert late["exchange_ts_ms"] == T9


def test_dead_letters_are_archived_idempotently(tmp_path: Path) -> None:
    store = ParquetColdStore(tmp_path)
    letters = [
        make_dead_letter(stage="ingest", payload=f"bad {i}", reason="schema", now_s=BASE_MS / 1000)
        for i in range(3)
    ]
    assert store.archive_dead_letters(letters) == 1
    assert store.archive_dead_letters(letters) == 1
    (rel,) = store.files("dead-letter-archive")
    assert rel.startswith("dead-letter-archive/dt=2025-12-29/hour=09/dead-letter-archive-")
    assert sorted(r["payload"] for r in read_rows(tmp_path, "dead-letter-archive")) == [
        "bad 0",
        "bad 1",
        "bad 2",
    ]


def test_a_published_letter_that_is_archived_later_is_once_in_each_dataset(tmp_path: Path) -> None:
    """The runner's read-back of market.dead-letters and the DLQ's archive write different folders: a
    letter that went both ways is in `dead-letters` once and in `dead-letter-archive` once."""
    store = ParquetColdStore(tmp_path)
    letter = make_dead_letter(stage="processor", payload="bad", reason="schema", now_s=BASE_MS / 1000)
    store.append_batch(topics.DEAD_LETTERS, [letter], [(0, 7)], start={})
    store.flush(force=True)
    store.archive_dead_letters([dict(letter, status="archived")])
    published = read_rows(tmp_path, "dead-letters")
    archived = read_rows(tmp_path, "dead-letter-archive")
    assert [(r["dead_letter_id"], r["kafka_offset"]) for r in published] == [(letter["dead_letter_id"], 7)]
    assert [(r["dead_letter_id"], r["status"]) for r in archived] == [(letter["dead_letter_id"], "archived")]


def test_factory_local_cold_store(store_settings: Settings) -> None:
    store = open_cold_store(store_settings)
    store.append_batch(topics.TRADES, [make_trade()], [(0, 0)])
    store.close()
    assert store.files() and (store_settings.cold_dir / store.files()[0]).exists()


@mock_aws
def test_s3_cold_store_layout_and_replay_reads_back_the_object() -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="tp-lake")
    settings = Settings(cold_store="s3", s3_bucket="tp-lake", s3_prefix="lake/", cold_block_offsets=10)
    rows = trades_at(range(10))
    first = open_cold_store(settings)
    first.append_batch(topics.TRADES, rows[:6], [(3, o) for o in range(6)], flush=False)
    first.flush(force=True)  # then the process dies
    second = ParquetColdStore.from_settings(settings)  # fresh process: nothing cached
    second.append_batch(topics.TRADES, rows[4:], [(3, o) for o in range(4, 10)], flush=False)
    second.close()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="tp-lake", Prefix="lake/trades/")["Contents"]]
    assert keys == [
        "lake/trades/dt=2025-12-29/hour=09/market.trades-p003-00000000000000000000-00000000000000000009.parquet"
    ]
    body = s3.get_object(Bucket="tp-lake", Key=keys[0])["Body"].read()
    table = pq.read_table(pa.BufferReader(body))
    assert sorted(table.column("kafka_offset").to_pylist()) == list(range(10))
    assert second.files("trades") == [k.removeprefix("lake/") for k in keys]
    assert ParquetColdStore.from_settings(settings).next_offset(topics.TRADES, 3) == 10


def test_next_offset_checkpoint_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    store = ParquetColdStore(tmp_path, block_offsets=10, flush_rows=10**6, flush_interval_s=60, clock=clock)
    assert store.next_offset(topics.TRADES, 4) is None
    store.append_batch(topics.TRADES, trades_at(range(14)), [(4, o) for o in range(14)], flush=False)
    store.flush()  # only block 0 is complete: 10–13 are still buffered
    assert store.next_offset(topics.TRADES, 4) == 10
    assert ParquetColdStore(tmp_path).next_offset(topics.TRADES, 4) == 10  # a new process reads it back
    clock.now = 60
    store.flush()
    assert ParquetColdStore(tmp_path).next_offset(topics.TRADES, 4) == 14
    assert ParquetColdStore(tmp_path).next_offset(topics.TRADES, 3) is None
    assert all(not f.startswith("_checkpoints") for f in store.files())


@pytest.mark.parametrize("order", ["interleaved", "runs"])
def test_one_batch_writes_the_same_files_as_one_row_batches(tmp_path: Path, order: str) -> None:
    """One micro-batch over two partitions, two blocks and two event hours: it is split exactly like the
    same rows appended one by one (same names, same rows), and rows below `start` are skipped. The
    batch's rows interleave the partitions, or come in a run per partition as a consumer's fetches
    return them (then the groups are sliced without reordering)."""
    rows = trades_at(range(40), ts=lambda o: T9 if o < 30 else T10)
    positions = [(o % 2, o // 2) for o in range(40)]  # partition 0/1, offsets 0..19 each
    if order == "runs":
        rows, positions = rows[0::2] + rows[1::2], positions[0::2] + positions[1::2]
    per_row, per_batch = (
        ParquetColdStore(tmp_path / "a", block_offsets=8),
        ParquetColdStore(tmp_path / "b", block_offsets=8),
    )
    for row, position in zip(rows, positions, strict=True):
        per_row.append_batch(topics.TRADES, [row], [position], flush=False)
    per_batch.append_batch(topics.TRADES, rows, positions)
    # append_batch flushed the complete blocks 0–7 and 8–15 (both hours) itself; 16–19 stay open.
    assert per_row.flush() == 6 and per_batch.buffered_rows() == per_row.buffered_rows() == 8
    per_row.close()
    per_batch.close()
    assert per_batch.files() == per_row.files() and len(per_row.files()) == 8
    for rel in per_row.files():
        assert pq.read_table(tmp_path / "b" / rel).equals(pq.read_table(tmp_path / "a" / rel))
    # A replay from offset 5 of partition 1 (checkpoint) rewrites without duplicates.
    replay = ParquetColdStore(tmp_path / "b", block_offsets=8)
    replay.append_batch(topics.TRADES, rows, positions, start={(topics.TRADES, 1): 5})
    replay.close()
    back = read_rows(tmp_path / "b")
    assert len(back) == 40 and {r["event_id"] for r in back} == {r["event_id"] for r in rows}
    assert replay.next_offset(topics.TRADES, 1) == 20


def test_append_batch_flushes_by_size_and_time_itself(tmp_path: Path) -> None:
    clock = Clock()
    store = ParquetColdStore(tmp_path, block_offsets=1000, flush_rows=10, flush_interval_s=60, clock=clock)
    assert store.append_batch(topics.TRADES, trades_at(range(4)), [(0, o) for o in range(4)]) == 0
    clock.now = 61  # the partition's first row is older than the interval
    assert store.append_batch(topics.TRADES, trades_at(range(4, 6)), [(0, o) for o in range(4, 6)]) == 1
    assert store.buffered_rows() == 0 and len(read_rows(tmp_path)) == 6
    assert store.append_batch(topics.TRADES, trades_at(range(6, 16)), [(0, o) for o in range(6, 16)]) == 1
    assert len(read_rows(tmp_path)) == 16 and store.next_offset(topics.TRADES, 0) == 16
    anomalies = [make_anomaly(ts_ms=T9 + i) for i in range(3)]
    store.append_batch(topics.ANOMALIES, anomalies, [(2, i) for i in range(3)], flush=False)
    assert store.buffered_rows() == 3
    store.close()
    assert [r["anomaly_id"] for r in read_rows(tmp_path, "anomalies")] == [a["anomaly_id"] for a in anomalies]


def test_rows_appended_again_before_the_first_flush_of_their_block_are_written_once(tmp_path: Path) -> None:
    # The runner's rewind after an aborted transaction re-appends from the cold checkpoint; rows of the
    # same block may still be buffered (committed but not flushed, or of the aborted batch). The first
    # write of a block has no file to merge with, and must still not write a row twice.
    store = ParquetColdStore(
        tmp_path, block_offsets=100, flush_rows=10**6, flush_interval_s=1e9, clock=Clock()
    )
    rows = trades_at(range(10))
    positions = [(0, o) for o in range(10)]
    store.append_batch(topics.TRADES, rows[:6], positions[:6], flush=False)
    store.append_batch(topics.TRADES, rows, positions, flush=False)  # the replay, from offset 0
    store.close()
    assert sorted(r["kafka_offset"] for r in read_rows(tmp_path)) == list(range(10))


def test_a_block_written_before_a_new_column_merges_with_new_rows(tmp_path: Path) -> None:
    """A file of an open block written by a runner without trades' `outlier` column (an upgrade
    mid-block): the next write of that block keeps its rows, with the new column null."""
    store = ParquetColdStore(tmp_path, block_offsets=1000)
    old_rows = trades_at(range(3))
    store.append_batch(topics.TRADES, old_rows, [(0, o) for o in range(3)])
    store.close()
    (name,) = store.files("trades")
    path = tmp_path / name
    pq.write_table(pq.read_table(path, partitioning=None).drop_columns(["outlier"]), path)

    restarted = ParquetColdStore(tmp_path, block_offsets=1000)
    new_rows = [
        {**row, "outlier": o == 4} for o, row in zip(range(3, 5), trades_at(range(3, 5)), strict=True)
    ]
    restarted.append_batch(topics.TRADES, new_rows, [(0, o) for o in range(3, 5)])
    restarted.close()
    back = {r["kafka_offset"]: r["outlier"] for r in read_rows(tmp_path)}
    assert back == {0: None, 1: None, 2: None, 3: False, 4: True}


@mock_aws
def test_an_open_blocks_written_rows_are_kept_as_its_files_bytes_on_s3_not_in_arrow_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On S3, between two writes of an open block the store keeps what it wrote as the file's own bytes
    (Parquet, compressed), not as a decoded Arrow table: a slow topic's block stays open for many
    minutes, and its rows would be held decoded all that time. The next write merges them without
    reading the object back (a GET)."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="tp-lake")
    store = ParquetColdStore(
        "s3://tp-lake/lake", block_offsets=10**6, flush_rows=1, flush_interval_s=1e9, clock=Clock()
    )
    n = 20_000
    rows = trades_at(range(n), tickers=tuple(f"T{i:03d}" for i in range(200)))
    before = pa.total_allocated_bytes()
    assert store.append_batch(topics.TRADES, rows[: n // 2], [(0, o) for o in range(n // 2)]) == 1
    held = pa.total_allocated_bytes() - before
    (name,) = store.files("trades")
    body = s3.get_object(Bucket="tp-lake", Key=f"lake/{name}")["Body"].read()
    decoded = pq.read_table(pa.BufferReader(body))
    assert decoded.num_rows == n // 2
    assert held < decoded.nbytes / 4, (held, decoded.nbytes)

    def no_read(rel: str) -> bytes | None:
        raise AssertionError(f"read {rel} back")

    monkeypatch.setattr(store.target, "read", no_read)
    assert store.append_batch(topics.TRADES, rows[n // 2 :], [(0, o) for o in range(n // 2, n)]) == 1
    body = s3.get_object(Bucket="tp-lake", Key=f"lake/{name}")["Body"].read()
    assert sorted(pq.read_table(pa.BufferReader(body)).column("kafka_offset").to_pylist()) == list(range(n))


def test_an_open_blocks_file_on_a_local_disk_is_read_back_not_kept_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a local disk the file just written is in the operating system's page cache: the next write of
    the open block reads it back (no request, no copy held by the process for the block's many minutes)
    instead of keeping its bytes too."""
    store = ParquetColdStore(tmp_path, block_offsets=10**6, flush_rows=1, flush_interval_s=1e9, clock=Clock())
    rows = trades_at(range(2_000))
    assert store.append_batch(topics.TRADES, rows[:1_000], [(0, o) for o in range(1_000)]) == 1
    (name,) = store.files("trades")
    reads: list[str] = []
    read = store.target.read

    def counted(rel: str) -> bytes | None:
        reads.append(rel)
        return read(rel)

    monkeypatch.setattr(store.target, "read", counted)
    assert store.append_batch(topics.TRADES, rows[1_000:], [(0, o) for o in range(1_000, 2_000)]) == 1
    assert reads == [name]
    assert sorted(r["kafka_offset"] for r in read_rows(tmp_path)) == list(range(2_000))


def test_a_groups_many_small_appends_are_held_as_a_few_tables(tmp_path: Path) -> None:
    """The runner appends once per commit (every ~100 ms), so a group that is written once a minute
    gathers hundreds of small slices, each costing ~6 KB of Arrow and Python objects whatever its rows
    (`MERGE_SLICES`). Every MERGE_SLICES of them are copied into one table."""
    store = ParquetColdStore(
        tmp_path, block_offsets=10**6, flush_rows=10**6, flush_interval_s=1e9, clock=Clock()
    )
    rows = trades_at(range(2_000))
    for start in range(0, 2_000, 10):
        store.append_batch(
            topics.TRADES, rows[start : start + 10], [(0, o) for o in range(start, start + 10)]
        )
    assert store.buffered_rows() == 2_000
    (tables,) = store._tables.values()  # one group: partition 0, one block, one hour
    assert len(tables) < 2 * MERGE_SLICES, len(tables)  # 200 slices appended
    assert store.flush(force=True) == 1
    assert sorted(r["kafka_offset"] for r in read_rows(tmp_path)) == list(range(2_000))


def test_merging_a_groups_slices_writes_the_same_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slices merged or not, the same bytes are written: rows of two partitions and hours, a replay that
    appends rows again across a merge (the file keeps each once), and writes between the merges."""

    def ts(o: int) -> int:
        return T9 + 50 * 60_000 + o * 1_000 if o % 7 else T9  # across 10:00, some late

    rows = trades_at(range(300), ts=ts)
    appends = [(o, o + 5) for o in range(0, 300, 5)] + [(120, 170)] + [(o, o + 5) for o in range(170, 300, 5)]

    def run(root: Path) -> dict[str, bytes]:
        store = ParquetColdStore(
            root, block_offsets=128, flush_rows=10**6, flush_interval_s=1e9, clock=Clock()
        )
        for i, (lo, hi) in enumerate(appends):
            store.append_batch(topics.TRADES, rows[lo:hi], [(o % 2, o) for o in range(lo, hi)], flush=False)
            if i % 23 == 22:
                store.flush(force=True)
        store.flush(force=True)
        return {name: (root / name).read_bytes() for name in store.files()}

    merged = run(tmp_path / "merged")
    monkeypatch.setattr(parquet_cold, "MERGE_SLICES", 10**9)
    assert run(tmp_path / "unmerged") == merged
    assert len(merged) > 4
