"""e2e latency outside the market-open ramp: the burst target's "e2e p99 ≤ 1 s outside the ramp".

The runner records each trade's e2e latency when it commits the trade, into one whole-run histogram, and
leaves that histogram beside its status with every heartbeat (`stages_path`; the file's mtime is when).
`RampSnapshots` keeps the main group's e2e histogram as it was when the ramp began and as it was just
before the ramp ended; `outside_ramp` takes what was committed in between out of the run's histogram.

The split is by commit time, so it never flatters the target: the trades received during the ramp but
committed after it (its backlog) count as outside it, and the part of the run taken out starts no earlier
than the ramp's first second and ends before its last (the start is the first file written at or after
the ramp's start, the end the last one written before its end). A runner that wrote no file during the
ramp (a run that ended before it began) leaves it unmeasured.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from tradepulse.bus.stages import LatencyHistogram
from tradepulse.sources.simulator.market import OPEN_RAMP_S


def read_e2e(path: Path) -> tuple[float, dict[str, Any]] | None:
    """(the file's mtime, its `e2e` histogram) of a runner's stages file, None if there is none yet. The
    mtime is read from the file that was opened: the runner replaces it by a rename."""
    try:
        with path.open("rb") as f:
            mtime = os.fstat(f.fileno()).st_mtime
            data = orjson.loads(f.read())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    e2e = data.get("e2e")
    return (mtime, e2e) if e2e is not None else None


class RampSnapshots:
    """The e2e histograms of the main group's runner instances (their stages files) at the ramp's start
    and just before its end (see the module docstring), from the market's start (wall-clock ms)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._start: list[dict[str, Any] | None] = [None] * len(paths)
        self._end: list[dict[str, Any] | None] = [None] * len(paths)

    def observe(self, market_start_ms: int | None, now_s: float) -> None:
        """Read the stages files if the ramp is near (called about once a second)."""
        if market_start_ms is None:
            return
        start_s = market_start_ms / 1000 + OPEN_RAMP_S[0]
        end_s = market_start_ms / 1000 + OPEN_RAMP_S[1]
        if now_s < start_s or now_s > end_s + 2:
            return
        for i, path in enumerate(self.paths):
            read = read_e2e(path)
            if read is None:
                continue
            mtime, e2e = read
            if start_s <= mtime < end_s:
                if self._start[i] is None:
                    self._start[i] = e2e
                self._end[i] = e2e

    def result(self, final: list[dict[str, Any]]) -> dict[str, Any]:
        """The snapshots and the instances' `final` e2e histograms, merged over the instances (None where
        an instance has none)."""
        starts, ends = self._start, self._end
        return {
            "ramp_s": list(OPEN_RAMP_S),
            "start": merged(starts),
            "end": merged(ends),
            "final": merged(final) if len(final) == len(self.paths) else None,
        }


def merged(histograms: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The runner instances' histograms (`LatencyHistogram.to_dict`) added together, as data; None if
    one of them is missing."""
    present = [h for h in histograms if h is not None]
    if not present or len(present) < len(histograms):
        return None
    return LatencyHistogram.sum_of(present).to_dict()


def outside_ramp(ramp: dict[str, Any] | None) -> dict[str, float]:
    """`LatencyHistogram.summary_ms` of the trades committed before the ramp's start or after its end
    (`RampSnapshots.result`): the run's histogram minus the end snapshot, plus the start snapshot. Empty
    if not measured (a flat run, or one that ended before the ramp began)."""
    if not ramp or ramp.get("start") is None or ramp.get("end") is None or ramp.get("final") is None:
        return {}
    hist = LatencyHistogram.from_dict(ramp["final"])
    hist.subtract(LatencyHistogram.from_dict(ramp["end"]))
    hist.add(LatencyHistogram.from_dict(ramp["start"]))
    return hist.summary_ms()
