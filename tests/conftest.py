"""Test-session fixtures. Integration tests get a real Kafka broker, started once per session on free
ports in a temporary directory, and torn down at the end (no Docker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tradepulse.bus.admin import ensure_topics
from tradepulse.bus.local_kafka import REPO_ROOT, LocalKafka
from tradepulse.config import Settings
from tradepulse.topics import ALL_TOPICS

JAR_CACHE = REPO_ROOT / ".tradepulse" / "kafka-libs"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real single-node KRaft broker for this test session."""
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"), heap="512m", libs_root=JAR_CACHE)
    info = broker.start(quiet=True)
    try:
        yield info.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings pointing at the session broker, with every topic freshly (re)created and empty,
    and local state in a temporary directory."""
    settings = Settings(kafka_bootstrap=kafka_bootstrap, data_dir=tmp_path / "state", topic_partitions=3)
    recreate_topics(settings)
    yield settings


def recreate_topics(settings: Settings) -> None:
    """Delete and re-create every project topic, so a test starts from empty topics."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    present = [t for t in admin.list_topics(timeout=10).topics if t in ALL_TOPICS]
    if present:
        for future in admin.delete_topics(present, operation_timeout=30).values():
            future.result()
    deadline = time.monotonic() + 30
    while True:
        try:
            ensure_topics(settings)
            return
        except Exception:
            # Deletion is asynchronous on the broker; creation fails until it has finished.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
