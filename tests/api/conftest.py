"""Fixtures of the API tests: a real SQLite hot store filled through `write_batch`, the runner heartbeat
file (once, or kept live), and clocks the tests can move instead of sleeping."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.api.market import Market, build_market, write_market
from tradepulse.api.health import runner_status_path
from tradepulse.bus.status import write_json_atomic
from tradepulse.config import Settings
from tradepulse.stores.sqlite_hot import SqliteHotStore

# Starlette's TestClient warns at import that it will move to another HTTP client; irrelevant here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import fastapi.testclient  # noqa: F401


class FakeClock:
    """A monotonic clock that only moves when a test says so."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def heartbeat(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Write a runner heartbeat (the contract of tradepulse.api.health) into settings.data_dir."""
    now = time.time()
    status = {
        "updated_at": now,
        "last_commit_at": now - 0.4,
        "consumer_lag": 120,
        "events_processed": 1_234_567,
        "events_per_s": 4_180.5,
        "write_p99_ms": 7.25,
        "backpressure_activations": 2,
        "dlq_depth": 3,
        "e2e_latency_p99_ms": 48.0,
        "batch_p99_ms": 6.5,
    } | overrides
    write_json_atomic(runner_status_path(settings), status)
    return status


@contextmanager
def live_heartbeat(settings: Settings, period_s: float = 1.0, **overrides: Any) -> Iterator[None]:
    """Rewrite the heartbeat every `period_s` while the block runs, as a live runner does: a test that
    outlasts `health_commit_stale_s` (a browser starting on a loaded box) still sees a live runner."""
    heartbeat(settings, **overrides)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(period_s):
            heartbeat(settings, **overrides)

    thread = threading.Thread(target=beat, name="test-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def filled_store(path: Path) -> tuple[SqliteHotStore, Market]:
    store = SqliteHotStore(path)
    market = build_market(int(time.time() * 1000))
    write_market(store, market)
    return store, market


@pytest.fixture(scope="module")
def market_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SqliteHotStore, Market]]:
    """A hot store with the test market, shared by a module's read-only tests."""
    store, market = filled_store(tmp_path_factory.mktemp("hot") / "hot.sqlite3")
    yield store, market
    store.close()
