"""The Kafka client configurations the pipeline's processes run with, as the runner builds them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tradepulse.bus import runner as runner_module
from tradepulse.bus.clients import producer_config
from tradepulse.bus.pipeline import build_runner
from tradepulse.config import Settings


def _settings(tmp_path: Path) -> Settings:
    # A configuration only: nothing here connects to the broker.
    return Settings(kafka_bootstrap="127.0.0.1:9092", data_dir=tmp_path / "state")


def test_the_runners_producer_retries_a_coordinator_still_finishing_the_last_commit_within_10_ms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back-to-back transactions: the next one's AddOffsetsToTxn reaches the coordinator while it still
    writes the previous one's markers and gets CONCURRENT_TRANSACTIONS; librdkafka retries that request
    after `retry.backoff.ms` (default 100 ms), so a commit that followed another at once took ~100 ms
    (`scripts/bench_txn_commit.py`). The backoff stays exponential (`retry.backoff.max.ms` untouched)."""
    runner = build_runner(_settings(tmp_path), instance="config")
    built: list[dict[str, Any]] = []
    monkeypatch.setattr(runner_module, "Producer", built.append)
    runner._new_producer()
    (config,) = built
    assert config["transactional.id"] == runner.transactional_id
    assert config["retry.backoff.ms"] <= 10
    assert "retry.backoff.max.ms" not in config


def test_a_producer_without_transactions_keeps_librdkafkas_retry_backoff(tmp_path: Path) -> None:
    config = producer_config(_settings(tmp_path))
    assert "transactional.id" not in config
    assert "retry.backoff.ms" not in config
