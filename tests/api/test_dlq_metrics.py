"""/metrics counts the permanent dead letters (validation failures, never redriven) of the API's DLQ."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.api.conftest import FakeClock
from tradepulse.api.app import create_app
from tradepulse.config import Settings
from tradepulse.stores.dlq import make_dead_letter
from tradepulse.stores.dlq_queues import SqliteDeadLetterQueue
from tradepulse.stores.sqlite_hot import SqliteHotStore

T0 = 1_767_000_000.0


def test_metrics_count_pending_permanent_letters(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap=None)
    store = SqliteHotStore(tmp_path / "hot.sqlite3")
    dlq = SqliteDeadLetterQueue(tmp_path / "dlq.sqlite3")
    clock = FakeClock()
    invalid = [
        make_dead_letter(stage="ingest", payload=f"[{i}", error_type="BadJSON", reason="bad JSON", now_s=T0)
        for i in range(3)
    ]
    outage = make_dead_letter(stage="sink:hot", payload="{}", error_type="OperationalError", reason="locked")
    try:
        dlq.put([*invalid, outage])
        with TestClient(create_app(settings, store, dlq=dlq, clock=clock)) as client:
            text = client.get("/metrics").text
            assert "tradepulse_dlq_permanent 3.0" in text and "tradepulse_dlq_depth 4.0" in text
            dlq.update(dict(invalid[0], status="archived"))
            clock.advance(3.0)  # past the cache
            assert "tradepulse_dlq_permanent 2.0" in client.get("/metrics").text
    finally:
        dlq.close()
        store.close()
