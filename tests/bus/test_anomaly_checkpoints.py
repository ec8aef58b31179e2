"""The anomaly checkpoint store on the cold store's targets, a local folder and S3 (moto): the newest
checkpoint at or below an offset, per stream; local pruning to the newest few; no deletes on S3 (a
lifecycle rule expires them there); the checkpoints live under the cold root, outside every dataset
scan (the cold store's file listing, DuckDB's views)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.stores.conftest import BASE_MS, make_trade
from tradepulse import topics
from tradepulse.bus.anomaly_checkpoints import KEEP, PREFIX, CheckpointStore
from tradepulse.config import Settings
from tradepulse.core.anomaly import Checkpoint
from tradepulse.stores.parquet_cold import LocalTarget, ParquetColdStore, S3Target
from tradepulse.stores.sql import run_query

BUCKET = "tradepulse-cold"


def checkpoint(stream: str, offset: int) -> Checkpoint:
    return Checkpoint(stream, offset, BASE_MS + offset, f"state of {stream} before {offset}".encode())


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "local":
        return CheckpointStore(LocalTarget(tmp_path / "cold"))
    return CheckpointStore(S3Target(BUCKET, "tradepulse", client=request.getfixturevalue("s3")))


def test_latest_is_the_newest_checkpoint_at_or_below_the_offset(store: CheckpointStore) -> None:
    for offset in (0, 600, 1200, 1800):
        store.save(checkpoint("1", offset))
    store.save(checkpoint("10", 5000))  # another stream, whose name starts like stream 1's
    store.save(checkpoint("1", 1200))  # a replay writes the same checkpoint again: harmless
    assert store.latest("1", 1799) == checkpoint("1", 1200).data
    assert store.latest("1", 1800) == checkpoint("1", 1800).data
    assert store.latest("1", 10**9) == checkpoint("1", 1800).data
    assert store.latest("10", 4999) is None
    assert store.latest("10", 5000) == checkpoint("10", 5000).data
    assert store.latest("2", 10**9) is None  # a stream without checkpoints
    assert store.offsets("1") == [0, 600, 1200, 1800]


def test_a_local_store_keeps_the_newest_few(tmp_path: Path) -> None:
    store = CheckpointStore(LocalTarget(tmp_path))
    offsets = [600 * i for i in range(KEEP + 3)]
    for offset in offsets:
        store.save(checkpoint("0", offset))
    assert store.offsets("0") == offsets[-KEEP:]
    assert sorted(p.name for p in (tmp_path / PREFIX / "0").iterdir()) == [
        f"{o:020d}.npz" for o in offsets[-KEEP:]
    ]  # no temporary file left behind
    assert store.latest("0", offsets[-KEEP] - 1) is None  # pruned


def test_an_s3_store_never_deletes(s3: Any) -> None:
    """The processor's role has no s3:DeleteObject: old checkpoints stay until the lifecycle rule on
    the prefix expires them (`cdk/storage.py`)."""
    calls: list[str] = []
    s3.meta.events.register("before-call", lambda model, **_: calls.append(model.name))
    store = CheckpointStore(S3Target(BUCKET, "tradepulse", client=s3))
    offsets = [600 * i for i in range(KEEP + 3)]
    for offset in offsets:
        store.save(checkpoint("3", offset))
    assert store.latest("3", offsets[0]) == checkpoint("3", offsets[0]).data
    assert set(calls) == {"PutObject", "ListObjectsV2", "GetObject"}
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys == [f"tradepulse/{PREFIX}/3/{o:020d}.npz" for o in offsets]


def test_from_settings_uses_the_cold_store_location(s3: Any, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, cold_store="s3", s3_bucket=BUCKET, kafka_bootstrap=None)
    CheckpointStore.from_settings(settings).save(checkpoint("4", 600))
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == [
        f"tradepulse/{PREFIX}/4/{600:020d}.npz"
    ]
    local = Settings(data_dir=tmp_path, kafka_bootstrap=None)
    CheckpointStore.from_settings(local).save(checkpoint("4", 600))
    assert (local.cold_dir / PREFIX / "4" / f"{600:020d}.npz").read_bytes() == checkpoint("4", 600).data


def test_checkpoints_stay_out_of_the_history(tmp_path: Path) -> None:
    """Next to the datasets, but neither listed as a cold file nor read by DuckDB's views."""
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=None)
    cold = ParquetColdStore(settings.cold_dir, block_offsets=10)
    cold.append_batch(
        topics.TRADES, [make_trade(seq=o, ts_ms=BASE_MS + o) for o in range(3)], [(0, o) for o in range(3)]
    )
    cold.close()
    store = CheckpointStore.from_settings(settings)
    for stream in ("0", "1"):
        store.save(checkpoint(stream, 600))
    assert all(not f.startswith(PREFIX) for f in cold.files()) and len(cold.files()) == 1
    assert run_query("SELECT count(*) AS n FROM trades", cold_dir=settings.cold_dir)["n"][0] == 3
