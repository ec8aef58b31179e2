"""Look-back windows longer than the hot store keeps: hot + cold, merged at the seam.

The hot store holds the last `hot_ttl_hours` (48 h) of event time; the cold store holds everything the
runner archived. A window [since, now] is answered

- from the hot store alone when it starts within the TTL (the fast path: no cold query at all);
- from the hot store alone, too, when it already returns `limit` rows all newer than the cold part of
  the window (a busy ticker: the newest `limit` rows are all hot);
- otherwise from the hot store (whatever it still holds of the window) plus the cold store for
  [since, now − TTL + SEAM_OVERLAP], merged by the dataset's natural key (anomaly_id,
  correlation_id), the hot row winning. The overlap covers the rows both stores hold around the seam:
  rows the purge has not removed yet, and a cold store that lags the hot store by its flush interval
  never leaves a gap because everything newer than now − TTL is still hot.

The merged rows are sorted by event time (then key) and cut to the newest `limit`, oldest first, exactly
like the hot store's own answer, so the endpoints' response schema does not change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tradepulse.stores.base import HotStore, Row
from tradepulse.stores.cold_history import ColdHistory, HistoryQuery, dataset

log = logging.getLogger(__name__)

SEAM_OVERLAP_MS = 3_600_000
"""How far the cold query reaches into the hot store's window (one partition hour)."""


class History:
    """Anomalies and correlations of a window, from the hot store and, beyond its TTL, the cold store."""

    def __init__(
        self,
        hot: HotStore,
        cold: ColdHistory | None,
        *,
        ttl_ms: int,
        limit: int = 1000,
    ) -> None:
        self._hot = hot
        self._cold = cold
        self.ttl_ms = ttl_ms
        self.limit = limit
        self.cold_queries = 0

    def anomalies(self, ticker: str, since_ms: int, now_ms: int) -> list[Row]:
        """Anomalies of `ticker` with ts_ms >= since_ms, oldest first (the newest `limit`)."""
        return self._window("anomalies", self._hot.anomalies, ticker, since_ms, now_ms)

    def correlations(self, ticker: str, since_ms: int, now_ms: int) -> list[Row]:
        """Correlations of `ticker` published since since_ms, oldest first (the newest `limit`)."""
        return self._window("correlations", self._hot.correlations, ticker, since_ms, now_ms)

    def needs_cold(self, since_ms: int, now_ms: int) -> bool:
        return self._cold is not None and since_ms < now_ms - self.ttl_ms

    def _window(
        self,
        name: str,
        hot_read: Callable[[str | None, int, int], list[Row]],
        ticker: str,
        since_ms: int,
        now_ms: int,
    ) -> list[Row]:
        hot_rows = hot_read(ticker, since_ms, self.limit)
        if not self.needs_cold(since_ms, now_ms):
            return hot_rows
        assert self._cold is not None  # needs_cold says so
        until_ms = min(now_ms, now_ms - self.ttl_ms + SEAM_OVERLAP_MS)
        time_field = dataset(name).time_field
        if len(hot_rows) >= self.limit and hot_rows[0][time_field] >= until_ms:
            # The hot store alone fills the answer with rows newer than anything the cold query could
            # add (a busy ticker): the newest `limit` are already here.
            return hot_rows
        self.cold_queries += 1
        cold_rows = self._cold.query(HistoryQuery(name, ticker, since_ms, until_ms, self.limit))
        return merge(name, cold_rows, hot_rows, self.limit)


def merge(name: str, cold_rows: list[Row], hot_rows: list[Row], limit: int) -> list[Row]:
    """Cold and hot rows of one dataset without duplicates by its natural key (hot wins), oldest first,
    the newest `limit` of them."""
    d = dataset(name)
    by_key: dict[tuple[object, ...], Row] = {}
    for row in cold_rows:
        by_key[tuple(row[k] for k in d.key)] = row
    for row in hot_rows:
        by_key[tuple(row[k] for k in d.key)] = row
    rows = sorted(by_key.values(), key=lambda row: (row[d.time_field], *(row[k] for k in d.key)))
    return rows[-limit:] if limit else []
