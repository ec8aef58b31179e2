"""The exactly-once micro-batch runner: Kafka inputs → pure core → sinks → Kafka outputs → cold archive.

Loop, per micro-batch (what the consumer has queued, at most `batch_max_messages`, taken as soon as
there is a first message: `_next_batch`), on the runner's thread (`_process`):

1. `consumer.consume()` from the input topics market.trades / market.quotes / market.news and from the
   runner's own output topics (below), all read_committed; orjson decode, validation; invalid input
   messages become dead letters with their topic/partition/offset.
2. The batch's trades go to the hot store (`_write_trades`) before the core, so that a trade is readable
   (and its end-to-end latency ends) without waiting for its batch's core (measured in
   docs/benchmarks.md, issue 19, session 36). Two hot-store transactions a batch instead of one.
3. The core (`Processor`) turns the batch's input into feature snapshots, anomalies, correlations and
   closed one-minute bars.
4. Sinks, idempotent by deterministic keys: the outputs to the hot store (`_write_sinks`; each hot-store
   write makes 3 attempts with backoff, then its rows go to the DLQ), DLQ `put` of the batch's dead
   letters (the store carries the redrive policy).
5. The batch, with the consumer's positions after it and its group metadata, is handed to the commit
   thread (`_commit`), and the runner's thread goes on with the next batch.

On the commit thread: one Kafka transaction for everything handed over since its previous transaction
(a group commit, `tradepulse.bus.worker`: one batch when the runner keeps up with the commits, several
when a commit takes longer than a batch, up to `COMMIT_BACKLOG_BATCHES` full batches' worth of records):
produce market.features /
market.anomalies / market.correlations / market.bars, and every dead letter to market.dead-letters
keyed by its `dead_letter_id`, then `send_offsets_to_transaction(positions after the last batch, its
group metadata)` and commit. Then the cold thread (`_archive`) appends the committed batches' rows to
the cold store (inputs and outputs read back, by offset) and writes the files that are due; the cold
store only ever holds committed rows.

Why the threads (issue 19): the transaction commit is several round trips to the broker and the Parquet
writes take up to seconds; on the runner's thread both delayed every trade queued behind them.
Kafka transactions of one producer are sequential, so the overlap is between the runner's thread and
one committing transaction, and grouping is what keeps the commits from falling behind. Ownership keeps
it simple: the producer belongs to the commit thread and the cold store to the cold thread while they
have work; the runner's thread touches them only once both are idle (`_settle`: rebalances, rewinds,
shutdown), and handles their failures itself (`_recover`).

A crash anywhere before a transaction commits aborts its outputs and leaves its offsets uncommitted:
its batches are replayed, the keyed sinks overwrite what they already hold (the hot store may hold the
writes of the uncommitted batches: up to `COMMIT_BACKLOG_BATCHES` full batches' worth of records, plus
the one waiting to be handed over; the same rows again in the replay), and
the outputs (dead letters included) appear exactly once to read_committed readers. A transaction never
commits after an earlier one failed: the commit thread drops what is queued behind a failure.

Cold archive of the outputs: the runner's consumer also subscribes to the output topics
(`ARCHIVED_OUTPUTS`) and appends what it reads there to the cold store exactly like an input row, by
(topic, partition, offset), with the offsets committed in the same transactions. The alternative, the
runner appending the outputs it has just produced, has no stable position to name and checkpoint the
files by: an aborted attempt's rows are not the replay's (anomalies depend on the model's refits), their
offsets are only known after delivery, and every member writes to every output partition. Read back
read_committed, an output row exists once, at one offset, owned by one member of the group, so the
input topics' proof carries over unchanged: a kill -9 at any point leaves each cold dataset with 0
duplicates and 0 missing rows. The price is one batch of delay (a batch's outputs are archived with the
next batch) and, on a graceful stop, a drain of the output partitions up to their end (`_drain_outputs`).

Zombie fencing (KIP-447, librdkafka ≥ 1.6 and brokers ≥ 2.5): there is one transactional producer per
runner process, `transactional.id = <consumer_group>-runner-<instance>`. Offsets are committed with the
consumer's group metadata (generation + member id), so a runner that lost its partitions in a rebalance
but still believes it owns them is rejected by the group coordinator when it tries to commit their
offsets, and its transaction aborts; no per-partition transactional ids are needed. The instance id is
stable across restarts (`--instance`), so a restarted runner's `init_transactions()` fences its crashed
predecessor and aborts its open transaction at once, instead of read_committed readers waiting for the
transaction timeout.

Transaction errors, as librdkafka documents them (`rd_kafka_commit_transaction`, its transactions
example): a *retriable* error of `send_offsets_to_transaction` or `commit_transaction` (a timeout, a
coordinator moving) → call it again, the transaction is still open; an *abortable* one
(`txn_requires_abort`, e.g. offsets rejected after a rebalance) → `abort_transaction`, then rewind to the
committed offsets with state rebuilt and the cold store's buffers dropped (they are re-appended from its
checkpoint, see `_rewind`); a *fatal* one (the producer was fenced by another process with the same
transactional id) → the runner drops its cold buffers without writing them (the partitions are someone
else's now), closes, and raises, and the supervisor (`tradepulse up`, ECS) restarts the process.

Rebalances: the range assignor is eager, so every assignment is the member's full new set. On each
assignment the runner resets the core and rebuilds it from the look-back of the assigned partitions
(`tradepulse.bus.rebuild`), which is simpler than tracking state per partition and always correct. On
revocation it waits for the batches handed over to commit (still in the old generation: the group
waits for the callback) and flushes the cold store. Lost partitions (session timeout) are another
member's already: the transactions in flight fail and abort, the buffered cold rows are dropped, never
written; the callback itself returns at once and leaves that to the runner's thread (`_on_lost`), or
librdkafka fences the static member while it waits.

Every stage (batch wait, decode, core, hot write and commit wait per batch on the runner's thread;
produce and commit per transaction; cold append and cold flush per group of batches archived) and the
per-record ingest, Kafka and end-to-end latencies are recorded into `tradepulse.bus.stages`' histograms
(`RunnerMetrics.stages`), which the heartbeat publishes.

What a batch produces and how it is produced, retried and archived back is in `tradepulse.bus.outputs`;
the rebuild's reading in `tradepulse.bus.rebuild`. Why the rest is one module of this size: the
loop, the transaction boundaries, the rewind and the rebalance callbacks share the consumer, the
producer and the cold store's checkpoints, and the exactly-once argument above needs them read
together.
"""

from __future__ import annotations

import importlib
import importlib.abc
import logging
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from tradepulse.bus.clients import consumer_config, producer_config
from tradepulse.bus.decode import DecodedBatch, concat_fields, decode_batch
from tradepulse.bus.heap import HeapTrimmer
from tradepulse.bus.outputs import (
    ARCHIVED_OUTPUTS,
    BatchOutputs,
    archive_outputs,
    produce_outputs,
    retry_transactional,
    split_outputs,
)
from tradepulse.bus.rebuild import decode_pending, encode_pending, plan_rebuild, read_plan
from tradepulse.bus.stages import record_arrivals
from tradepulse.bus.status import RunnerMetrics, publish_status, stages_path, status_path, write_json_atomic
from tradepulse.bus.watchdog import Watchdog
from tradepulse.bus.worker import SerialWorker
from tradepulse.config import Settings
from tradepulse.errors import BusError
from tradepulse.gc_tuning import tune_gc
from tradepulse.metrics_emf import emitter_from_settings
from tradepulse.stores.base import ColdStore, DeadLetterQueue, HotStore
from tradepulse.stores.dlq import make_dead_letter
from tradepulse.topics import (
    INPUT_TOPICS,
    NEWS,
    QUOTES,
    TRADES,
    VENDOR_BARS,
)

log = logging.getLogger(__name__)

Row = dict[str, Any]

# A transaction left open by a process that never comes back blocks read_committed readers (and the
# committed-offset fetch of whoever takes its partitions over) until it times out; keep that short.
TRANSACTION_TIMEOUT_MS = 20_000
#: librdkafka's timeouts of the transactional calls (seconds). librdkafka does not always keep them
#: (#5456: `send_offsets_to_transaction` waits for a group coordinator without one): a call still
#: running `WATCHDOG_GRACE_S` after its own timeout is hung, and the watchdog restarts the process
#: (sooner if `commit_watchdog_s` is shorter).
INIT_TIMEOUT_S = 30.0
SEND_OFFSETS_TIMEOUT_S = 30.0
COMMIT_TIMEOUT_S = 60.0
ABORT_TIMEOUT_S = 30.0
WATCHDOG_GRACE_S = 10.0
# How long the partitions of an instance that died and does not come back stay unowned.
SESSION_TIMEOUT_MS = 10_000
#: The runner's fetch.min.bytes when `batch_fetch_wait_ms` is set: above what a frame's records carry
#: (~200 kB before compression at 15k ev/s: ~750 events of ~270 bytes), so a caught-up fetch is answered
#: when the wait is over, with what landed meanwhile, not with the first partition's records alone;
#: behind by this much, at once.
FETCH_MIN_BYTES = 1024 * 1024


# numpy's switch behind its documented `NUMPY_MADVISE_HUGEPAGE` variable (read once, at import) is a
# private function of its C module (no stubs, hence Any).
_NUMPY_MULTIARRAY: Any = importlib.import_module("numpy._core.multiarray")


def numpy_hugepages() -> bool:
    """Whether numpy asks the kernel for transparent huge pages (madvise) on arrays of 4 MiB and more."""
    return bool(_NUMPY_MULTIARRAY._get_madvise_hugepage())


def set_numpy_hugepages(enabled: bool) -> None:
    """Turn numpy's huge-page advice on or off, for the arrays allocated from now on."""
    _NUMPY_MULTIARRAY._set_madvise_hugepage(enabled)


def keep_pandas_out() -> None:
    """Make pandas unimportable in this process (a runner's; call it before anything builds an Arrow
    array). pyarrow imports pandas, when it is installed, the first time it builds an array (to
    recognise pandas inputs, which the runner never hands it), and pandas then stays resident for the
    life of the process: ~50 MiB (docs/benchmarks.md). Nothing the runner runs needs it: the session
    table's calendar runs in a child (`tradepulse.bus.pipeline.nyse_sessions`). An import of pandas
    then raises ModuleNotFoundError, which pyarrow takes as "not installed". A no-op if pandas is loaded."""
    if "pandas" not in sys.modules and not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())


class _NoPandas(importlib.abc.MetaPathFinder):
    """The import system's first finder in a runner's process: refuses pandas (`keep_pandas_out`). A
    finder, not a None in `sys.modules`: Cython's imports (pyarrow's) take that None for the module."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError(f"{fullname} is kept out of the runner's process", name=fullname)
        return None


def tune_process() -> None:
    """Process-wide settings of a runner process; for entry points that run a `Runner`.

    - `tune_gc`: what is alive now is frozen out of the cyclic collector, and full collections are rare.
    - numpy's huge pages off, unless `NUMPY_MADVISE_HUGEPAGE` chooses. A re-layout of the feature
      core's window state allocates and fills a few hundred MiB of fresh arrays; with huge pages
      advised (numpy's default on Linux, where THP is `madvise`), faulting in those fresh pages cost
      4–9× as much on the VM measured, and the one re-layout of a 15k ev/s run took 4.1 s instead of
      0.45 s (docs/benchmarks.md, "Huge pages off in the runner process").
    - Arrow's allocations (the cold store's tables) in jemalloc, unless `ARROW_DEFAULT_MEMORY_POOL`
      chooses (`prefer_jemalloc`).

    The entry points call `tradepulse.bus.heap.tune_malloc` (glibc's heap) and `keep_pandas_out` first,
    before they build the runner.
    """
    # Imported here: Arrow is the cold store's, which a runner process builds anyway; this module does
    # not load it.
    from tradepulse.stores.parquet_cold import prefer_jemalloc

    tune_gc()
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:
        set_numpy_hugepages(False)
    prefer_jemalloc()


#: Records (inputs and archived outputs) handed to the commit thread and not yet committed, at most, in
#: full batches (`batch_max_messages`). The commit thread commits everything handed over while its
#: previous transaction was committing, and until `commit_interval_ms` after that one began, in one
#: transaction (a group commit: `tradepulse.bus.worker`), so the runner's thread goes on consuming,
#: processing and writing the hot store meanwhile: with one transaction committing, up to three full
#: batches (or many small ones) wait to be grouped into the next. The bound caps what an abort replays
#: and what is held in memory; a batch that has to wait for it ends the interval's wait at once.
COMMIT_BACKLOG_BATCHES = 4
#: Records of committed batches waiting for the cold thread, at most (~3 s of 15k ev/s): absorbs a
#: Parquet flush of a few seconds without stalling the commits, and bounds the memory held meanwhile.
COLD_BACKLOG_RECORDS = 50_000

#: How long a graceful stop waits for the output partitions to be archived up to their end (within the
#: stop timeouts of `tradepulse up`, 20 s, and of ECS, 60 s).
DRAIN_OUTPUTS_S = 10.0


class Processor(Protocol):
    """The pure core behind the runner: stateful, deterministic, no I/O."""

    @property
    def model_version(self) -> int: ...

    def flag_outliers(self, batch: DecodedBatch) -> dict[str, int]:
        """Flag the batch's suspect trades (`outlier` on each trade row) before it is stored or
        processed; returns flagged trades per reason. Stateful like `process`, and rebuilt with it."""

    def process(self, batch: DecodedBatch, *, emit: bool, paced: bool = True) -> BatchOutputs:
        """Fold a batch into the state. With emit=False (rebuild) outputs may be skipped. paced=False
        emits every waiting provisional feature revision, due or not (`revisions_waiting`)."""

    def reset(self) -> None:
        """Forget all window state (before a rebuild)."""

    def revisions_waiting(self) -> bool:
        """Accepted trades wait for their ticker's next provisional feature revision, which `process`
        emits once it is due, for an empty batch too (the runner's idle flush), or unpaced."""

    def revisions_due(self) -> bool:
        """Some waiting revision is due now: an empty batch would emit it (checked before building one)."""

    @property
    def state_lookback_s(self) -> float:
        """How much input time before the committed offsets the rebuild replays for window state."""

    def pending_news(self) -> dict[int, list[int]]:
        """Per news partition, the offsets of the articles the state still holds (committed with the
        offsets, so a rebuild re-reads exactly them)."""

    def restore(self, committed: dict[tuple[str, int], int]) -> dict[int, int]:
        """Before a rebuild: restore checkpointed state at or below the committed offsets; returns, per
        partition number, the trades offset from which the rebuild must replay for it."""

    def close(self) -> None: ...


class Backpressure(Protocol):
    """`tradepulse.bus.backpressure.BackpressureController`."""

    activations: int

    def record(self, latency_ms: float) -> None: ...

    def should_pause(self) -> bool: ...

    def pause_remaining_s(self) -> float: ...


#: Errors that mean this principal may not do what the runner needs; retrying cannot help.
_DENIED = (
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
)
#: Consume errors that end the runner: the denials, and librdkafka's fatal consumer error (`_FATAL`, e.g.
#: fenced by a static member with the same group.instance.id), whose KafkaError does not always say
#: `fatal()`.
_FATAL_CODES = (*_DENIED, KafkaError._FATAL)
#: librdkafka's own log of the runner's producer (`_ProducerLog`).
librdkafka_log = logging.getLogger("tradepulse.bus.librdkafka")


class _ProducerLog:
    """Receives the transactional producer's librdkafka log as confluent-kafka hands it over (the
    `logger` setting: `log(level, fmt, facility, client, message)`, called when the producer is polled,
    so a line's time is when it was served). Each line goes to `tradepulse.bus.librdkafka` at its
    level; a `FAIL` line (a connection to a broker that failed, or that the broker closed while it was
    in use) also calls `on_broker_failure`. librdkafka's error callback hears only of a failed connect,
    not of a close, and after a close librdkafka need not connect again while the broker is down."""

    def __init__(self, on_broker_failure: Callable[[], None]) -> None:
        self.on_broker_failure = on_broker_failure

    def log(self, level: int, fmt: str, facility: str, client: str, message: str) -> None:
        librdkafka_log.log(level, fmt, facility, client, message)
        if facility == "FAIL":
            self.on_broker_failure()


@dataclass
class _Batch:
    """One batch on its way from the runner's thread (`_process`) through the commit thread (`_commit`)
    to the cold thread (`_archive`); nothing in it changes once it is handed over."""

    inputs: list[Message]
    batch: DecodedBatch
    outputs: BatchOutputs
    outputs_read: list[Message]
    dead_letters: list[Row]
    positions: list[KafkaTopicPartition]
    group_metadata: Any
    outliers: dict[str, int]
    model_version: int
    consumed_us: int
    batch_ms: float

    @property
    def records(self) -> int:
        """Consumed records: input and archived output messages (at least 1, the workers' weight)."""
        return max(1, len(self.inputs) + len(self.outputs_read))


def _close_clients(consumer: Consumer | None, producer: Producer | None) -> None:
    """Close both clients (the producer even if the consumer's close raised). A transaction left open
    by a failure is aborted by the broker (or by the restarted instance's init_transactions) if the
    producer's close cannot."""
    try:
        if consumer is not None:
            consumer.close()
    finally:
        if producer is not None:
            producer.close()


class Runner:
    """One runner process (one consumer group member, one transactional producer)."""

    def __init__(
        self,
        settings: Settings,
        *,
        processor: Processor,
        hot: HotStore,
        cold_factory: Callable[[], ColdStore],
        dlq: DeadLetterQueue,
        backpressure: Backpressure,
        sink_retry: Callable[[Callable[[], object]], object],
        instance: str = "0",
        status_file: Path | None = None,
        status_interval_s: float = 1.0,
        commit_watchdog: Watchdog | None = None,
    ) -> None:
        self.settings = settings
        # Guards the transactional calls (init, commit, abort, the close after a failure) against
        # librdkafka calls that never return (see watchdog.py, `_guard`).
        self.commit_watchdog = commit_watchdog
        self.processor = processor
        self.hot = hot
        # A fresh cold store per assignment: its caches of open blocks are only valid while this
        # process owns the partitions (another member may have rewritten the files meanwhile).
        self.cold_factory = cold_factory
        self.cold = cold_factory()
        self.dlq = dlq
        self.backpressure = backpressure
        self.sink_retry = sink_retry
        self.instance = instance
        self.group_id = settings.consumer_group
        self.transactional_id = f"{settings.consumer_group}-runner-{instance}"
        self.status_file = status_file or status_path(settings.data_dir, instance)
        self.status_interval_s = status_interval_s
        self.metrics = RunnerMetrics()
        self.emf = emitter_from_settings(settings, "processor")
        self._stop = threading.Event()
        # Set by the producer's log (a broker connection failed or closed), read and cleared by the
        # commit thread before a transaction (`_producer_for_commit`).
        self._producer_lost_broker = False
        # The assignment and the group metadata (generation, member id) that its batches commit with,
        # kept by the rebalance callbacks: asking the consumer is a round trip to librdkafka's main
        # thread per batch, which waits behind whatever that thread is doing.
        self._assignment: list[KafkaTopicPartition] = []
        self._group_metadata: Any = None
        # Rebalance callbacks served so far (`_more`): a batch is gathered within one assignment.
        self._rebalances = 0
        # Lost partitions whose cleanup waits for the runner's thread (`_after_loss`).
        self._loss_pending = False
        # Next offset the cold store still needs, per consumed partition; lower offsets are already there.
        self._cold_next: dict[tuple[str, int], int] = {}
        self._last_status = 0.0
        self._last_lag = 0.0
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        # The producer is the commit thread's while a batch is handed over, the cold store the cold
        # thread's while one is queued there; this thread uses them only once both are idle (`_settle`).
        self._commits = SerialWorker[_Batch](
            f"runner-{instance}-commit",
            self._commit,
            COMMIT_BACKLOG_BATCHES * settings.batch_max_messages,
            min_interval_s=settings.commit_interval_ms / 1000,
        )
        self._cold_writes = SerialWorker[_Batch](
            f"runner-{instance}-cold", self._archive, COLD_BACKLOG_RECORDS
        )
        # The heartbeat is published on a thread of its own, when this loop asks for it (`_maybe_status`):
        # its slow parts (the stage percentiles, the status file, the DLQ depth and the hot store's put,
        # an SQS and a DynamoDB call in AWS) no longer hold up a batch, and a loop that is stuck still
        # stops the heartbeat, as /health expects.
        self._heartbeats = SerialWorker[None](f"runner-{instance}-status", self._publish_status, 1)
        # Trimmed on the status thread too: off the runner's loop, at most every memory_trim_interval_s.
        self._heap = HeapTrimmer(settings.memory_trim_interval_s)

    # --- lifecycle ---------------------------------------------------------------------------

    def request_stop(self, *_args: object) -> None:
        """Finish the current batch, commit, flush and close (safe from a signal handler)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def _new_producer(self) -> Producer:
        """The transactional producer (a method, so a test can wrap it to inject transaction errors)."""
        return Producer(
            producer_config(
                self.settings,
                transactional_id=self.transactional_id,
                **{
                    "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                    "logger": _ProducerLog(self._on_broker_failure),
                },
            )
        )

    def _on_broker_failure(self) -> None:
        """A connection of the producer to a broker failed or was closed (its log's `FAIL` line): it is
        replaced before the next transaction (`_producer_for_commit`)."""
        self._producer_lost_broker = True

    def _producer_for_commit(self) -> Producer:
        """The producer for the next transaction: a new one if a connection of the current one to a
        broker failed or was closed since its last transaction. After a broker restart librdkafka can
        keep the broker's retired handle as the group coordinator and wait for it forever in
        `send_offsets_to_transaction` (confluentinc/librdkafka#5511), which only the watchdog ended; a
        new producer looks the coordinators up afresh. Between transactions nothing is open, so the
        close has nothing to abort, and the new producer's `init_transactions` fences nothing but the
        closed one."""
        producer = self.producer
        assert producer is not None
        producer.poll(0)  # serves the producer's log
        if not self._producer_lost_broker:
            return producer
        self._producer_lost_broker = False
        log.warning("the producer lost a broker connection since its last transaction: replacing it")
        started = time.perf_counter()
        with self._guard("producer close"):
            producer.close()
        producer = self.producer = self._new_producer()
        retry_transactional(lambda: self._init_transactions(producer), "init")
        log.info("producer replaced in %.0f ms", (time.perf_counter() - started) * 1000)
        return producer

    def _init_transactions(self, producer: Producer) -> None:
        """`init_transactions` of a new producer; what it met until then does not count towards its
        replacement. A producer that has sent no offsets has no group coordinator to be stale, and
        counting its start (e.g. a bootstrap address of a broker that stays down in a rolling restart)
        would replace every new producer again."""
        self._bounded("transaction init", producer.init_transactions, INIT_TIMEOUT_S)
        producer.poll(0)  # serves the producer's log
        self._producer_lost_broker = False

    def run(self, stop_when: Callable[[RunnerMetrics], bool] | None = None) -> RunnerMetrics:
        """Consume until a stop is requested, or `stop_when(metrics)` is true (checked every poll);
        then archive the outputs up to their end, commit, flush and close. A fatal Kafka error (e.g.
        fenced by another process with the same instance id) is raised after the clients are closed."""
        self.producer = self._new_producer()
        clean = False
        try:
            # Before joining the group: fences a crashed predecessor with the same id and aborts its
            # open transaction, so its pending offset commit does not stall the committed-offset fetch.
            self._init_transactions(self.producer)
            self.consumer = Consumer(
                consumer_config(
                    self.settings,
                    self.group_id,
                    **{
                        "queued.max.messages.kbytes": 32768,
                        "max.poll.interval.ms": 600_000,
                        # Static membership (KIP-345): a restarted instance takes its partitions back at
                        # once instead of waiting for the group to expire its crashed predecessor.
                        "group.instance.id": self.transactional_id,
                        "session.timeout.ms": SESSION_TIMEOUT_MS,
                        **self._fetch_gathering(),
                    },
                )
            )
            self.consumer.subscribe(
                [*INPUT_TOPICS, *ARCHIVED_OUTPUTS],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            while not self._stop.is_set():
                messages, wait_ms = self._next_batch()
                self._after_loss()
                if messages:
                    self._process(messages, wait_ms)
                    if self.backpressure.should_pause():
                        self._pause()
                elif self.processor.revisions_due():
                    # Idle, with trades whose provisional feature revision came due (its interval,
                    # `feature_revision_interval_ms`): no batch comes to emit it.
                    self._process([])
                else:
                    self._recover()  # a failed commit of the last batch, with nothing new to process
                self._maybe_status()
                if stop_when is not None and stop_when(self.metrics):
                    break
            if self.processor.revisions_waiting():
                # A stop does not leave the latest trades out of the features until the next start.
                self._process([], paced=False)
            self._drain_outputs()
            clean = True
        finally:
            self._shutdown(clean)
        return self.metrics

    def _fetch_gathering(self) -> dict[str, int]:
        """The consumer settings of `batch_fetch_wait_ms`: none when 0 (the broker answers a fetch at
        the first record; consumer_config's wait then only bounds an idle fetch)."""
        wait_ms = self.settings.batch_fetch_wait_ms
        return {"fetch.min.bytes": FETCH_MIN_BYTES, "fetch.wait.max.ms": wait_ms} if wait_ms else {}

    def _next_batch(self) -> tuple[list[Message], float]:
        """The next micro-batch and how long it waited to be gathered (ms, the `batch_wait` stage).

        Adaptive: whatever the consumer has queued is taken at once, up to `batch_max_messages`. When
        caught up that is a small batch, taken as soon as its first message arrives (no batch wait);
        behind by more than a batch it waits up to `batch_backlog_linger_ms` to fill the batch
        (`_linger_s`). `batch_linger_ms` > 0 always waits that long for more after the first message
        (fewer, larger batches at a latency cost); 10 ms is what a plain `consume(batch_max_messages,
        10 ms)` did before. Idle, it blocks up to
        `batch_max_wait_ms` for a first message (the loop then writes the status and checks for a stop)."""
        consumer = self.consumer
        assert consumer is not None
        most = self.settings.batch_max_messages
        messages = consumer.consume(most, 0)
        if not messages:
            first = consumer.poll(self.settings.batch_max_wait_ms / 1000)
            if first is None:
                return [], 0.0
            # Whatever arrived with it (one fetch response fills the queue at once).
            messages = self._more(consumer, [first], most - 1, 0)
        gathered = time.perf_counter()
        linger = self._linger_s()
        if linger > 0 and len(messages) < most:
            messages = self._more(consumer, messages, most - len(messages), linger)
        return messages, (time.perf_counter() - gathered) * 1000

    def _more(
        self, consumer: Consumer, messages: list[Message], count: int, timeout_s: float
    ) -> list[Message]:
        """`messages` and what `consume(count, timeout_s)` adds to them, unless a rebalance callback ran
        in that call: then `messages` belong to the previous assignment and are dropped. Their offsets
        were not committed, so the partitions' owner consumes them again; processed here, they would
        commit without their offsets (or with a new owner's) and be processed twice. librdkafka drops
        the outdated messages of the call itself."""
        rebalances = self._rebalances
        more = consumer.consume(count, timeout_s)
        if self._rebalances == rebalances:
            return messages + more
        log.info(
            "rebalanced while gathering a batch: %d messages of the previous assignment dropped",
            len(messages),
        )
        return more

    def _linger_s(self) -> float:
        """How long `_next_batch` waits for more after a batch's first messages: `batch_linger_ms`, or
        `batch_backlog_linger_ms` if longer while the runner is behind by more than a batch (lag from the
        last status, ≤ 1 s old). Behind, fewer and fuller batches pay the per-batch transaction commit
        (the largest fixed cost, docs/benchmarks.md) less often; caught up, nothing waits."""
        linger_ms = self.settings.batch_linger_ms
        if self.metrics.consumer_lag > self.settings.batch_max_messages:
            linger_ms = max(linger_ms, self.settings.batch_backlog_linger_ms)
        return linger_ms / 1000

    def _shutdown(self, clean: bool) -> None:
        error: BaseException | None = None
        if clean:
            try:
                self._after_loss()
                # The last batches' transactions; an abort leaves them to the restart's replay.
                self._settle()
            except BaseException as exc:  # raised once the clients are closed
                error, clean = exc, False
        # Idle after a clean stop; after a failure the batches still queued are dropped uncommitted.
        self._commits.close(drop=True)
        self._cold_writes.close(drop=True)
        for worker in (self._commits, self._cold_writes):
            # A failure the runner stopped for has been raised already; one left behind is logged here,
            # so that no error of either thread disappears (and the revoke callback, which consumer.close
            # may run, finds none to raise in place of the one that stopped the runner).
            if (failure := worker.reset()) is not None:
                log.error("%s failed while the runner stopped", worker.name, exc_info=failure)
        if clean:
            try:
                self.cold.close()
            except Exception:
                log.exception("cold store flush on shutdown failed; the rows are replayed on restart")
        else:
            # After a failure the partitions may already be another member's (fenced, lost): writing
            # the buffered rows could overwrite its files. The restart re-appends them from the
            # checkpoint instead.
            self.cold = self.cold_factory()
        self._heartbeats.close()
        self.metrics.stopped_at = time.time()  # the last heartbeat: left, not lost (for /health)
        self._write_status()
        # Dropping the clients here, on this thread, breaks the runner ↔ consumer reference cycle (the
        # rebalance callbacks are bound methods): a client freed later by the garbage collector, on
        # whatever thread it runs, can abort the process (see tradepulse.bus.admin).
        consumer, self.consumer = self.consumer, None
        producer, self.producer = self.producer, None
        # The producer's close aborts a transaction left open, which after a broker restart can wait
        # forever like `abort_transaction` (a hung runner in CI: fenced consumer, failed commit, close
        # never returned). After a failure the watchdog restarts the process in place, as a supervisor
        # would after the error; a requested stop is left to the supervisor that asked for it (it kills
        # what outlives its timeout).
        try:
            with nullcontext() if clean else self._guard("client close after a failure"):
                _close_clients(consumer, producer)
        finally:
            self.processor.close()
        if error is not None:
            raise error

    def _drain_outputs(self) -> None:
        """Before a graceful stop: archive the output partitions of this member up to their end, so the
        outputs of the last batches are in the cold store too (otherwise the next owner archives them).
        Input partitions are paused; input already fetched is processed normally (its outputs then
        extend the drain). Bounded by `DRAIN_OUTPUTS_S`: another member's open transaction on one of
        these partitions is left to the partition's next owner."""
        consumer = self.consumer
        assert consumer is not None
        outputs = [tp for tp in consumer.assignment() if tp.topic in ARCHIVED_OUTPUTS]
        if not outputs:
            return
        inputs = [tp for tp in consumer.assignment() if tp.topic not in ARCHIVED_OUTPUTS]
        if inputs:
            consumer.pause(inputs)
        deadline = time.monotonic() + DRAIN_OUTPUTS_S
        while time.monotonic() < deadline:
            messages = consumer.consume(self.settings.batch_max_messages, 0.1)
            self._after_loss()
            if messages:
                self._process(messages)
            # The watermarks count only what was produced: every handed-over batch committed first.
            elif not self._settle(rewind=True) and self._outputs_archived(consumer, outputs):
                return
        log.warning("output partitions not archived to their end within %.0fs", DRAIN_OUTPUTS_S)

    def _outputs_archived(self, consumer: Consumer, outputs: list[KafkaTopicPartition]) -> bool:
        """Every output partition consumed up to its end (the position passes transaction markers)."""
        for tp in consumer.position(outputs):
            try:
                _, high = consumer.get_watermark_offsets(tp, timeout=5)
            except KafkaException as exc:  # e.g. a leader moving: ask again until the drain's deadline
                log.info("watermarks of %s[%d] unavailable (%s)", tp.topic, tp.partition, exc)
                return False
            if high > 0 and self._position(tp) < high:
                return False
        return True

    def _position(self, tp: KafkaTopicPartition) -> int:
        """The next offset to consume: the consumer's position, or, while nothing was consumed since the
        assignment (position unset), the committed offset it started from (-1 if none)."""
        if tp.offset >= 0:
            return int(tp.offset)
        return self._cold_next.get((tp.topic, tp.partition), -1)

    # --- rebalance --------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        self._after_loss()
        self._rebalances += 1
        self._assignment = list(partitions)
        # This generation's: every rebalance revokes (or loses) the whole assignment and assigns anew
        # (eager `range`), so it is refreshed here. Were it stale, the broker would reject the offsets
        # (an abortable error: the batches replay, `_rewind` refreshes it), never accept them.
        self._group_metadata = consumer.consumer_group_metadata()
        self.metrics.assigned_partitions = len(partitions)
        log.info("assigned %s", sorted((p.topic, p.partition) for p in partitions))
        self._settle()  # idle already: a revocation or loss came first
        self.processor.reset()
        self._cold_next.clear()
        self.cold.close()
        self.cold = self.cold_factory()
        if not partitions:
            return
        committed = self._committed(consumer, partitions)
        self._rebuild(committed)
        self.metrics.assignments += 1

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        self._after_loss()
        self._rebalances += 1
        log.info("revoked %s", sorted((p.topic, p.partition) for p in partitions))
        # The batches handed over commit with this generation (the group waits for this callback), or
        # abort and are replayed by the partitions' next owner.
        self._settle()
        # Rows of committed batches that are still buffered (the cold store holds no others) must be on
        # disk before another member takes the partitions over and appends from where it stands.
        self.cold.flush(force=True)
        self.processor.reset()
        self._assignment = []
        self._group_metadata = None
        self.metrics.assigned_partitions = 0

    def _on_lost(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        """The session timed out: the partitions are another member's, or ours again after the rejoin.
        Returns at once; the cleanup waits for the runner's thread (`_after_loss`). By now librdkafka
        has forgotten a static member's id, and until this callback returns it heartbeats with the
        empty one, which the broker, still holding the member, answers with a fatal
        FENCED_INSTANCE_ID (confluentinc/librdkafka#3437): waiting here for the commit in flight,
        tens of seconds after a broker restart, fenced the runner."""
        self._rebalances += 1
        log.warning("partitions lost %s", sorted((p.topic, p.partition) for p in partitions))
        self._loss_pending = True
        self._assignment = []
        self._group_metadata = None
        self.metrics.assigned_partitions = 0

    def _after_loss(self) -> None:
        """The cleanup of lost partitions (`_on_lost`), if one is pending: on the runner's thread, after
        the callback returned and before anything else uses the state (the loop's next batch, the next
        rebalance callback, the output drain, the shutdown)."""
        if not self._loss_pending:
            return
        self._loss_pending = False
        self._settle()  # commits of the lost generation fail and abort; their batches are the owner's
        self.processor.reset()
        # Another member owns them already: its files must not be overwritten with our buffers (the
        # next assignment's close() would flush them). Dropped rows are re-appended by their owner.
        self.cold = self.cold_factory()
        self._cold_next.clear()

    @staticmethod
    def _committed(consumer: Consumer, partitions: list[KafkaTopicPartition]) -> list[KafkaTopicPartition]:
        # read_committed consumers fetch committed offsets with require_stable: while a crashed
        # transaction is pending the fetch is retried; allow for the transaction timeout.
        last_error: Exception | None = None
        for _ in range(5):
            try:
                return consumer.committed(partitions, timeout=TRANSACTION_TIMEOUT_MS / 1000 + 10)
            except KafkaException as exc:
                last_error = exc
                log.warning("committed-offset fetch failed (%s); retrying", exc)
        raise BusError(f"cannot fetch committed offsets: {last_error}")

    def _rebuild(self, committed: list[KafkaTopicPartition]) -> None:
        started = time.monotonic()
        # The anomaly models come back from checkpoints, which may lie further back than the look-back.
        replay_from = self.processor.restore({(tp.topic, tp.partition): tp.offset for tp in committed})
        plan = plan_rebuild(
            self.settings,
            committed,
            self.cold.next_offset,
            group_id=f"{self.group_id}-rebuild",
            lookback_s=self.processor.state_lookback_s,
            state_topics=INPUT_TOPICS,
            replay_from=replay_from,
            pending={
                (tp.topic, tp.partition): offsets
                for tp in committed
                if tp.topic == NEWS and (offsets := decode_pending(tp.metadata)) is not None
            },
        )
        self._cold_next.update(plan.end)
        counts = {"state": 0, "cold": 0, "invalid": 0}

        def feed(messages: list[Message]) -> None:
            inputs, outputs = split_outputs(messages)
            if outputs:
                counts["cold"] += archive_outputs(self.cold, outputs, plan.cold_start)
            if not inputs:
                return
            batch = decode_batch(inputs)
            self.processor.flag_outliers(batch)  # every replayed trade: the cold rows carry the flag too
            counts["invalid"] += len(batch.dead_letters)
            cold_rows = 0
            fields = {TRADES: batch.trade_fields, QUOTES: batch.quote_fields}
            # Only the column store (Arrow conversion) needs them, and it is the first to use the batch.
            batch.trade_fields = batch.quote_fields = None
            for topic, rows, positions in (
                (TRADES, batch.trades, batch.trade_pos),
                (QUOTES, batch.quotes, batch.quote_pos),
                (NEWS, batch.news, batch.news_pos),
                (VENDOR_BARS, batch.vendor_bars, batch.vendor_bar_pos),
            ):
                if rows:
                    self.cold.append_batch(
                        topic,
                        rows,
                        positions,
                        start=plan.cold_start,
                        flush=False,
                        columns=fields.get(topic),
                    )
                keep = []
                for i, (partition, offset) in enumerate(positions):
                    tp = (topic, partition)
                    if offset >= plan.cold_start[tp]:
                        cold_rows += 1
                    if plan.is_state(tp, offset):
                        keep.append(i)
                if len(keep) < len(rows):
                    batch.keep(topic, keep)
            batch.dead_letters.clear()  # already dead-lettered when first consumed
            counts["cold"] += cold_rows
            counts["state"] += len(batch)
            if len(batch):
                self.processor.process(batch, emit=False)

        if plan:
            read_plan(
                self.settings,
                plan,
                feed,
                group_id=f"{self.group_id}-rebuild",
                chunk=self.settings.batch_max_messages,
            )
            self.cold.flush(force=True)
        log.info(
            "rebuilt state from %d records (%d re-appended to the cold store) in %.2fs",
            counts["state"],
            counts["cold"],
            time.monotonic() - started,
        )

    # --- one batch ----------------------------------------------------------------------------------

    def _process(self, messages: list[Message], wait_ms: float = 0.0, *, paced: bool = True) -> None:
        """The batch's part on the runner's thread: decode, core, hot store and DLQ, then hand it to the
        commit thread (`_commit`), which archives it to the cold store after the commit (`_archive`).
        No messages: a flush, a batch of the provisional revisions that came due (all waiting ones
        with paced=False), if any."""
        if self._recover():
            return  # aborted and rewound: these messages predate the seek and are consumed again
        consumer = self.consumer
        assert consumer is not None
        started = time.perf_counter()
        consumed_us = time.time_ns() // 1000
        valid = []
        for message in messages:
            error = message.error()
            if error is None:
                valid.append(message)
            elif error.fatal() or error.code() in _FATAL_CODES:
                # A missing grant does not heal by retrying, and a fenced consumer (a successor with the
                # same static group.instance.id) never gets another message: stop instead of spinning.
                raise KafkaException(error)
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", error)
        inputs, outputs_read = split_outputs(valid)
        batch = decode_batch(inputs)
        outliers = self.processor.flag_outliers(batch)
        decoded = time.perf_counter()
        stage_ms = {"batch_wait": wait_ms, "decode": (decoded - started) * 1000}
        # The trades first: a trade is readable, and its e2e ends, without waiting for its batch's core.
        dead_letters = self._write_trades(batch, stage_ms) if batch.trades else []
        written = time.perf_counter()
        # A batch of archived outputs only has nothing for the core and the hot store.
        flush = not messages
        outputs = (
            self.processor.process(batch, emit=True, paced=paced) if len(batch) or flush else BatchOutputs()
        )
        if flush and not outputs.features:
            return  # none came due yet
        stage_ms |= {"core": (time.perf_counter() - written) * 1000, **outputs.stage_ms}
        if len(batch) or flush:
            dead_letters = self._write_sinks(batch, outputs, dead_letters, stage_ms)
        job = _Batch(
            inputs=inputs,
            batch=batch,
            outputs=outputs,
            outputs_read=outputs_read,
            dead_letters=dead_letters,
            # What this batch's transaction commits: the positions after it (before the next consume)
            # with the news join's pending articles, and the group generation it was consumed in.
            positions=self._with_pending(
                [tp for tp in consumer.position(self._assignment) if tp.offset >= 0]
            ),
            group_metadata=self._group_metadata,
            outliers=outliers,
            model_version=self.processor.model_version,
            consumed_us=consumed_us,
            batch_ms=(time.perf_counter() - started) * 1000,
        )
        stage_ms["commit_wait"] = self._commits.submit(job, weight=job.records)
        self.metrics.record_stages(**stage_ms, batch=job.batch_ms)

    def _write_trades(self, batch: DecodedBatch, stage_ms: dict[str, float]) -> list[Row]:
        """Write the batch's trades to the hot store, before the core: a trade is readable, and its e2e
        ends, without waiting for its batch's features. Returns the trades' dead letters if the write
        failed after retries (`_write_sinks` puts them in the DLQ). Sets `trade_write` in `stage_ms`."""
        started = time.perf_counter()
        dead = self._write_hot(lambda: self.hot.write_batch(trades=batch.trades), [("trade", batch.trades)])
        if not dead:
            self.metrics.record_e2e(batch.trades)
        stage_ms["trade_write"] = (time.perf_counter() - started) * 1000
        return dead

    def _write_sinks(
        self, batch: DecodedBatch, outputs: BatchOutputs, dead_trades: list[Row], stage_ms: dict[str, float]
    ) -> list[Row]:
        """Write the core's outputs to the hot store, then every dead letter of the batch (input, and
        hot-store failures of its trades and outputs) to the DLQ; returns those dead letters, which go to
        market.dead-letters with the batch's transaction. Sets `hot_write` in `stage_ms`: both hot-store
        writes of the batch and the DLQ put; the backpressure watches the two writes' sum."""
        started = time.perf_counter()
        dead = [*batch.dead_letters, *dead_trades]
        kinds = [
            ("features", outputs.features),
            ("anomaly", outputs.anomalies),
            ("correlation", outputs.correlations),
            ("bar", outputs.bars),
        ]
        failed = self._write_hot(
            lambda: self.hot.write_batch(
                features=outputs.features,
                anomalies=outputs.anomalies,
                correlations=outputs.correlations,
                bars=outputs.bars,
            ),
            kinds,
        )
        if not failed:
            self.metrics.record_freshness(outputs.fresh_ts_ms)
        dead += failed
        trade_write_ms = stage_ms.get("trade_write", 0.0)
        write_ms = trade_write_ms + (time.perf_counter() - started) * 1000
        self.metrics.write_ms.append(write_ms)
        self.backpressure.record(write_ms)
        if dead:
            self.sink_retry(lambda: self.dlq.put(dead))
        stage_ms["hot_write"] = trade_write_ms + (time.perf_counter() - started) * 1000
        return dead

    def _write_hot(self, write: Callable[[], None], kinds: list[tuple[str, list[Row]]]) -> list[Row]:
        """One hot-store write with the sink's retries; if it still fails, one dead letter per row it did
        not take (`kinds`: each row's kind and rows), for redrive as a sink retry."""
        try:
            self.sink_retry(write)
        except Exception as exc:
            log.error("hot store write failed after retries (%s); dead-lettering its rows", exc)
            return [
                make_dead_letter(
                    stage="sink:hot",
                    payload=orjson.dumps({"kind": kind, "row": row}),
                    error=exc,
                    ticker=row.get("ticker"),
                )
                for kind, rows in kinds
                for row in rows
            ]
        return []

    def _commit(self, jobs: list[_Batch]) -> None:
        """On the commit thread: one transaction with the outputs of every batch handed over since the
        last one, committed with the offsets after the last of them (they are cumulative, as are the
        pending news articles it carries), then the batches go to the cold thread. A failure is handled
        on the runner's thread (`_recover`): this thread stops, and the batches queued behind are
        dropped (they are replayed after the rewind)."""
        producer = self._producer_for_commit()
        last = jobs[-1]
        with self._guard("transaction begin"):
            started = time.perf_counter()
            producer.begin_transaction()
            for job in jobs:
                produce_outputs(producer, job.outputs, job.dead_letters)
            produced = time.perf_counter()

        def send_offsets(timeout_s: float) -> None:
            producer.send_offsets_to_transaction(last.positions, last.group_metadata, timeout_s)

        self._transactional("send offsets", send_offsets, SEND_OFFSETS_TIMEOUT_S)
        self._transactional("transaction commit", producer.commit_transaction, COMMIT_TIMEOUT_S)
        self.metrics.record_stages(
            produce=(produced - started) * 1000, commit=(time.perf_counter() - produced) * 1000
        )
        for job in jobs:
            self._cold_writes.submit(job, weight=job.records)

    def _archive(self, jobs: list[_Batch]) -> None:
        """On the cold thread, after the batches' commit: append their rows (inputs and archived
        outputs) to the cold store, write the groups that are due, and account the batches. A failure is
        raised on the runner's thread (`_recover`); the restart re-appends from the cold checkpoint."""
        started = time.perf_counter()
        # The batches of one commit as one append per topic: the cold store's cost is mostly per call
        # (Arrow conversion, grouping), and a commit carries several batches (`commit_interval_ms`).
        rows: dict[str, list[Row]] = defaultdict(list)
        positions: dict[str, list[tuple[int, int]]] = defaultdict(list)
        fields: dict[str, list[dict[str, Any] | None]] = defaultdict(list)
        for job in jobs:
            batch = job.batch
            for topic, topic_rows, topic_positions, topic_fields in (
                (TRADES, batch.trades, batch.trade_pos, batch.trade_fields),
                (QUOTES, batch.quotes, batch.quote_pos, batch.quote_fields),
                (NEWS, batch.news, batch.news_pos, None),
                (VENDOR_BARS, batch.vendor_bars, batch.vendor_bar_pos, None),
            ):
                if topic_rows:
                    rows[topic] += topic_rows
                    positions[topic] += topic_positions
                    fields[topic].append(topic_fields)
        for topic, topic_rows in rows.items():
            # Below cold_next a row is already in a flushed file (a replay after a crash).
            self.cold.append_batch(
                topic,
                topic_rows,
                positions[topic],
                start=self._cold_next,
                flush=False,
                columns=concat_fields(fields[topic]),
            )
        outputs_read = [message for job in jobs for message in job.outputs_read]
        if outputs_read:
            archive_outputs(self.cold, outputs_read, self._cold_next)
        appended = time.perf_counter()
        # Writes the groups that are due (flush_rows / flush_interval_s / complete blocks): without it
        # every consumed row stays buffered until shutdown or a revocation and memory grows with the run.
        self.cold.flush()
        metrics = self.metrics
        metrics.record_stages(
            cold_append=(appended - started) * 1000, cold_flush=(time.perf_counter() - appended) * 1000
        )
        # A batch counts once committed and archived. Only this thread writes these counters (the
        # runner's thread writes the lag and the assignment), so none is lost to a race.
        for job in jobs:
            outputs = job.outputs
            metrics.outputs_produced += (
                len(outputs.features) + len(outputs.anomalies) + len(outputs.correlations) + len(outputs.bars)
            )
            metrics.dead_letters += len(job.batch.dead_letters)
            metrics.late_events += outputs.late_events
            for reason, count in job.outliers.items():
                metrics.outliers[reason] = metrics.outliers.get(reason, 0) + count
            metrics.unknown_conditions += outputs.unknown_conditions
            metrics.count_bar_checks(outputs.bar_checks)
            metrics.model_version = job.model_version
            record_arrivals(metrics.stages, job.inputs, job.consumed_us)
            # Events are input messages: the archived outputs are this runner's own records.
            metrics.committed(len(job.inputs), job.batch_ms)

    def _recover(self, *, rewind: bool = True) -> bool:
        """If the commit or the cold thread failed: wait for both to be idle and handle the failure on
        this thread. A cold-store failure, a fatal transaction error (fenced by a newer producer with our
        transactional id, or a broken producer), a denied one or one retried too often is raised (the
        runner closes and the supervisor restarts it). An abortable one (`txn_requires_abort`, e.g. our
        offsets rejected after a rebalance) aborts the transaction and, with `rewind`, replays from the
        committed offsets with freshly rebuilt state (`_rewind`). Returns True if a transaction was
        aborted."""
        if self._commits.failure is None and self._cold_writes.failure is None:
            return False
        error = self._commits.reset()
        cold_error = self._cold_writes.reset()
        if cold_error is not None:
            if error is not None:  # the open transaction is left to the broker's timeout / the restart
                log.error("the commit thread failed too", exc_info=error)
            raise cold_error
        assert error is not None
        if not isinstance(error, KafkaException) or not error.args[0].txn_requires_abort():
            raise error
        producer = self.producer
        assert producer is not None
        self._bounded("transaction abort", producer.abort_transaction, ABORT_TIMEOUT_S)
        if error.args[0].code() in _DENIED:
            raise error  # a missing grant (e.g. WRITE on an output topic): a replay would fail the same
        log.warning("transaction aborted (%s); rewinding to the committed offsets", error.args[0])
        if rewind:
            self._rewind()
        return True

    def _guard(self, what: str, bound_s: float | None = None) -> AbstractContextManager[None]:
        """The watchdog over a transactional call, for `bound_s` at most (default and cap:
        `commit_watchdog_s`): librdkafka can leave any of them waiting past its timeout for a
        coordinator that restarted (#5456 for the offsets, #3779 for the abort, the producer's close in
        docs/postmortem.md). One guarded call at a time: the runner's thread makes its calls only while
        the commit thread is idle."""
        watchdog = self.commit_watchdog
        return nullcontext() if watchdog is None else watchdog.guard(what, bound_s)

    def _bounded(self, what: str, call: Callable[[float], object], timeout_s: float) -> None:
        """`call(timeout_s)` (a librdkafka call with its timeout) under the watchdog until
        `WATCHDOG_GRACE_S` after that timeout: a call still running then is hung."""
        with self._guard(what, timeout_s + WATCHDOG_GRACE_S):
            call(timeout_s)

    def _transactional(self, what: str, call: Callable[[float], object], timeout_s: float) -> None:
        """`call(timeout_s)` bounded (`_bounded`), again while it fails with a retriable error
        (`retry_transactional`), except a timeout after a connection of the producer to a broker failed
        or was closed: that call is hung, and the watchdog restarts the process at once. A transaction
        in flight when its broker restarted waits behind the retired broker's handle
        (confluentinc/librdkafka#5511; the replacement in `_producer_for_commit` only helps between
        transactions): librdkafka returns `_TIMED_OUT` after ~20 s and every retry on this producer
        times out the same way, each within the watchdog's bound, so the retries ended in the runner's
        exit (docs/postmortem.md, incident 2)."""

        def attempt() -> None:
            try:
                self._bounded(what, call, timeout_s)
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError._TIMED_OUT and self.commit_watchdog is not None:
                    producer = self.producer
                    assert producer is not None
                    producer.poll(0)  # serves the producer's log
                    if self._producer_lost_broker:
                        self.commit_watchdog.expire(f"{what} timed out after the producer lost a broker")
                raise

        retry_transactional(attempt, what)

    def _settle(self, *, rewind: bool = False) -> bool:
        """Wait until every handed-over batch is committed and archived (`_recover` on a failure, which
        rewinds only with `rewind`); True if a transaction was aborted instead. Afterwards this thread
        may use the producer and the cold store."""
        self._commits.wait_idle()
        self._cold_writes.wait_idle()
        return self._recover(rewind=rewind)

    def _with_pending(self, positions: list[KafkaTopicPartition]) -> list[KafkaTopicPartition]:
        """The positions to commit, each news offset carrying the offsets of that partition's articles
        still pending in the join: the rebuild re-reads exactly them, however long ago they were
        produced (`tradepulse.bus.rebuild`)."""
        pending = self.processor.pending_news()
        out = []
        for tp in positions:
            metadata = encode_pending(pending.get(tp.partition, [])) if tp.topic == NEWS else None
            if tp.topic == NEWS and metadata is None:
                log.warning(
                    "%d pending articles of %s[%d] do not fit the commit metadata; a rebuild falls back "
                    "to the time look-back for them",
                    len(pending[tp.partition]),
                    tp.topic,
                    tp.partition,
                )
            if metadata is not None:
                # The client's stubs say int; at run time an unknown epoch is None.
                leader_epoch: int | None = tp.leader_epoch
                epoch = {} if leader_epoch is None else {"leader_epoch": leader_epoch}
                tp = KafkaTopicPartition(tp.topic, tp.partition, tp.offset, metadata, **epoch)
            out.append(tp)
        return out

    def _rewind(self) -> None:
        """After an aborted transaction: back to the committed offsets with state rebuilt. The cold
        store's buffers may hold committed rows not yet written; they are dropped and the rebuild
        re-appends everything from the cold checkpoint to the committed offsets (keeping them would
        append those rows twice)."""
        consumer = self.consumer
        assert consumer is not None
        assignment = consumer.assignment()
        # After an abort: should the kept group metadata have been the cause, this replaces it.
        self._group_metadata = consumer.consumer_group_metadata()
        self.processor.reset()
        self.cold = self.cold_factory()
        self._cold_next.clear()
        if not assignment:
            return
        committed = self._committed(consumer, assignment)
        for tp in committed:
            if tp.offset == OFFSET_INVALID or tp.offset < 0:
                low, _ = consumer.get_watermark_offsets(tp, timeout=10)
                tp.offset = low
            consumer.seek(tp)
        self._rebuild(committed)

    # --- backpressure and status ---------------------------------------------------------------------

    def _pause(self) -> None:
        """Stop fetching for `backpressure_pause_ms` while still polling (group membership stays alive)."""
        consumer = self.consumer
        assert consumer is not None
        assignment = consumer.assignment()
        if not assignment:
            return
        self.metrics.backpressure_activations = self.backpressure.activations
        pause_s = self.backpressure.pause_remaining_s()
        log.info("backpressure: hot-store write p99 above the limit, pausing %.0f ms", pause_s * 1000)
        consumer.pause(assignment)
        try:
            deadline = time.monotonic() + pause_s
            while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
                # Paused partitions return nothing new: librdkafka drops what it had fetched for them
                # and fetches it again from the position after the resume (so a pause costs more than
                # its length). Whatever a consume still returns is processed normally.
                messages = consumer.consume(self.settings.batch_max_messages, min(left, 0.1))
                if messages:
                    self._process(messages)
                self._maybe_status()
        finally:
            consumer.resume(consumer.assignment())

    def _maybe_status(self) -> None:
        """Every `status_interval_s`: refresh the lag (this thread's consumer; `_linger_s` reads it) and
        have the status thread publish the heartbeat. While the previous one is still being published
        (a slow SQS or DynamoDB call) this beat is skipped: the next one carries the newer figures."""
        now = time.monotonic()
        if now - self._last_status >= self.status_interval_s and self._heartbeats.idle:
            self._last_status = now
            self._refresh_lag()
            self._heartbeats.submit(None)

    def _write_status(self) -> None:
        """Publish the heartbeat on this thread (the last one, once the status thread has ended)."""
        self._refresh_lag()
        self._publish_status([None])

    def _refresh_lag(self) -> None:
        self.metrics.consumer_lag = self._lag()
        self.metrics.assigned_partitions = len(self._assignment)

    def _publish_status(self, _beats: list[None]) -> None:
        """The DLQ depth, the status document (`RunnerMetrics.snapshot_and_histograms`) and
        `publish_status`, the whole run's stage histograms beside the status file (`stages_path`), then
        the heap trim when due (`HeapTrimmer`). Never raises: a heartbeat that failed is logged, and the
        next one replaces it."""
        try:
            self.metrics.dlq_depth = int(self.dlq.depth())
        except Exception:
            log.exception("dlq depth unavailable")
        histograms: dict[str, dict[str, Any]] | None = None
        try:
            status, histograms = self.metrics.snapshot_and_histograms()
            publish_status(status, self.status_file, self.hot, self.instance, self.emf)
        except Exception:
            log.exception("runner status not published")
        if histograms is not None:
            try:
                write_json_atomic(
                    stages_path(self.status_file.parent, self.instance), histograms, indent=False
                )
            except Exception:
                log.exception("stage histograms not written")
        self._heap.maybe_trim()

    def _lag(self) -> int:
        """Σ (high watermark − position) over the assignment, from the client's cached watermarks."""
        consumer = self.consumer
        if consumer is None:
            return 0
        lag = 0
        try:
            for tp in consumer.position(self._assignment):
                low, high = consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    continue
                position = self._position(tp)
                position = position if position >= 0 else low
                lag += max(0, high - position)
        except KafkaException:
            return self.metrics.consumer_lag
        return lag
