"""The runner's outputs on their way out and back: what a batch produces, how it is produced inside the
batch's Kafka transaction, and how the runner archives its own output topics to the cold store.

Split from `tradepulse.bus.runner` (which owns the loop, the transaction's boundaries and the
rebalances): these are the pieces that touch one producer call or one consumed record at a time.

- `produce_outputs`: features / anomalies / correlations / bars keyed by ticker, dead letters keyed by their
  id (payload cut by `topic_dead_letter`), all in the caller's open transaction.
- `retry_transactional`: a transactional call again while librdkafka reports a retriable error.
- `split_outputs` / `archive_outputs`: the runner consumes its own output topics (`ARCHIVED_OUTPUTS`,
  read_committed) and appends those records to the cold store by (topic, partition, offset), exactly as
  its input rows (see the runner's docstring for why this gives every output once in the cold store).
  Of market.features only the final revisions are archived: the cold `features` dataset keeps one
  vector per (ticker, second), the final one, as before revisions existed; the provisional revisions
  live on the topic and in the hot store only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from confluent_kafka import KafkaException, Message, Producer

from tradepulse.errors import BusError
from tradepulse.stores.base import ColdStore
from tradepulse.topics import ANOMALIES, BARS, CORRELATIONS, DEAD_LETTERS, FEATURES, OUTPUT_TOPICS

log = logging.getLogger(__name__)

Row = dict[str, Any]

#: The runner's own outputs, read back read_committed and archived to the cold store.
ARCHIVED_OUTPUTS = OUTPUT_TOPICS
#: Attempts of a transactional call that fails with a retriable error (a timeout, a coordinator move).
TXN_RETRIES = 5
# On market.dead-letters a letter's payload is cut to this many characters: the topic tells readers what
# failed and where, the DLQ store keeps the whole payload for redrive. Without the cut, the letter of an
# input message near the 1 MB message limit (a third larger again if binary, as base64) would not fit in
# one Kafka message and would fail the batch's transaction.
TOPIC_PAYLOAD_CHARS = 64 * 1024


@dataclass
class BatchOutputs:
    """What the core produced for one batch."""

    features: list[Row] = field(default_factory=list)
    anomalies: list[Row] = field(default_factory=list)
    correlations: list[Row] = field(default_factory=list)
    late_events: int = 0
    unknown_conditions: int = 0  # trades with a condition code the rules do not know
    bars: list[Row] = field(default_factory=list)
    #: Bar reconciliation decisions of the batch (`tradepulse.core.reconcile`): counted, not produced.
    bar_checks: list[Row] = field(default_factory=list)
    #: Milliseconds of the core's own stages (`features`, `anomaly`; see `tradepulse.bus.stages`).
    stage_ms: dict[str, float] = field(default_factory=dict)
    #: Per freshness stage (`stages.FRESHNESS_STAGES`), the event times (ms) of the trades it measures.
    fresh_ts_ms: dict[str, np.ndarray] = field(default_factory=dict)


def topic_dead_letter(letter: Row) -> Row:
    """The letter as produced to market.dead-letters: a payload over `TOPIC_PAYLOAD_CHARS` is cut (a
    base64 one on a 4-character boundary, so it still decodes) and the reason says so."""
    payload = letter["payload"]
    if len(payload) <= TOPIC_PAYLOAD_CHARS:
        return letter
    keep = TOPIC_PAYLOAD_CHARS
    if payload.startswith("b64:"):
        keep = 4 + (TOPIC_PAYLOAD_CHARS - 4) // 4 * 4
    note = f" (payload cut to {keep} of {len(payload)} characters; the DLQ store holds it whole)"
    return letter | {"payload": payload[:keep], "reason": letter["reason"] + note}


def produce_outputs(producer: Producer, outputs: BatchOutputs, dead_letters: list[Row]) -> None:
    """Produce a batch's outputs and dead letters into the producer's open transaction."""
    produce = producer.produce
    dumps = orjson.dumps

    def send(topic: str, key: str, row: Row) -> None:
        try:
            produce(topic, key=key.encode(), value=dumps(row))
        except BufferError:
            producer.poll(0.05)  # local queue full: let deliveries drain
            produce(topic, key=key.encode(), value=dumps(row))

    for topic, rows in (
        (FEATURES, outputs.features),
        (ANOMALIES, outputs.anomalies),
        (CORRELATIONS, outputs.correlations),
        (BARS, outputs.bars),
    ):
        for row in rows:
            send(topic, row["ticker"], row)
    # In the batch's transaction: an aborted attempt's letters are never seen by read_committed
    # readers, and the replay produces them again (same deterministic ids), so each shows once.
    for letter in dead_letters:
        send(DEAD_LETTERS, letter["dead_letter_id"], topic_dead_letter(letter))


def retry_transactional(call: Callable[[], None], what: str) -> None:
    """A transactional call, again while it fails with a retriable error (librdkafka: the operation may
    still be in progress and calling it again is safe); any other error propagates."""
    for attempt in range(1, TXN_RETRIES + 1):
        try:
            call()
            return
        except KafkaException as exc:
            error = exc.args[0]
            if not error.retriable() or error.txn_requires_abort() or attempt == TXN_RETRIES:
                raise
            log.warning("transaction %s failed with a retriable error (%s); retrying", what, error)


def split_outputs(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    """(input messages, archived output messages) of a consumed batch."""
    inputs: list[Message] = []
    outputs: list[Message] = []
    for message in messages:
        (outputs if message.topic() in ARCHIVED_OUTPUTS else inputs).append(message)
    return inputs, outputs


def record_position(message: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed record; librdkafka sets all three on every record that
    carries no error (None only on error events, which never reach the archive)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        raise BusError(f"consumed record without a position: {message.error()}")
    return topic, partition, offset


def archive_outputs(cold: ColdStore, messages: list[Message], start: Mapping[tuple[str, int], int]) -> int:
    """Append output records (read back read_committed) to the cold store by (topic, partition,
    offset); rows below `start` are already in a flushed file. Returns the rows at or above it."""
    by_topic: dict[str, tuple[list[Row], list[tuple[int, int]]]] = {}
    appended = 0
    for message in messages:
        topic, partition, offset = record_position(message)
        try:
            row = orjson.loads(message.value() or b"")
        except orjson.JSONDecodeError:
            # Only this runner writes these topics; a record it cannot read is a bug to see, not
            # a reason to stop archiving the rest.
            log.error("unreadable record at %s[%d]@%d not archived", topic, partition, offset)
            continue
        if topic == FEATURES and not row.get("final", True):
            continue  # the cold features are the final revisions only (docs/schema.md)
        rows, positions = by_topic.setdefault(topic, ([], []))
        rows.append(row)
        positions.append((partition, offset))
        appended += offset >= start.get((topic, partition), 0)
    for topic, (rows, positions) in by_topic.items():
        cold.append_batch(topic, rows, positions, start=start, flush=False)
    return appended
