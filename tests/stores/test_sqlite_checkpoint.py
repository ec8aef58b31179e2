"""SQLite hot store: the WAL is checkpointed into the database file by the background connection (the
writer's COMMIT no longer does it), and close() stops that thread with every row in the file."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

from tests.stores.conftest import BASE_MS, make_feature, make_trade
from tradepulse.stores.sqlite_hot import SqliteHotStore


def _checkpointers(path: Path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"sqlite-checkpoint-{path.name}"]


def test_background_checkpoint_fills_the_database_file_and_stops_on_close(tmp_path: Path) -> None:
    db = tmp_path / "hot.db"
    store = SqliteHotStore(db)
    assert not _checkpointers(db)  # a store that only reads never starts one
    empty = db.stat().st_size
    trades = [make_trade("AAPL", seq=i, ts_ms=BASE_MS + i) for i in range(3000)]
    store.write_batch(trades=trades, features=[make_feature("AAPL", ts_ms=BASE_MS)])
    # The WAL holds the batch; only a checkpoint copies its pages into the database file, and this
    # process runs none itself.
    deadline = time.monotonic() + 30
    while db.stat().st_size < empty + 200_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert db.stat().st_size >= empty + 200_000
    [thread] = _checkpointers(db)
    store.write_batch(trades=[make_trade("MSFT", seq=1, ts_ms=BASE_MS + 5000)])
    store.close()
    assert not thread.is_alive()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM trades").fetchone()[0] == 3001
        assert conn.execute("SELECT count(*) FROM features").fetchone()[0] == 1
    reopened = SqliteHotStore(db)
    assert reopened.latest_trade("MSFT") is not None
    reopened.close()
