"""Topic administration: create every topic idempotently from configuration, describe them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from tradepulse.bus.clients import base_config
from tradepulse.config import Settings
from tradepulse.topics import ALL_TOPICS, TopicSpec, topic_specs


@dataclass(frozen=True)
class TopicState:
    """A topic as the broker reports it."""

    name: str
    partitions: int
    messages: int


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(base_config(settings))


def ensure_topics(
    settings: Settings, specs: list[TopicSpec] | None = None, *, replication: int = 1
) -> list[str]:
    """Create missing topics (existing ones are left as they are); returns the names created."""
    specs = specs or topic_specs(settings.topic_partitions, settings.topic_retention_ms)
    admin = admin_client(settings)
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [spec for spec in specs if spec.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(s.name, num_partitions=s.partitions, replication_factor=replication, config=s.config())
            for s in missing
        ],
        operation_timeout=30,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a concurrent creator won the race
                raise
    _wait_for_leaders(admin, [spec.name for spec in missing])
    return created


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    """Creation returns before partitions have leaders; producing or reading offsets fails until then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=10).topics
        if all(
            name in topics
            and topics[name].partitions
            and all(p.leader >= 0 for p in topics[name].partitions.values())
            for name in names
        ):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topics without a leader after {timeout_s:.0f}s: {names}")


def recreate_topics(settings: Settings, timeout_s: float = 60.0) -> None:
    """Delete and re-create every project topic, empty (tests and benchmarks start from a clean slate)."""
    admin = admin_client(settings)
    present = [t for t in admin.list_topics(timeout=10).topics if t in ALL_TOPICS]
    if present:
        for future in admin.delete_topics(present, operation_timeout=30).values():
            future.result()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ensure_topics(settings)
            return
        except Exception:
            # Deletion is asynchronous on the broker; creation fails until it has finished.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def describe_topics(settings: Settings) -> list[TopicState]:
    """Every non-internal topic with its partition count and number of retained messages."""
    from confluent_kafka import Consumer, TopicPartition

    config = base_config(settings) | {"group.id": "tradepulse-status", "enable.auto.commit": False}
    consumer = Consumer(config)
    try:
        metadata = consumer.list_topics(timeout=10)
        states = []
        for name, topic in sorted(metadata.topics.items()):
            if name.startswith("__"):
                continue
            messages = 0
            for partition in topic.partitions:
                low, high = _watermarks(consumer, TopicPartition(name, partition))
                messages += max(0, high - low)
            states.append(TopicState(name, len(topic.partitions), messages))
        return states
    finally:
        consumer.close()


def _watermarks(consumer, partition, attempts: int = 50) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Watermark offsets, retrying while a just-created partition's leader is still being elected."""
    for attempt in range(attempts):
        try:
            return consumer.get_watermark_offsets(partition, timeout=5)
        except KafkaException as exc:
            if exc.args[0].name() != "NOT_LEADER_FOR_PARTITION" or attempt == attempts - 1:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")
