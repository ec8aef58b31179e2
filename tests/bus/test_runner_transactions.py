"""Transaction failures against the real broker: an aborted transaction, a retriable commit error, a
fenced producer (a second runner with the same transactional id) and a rebalance while a batch is being
gathered. In each case the outputs (Kafka,
read_committed), the hot store and the cold store (inputs and every archived output) stay exact. And
after a run, `tradepulse query` counts every output as the hot store holds it.

The faults are injected through a thin seam, a wrapper around the runner's real transactional producer
(`Runner._new_producer`); the broker, the stores and the core are real.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from tests.bus.kafka_proxy import END_TXN, FaultyKafkaProxy
from tests.bus.test_runner import (
    TICKERS,
    Recording,
    assert_features_match,
    expected_correlation_ids,
    make_recording,
    own_group,
    produce,
    read_topic,
    reference_snapshots,
    running,
    wait_for,
)
from tests.reliability.harness import output_archive
from tradepulse.bus import runner as runner_module
from tradepulse.bus.clients import consumer_config
from tradepulse.bus.pipeline import build_runner
from tradepulse.bus.runner import Runner, numpy_hugepages, set_numpy_hugepages, tune_process
from tradepulse.bus.watchdog import Watchdog
from tradepulse.cli.storage import query
from tradepulse.config import Settings, get_settings
from tradepulse.gc_tuning import GC_THRESHOLDS
from tradepulse.stores.factory import open_hot_store
from tradepulse.topics import CORRELATIONS, FEATURES, NEWS, QUOTES, TRADES

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def recording() -> Recording:
    # Longer than the 5-minute windows, with news (correlations) on every partition.
    return make_recording(duration_s=330, rate=30, seed=5)


@pytest.fixture
def settings(kafka_settings: Settings) -> Settings:
    # Small batches: many transactions. The cold store flushes by size only after a few of them, so a
    # fault hits rows still buffered (the first write of their block) as well as rows already written.
    return own_group(kafka_settings).model_copy(update={"batch_max_messages": 300, "cold_flush_rows": 1500})


class FaultyProducer:
    """The runner's real transactional producer; `commit_transaction` raises `error` instead of
    committing on the commits numbered in `fail_on` (1-based), and otherwise commits."""

    def __init__(self, inner: Producer, error: KafkaError, fail_on: set[int]) -> None:
        self.inner, self.error, self.fail_on = inner, error, fail_on
        self.commits = 0
        self.injected = 0

    def commit_transaction(self, *args: Any) -> None:
        self.commits += 1
        if self.commits in self.fail_on:
            self.injected += 1
            raise KafkaException(self.error)
        self.inner.commit_transaction(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class SlowProducer(FaultyProducer):
    """A `FaultyProducer` whose every commit first takes `delay_s` (a slow broker)."""

    delay_s = 0.25

    def commit_transaction(self, *args: Any) -> None:
        time.sleep(self.delay_s)
        super().commit_transaction(*args)


def faulty_runner(
    settings: Settings,
    instance: str,
    error: KafkaError,
    fail_on: set[int],
    producer_class: type[FaultyProducer] = FaultyProducer,
    commit_watchdog: Watchdog | None = None,
) -> Runner:
    runner = build_runner(settings, instance=instance, commit_watchdog=commit_watchdog)
    real = runner._new_producer
    holder: dict[str, FaultyProducer] = {}

    def new_producer() -> Any:
        holder["producer"] = producer_class(real(), error, fail_on)
        return holder["producer"]

    runner._new_producer = new_producer  # type: ignore[method-assign]
    runner.faults = holder  # type: ignore[attr-defined]
    return runner


def cold_ids(settings: Settings, dataset: str) -> list[str]:
    ids: list[str] = []
    for path in sorted((settings.cold_dir / dataset).rglob("*.parquet")):
        ids += pq.read_table(path, columns=["event_id"], partitioning=None)["event_id"].to_pylist()
    return ids


def assert_exact(settings: Settings, rec: Recording) -> None:
    """Outputs, hot store and cold store hold every input-derived item exactly once."""
    expected = reference_snapshots(rec)
    features = read_topic(settings, FEATURES)
    assert_features_match(features, expected, spread=False)
    correlations = [c["correlation_id"] for c in read_topic(settings, CORRELATIONS)]
    assert len(correlations) == len(set(correlations))
    assert set(correlations) == expected_correlation_ids(rec) and correlations

    hot = open_hot_store(settings)
    try:
        stored = [row for t in TICKERS for row in hot.feature_history(t, 0, limit=100_000)]
        assert_features_match(stored, expected, spread=False)
        assert hot.trade_ids() == {t["event_id"] for t in rec.of(TRADES)}
        assert {c["correlation_id"] for c in hot.correlations(None, 0, limit=10_000)} == set(correlations)
    finally:
        hot.close()

    for topic, dataset in ((TRADES, "trades"), (QUOTES, "quotes"), (NEWS, "news")):
        ids = cold_ids(settings, dataset)
        assert len(ids) == len(set(ids)), f"duplicate {dataset} rows in the cold store"
        assert set(ids) == {r["event_id"] for r in rec.of(topic)}, (
            f"{dataset} rows missing from the cold store"
        )
    archive = output_archive(settings, read_topic)
    for name, result in archive.items():
        assert result.exact, (name, result)  # cold = the topic, read_committed: 0 duplicates, 0 missing
        assert result.hot.missing == 0, (name, result)
    assert archive["features"].cold.distinct == len(expected)
    assert archive["correlations"].cold.distinct == len(correlations)


def run_to_the_end(runner: Runner, settings: Settings, rec: Recording) -> None:
    produce(settings, rec.events)
    with running(runner):
        wait_for(lambda: runner.metrics.events_processed >= len(rec.events), 120, "every event")


def test_an_aborted_transaction_is_replayed_without_duplicates_anywhere(
    settings: Settings, recording: Recording
) -> None:
    # Abortable (txn_requires_abort): the runner aborts, rewinds to the committed offsets and replays.
    # The 3rd commit fails before the first cold flush, the later ones after flushes. A transaction
    # holds three batches of 300 records at most (COMMIT_BACKLOG_BATCHES): ≥ 13 commits in this run.
    error = KafkaError(KafkaError._STATE, "injected abortable error", txn_requires_abort=True)
    runner = faulty_runner(settings, "abort", error, fail_on={3, 7, 8, 12})
    run_to_the_end(runner, settings, recording)
    assert runner.faults["producer"].injected == 4  # type: ignore[attr-defined]
    # An aborted batch is not counted: it is consumed again after the rewind, and counted then.
    assert runner.metrics.events_processed == len(recording.events)
    assert_exact(settings, recording)


def test_a_retriable_commit_error_is_retried_and_the_runner_keeps_going(
    settings: Settings, recording: Recording
) -> None:
    error = KafkaError(KafkaError._TIMED_OUT, "injected retriable error", retriable=True)
    runner = faulty_runner(settings, "retriable", error, fail_on={3, 10, 11})
    run_to_the_end(runner, settings, recording)
    assert runner.faults["producer"].injected == 3  # type: ignore[attr-defined]
    # Retried in place: no rewind, so every event was processed exactly once.
    assert runner.metrics.events_processed == len(recording.events)
    assert_exact(settings, recording)
    # The stopped runner closed its transactional producer and let go of both clients (no reference
    # cycle through the consumer's rebalance callbacks left for the garbage collector).
    assert runner.producer is None and runner.consumer is None
    with pytest.raises(RuntimeError, match="closed"):
        runner.faults["producer"].inner.flush(0)  # type: ignore[attr-defined]


def test_batches_processed_during_a_slow_commit_commit_together_and_an_abort_replays_them_all(
    settings: Settings, recording: Recording
) -> None:
    # The runner's thread goes on with the next batches while one commits; the commit thread then
    # commits all of them in one transaction (group commit). Aborting such a transaction rewinds to
    # before all of them.
    error = KafkaError(KafkaError._STATE, "injected abortable error", txn_requires_abort=True)
    runner = faulty_runner(settings, "slow", error, fail_on={3, 6}, producer_class=SlowProducer)
    run_to_the_end(runner, settings, recording)
    producer = runner.faults["producer"]  # type: ignore[attr-defined]
    assert producer.injected == 2
    # Fewer transactions than batches: batches were grouped. Every commit took 0.25 s, and a batch of
    # 300 events takes much less than that to process here.
    assert producer.commits < runner.metrics.batches
    stages = runner.metrics.stages.summary()
    assert stages["commit"]["count"] == producer.commits - producer.injected
    assert runner.metrics.events_processed == len(recording.events)
    assert_exact(settings, recording)


class StuckCall:
    """A librdkafka call that does not return until the watchdog (bound `bound_s`) fires (in production
    its restart in place ends the wait); gives up after 10 s, below the transaction timeout."""

    def __init__(self, bound_s: float = 1.0) -> None:
        self.release = threading.Event()
        self.fired = 0
        self.watchdog = Watchdog(bound_s, on_expire=self._expire, check_every_s=0.05)

    def _expire(self) -> None:
        self.fired += 1
        self.release.set()

    def wait(self) -> None:
        self.release.wait(10)


NEVER_INJECTED = KafkaError(KafkaError._STATE, "never injected")


def run_watched(runner: Runner, settings: Settings, recording: Recording, stuck: StuckCall) -> None:
    """`run_to_the_end` for a runner under `stuck`'s watchdog, which is closed afterwards."""
    try:
        run_to_the_end(runner, settings, recording)
    finally:
        stuck.watchdog.close()


@pytest.fixture
def stuck() -> Iterator[StuckCall]:
    call = StuckCall()
    yield call
    call.watchdog.close()


def replacements(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The runner's log records of a producer replaced before a transaction."""
    return [r for r in caplog.records if "replacing it" in r.getMessage()]


def test_a_new_producer_is_not_replaced_for_what_it_met_before_its_first_transaction(
    settings: Settings,
    recording: Recording,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The runner replaces a producer that lost a broker connection (a restarted broker's retired handle
    # can stay its group coordinator, librdkafka#5511). A producer that has sent no offsets yet has no
    # group coordinator to be stale; counting what it met while starting (here: its only bootstrap
    # address not up yet, as a broker still down in a rolling restart) would replace it at once, and
    # with a dead address in the list, every new producer again.
    produce(settings, recording.events)
    with FaultyKafkaProxy(str(settings.kafka_bootstrap), listening=False) as late:
        runner = build_runner(
            settings.model_copy(update={"kafka_bootstrap": late.bootstrap}), instance="late-bootstrap"
        )
        with caplog.at_level(logging.WARNING, logger="tradepulse.bus.runner"), running(runner):
            # The producer connects at once; its log is served after its init (checked below).
            wait_for(lambda: runner.producer is not None, 30, "the producer")
            time.sleep(1.0)
            late.listen()
            wait_for(lambda: runner.metrics.events_processed >= len(recording.events), 120, "every event")
    refused = [
        r
        for r in caplog.records
        if r.name == "tradepulse.bus.librdkafka"
        and f"Connect to ipv4#{late.bootstrap} failed" in r.getMessage()
    ]
    assert refused, "the producer never met the bootstrap address down"
    replaced = replacements(caplog)
    assert not replaced, f"replaced {len(replaced)} times"
    assert_exact(settings, recording)


def test_a_producer_whose_coordinator_connection_was_closed_is_replaced_before_its_next_transaction(
    settings: Settings, recording: Recording, caplog: pytest.LogCaptureFixture
) -> None:
    # A broker restart while the runner is idle: in CI (session 34's stop) the producer's only sign
    # was its transaction coordinator's connection closed by the peer. librdkafka logs a close but
    # does not report it as an error (its error callback hears of a failed connect), and it need not
    # connect again while the broker is down. So the producer was not replaced, and its first
    # transaction waited behind the restarted broker's retired handle (librdkafka#5511). Here the
    # proxy closes that connection while the runner is idle and accepts the reconnect: a close, and
    # no failed connect.
    half = len(recording.events) // 2
    produce(settings, recording.events[:half])
    with FaultyKafkaProxy(str(settings.kafka_bootstrap)) as proxy:
        runner = build_runner(
            settings.model_copy(update={"kafka_bootstrap": proxy.bootstrap}), instance="coordinator-closed"
        )
        with caplog.at_level(logging.WARNING, logger="tradepulse.bus.runner"), running(runner):
            wait_for(lambda: runner.metrics.events_processed >= half, 120, "the first half")
            # Idle: no commit for 2 s (the outputs read back are committed too). A transaction open at
            # the close is another case (the watchdog's).
            wait_for(lambda: time.time() - (runner.metrics.last_commit_at or 0) > 2, 60, "an idle runner")
            assert not replacements(caplog)
            assert proxy.disconnect(END_TXN) == 1, "one connection carried the transactions"
            time.sleep(1.0)  # the producer notices the close
            produce(settings, recording.events[half:])
            wait_for(lambda: runner.metrics.events_processed >= len(recording.events), 120, "every event")
    replaced = replacements(caplog)
    assert len(replaced) == 1, f"replaced {len(replaced)} times"
    assert_exact(settings, recording)


def test_a_send_offsets_past_its_own_timeout_fires_the_watchdog(
    settings: Settings, recording: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    # librdkafka ignores the timeout of send_offsets_to_transaction() while it waits for a group
    # coordinator (#5456, #5511): a call still running past its own timeout is hung. The watchdog's
    # overall bound here is far beyond the test, so only the call's own timeout can end the wait.
    monkeypatch.setattr(runner_module, "SEND_OFFSETS_TIMEOUT_S", 1.0)
    monkeypatch.setattr(runner_module, "WATCHDOG_GRACE_S", 0.5)
    stuck = StuckCall(bound_s=600.0)

    class HangingSendOffsets(FaultyProducer):
        hung = False

        def send_offsets_to_transaction(self, *args: Any) -> None:
            if not self.hung:
                self.hung = True
                stuck.wait()
            self.inner.send_offsets_to_transaction(*args)

    runner = faulty_runner(
        settings, "hang-offsets", NEVER_INJECTED, set(), HangingSendOffsets, commit_watchdog=stuck.watchdog
    )
    run_watched(runner, settings, recording, stuck)
    assert stuck.fired == 1, "the watchdog did not fire for a send_offsets past its own timeout"
    assert_exact(settings, recording)


def test_an_abort_that_never_returns_fires_the_watchdog(
    settings: Settings, recording: Recording, stuck: StuckCall
) -> None:
    # librdkafka can leave abort_transaction() waiting past its timeout for a transaction coordinator
    # that restarted (confluentinc/librdkafka#3779). The runner aborts on its own thread after an
    # abortable error: the watchdog must guard that call as it guards the commit.

    class HangingAbort(FaultyProducer):
        def abort_transaction(self, *args: Any) -> None:
            stuck.wait()
            self.inner.abort_transaction(*args)

    error = KafkaError(KafkaError._STATE, "injected abortable error", txn_requires_abort=True)
    runner = faulty_runner(settings, "hang", error, {2}, HangingAbort, commit_watchdog=stuck.watchdog)
    run_to_the_end(runner, settings, recording)
    assert runner.faults["producer"].injected == 1  # type: ignore[attr-defined]
    assert stuck.fired == 1, "the watchdog did not fire for an abort that did not return"
    assert_exact(settings, recording)


def test_a_client_close_that_never_returns_after_a_failure_fires_the_watchdog(
    settings: Settings, recording: Recording, stuck: StuckCall
) -> None:
    # The hang CI met (issue 19, stop 36; reproduced with the watchdog off): a broker restart fenced the
    # runner's consumer, the runner stopped for that error, and its producer's close(), which aborts
    # the failed transaction, never returned. Here a fatal commit error stops the runner and the close
    # blocks: after a failure the watchdog must restart the process, as a supervisor would.

    class HangingClose(FaultyProducer):
        def close(self, *args: Any) -> None:
            stuck.wait()
            self.inner.close(*args)

    error = KafkaError(KafkaError._FENCED, "injected fatal error", fatal=True)
    runner = faulty_runner(settings, "hang-close", error, {2}, HangingClose, commit_watchdog=stuck.watchdog)
    produce(settings, recording.events)
    with pytest.raises(KafkaException, match="injected fatal error"):
        runner.run()
    assert stuck.fired == 1, "the watchdog did not fire for a close that did not return"
    assert runner.producer is None and runner.consumer is None


@contextmanager
def in_thread(runner: Runner) -> Iterator[list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            runner.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"runner-{runner.instance}", daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        runner.request_stop()
        thread.join(90)
        assert not thread.is_alive(), "runner did not stop"


def test_a_fenced_runner_exits_and_its_successor_keeps_everything_exact(
    settings: Settings, recording: Recording
) -> None:
    # The second half is produced only once the first runner has been fenced: on a loaded machine the
    # successor's start took so long that the first runner had processed the whole recording, and
    # there was no mid-stream takeover left to test.
    half = len(recording.events) // 2
    produce(settings, recording.events[:half])
    first = build_runner(settings, instance="fenced")
    with in_thread(first) as first_errors:
        wait_for(lambda: first.metrics.events_processed >= 3000, 60, "the first runner's progress")
        # A second process with the same instance id: its init_transactions() fences the first
        # producer (and its static membership the first consumer) while the first is mid-stream.
        second = build_runner(settings, instance="fenced")
        with running(second):
            deadline = time.monotonic() + 60
            while not first_errors and time.monotonic() < deadline:
                time.sleep(0.05)
            assert first_errors, "the fenced runner kept running"
            produce(settings, recording.events[half:])
            total = len(recording.events)
            wait_for(
                lambda: first.metrics.events_processed + second.metrics.events_processed >= total,
                120,
                "the successor to process the rest",
            )
    (error,) = first_errors
    # Fenced either way: its producer (a fatal error at the next commit) or its consumer (librdkafka's
    # _FATAL consume error, when the static member is fenced first; whichever comes first).
    assert isinstance(error, KafkaException), error
    assert error.args[0].fatal() or error.args[0].code() == KafkaError._FATAL, error
    assert first.producer is None and first.consumer is None  # closed and released
    assert first.metrics.events_processed <= half < len(recording.events)
    assert_exact(settings, recording)


class Member:
    """Another member of a consumer group: a plain consumer polled in a thread until `leave()`."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        self.consumer = Consumer(consumer_config(settings, settings.consumer_group))
        self.consumer.subscribe(topics)
        self._leave = threading.Event()
        self.thread = threading.Thread(target=self._poll, name="member", daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self._leave.is_set():
            self.consumer.poll(0.1)
        self.consumer.close()

    def leave(self) -> None:
        self._leave.set()
        self.thread.join(30)


def test_a_rebalance_while_a_batch_is_gathered_processes_nothing_twice(
    settings: Settings, recording: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner gathers a batch in several calls (`poll()` for the first message, then `consume()` for
    what came with it). Here another member joins the group right after the `poll()`, and the next call
    returns once the runner has been revoked and assigned anew: the first message is from the previous
    assignment. Its offset was not committed, so it is consumed again; were it processed as well, it
    would be committed twice (a trade's volume would count twice in its features). The member leaves,
    the runner takes everything back, and every input is committed once and every output is exact."""
    seen: dict[str, Any] = {"assigns": 0, "revokes": 0}

    class RebalanceMidBatch(Consumer):
        """The runner's real consumer, with the rebalance above at the first batch."""

        def subscribe(self, topics: list[str], **callbacks: Any) -> None:
            on_assign, on_revoke = callbacks["on_assign"], callbacks["on_revoke"]

            def assigned(consumer: Consumer, partitions: list[Any]) -> None:
                seen["assigns"] += 1
                on_assign(consumer, partitions)

            def revoked(consumer: Consumer, partitions: list[Any]) -> None:
                seen["revokes"] += 1
                on_revoke(consumer, partitions)

            self.topics = topics
            super().subscribe(topics, **(callbacks | {"on_assign": assigned, "on_revoke": revoked}))

        def poll(self, *args: Any, **kwargs: Any) -> Message | None:
            message = super().poll(*args, **kwargs)
            if message is not None and message.error() is None and "first" not in seen:
                seen["first"] = (message.topic(), message.partition(), message.offset())
            return message

        def consume(self, *args: Any, **kwargs: Any) -> list[Message]:
            if "first" not in seen or "member" in seen:
                return super().consume(*args, **kwargs)
            assigns, revokes = seen["assigns"], seen["revokes"]
            seen["member"] = Member(settings, self.topics)
            messages: list[Message] = []
            deadline = time.monotonic() + 60
            while seen["assigns"] == assigns:  # revoked, then assigned anew (eager `range`)
                assert time.monotonic() < deadline, "the group did not rebalance"
                got = super().consume(100, 0.1)
                # What came before the revocation stands for no call the runner made: it is dropped
                # here and, never committed, consumed again after the rebalance. librdkafka drops the
                # outdated messages of the call that serves the revocation; later ones are current.
                if seen["revokes"] > revokes:
                    messages += got
            return messages

    monkeypatch.setattr(runner_module, "Consumer", RebalanceMidBatch)
    runner = build_runner(settings, instance="midbatch")
    expected_trades = {t["event_id"] for t in recording.of(TRADES)}
    hot = open_hot_store(settings)
    try:
        with running(runner):
            wait_for(lambda: seen["assigns"] == 1, 60, "the runner's first assignment")
            produce(settings, recording.events)  # caught up: the first batch starts with a poll()
            wait_for(lambda: seen["assigns"] == 2, 90, "the rebalance in the middle of a batch")
            seen["member"].leave()  # the runner takes the member's partitions back
            wait_for(
                lambda: (
                    seen["assigns"] == 3
                    and hot.trade_ids() == expected_trades
                    and runner.metrics.events_processed >= len(recording.events)
                    and runner.metrics.consumer_lag == 0
                ),
                120,
                "every event, after the member left",
            )
    finally:
        hot.close()
    assert_exact(settings, recording)
    assert runner.metrics.events_processed == len(recording.events)


def test_tradepulse_query_counts_every_output_as_the_hot_store_holds_it(
    settings: Settings, recording: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a new user tries after a run: the cold store's views hold the outputs, not only the inputs.
    runner = build_runner(settings, instance="query")
    thresholds = gc.get_threshold()
    produce(settings, recording.events)
    with running(runner):
        wait_for(lambda: runner.metrics.events_processed >= len(recording.events), 120, "every event")
        # Process-wide GC settings are the entry point's (`tradepulse process`), not the Runner's.
        assert gc.get_threshold() == thresholds
    monkeypatch.setenv("TRADEPULSE_DATA_DIR", str(settings.data_dir))
    get_settings.cache_clear()
    try:
        cold = {}
        for table in ("trades", "features", "anomalies", "correlations"):
            result = CliRunner().invoke(query, ["--format", "csv", f"SELECT count(*) AS n FROM {table}"])
            assert result.exit_code == 0, result.output
            cold[table] = int(result.output.split()[1])
    finally:
        get_settings.cache_clear()
    hot = open_hot_store(settings)
    try:
        in_hot = {table: hot.count(table) for table in cold}
        # The cold features are the final revisions; the hot store also has the latest (provisional)
        # revision of the seconds still open at the end (docs/schema.md#featurevector-revisions).
        in_hot["features"] = sum(
            f["final"] for t in hot.tickers() for f in hot.feature_history(t, 0, limit=100_000)
        )
        assert cold == in_hot
        assert hot.count("features") > cold["features"]
    finally:
        hot.close()
    assert cold["features"] > 1000 and cold["correlations"] > 0


@pytest.fixture
def process_settings_restored() -> Iterator[None]:
    """`tune_process` changes process-wide settings: put back what the test process had."""
    before, hugepages, arrow_pool = gc.get_threshold(), numpy_hugepages(), pa.default_memory_pool()
    set_numpy_hugepages(True)  # numpy's own default on Linux >= 4.6
    yield
    gc.unfreeze()
    gc.set_threshold(*before)
    set_numpy_hugepages(hugepages)
    pa.set_memory_pool(arrow_pool)


@pytest.mark.usefixtures("process_settings_restored")
def test_the_process_entry_point_sets_the_runner_gc_thresholds_and_numpy_hugepages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    tune_process()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 0  # what was alive at start is out of the collector's walks
    assert numpy_hugepages() is False  # re-layouts of the window state fault in 4 KB pages


@pytest.mark.usefixtures("process_settings_restored")
def test_numpys_own_hugepage_variable_overrides_the_runner_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")  # numpy read it at import: the advice is on
    tune_process()
    assert numpy_hugepages() is True


def arrow_has_jemalloc() -> bool:
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        return False
    return True


@pytest.mark.skipif(
    not arrow_has_jemalloc(), reason="this build of Arrow has no jemalloc (its default stays)"
)
@pytest.mark.usefixtures("process_settings_restored")
def test_the_process_entry_point_puts_arrows_allocations_in_jemalloc(monkeypatch: pytest.MonkeyPatch) -> None:
    # The cold store's tables are Arrow's. Arrow's default allocator (mimalloc) kept the pages of the
    # ones freed; jemalloc, as Arrow configures it, gives them back (docs/benchmarks.md).
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    tune_process()
    assert pa.default_memory_pool().backend_name == "jemalloc"
    held = pa.jemalloc_memory_pool().bytes_allocated()
    table = pa.table({"x": list(range(1000))})
    assert pa.jemalloc_memory_pool().bytes_allocated() - held >= table.nbytes


@pytest.mark.usefixtures("process_settings_restored")
def test_arrows_own_memory_pool_variable_overrides_the_runner_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "system")  # Arrow reads it when it first allocates
    pa.set_memory_pool(pa.system_memory_pool())
    tune_process()
    assert pa.default_memory_pool().backend_name == "system"


def test_a_stopped_runner_and_its_clients_are_freed_without_the_garbage_collector(settings: Settings) -> None:
    # The consumer's rebalance callbacks are bound methods of the runner: while the runner held on to its
    # consumer after closing it, the two formed a cycle that only the cyclic collector frees, on whatever
    # thread it runs, and a Kafka client destroyed on a librdkafka thread aborts the process (see
    # tests/bus/test_admin_lifetime.py).
    runner = build_runner(settings, instance="lifetime")
    metrics = runner.metrics
    with running(runner):
        wait_for(lambda: metrics.assignments > 0, 60, "the first assignment")
    assert runner.consumer is None and runner.producer is None  # closed and dropped at shutdown
    ref = weakref.ref(runner)  # (the clients themselves cannot be weakly referenced)
    gc.disable()
    try:
        del runner
        assert ref() is None  # freed at once: no cycle through the consumer's callbacks holds it
    finally:
        gc.enable()


def fail_both_threads(runner: Runner) -> tuple[BaseException, BaseException]:
    """Make the runner's commit and cold threads each fail one handler call (their real threads, with
    handlers that raise) and return the two errors, commit first."""
    commit_error, cold_error = RuntimeError("injected commit failure"), OSError("injected cold failure")

    def failing(error: BaseException) -> Any:
        def handler(_jobs: list[Any]) -> None:
            raise error

        return handler

    for worker, error in ((runner._commits, commit_error), (runner._cold_writes, cold_error)):
        worker.handler = failing(error)
        worker.submit(object())  # type: ignore[arg-type]
        worker.wait_idle()
        assert worker.failure is error
    return commit_error, cold_error


def logged_errors(caplog: pytest.LogCaptureFixture) -> list[BaseException | None]:
    return [r.exc_info[1] if r.exc_info else None for r in caplog.records if r.levelname == "ERROR"]


def test_a_commit_failure_behind_a_cold_failure_is_logged_not_dropped(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # The cold store's failure is the one raised (the runner restarts); the commit thread's, which the
    # restart also resolves, must still reach the log.
    runner = build_runner(settings, instance="two-failures")
    commit_error, cold_error = fail_both_threads(runner)
    with caplog.at_level(logging.ERROR, logger="tradepulse.bus.runner"), pytest.raises(OSError) as raised:
        runner._recover()
    assert raised.value is cold_error
    assert commit_error in logged_errors(caplog)
    assert runner._commits.failure is None and runner._cold_writes.failure is None
    runner._shutdown(clean=False)


def test_a_thread_failure_left_at_shutdown_is_logged(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # The runner stops for another reason while both threads hold a failure it never raised: each is
    # logged, and neither is left behind for the revoke callback to raise in place of the first.
    runner = build_runner(settings, instance="left-at-shutdown")
    commit_error, cold_error = fail_both_threads(runner)
    with caplog.at_level(logging.ERROR, logger="tradepulse.bus.runner"):
        runner._shutdown(clean=False)
    assert {id(e) for e in logged_errors(caplog)} >= {id(commit_error), id(cold_error)}
    assert runner._commits.failure is None and runner._cold_writes.failure is None


def test_a_transactional_timeout_after_the_producer_lost_a_broker_restarts_at_once_not_after_retries(
    settings: Settings, recording: Recording
) -> None:
    # A transaction in flight when the broker restarted: its requests wait behind the retired broker's
    # handle (librdkafka#5511), send_offsets_to_transaction returns _TIMED_OUT after ~20 s, and every
    # retry on that producer timed out the same way. The broker-restart test met it (session 25): five
    # retries of 20 s, then the runner exited instead of recovering, because each retry was a new call
    # within the watchdog's bound. A timeout after the producer reported an unreachable broker is a
    # hang: the watchdog's restart, at once. The watchdog's own bound is far beyond this test.
    stuck = StuckCall(bound_s=600.0)
    injected: dict[str, Runner] = {}

    class TimedOutAfterOutage(FaultyProducer):
        def send_offsets_to_transaction(self, *args: Any) -> None:
            if "done" not in injected and self.commits >= 2:
                injected["done"] = runner
                # What the producer's log reports when a connect to the broker fails (a FAIL line).
                runner._on_broker_failure()
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "injected timeout", retriable=True))
            self.inner.send_offsets_to_transaction(*args)

    runner = faulty_runner(
        settings, "outage-timeout", NEVER_INJECTED, set(), TimedOutAfterOutage, commit_watchdog=stuck.watchdog
    )
    run_watched(runner, settings, recording, stuck)
    assert "done" in injected
    assert stuck.fired == 1, "a timeout after a lost broker was retried on the same producer"
    assert_exact(settings, recording)


def test_a_session_lost_during_a_commit_rejoins_without_the_runner_fencing_itself(
    settings: Settings,
    recording: Recording,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # When a static member's session times out, librdkafka forgets its member id and, until the
    # lost-partitions callback returns, heartbeats with the empty id; the broker, which still has the
    # member, answers FENCED_INSTANCE_ID, a fatal error (confluentinc/librdkafka#3437). The runner's
    # callback waited there for the commit in flight, which after a broker restart takes tens of
    # seconds, so every lost session during a commit fenced the runner (the broker-restart test's log,
    # session 25). Here the proxy answers the consumer's heartbeats NOT_COORDINATOR past the session
    # timeout (the broker keeps the member, as a restarted broker does while it loads the group) while
    # a commit is held; the runner must keep going, exact. (A runner's thread blocked elsewhere, e.g. on
    # a full commit backlog, serves the callback late, and still fences itself: not covered here.)
    # The commit is held for a session time-out and more: the broker must not abort it meanwhile.
    monkeypatch.setattr(runner_module, "TRANSACTION_TIMEOUT_MS", 120_000)
    held, release = threading.Event(), threading.Event()

    class HeldCommit(FaultyProducer):
        hold = False

        def commit_transaction(self, *args: Any) -> None:
            if HeldCommit.hold:
                HeldCommit.hold = False
                held.set()
                release.wait(60)
            self.inner.commit_transaction(*args)

    # A third, then a few events whose commit is held: the runner's thread then waits in the
    # consumer's poll, which serves the callback (as in the broker-restart test's failure).
    third = len(recording.events) // 3
    held_batch = third + 100
    produce(settings, recording.events[:third])
    with FaultyKafkaProxy(str(settings.kafka_bootstrap)) as proxy:
        runner = faulty_runner(
            settings.model_copy(update={"kafka_bootstrap": proxy.bootstrap}),
            "lost-session",
            NEVER_INJECTED,
            set(),
            HeldCommit,
        )
        with caplog.at_level(logging.WARNING, logger="tradepulse.bus.runner"), in_thread(runner) as errors:
            wait_for(lambda: runner.metrics.events_processed >= third, 120, "the first third")
            HeldCommit.hold = True
            produce(settings, recording.events[third:held_batch])
            assert held.wait(60), "no commit came to hold"
            # The last answered heartbeat came before this, so the session times out within the window.
            proxy.fail_heartbeats(runner_module.SESSION_TIMEOUT_MS / 1000)
            wait_for(
                lambda: any("partitions lost" in r.getMessage() for r in caplog.records) or bool(errors),
                60,
                "the session to time out",
            )
            # The broker's answers again from now on: heartbeats go on (every 3 s) while the commit is
            # still held.
            proxy.fail_heartbeats(0)
            time.sleep(5)
            release.set()
            produce(settings, recording.events[held_batch:])
            wait_for(
                lambda: runner.metrics.events_processed >= len(recording.events) or bool(errors),
                120,
                "every event",
            )
            assert not errors, errors
    assert proxy.heartbeats_failed > 0
    assert_exact(settings, recording)
