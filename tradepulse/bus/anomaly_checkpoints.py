"""Where the runner keeps the anomaly model's checkpoints (see `tradepulse.core.anomaly`): in the cold
store's storage target, so they outlive the host that made them.

One folder per stream (input partition number), one object per checkpoint named by the trades offset
it precedes: `<cold root>/_anomaly-checkpoints/<stream>/<offset>.npz` (the offset zero-padded to 20
digits, so names sort by offset). A checkpoint is a fact about the stream ("the state before offset
o"), so it is written as soon as it is made, whatever was committed, and writing it again is harmless.
A restore takes the newest one at or below the committed offset. Older ones must stay a while: a
checkpoint ahead of the committed offset (made in a batch that was never committed) is useless until
the replay catches up.

Durable: the cold root is the local `cold_dir` (under `TRADEPULSE_DATA_DIR`) or, in AWS,
`s3://<TRADEPULSE_S3_BUCKET>/<TRADEPULSE_S3_PREFIX>`. A runner on another host (a replaced ECS task,
with no local disk state) restores from S3 exactly what the lost task would have, and scores the same
anomalies. Each write is atomic: one PUT on S3, temp file + fsync + rename locally.

Out of the history's way: the leading `_` keeps the folder out of every dataset scan. It is not under
any dataset folder (the Glue tables' locations, DuckDB's `<dataset>/dt=*/hour=*/*.parquet` globs), Athena
and Hive treat `_`-prefixed paths as hidden anyway, and the cold store lists only `*.parquet`.

Retention: locally the newest `KEEP` per stream are kept (older ones are deleted after each save). On
S3 nothing is deleted by the runner (its role has no s3:DeleteObject): a lifecycle rule on the prefix
expires checkpoints a day after the trades topic's retention (`cdk/storage.py`), when the offsets they
precede can no longer be replayed anyway.
"""

from __future__ import annotations

import logging
from typing import Any

from tradepulse.core.anomaly import Checkpoint
from tradepulse.stores.parquet_cold import (
    ANOMALY_CHECKPOINTS,
    LocalTarget,
    Target,
    cold_root,
    open_target,
)

log = logging.getLogger(__name__)

PREFIX = ANOMALY_CHECKPOINTS
"""Folder of the checkpoints under the cold root (the CDK lifecycle rule expires objects under it)."""
SUFFIX = ".npz"
KEEP = 5
"""Checkpoints kept per stream in a local cold store."""


class CheckpointStore:
    def __init__(self, target: Target, keep: int = KEEP) -> None:
        self.target = target
        self.keep = keep

    @classmethod
    def from_settings(cls, settings: Any, **kw: Any) -> CheckpointStore:
        """On the configured cold store's target (local folder or S3 bucket/prefix)."""
        return cls(open_target(cold_root(settings), region=settings.aws_region), **kw)

    def save(self, checkpoint: Checkpoint) -> None:
        name = f"{PREFIX}/{checkpoint.stream}/{checkpoint.offset:020d}{SUFFIX}"
        # Atomic on both targets: a crash leaves the old object or the new one, never half of one.
        self.target.write(name, checkpoint.data, sync=True)
        if isinstance(self.target, LocalTarget):
            for old in self._names(checkpoint.stream)[: -self.keep]:
                self.target.delete(old)

    def latest(self, stream: str, at_most: int) -> bytes | None:
        """The newest checkpoint of `stream` whose offset is ≤ `at_most`, or None."""
        usable = [name for name in self._names(stream) if _offset(name) <= at_most]
        return self.target.read(max(usable, key=_offset)) if usable else None

    def offsets(self, stream: str) -> list[int]:
        """The offsets of the stored checkpoints of `stream`, oldest first."""
        return sorted(_offset(name) for name in self._names(stream))

    def _names(self, stream: str) -> list[str]:
        return self.target.list(f"{PREFIX}/{stream}/", suffix=SUFFIX)


def _offset(name: str) -> int:
    return int(name.rsplit("/", 1)[-1].removesuffix(SUFFIX))
