"""Trading sessions of the US equity market: pre-market, regular, after-hours, closed.

A timestamp's session is read from its exchange timestamp in America/New_York against the NYSE calendar
(`exchange_calendars`' XNYS: holidays and early closes come from the library's maintained rules, never
from hand-written dates):

* `regular`: from the day's open (09:30 ET) to its close (16:00 ET, 13:00 ET on early-close days);
* `pre_market`: 04:00 ET to the open;
* `after_hours`: the close to four hours after it (20:00 ET, 17:00 ET on early-close days);
* `closed`: any other time, weekends and holidays included;
* `unknown`: outside the span the table was built for (the library's bounds: by default 20 years
  before the process start to one year after it).

The lookup is pure numpy over a precomputed `SessionTable` (one row per trading day, Unix ms); only
`SessionTable.nyse` touches the calendar library, which computes its dates from rules and does no I/O.
The library loads pandas (~60 MiB resident for the life of a process): the runner computes its table in
a child interpreter and takes it as bytes (`to_bytes`, `from_bytes`; `tradepulse.bus.pipeline`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PRE_MARKET = "pre_market"
REGULAR = "regular"
AFTER_HOURS = "after_hours"
CLOSED = "closed"
UNKNOWN = "unknown"
SESSIONS = (PRE_MARKET, REGULAR, AFTER_HOURS, CLOSED, UNKNOWN)

#: Extended hours: pre-market opens at 04:00 ET; after-hours lasts four hours past the close.
PRE_MARKET_OPEN_H = 4
AFTER_HOURS_LENGTH_H = 4
EXCHANGE_TZ = "America/New_York"


@dataclass(frozen=True)
class SessionTable:
    """Per trading day, ascending, Unix ms: pre-market start, open, close, after-hours end; and the
    [start_ms, end_ms) span the table covers (outside it every timestamp is `unknown`)."""

    pre_ms: np.ndarray
    open_ms: np.ndarray
    close_ms: np.ndarray
    post_ms: np.ndarray
    start_ms: int
    end_ms: int

    def session_of(self, ts_ms: np.ndarray) -> np.ndarray:
        """The session name of each timestamp (object array of the `SESSIONS` strings)."""
        ts = np.asarray(ts_ms, dtype=np.int64)
        day = np.searchsorted(self.pre_ms, ts, side="right") - 1
        safe = np.clip(day, 0, max(len(self.pre_ms) - 1, 0))
        out = np.full(len(ts), CLOSED, dtype=object)
        if len(self.pre_ms):
            in_day = (day >= 0) & (ts < self.post_ms[safe])
            out[in_day] = PRE_MARKET
            out[in_day & (ts >= self.open_ms[safe])] = REGULAR
            out[in_day & (ts >= self.close_ms[safe])] = AFTER_HOURS
        out[(ts < self.start_ms) | (ts >= self.end_ms)] = UNKNOWN
        return out

    def to_bytes(self) -> bytes:
        """The table as an `.npz` archive (no pickles): `from_bytes` reads it back, equal array for array."""
        out = io.BytesIO()
        span = np.array([self.start_ms, self.end_ms], dtype=np.int64)
        np.savez(out, pre=self.pre_ms, open=self.open_ms, close=self.close_ms, post=self.post_ms, span=span)
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionTable:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            start_ms, end_ms = (int(v) for v in npz["span"])
            return cls(npz["pre"], npz["open"], npz["close"], npz["post"], start_ms, end_ms)

    @classmethod
    def nyse(cls) -> SessionTable:
        """The table of the NYSE calendar over the library's default span (built once per process)."""
        return _nyse_table()


@lru_cache(maxsize=1)
def _nyse_table() -> SessionTable:
    import exchange_calendars
    import pandas as pd

    with warnings.catch_warnings():
        # exchange_calendars 4.13 reads a tz-aware Series' `.values`, which pandas 3.1 deprecates; the
        # values it reads are UTC nanoseconds either way.
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
        calendar = exchange_calendars.get_calendar("XNYS")
    schedule = calendar.schedule  # index: session dates; open/close: UTC timestamps
    days = pd.DatetimeIndex(schedule.index).tz_localize(None)
    local_midnight = days.tz_localize(EXCHANGE_TZ)
    opens = pd.DatetimeIndex(schedule["open"])
    closes = pd.DatetimeIndex(schedule["close"])
    pre = local_midnight + pd.Timedelta(hours=PRE_MARKET_OPEN_H)

    def ms(index: pd.DatetimeIndex) -> np.ndarray:
        return index.tz_convert("UTC").as_unit("ms").asi8.astype(np.int64)

    first = pd.Timestamp(calendar.first_session).tz_localize(EXCHANGE_TZ)
    last = pd.Timestamp(calendar.last_session).tz_localize(EXCHANGE_TZ) + pd.Timedelta(days=1)
    return SessionTable(
        pre_ms=ms(pre),
        open_ms=ms(opens),
        close_ms=ms(closes),
        post_ms=ms(closes + pd.Timedelta(hours=AFTER_HOURS_LENGTH_H)),
        start_ms=int(first.tz_convert("UTC").value // 1_000_000),
        end_ms=int(last.tz_convert("UTC").value // 1_000_000),
    )
