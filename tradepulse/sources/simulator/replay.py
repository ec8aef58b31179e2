"""Replay recorded trades from the cold store at N× speed, through the same WebSocket server.

Reads `<root>/trades/dt=YYYY-MM-DD/hour=HH/*.parquet` (columns of `tradepulse.models.Trade`) with
pyarrow.dataset, restores the wire format (`ev:"T"`, `sym`, `x`, `i`, ...) and hands out blocks of
`tick_ms × speed` recorded milliseconds; the simulator sends each block `tick_ms` of wall time apart.
Recorded times, sequences and trade ids are kept, so replayed events have their original ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds

from tradepulse.errors import InvalidArgument
from tradepulse.sources.simulator.market import Block

_COLUMNS = [
    "event_id",
    "ticker",
    "price",
    "size",
    "exchange",
    "trade_id",
    "tape",
    "conditions",
    "sequence",
    "exchange_ts_ms",
    "trf_id",
    "trf_ts_ms",
]


class ReplaySource:
    """Recorded trades as blocks on the recorded clock."""

    def __init__(
        self,
        root: str | Path,
        *,
        speed: float = 1.0,
        tick_ms: int = 50,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> None:
        if speed <= 0:
            raise InvalidArgument("speed must be > 0")
        dataset = ds.dataset(Path(root) / "trades", format="parquet", partitioning="hive")
        where = None
        if start_ms is not None:
            where = ds.field("exchange_ts_ms") >= start_ms
        if end_ms is not None:
            upper = ds.field("exchange_ts_ms") < end_ms
            where = upper if where is None else where & upper
        frame = dataset.to_table(columns=_COLUMNS, filter=where).to_pandas()
        if frame.empty:
            raise InvalidArgument(f"no recorded trades under {Path(root) / 'trades'}")
        # At-least-once sinks may hold a row twice; the event id identifies it.
        frame = frame.drop_duplicates("event_id").sort_values(["exchange_ts_ms", "ticker", "sequence"])
        self.frame = frame.reset_index(drop=True)
        symbols, sym = np.unique(self.frame["ticker"].to_numpy(dtype=str), return_inverse=True)
        self.symbols: list[str] = symbols.tolist()
        self._sym = sym.astype(np.int64)
        self._t = self.frame["exchange_ts_ms"].to_numpy(dtype=np.int64)
        self._q = self.frame["sequence"].to_numpy(dtype=np.int64)
        self.speed = speed
        self.start_ms = int(self._t[0])
        self._window = max(1, round(tick_ms * speed))
        self._next_start = self.start_ms
        self._pos = 0

    def __len__(self) -> int:
        return len(self._t)

    def next_block(self) -> Block | None:
        """The next `tick_ms × speed` recorded milliseconds of trades; None when all were replayed."""
        if self._pos >= len(self._t):
            return None
        t0, t1 = self._next_start, self._next_start + self._window
        self._next_start = t1
        lo, hi = self._pos, int(np.searchsorted(self._t, t1, "left"))
        self._pos = hi
        return Block(
            start_ms=t0,
            end_ms=t1,
            kind=np.zeros(hi - lo, np.uint8),
            sym=self._sym[lo:hi],
            t=self._t[lo:hi],
            q=self._q[lo:hi],
            news=[],
            _builder=lambda _b, lo=lo, hi=hi: self._records(lo, hi),
        )

    def _records(self, lo: int, hi: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for row in self.frame.iloc[lo:hi].itertuples(index=False):
            size = float(row.size)
            rec: dict[str, Any] = {
                "ev": "T",
                "sym": row.ticker,
                "x": int(row.exchange),
                "i": str(row.trade_id),
                "z": int(row.tape),
                "p": float(row.price),
                "s": int(size) if size.is_integer() else size,
            }
            if row.conditions is not None and len(row.conditions):
                rec["c"] = [int(c) for c in row.conditions]
            rec["t"] = int(row.exchange_ts_ms)
            rec["q"] = int(row.sequence)
            if row.trf_id is not None and not np.isnan(row.trf_id):
                rec["trfi"] = int(row.trf_id)
                rec["trft"] = int(row.trf_ts_ms)
            out.append(rec)
        return out
