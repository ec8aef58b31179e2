"""Where the runner keeps the anomaly model's checkpoints (see `tradepulse.core.anomaly`).

One directory per stream (input partition number), one file per checkpoint named by the trades offset
it precedes: `<dir>/<stream>/<offset>.npz`. A checkpoint is a fact about the stream ("the state before
offset o"), so it is written as soon as it is made, whatever was committed, and writing it again is
harmless. A restore takes the newest one at or below the committed offset. The newest few are kept:
a checkpoint ahead of the committed offset (made in a batch that was never committed) is useless until
the replay catches up, so the older ones must still be there.

Locally the directory is under `TRADEPULSE_DATA_DIR`, which survives a runner restart (kill -9, the
chaos tests); a runner on another host (a replaced ECS task) finds none and starts the partition's
model afresh from its rebuild look-back, which is deterministic from then on but not equal to what the
lost host would have scored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tradepulse.core.anomaly import Checkpoint

log = logging.getLogger(__name__)

KEEP = 5


class CheckpointStore:
    def __init__(self, root: Path, keep: int = KEEP) -> None:
        self.root = root
        self.keep = keep

    def save(self, checkpoint: Checkpoint) -> None:
        folder = self.root / checkpoint.stream
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{checkpoint.offset:020d}.npz"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(checkpoint.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a crash leaves the old file or the new one, never half of one
        for old in sorted(folder.glob("*.npz"))[: -self.keep]:
            old.unlink(missing_ok=True)

    def latest(self, stream: str, at_most: int) -> bytes | None:
        """The newest checkpoint of `stream` whose offset is ≤ `at_most`, or None."""
        folder = self.root / stream
        if not folder.is_dir():
            return None
        usable = [p for p in folder.glob("*.npz") if int(p.stem) <= at_most]
        return max(usable, key=lambda p: int(p.stem)).read_bytes() if usable else None
