"""The delivery guarantees the pipeline relies on, against the real local broker: an idempotent
producer, and transactions whose aborted records a read_committed consumer never sees."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer

from tradepulse.bus.admin import describe_topics
from tradepulse.bus.clients import consumer_config, producer_config
from tradepulse.config import Settings
from tradepulse.topics import ALL_TOPICS, TRADES

pytestmark = pytest.mark.kafka


def _drain(consumer: Consumer, expected_at_least: int, idle_polls: int = 2) -> list[bytes]:
    values: list[bytes] = []
    idle = 0
    while idle < idle_polls or len(values) < expected_at_least:
        batch = consumer.consume(500, timeout=1.0)
        if not batch:
            idle += 1
            if idle > 30:
                break
            continue
        idle = 0
        for message in batch:
            assert message.error() is None, message.error()
            values.append(message.value())
    return values


def test_topics_exist_with_configured_partitions(kafka_settings: Settings) -> None:
    states = {state.name: state for state in describe_topics(kafka_settings)}
    assert set(ALL_TOPICS) <= set(states)
    assert states[TRADES].partitions == kafka_settings.topic_partitions


def test_idempotent_producer_delivers_every_record_once(kafka_settings: Settings) -> None:
    producer = Producer(producer_config(kafka_settings))
    delivered: list[str] = []

    def on_delivery(err, msg) -> None:  # type: ignore[no-untyped-def]
        assert err is None, err
        delivered.append(msg.value().decode())

    sent = [f"trade-{i}" for i in range(2000)]
    for i, value in enumerate(sent):
        producer.produce(TRADES, key=["AAPL", "MSFT", "NVDA"][i % 3], value=value, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    consumer = Consumer(consumer_config(kafka_settings, f"t-{uuid.uuid4()}"))
    consumer.subscribe([TRADES])
    received = _drain(consumer, len(sent))
    consumer.close()
    assert sorted(delivered) == sorted(sent)
    assert sorted(v.decode() for v in received) == sorted(sent)


def test_read_committed_consumer_sees_only_committed_transactions(kafka_settings: Settings) -> None:
    producer = Producer(producer_config(kafka_settings, transactional_id=f"tx-{uuid.uuid4()}"))
    producer.init_transactions(30)

    producer.begin_transaction()
    for i in range(100):
        producer.produce(TRADES, key="AAPL", value=f"committed-{i}")
    producer.commit_transaction(30)

    producer.begin_transaction()
    for i in range(100):
        producer.produce(TRADES, key="AAPL", value=f"aborted-{i}")
    producer.flush(30)  # the aborted records really reach the log before the abort
    producer.abort_transaction(30)

    producer.begin_transaction()
    producer.produce(TRADES, key="AAPL", value="committed-last")
    producer.commit_transaction(30)

    committed_reader = Consumer(consumer_config(kafka_settings, f"rc-{uuid.uuid4()}"))
    committed_reader.subscribe([TRADES])
    seen = [v.decode() for v in _drain(committed_reader, 101)]
    committed_reader.close()
    assert sorted(seen) == sorted([f"committed-{i}" for i in range(100)] + ["committed-last"])

    # The aborted records are in the log: a read_uncommitted consumer sees them, proving the
    # filtering above is the transaction's doing and not a lost write.
    raw_reader = Consumer(
        consumer_config(kafka_settings, f"ru-{uuid.uuid4()}", **{"isolation.level": "read_uncommitted"})
    )
    raw_reader.subscribe([TRADES])
    raw = [v.decode() for v in _drain(raw_reader, 201)]
    raw_reader.close()
    assert sum(v.startswith("aborted-") for v in raw) == 100
