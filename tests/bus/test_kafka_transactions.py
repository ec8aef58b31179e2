"""The delivery guarantees the pipeline relies on, against the real local broker: an idempotent
producer, and transactions whose aborted records a read_committed consumer never sees."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer

from tests.bus.kafka_proxy import FaultyKafkaProxy
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


@pytest.mark.parametrize("idempotence", [True, False], ids=["idempotent", "control-not-idempotent"])
def test_producer_retry_after_a_lost_response_writes_each_record_once_only_when_idempotent(
    kafka_settings: Settings, idempotence: bool
) -> None:
    """The first Produce response is lost after the broker appended the batch (a proxy closes the
    connection instead of forwarding it), so the client retries the batch. The pipeline's producer
    (`producer_config`, idempotent) still delivers every record exactly once; the same producer with
    `enable.idempotence=False` writes the retried batch twice, which proves the retry happened and that
    idempotence is what removed the duplicate."""
    delivered: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        delivered.append((msg.value() or b"").decode())

    sent = [f"trade-{i}" for i in range(2000)]
    # The partitions' leaders settled first, straight to the broker: the lost response must be one whose
    # batch the broker appended, not an early "not leader yet" error (whose answer also names the
    # broker's own address, which would take the client past the proxy).
    warm_up = Producer(producer_config(kafka_settings))
    for key in ("AAPL", "MSFT", "NVDA"):
        warm_up.produce(TRADES, key=key, value="warm-up")
    assert warm_up.flush(30) == 0
    with FaultyKafkaProxy(kafka_settings.kafka_bootstrap or "") as proxy:
        through_proxy = kafka_settings.model_copy(update={"kafka_bootstrap": proxy.bootstrap})
        producer = Producer(producer_config(through_proxy, **{"enable.idempotence": idempotence}))
        proxy.drop_next(1)
        for i, value in enumerate(sent):
            producer.produce(
                TRADES, key=["AAPL", "MSFT", "NVDA"][i % 3], value=value, on_delivery=on_delivery
            )
        assert producer.flush(60) == 0
        assert proxy.dropped == 1  # one response really was lost: the retry below is forced
    consumer = Consumer(consumer_config(kafka_settings, f"t-{uuid.uuid4()}"))
    consumer.subscribe([TRADES])
    received = sorted(v.decode() for v in _drain(consumer, len(sent) + 3) if v != b"warm-up")
    consumer.close()
    assert sorted(delivered) == sorted(sent)  # each record acknowledged once either way
    if idempotence:
        assert received == sorted(sent)
    else:
        duplicated = len(received) - len(set(received))
        assert set(received) == set(sent) and duplicated > 0


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
