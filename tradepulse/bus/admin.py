"""Topic administration: create topics from configuration (locally `tradepulse topics`/`up`; on AWS the
topics custom resource, which also applies partition and config changes), check that the topics a
service uses exist, describe them.

Services never create topics: with MSK IAM a principal sees only the topics it may describe, so a
service that "creates what it cannot see" asks for CreateTopic, which it is not granted.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from tradepulse.bus.clients import base_config
from tradepulse.config import Settings
from tradepulse.errors import BusError, InvalidArgument
from tradepulse.topics import ALL_TOPICS, TopicSpec, topic_specs


@dataclass(frozen=True)
class TopicState:
    """A topic as the broker reports it."""

    name: str
    partitions: int
    messages: int


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(base_config(settings))


#: Errors after which waiting for an admin request is pointless (bad or missing credentials).
_AUTH_FAILURES = (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED)


class _Admin:
    """An admin client whose waits end as soon as authentication fails (instead of at the request
    timeout): a principal without credentials or without kafka-cluster:Connect fails in a second."""

    def __init__(self, settings: Settings) -> None:
        auth_errors: list[KafkaError] = []

        def on_error(error: KafkaError) -> None:
            if error.code() in _AUTH_FAILURES:
                auth_errors.append(error)

        # A closure over the list, not a bound method: the client must not be in a reference cycle with
        # this object. A cycle is freed by the garbage collector, whichever thread it runs on, and the
        # admin client completes its futures on librdkafka's background thread: destroying a client
        # there aborts the process ("Fatal Python error: Aborted" while garbage-collecting, seen once).
        self.auth_errors = auth_errors
        self.client = AdminClient(base_config(settings) | {"error_cb": on_error})

    def wait(self, futures: dict[Any, Future[Any]], timeout_s: float) -> None:
        """Return when every future is done (their results may still raise), or raise the
        authentication error, or TimeoutError."""
        deadline = time.monotonic() + timeout_s
        pending = set(futures.values())
        while pending:
            _, pending = concurrent.futures.wait(pending, timeout=0.05)
            self.client.poll(0)  # serves error_cb
            if self.auth_errors:
                raise KafkaException(self.auth_errors[0])
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"admin request not answered within {timeout_s:.0f}s")


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


class MissingTopicsError(BusError):
    """Topics a service needs are missing or not visible to its principal; the message names them."""


class PartitionDecreaseError(InvalidArgument):
    """A topic spec asks for fewer partitions than the topic has (Kafka cannot remove partitions)."""


def require_topics(settings: Settings, names: Iterable[str], *, timeout_s: float = 15.0) -> None:
    """Raise `MissingTopicsError` naming every topic of `names` that does not exist or that this principal
    may not describe (to a principal without DESCRIBE, Kafka reports an existing topic as unauthorized and
    hides it from listings). Needs DESCRIBE on the topics only."""
    names = list(dict.fromkeys(names))
    admin = _Admin(settings)
    futures = admin.client.describe_topics(TopicCollection(names), request_timeout=timeout_s)
    admin.wait(futures, timeout_s + 1)
    missing, hidden = [], []
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
                missing.append(name)
            elif code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                hidden.append(name)
            else:
                raise
    problems = []
    if missing:
        problems.append(f"missing topic(s) {', '.join(sorted(missing))}")
    if hidden:
        problems.append(
            f"topic(s) {', '.join(sorted(hidden))} not visible to this principal "
            "(missing, or no DESCRIBE / kafka-cluster:DescribeTopic grant)"
        )
    if problems:
        raise MissingTopicsError(
            "; ".join(problems) + ". Services do not create topics: run `tradepulse topics` (local broker); "
            "on AWS the stack's topics custom resource creates them."
        )


@dataclass
class TopicChanges:
    """What `apply_topic_specs` changed."""

    created: list[str]
    #: topic → (partitions before, after)
    partitions: dict[str, tuple[int, int]]
    #: topic → {config key: new value}
    configs: dict[str, dict[str, str]]


def apply_topic_specs(
    settings: Settings, specs: list[TopicSpec], *, replication: int = 1, timeout_s: float = 30.0
) -> TopicChanges:
    """Bring the topics to `specs`: create missing ones, raise partition counts (CreatePartitions) and
    set differing configs (IncrementalAlterConfigs SET; other keys untouched). A spec with fewer
    partitions than its topic raises `PartitionDecreaseError` before anything is changed.

    Needs, per topic: DESCRIBE, CREATE (missing ones), ALTER (partitions), DESCRIBE_CONFIGS and
    ALTER_CONFIGS (configs) - on MSK DescribeTopic, CreateTopic, AlterTopic,
    DescribeTopicDynamicConfiguration and AlterTopicDynamicConfiguration."""
    checked = _Admin(settings)
    admin = checked.client
    existing: dict[str, int] = {}
    futures = admin.describe_topics(TopicCollection([s.name for s in specs]), request_timeout=timeout_s)
    checked.wait(futures, timeout_s + 1)
    for name, future in futures.items():
        try:
            existing[name] = len(future.result().partitions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
    decreases = [
        f"{s.name} has {existing[s.name]} partitions, spec asks for {s.partitions}"
        for s in specs
        if s.name in existing and s.partitions < existing[s.name]
    ]
    if decreases:
        raise PartitionDecreaseError(
            "Kafka cannot decrease a topic's partition count: "
            + "; ".join(decreases)
            + " (keep the count, or create a new topic and migrate)"
        )
    changes = TopicChanges([], {}, {})
    missing = [s for s in specs if s.name not in existing]
    if missing:
        changes.created = ensure_topics(settings, missing, replication=replication)
    grow = [s for s in specs if s.name in existing and s.partitions > existing[s.name]]
    if grow:
        futures = admin.create_partitions(
            [NewPartitions(s.name, s.partitions) for s in grow], operation_timeout=timeout_s
        )
        for future in futures.values():
            future.result()
        changes.partitions = {s.name: (existing[s.name], s.partitions) for s in grow}
    present = [s for s in specs if s.name in existing]
    if present:
        described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, s.name) for s in present])
        current = {resource.name: future.result() for resource, future in described.items()}
        alter = []
        for spec in present:
            wanted = {k: v for k, v in spec.config().items() if current[spec.name][k].value != v}
            if wanted:
                changes.configs[spec.name] = wanted
                entries = [
                    ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in wanted.items()
                ]
                alter.append(ConfigResource(ResourceType.TOPIC, spec.name, incremental_configs=entries))
        if alter:
            for future in admin.incremental_alter_configs(alter).values():
                future.result()
    if changes.partitions:
        _wait_for_leaders(
            admin,
            list(changes.partitions),
            timeout_s,
            min_partitions={name: after for name, (_, after) in changes.partitions.items()},
        )
    return changes


def _wait_for_leaders(
    admin: AdminClient,
    names: list[str],
    timeout_s: float = 30.0,
    min_partitions: dict[str, int] | None = None,
) -> None:
    """Creation returns before partitions have leaders; producing or reading offsets fails until then."""
    deadline = time.monotonic() + timeout_s
    wanted = min_partitions or {}
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=10).topics
        if all(
            name in topics
            and len(topics[name].partitions) >= wanted.get(name, 1)
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


def _watermarks(consumer: Consumer, partition: TopicPartition, attempts: int = 50) -> tuple[int, int]:
    """Watermark offsets, retrying while a just-created partition's leader is still being elected."""
    for attempt in range(attempts):
        try:
            return consumer.get_watermark_offsets(partition, timeout=5)
        except KafkaException as exc:
            if exc.args[0].name() != "NOT_LEADER_FOR_PARTITION" or attempt == attempts - 1:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")
