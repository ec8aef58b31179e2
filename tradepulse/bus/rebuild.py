"""Rebuilding window state after a start or a rebalance by reading back the input topics.

The feature windows are at most 5 minutes (plus grace), so the feature state of a partition at its
committed offset is a function of the last `rebuild_lookback_s` (390 s: the windows plus the volume
z-score's size-cap window, `FeatureConfig.rebuild_ms`) of that partition's input. The news join
(`tradepulse.core.news_join`) needs more: it remembers volume z-scores for 11 min behind the watermark
(a late article joins against them), each of which is only bit-identical to an uninterrupted run's when
the features' 390 s before it are replayed too, and it holds articles until their ticker's watermark is
60 s past them, however long ago they were produced. So on every assignment the runner reads, with a
separate group-less consumer (assign(), read_committed):

- per partition number p, the records of trades/quotes p from the look-back start up to (not including)
  the committed offset, the look-back being the processor's `state_lookback_s` (`rebuild_lookback_s` +
  the join's z-score memory — 660 s behind its settled watermark, itself the features' grace + 1 ms
  behind theirs — + the outlier reference window: 390 + 662.001 + 300 s by default). The
  look-back start is found with `offsets_for_times` at (timestamp of the last committed record of partition p, over all three topics)
  − look-back, so a runner restarting after a long outage still rebuilds from the data before its
  committed offset and not from the wall clock. Trades are produced when received, so their record
  timestamps follow event time closely (late trades beyond the 2 s grace are dropped anyway);
- of news p, exactly the articles still pending in the join at the committed offset: the runner commits
  their offsets as the metadata of the news offset (`encode_pending`, atomically with the offsets), so
  an article polled long ago, or published with an event time ahead of the market, is re-read wherever
  it lies, and no article already emitted is read again (it would be emitted twice if its ticker has
  no trades in the look-back). Without that metadata (committed by an older runner, or a pending list
  too long for Kafka's 4 KB metadata limit) news falls back to the time look-back;
- for a partition whose anomaly model was restored from a checkpoint at trades offset o
  (`replay_from`), the look-back runs from o's timestamp instead when that is earlier, so the model
  replays from its checkpoint with features computed over full windows;
- also the records the cold store has not durably written yet (`cold_next[tp]` .. committed), so that rows
  buffered in a crashed process's cold store are appended again (no gaps), and nothing below what the
  cold store already has is appended twice (no duplicates). This includes the runner's archived output
  topics, which carry no window state (`state_topics` excludes them: only their cold range is read).

Nothing is produced or written to the hot store while rebuilding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from tradepulse.bus.clients import consumer_config
from tradepulse.config import Settings
from tradepulse.topics import TRADES

log = logging.getLogger(__name__)

TP = tuple[str, int]


#: Prefix of the committed news offsets' metadata that lists the articles pending in the join.
PENDING_PREFIX = "pending:"
#: Kafka's default `offset.metadata.max.bytes` is 4096; beyond this the list is not committed.
MAX_PENDING_METADATA = 3500


def encode_pending(offsets: list[int]) -> str | None:
    """Commit metadata of a news partition: the sorted offsets of its pending articles, as base-36
    deltas. None when the list does not fit (the rebuild then falls back to the time look-back)."""
    parts, previous = [], 0
    for offset in offsets:
        parts.append(_base36(offset - previous))
        previous = offset
    text = PENDING_PREFIX + ",".join(parts)
    return text if len(text) <= MAX_PENDING_METADATA else None


def decode_pending(metadata: str | None) -> frozenset[int] | None:
    """The pending offsets of `encode_pending`, or None if the metadata carries none (not written by
    this runner version, or too long to commit)."""
    if not metadata or not metadata.startswith(PENDING_PREFIX):
        return None
    offsets, total = [], 0
    for part in filter(None, metadata[len(PENDING_PREFIX) :].split(",")):
        total += int(part, 36)
        offsets.append(total)
    return frozenset(offsets)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


@dataclass
class RebuildPlan:
    """What to read per partition: state records in [state_start, end), cold records in [cold_start, end).
    For a partition in `state_only`, only the records at those offsets are state (the pending news)."""

    end: dict[TP, int] = field(default_factory=dict)
    state_start: dict[TP, int] = field(default_factory=dict)
    cold_start: dict[TP, int] = field(default_factory=dict)
    state_only: dict[TP, frozenset[int]] = field(default_factory=dict)

    def is_state(self, tp: TP, offset: int) -> bool:
        only = self.state_only.get(tp)
        return offset >= self.state_start[tp] and (only is None or offset in only)

    def scan_start(self, tp: TP) -> int:
        return min(self.state_start[tp], self.cold_start[tp])

    def __bool__(self) -> bool:
        return any(self.scan_start(tp) < end for tp, end in self.end.items())


@dataclass
class RebuildStats:
    state_records: int = 0
    cold_records: int = 0
    seconds: float = 0.0


def _rebuild_consumer(settings: Settings, group_id: str) -> Consumer:
    # A group id is required by the client but never joined or committed: we only assign().
    return Consumer(
        consumer_config(
            settings,
            group_id,
            **{"enable.partition.eof": True, "fetch.wait.max.ms": 50, "fetch.min.bytes": 1},
        )
    )


def _read_ranges(
    consumer: Consumer,
    starts: dict[TP, int],
    ends: dict[TP, int],
    on_messages: Callable[[list[Message]], None],
    *,
    chunk: int,
    timeout_s: float,
) -> None:
    """Read [starts[tp], ends[tp]) of every partition, handing messages over in chunks."""
    pending = {tp for tp in starts if starts[tp] < ends[tp]}
    if not pending:
        return
    consumer.assign([TopicPartition(t, p, starts[(t, p)]) for t, p in pending])
    deadline = time.monotonic() + timeout_s
    try:
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"rebuild did not reach the committed offsets of {sorted(pending)}")
            messages = consumer.consume(chunk, timeout=0.5)
            keep: list[Message] = []
            for message in messages:
                tp = (message.topic(), message.partition())
                error = message.error()
                if error is not None:
                    # EOF before `end` happens when the tail is transaction markers: nothing more to read.
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(tp)
                    elif error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                        # A missing READ grant does not heal by retrying (as in the runner's loop): fail
                        # now with the denial instead of at the deadline with a timeout.
                        raise KafkaException(error)
                    else:
                        log.warning("rebuild read error on %s: %s", tp, error)
                    continue
                if tp not in pending:
                    continue
                offset = message.offset()
                assert offset is not None  # every record (a message without error) has an offset
                if offset < ends[tp]:
                    keep.append(message)
                if offset >= ends[tp] - 1:
                    pending.discard(tp)
            if keep:
                on_messages(keep)
    finally:
        consumer.unassign()


#: Errors of a watermark query that a moment heals: a freshly created topic's leader is not known yet.
_LEADER_ERRORS = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
)


def _watermarks(consumer: Consumer, tp: TopicPartition, timeout_s: float = 30.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            return int(low), int(high)
        except KafkaException as exc:
            if exc.args[0].code() not in _LEADER_ERRORS or time.monotonic() > deadline:
                raise
            log.info("watermarks of %s[%d] not available yet (%s); retrying", tp.topic, tp.partition, exc)
            time.sleep(0.2)


def plan_rebuild(
    settings: Settings,
    committed: list[TopicPartition],
    cold_next: Callable[[str, int], int | None],
    *,
    group_id: str,
    lookback_s: float,
    state_topics: Collection[str] | None = None,
    replay_from: dict[int, int] | None = None,
    pending: dict[TP, frozenset[int]] | None = None,
    timeout_s: float = 120.0,
) -> RebuildPlan:
    """Work out the ranges to read for the given committed offsets (see the module docstring). Only
    partitions of `state_topics` (all, if None) are read for state; the others only for the cold store.
    A partition in `pending` (news with the pending articles' offsets committed) reads exactly those
    offsets for state, however old."""
    plan = RebuildPlan()
    consumer = _rebuild_consumer(settings, group_id)
    try:
        lows: dict[TP, int] = {}
        for tp in committed:
            key = (tp.topic, tp.partition)
            low, high = _watermarks(consumer, TopicPartition(*key))
            lows[key] = low
            end = tp.offset if tp.offset != OFFSET_INVALID and tp.offset >= 0 else low
            plan.end[key] = max(low, min(end, high))
        # Timestamp of the last committed record of each partition number (over its topics).
        last_ts: dict[int, int] = {}

        def note_ts(messages: list[Message]) -> None:
            for message in messages:
                _, ts = message.timestamp()
                p = message.partition()
                assert p is not None  # every record has a partition
                if ts > last_ts.get(p, -1):
                    last_ts[p] = ts

        stateful = {tp for tp in plan.end if state_topics is None or tp[0] in state_topics}
        tail_starts = {tp: max(lows[tp], plan.end[tp] - 8) for tp in stateful}
        _read_ranges(consumer, tail_starts, plan.end, note_ts, chunk=1000, timeout_s=timeout_s)
        # Checkpointed trades offsets: the look-back is taken from the earlier of the two timestamps.
        checkpoints = {
            (TRADES, p): offset
            for p, offset in (replay_from or {}).items()
            if (TRADES, p) in plan.end and lows[(TRADES, p)] <= offset < plan.end[(TRADES, p)]
        }
        checkpoint_ts: dict[int, int] = {}

        def note_checkpoint_ts(messages: list[Message]) -> None:
            for message in messages:
                p = message.partition()
                assert p is not None  # every record has a partition
                checkpoint_ts[p] = message.timestamp()[1]

        ends = {tp: offset + 1 for tp, offset in checkpoints.items()}
        _read_ranges(consumer, checkpoints, ends, note_checkpoint_ts, chunk=1000, timeout_s=timeout_s)
        for p, ts in checkpoint_ts.items():
            last_ts[p] = min(last_ts.get(p, ts), ts)
        lookback_ms = int(lookback_s * 1000)
        queries = [
            TopicPartition(t, p, last_ts[p] - lookback_ms)
            for (t, p) in stateful
            if p in last_ts and plan.end[(t, p)] > lows[(t, p)]
        ]
        found = (
            {(tp.topic, tp.partition): tp.offset for tp in consumer.offsets_for_times(queries, 10)}
            if queries
            else {}
        )
        for key, end in plan.end.items():
            start = found.get(key, end) if key in stateful else end
            plan.state_start[key] = end if start < 0 else max(lows[key], min(start, end))
            if key in checkpoints:  # whatever the timestamps say, the model replays from its checkpoint
                plan.state_start[key] = min(plan.state_start[key], checkpoints[key])
            only = (pending or {}).get(key)
            if only is not None and key in stateful:
                # Exactly the articles the join still holds at the committed offset, wherever they lie.
                kept = frozenset(o for o in only if lows[key] <= o < end)
                if len(kept) < len(only):
                    log.warning(
                        "%d pending articles of %s[%d] are below the log start", len(only) - len(kept), *key
                    )
                plan.state_only[key] = kept
                plan.state_start[key] = min(kept, default=end)
            known = cold_next(*key)
            plan.cold_start[key] = lows[key] if known is None else max(lows[key], min(known, end))
    finally:
        consumer.close()
    return plan


def read_plan(
    settings: Settings,
    plan: RebuildPlan,
    on_messages: Callable[[list[Message]], None],
    *,
    group_id: str,
    chunk: int,
    timeout_s: float = 600.0,
) -> None:
    """Read every range of the plan, handing messages over in chunks of at most `chunk`."""
    starts = {tp: plan.scan_start(tp) for tp in plan.end}
    consumer = _rebuild_consumer(settings, group_id)
    try:
        _read_ranges(consumer, starts, plan.end, on_messages, chunk=chunk, timeout_s=timeout_s)
    finally:
        consumer.close()
