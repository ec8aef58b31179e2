"""Hot-store retention that runs: a background thread that purges rows older than the TTL on a schedule.

Where it runs: inside `tradepulse process`, on the runner's own hot-store object. The runner is the
one writer of the SQLite file, and `SqliteHotStore.purge_expired` deletes in chunks under the same
in-process write lock as `write_batch`, so a micro-batch waits for one chunk (a few ms) at most and
never for SQLite's busy timeout, as it would if another process (the API, a supervisor task) held the
file's write lock. The thread is a daemon that sleeps between purges; it is never on the runner's
batch path. Every runner instance purges (the deletes are idempotent; extra instances find little).

DynamoDB needs none of this: items carry `expires_at` and the table's native TTL deletes them (within
a few days of expiry, at no write cost), and `DynamoHotStore.purge_expired` is a no-op; the processor
therefore only starts the thread for the SQLite backend.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

from tradepulse.config import Settings
from tradepulse.errors import InvalidArgument
from tradepulse.stores.base import HotStore

log = logging.getLogger(__name__)


class RetentionPurger:
    """Calls `hot.purge_expired(now)` every `interval_s` on a daemon thread (first after one interval)."""

    def __init__(
        self,
        hot: HotStore,
        interval_s: float,
        *,
        chunk_rows: int = 5000,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0:
            raise InvalidArgument("interval_s must be > 0")
        self._hot = hot
        self.interval_s = interval_s
        self.chunk_rows = chunk_rows
        self._wall = wall_clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.purges = 0
        self.rows_purged = 0

    @classmethod
    def for_settings(cls, hot: HotStore, settings: Settings) -> RetentionPurger | None:
        """The purger the processor runs: SQLite only (DynamoDB expires items itself), unless disabled."""
        if settings.hot_store != "sqlite" or settings.hot_purge_interval_s <= 0:
            return None
        return cls(hot, settings.hot_purge_interval_s, chunk_rows=settings.hot_purge_chunk_rows)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hot-store-purge", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the current chunk. A purge still running after `timeout_s` is left to the process
        exit (daemon thread): SQLite rolls its open chunk back, and the next purge deletes it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def purge_once(self) -> int:
        started = time.perf_counter()
        rows = self._hot.purge_expired(int(self._wall() * 1000), chunk_rows=self.chunk_rows)
        self.purges += 1
        self.rows_purged += rows
        log.info(
            "hot store purge: %d rows older than the TTL in %.0f ms",
            rows,
            1000 * (time.perf_counter() - started),
        )
        return rows

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.purge_once()
            except Exception:  # a failed purge is retried at the next interval; the runner goes on
                log.warning("hot store purge failed", exc_info=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
