"""Test-session fixtures. Integration tests get a real Kafka broker, started once per session on free
ports in a temporary directory, and torn down at the end (no Docker)."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path

import botocore.endpoint
import pytest

from tests.paths import JAR_CACHE
from tradepulse.bus.admin import recreate_topics
from tradepulse.bus.local_kafka import LocalKafka
from tradepulse.config import Settings


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


@pytest.fixture
def botocore_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore's retry backoffs, recorded instead of slept (botocore.endpoint uses `time` only to sleep)."""
    sleeps: list[float] = []
    monkeypatch.setattr(botocore.endpoint, "time", types.SimpleNamespace(sleep=sleeps.append))
    return sleeps
