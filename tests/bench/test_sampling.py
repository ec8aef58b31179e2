"""The bench's broker sampler never reports a negative lag (issue 19: the lag chart did).

The runner commits every few milliseconds while the sampler reads the high watermarks and the committed
offsets, a round trip per partition each. The test puts a produce + consume + commit of new records
between the sampler's two reads, on a real broker: read high-watermarks-first (as before), the offsets
committed in between pass the watermarks already read and the lag comes out negative."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer

from tradepulse.bench.sampling import BrokerSampler
from tradepulse.bus.clients import consumer_config, producer_config
from tradepulse.config import Settings
from tradepulse.topics import QUOTES, TRADES

pytestmark = pytest.mark.kafka


class RacedSampler(BrokerSampler):
    """Runs `between` after the first of the two reads of each sample."""

    def __init__(self, bootstrap: str, group_id: str, between: Callable[[], None]) -> None:
        super().__init__(bootstrap, group_id, (TRADES, QUOTES))
        self.between = between
        self._reads = 0

    def _after_read(self) -> None:
        self._reads += 1
        if self._reads % 2 == 1:
            self.between()

    def high_watermarks(self) -> dict[str, int]:
        out = super().high_watermarks()
        self._after_read()
        return out

    def committed(self) -> dict[str, int]:
        out = super().committed()
        self._after_read()
        return out


def test_lag_is_never_negative_when_the_runner_commits_between_the_reads(kafka_settings: Settings) -> None:
    group = f"sampler-{uuid.uuid4().hex[:8]}"
    producer = Producer(producer_config(kafka_settings))
    consumer = Consumer(consumer_config(kafka_settings, group))
    consumer.subscribe([TRADES])
    consumed = 0
    produced = 0

    def runner_step() -> None:
        """New records appended and consumed up to the end, their offsets committed: a caught-up runner."""
        nonlocal consumed, produced
        for i in range(20):
            producer.produce(TRADES, key=f"T{i}".encode(), value=b"{}")
        producer.flush(30)
        produced += 20
        while consumed < produced:
            consumed += len(consumer.consume(100, 1.0))
        consumer.commit(offsets=consumer.position(consumer.assignment()), asynchronous=False)

    runner_step()  # joined the group, something committed
    sampler = RacedSampler(str(kafka_settings.kafka_bootstrap), group, runner_step)
    try:
        for _ in range(3):
            sample = sampler.sample()
            for topic in (TRADES, QUOTES):
                assert sample["committed_by_topic"][topic] <= sample["high_by_topic"][topic]
            assert sample["high"] - sample["committed"] >= 0
    finally:
        sampler.close()
        consumer.close()
