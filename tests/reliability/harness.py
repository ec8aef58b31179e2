"""Shared machinery of the reliability suite: the pipeline's services as real OS processes (killable with
SIGKILL and restartable), the simulator in a thread, and read-back of Kafka topics and both stores for
reconciliation against what the simulator sent."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from tests.paths import REPO_ROOT
from tradepulse.bus.clients import consumer_config
from tradepulse.config import Settings
from tradepulse.stores.parquet_cold import DATASETS
from tradepulse.supervisor import python_command
from tradepulse.topics import (
    ANOMALIES,
    BARS,
    CORRELATIONS,
    DEAD_LETTERS,
    FEATURES,
    INPUT_TOPICS,
    OUTPUT_TOPICS,
)

KEY = "chaos-simulator-key"
TICKERS = ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN"]
START_MS = 1_767_000_000_000  # fixed simulated start: the same market on every run of a seed
ARTIFACTS = REPO_ROOT / "test-artifacts"
# What a hung service repeats in its log (`Services.dump_stacks` leaves it out): the progress lines of
# `tradepulse process` / `ingest` and librdkafka's failed reconnects.
_REPEATED = re.compile(
    r"^\[(process \S+|ingest)\] (events|received)=|Connect to .* failed: Connection refused"
)
# Variables of the developer's shell that would change what the children do.
_SCRUB = ("MASSIVE_API_KEY", "POLYGON_API_KEY", "FINNHUB_API_KEY")


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment of a service process: the test's settings, nothing from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEPULSE_") and k not in _SCRUB}
    env.update(
        TRADEPULSE_KAFKA_BOOTSTRAP=str(settings.kafka_bootstrap),
        TRADEPULSE_DATA_DIR=str(settings.data_dir),
        TRADEPULSE_CONSUMER_GROUP=settings.consumer_group,
        TRADEPULSE_TICKERS=json.dumps(settings.tickers),
        TRADEPULSE_TOPIC_PARTITIONS=str(settings.topic_partitions),
        TRADEPULSE_SIMULATOR_API_KEY=KEY,
        TRADEPULSE_MASSIVE_RECONNECT_INITIAL_S="0.05",
        TRADEPULSE_MASSIVE_RECONNECT_MAX_S="0.5",
        TRADEPULSE_LOG_LEVEL="INFO",
        # The simulated market starts at START_MS (2025-12), older than the hot TTL by the wall clock:
        # the runner's retention purge would remove the rows the reconciliation counts.
        TRADEPULSE_HOT_PURGE_INTERVAL_S="0",
        PYTHONUNBUFFERED="1",
        PYTHONFAULTHANDLER="1",  # SIGABRT dumps every thread's stack into the service log
    )
    env.update(extra)
    return env


class Services:
    """Named service processes (each in its own session, output appended to `<log_dir>/<name>.log`)."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.argv: dict[str, list[str]] = {}
        self.kills: Counter[str] = Counter()
        self.starts: Counter[str] = Counter()
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start `tradepulse <args>` as service `name` (again with the last args if none are given)."""
        argv = python_command(*args) if args else self.argv[name]
        self.argv[name] = argv
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[name] = proc
        self.starts[name] += 1
        return proc

    def kill(self, name: str) -> None:
        """kill -9, then reap."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        self.kills[name] += 1

    def restart_after_kill(self, name: str) -> None:
        self.kill(name)
        self.start(name)

    def stop(self, name: str, timeout_s: float = 120.0) -> int:
        """SIGTERM (the services finish their batch, commit, flush) and wait; returns the exit code."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout_s)

    def dump_stacks(self, name: str) -> str:
        """SIGABRT a hung service (faulthandler prints its threads' stacks) and return its log tail
        without the progress lines and librdkafka's connection errors: a hung service repeats those
        every few seconds, and CI shows only part of a failure's output (a hang in stop 36 of
        issue 19 could not be diagnosed because its stacks were cut off behind them)."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGABRT)
            proc.wait(30)
        return self.tail(name, 150, drop=_REPEATED)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                pytest.fail(f"service {name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 40, drop: re.Pattern[str] | None = None) -> str:
        """The last `lines` lines of a service's log, leaving out those `drop` matches."""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        kept = path.read_text(errors="replace").splitlines()
        if drop is not None:
            kept = [line for line in kept if not drop.search(line)]
        return "\n".join(kept[-lines:])

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, every: Callable[[], None]) -> None:
    """Poll `condition`; `every` runs each round (e.g. a liveness check that fails the test early)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        every()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)


# --- Kafka read-back --------------------------------------------------------------------------------


def high_watermarks(settings: Settings, topics: tuple[str, ...] = INPUT_TOPICS) -> dict[tuple[str, int], int]:
    consumer = Consumer(consumer_config(settings, "reliability-probe"))
    try:
        out = {}
        for topic in topics:
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                out[(topic, p)] = _retry(
                    lambda t=topic, p=p: consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                )[1]
        return out
    finally:
        consumer.close()


def _retry(call: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    # Leaders of freshly created topics take a moment to be known (NOT_LEADER_FOR_PARTITION).
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def committed_offsets(settings: Settings, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    consumer = Consumer(consumer_config(settings, settings.consumer_group))
    try:
        got = _retry(lambda: consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=30))
        return {(tp.topic, tp.partition): tp.offset for tp in got}
    finally:
        consumer.close()


def committed_total(settings: Settings) -> int:
    """Σ committed offsets of the runner's group over the input partitions."""
    highs = high_watermarks(settings)
    return sum(max(0, o) for o in committed_offsets(settings, list(highs)).values())


def _covers(committed: dict[tuple[str, int], int], highs: dict[tuple[str, int], int]) -> bool:
    """Every non-empty partition of `highs` is committed up to its high watermark."""
    return all(committed[tp] >= high for tp, high in highs.items() if high > 0)


def drained(settings: Settings) -> bool:
    """The runner's group has committed every input record."""
    highs = high_watermarks(settings)
    return _covers(committed_offsets(settings, list(highs)), highs)


def wait_idle(settings: Settings, quiet_s: float, timeout_s: float, every: Callable[[], None]) -> None:
    """Wait until the runner's group has committed every input record and then nothing more for
    `quiet_s`. After its last input batch the runner still commits a transaction or two: the read-back
    of its outputs for the cold archive, and the provisional revisions its interval held back."""
    outputs = list(high_watermarks(settings, OUTPUT_TOPICS))
    last: dict[tuple[str, int], int] = {}
    quiet_since = time.monotonic()

    def quiet() -> bool:
        nonlocal last, quiet_since
        highs = high_watermarks(settings)
        committed = committed_offsets(settings, [*highs, *outputs])  # inputs and outputs in one fetch
        if committed != last:
            last, quiet_since = committed, time.monotonic()
        return _covers(committed, highs) and time.monotonic() - quiet_since >= quiet_s

    wait_until(quiet, timeout_s, f"the runner to commit nothing for {quiet_s:g} s", every)


def read_topic(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every committed record of a topic, partition by partition in offset order."""
    consumer = Consumer(consumer_config(settings, "reliability-reader", **{"enable.partition.eof": True}))
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    pending = set(partitions)
    by_partition: dict[int, list[dict[str, Any]]] = {p: [] for p in partitions}
    deadline = time.monotonic() + 300
    while pending and time.monotonic() < deadline:
        for message in consumer.consume(10_000, timeout=0.5):
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                continue
            by_partition[message.partition()].append(orjson.loads(message.value()))
    consumer.close()
    assert not pending, f"could not read {topic} to the end"
    return [row for p in sorted(by_partition) for row in by_partition[p]]


# --- stores read-back ---------------------------------------------------------------------------------


def cold_keys(settings: Settings, dataset: str = "trades") -> list[tuple[str, int]]:
    """(ticker, sequence) of every row of a cold dataset (`trades`, `quotes`) in its Parquet files
    (duplicates kept)."""
    files = sorted((settings.cold_dir / dataset).rglob("*.parquet"))
    keys: list[tuple[str, int]] = []
    for path in files:
        table = pq.read_table(path, columns=["ticker", "sequence"])
        keys.extend(zip(table["ticker"].to_pylist(), table["sequence"].to_pylist(), strict=True))
    return keys


def hot_trade_keys(settings: Settings) -> list[tuple[str, int]]:
    """(ticker, sequence) of every trade row in the SQLite hot store."""
    import sqlite3

    with sqlite3.connect(f"file:{settings.sqlite_path}?mode=ro", uri=True) as conn:
        return [(t, q) for t, q in conn.execute("SELECT ticker, sequence FROM trades")]


@dataclass
class Reconciliation:
    """One store (or topic) against the simulator's sent set."""

    rows: int
    distinct: int
    duplicates: int
    missing: int
    unexpected: int

    @classmethod
    def of(cls, keys: list[tuple[Any, ...]], sent: set[tuple[Any, ...]]) -> Reconciliation:
        distinct = set(keys)
        return cls(
            rows=len(keys),
            distinct=len(distinct),
            duplicates=len(keys) - len(distinct),
            missing=len(sent - distinct),
            unexpected=len(distinct - sent),
        )

    @property
    def exact(self) -> bool:
        return self.duplicates == 0 and self.missing == 0 and self.unexpected == 0


# --- cold archive of the runner's outputs ---------------------------------------------------------------
# (Kept apart from the trade reconciliation above: the anomaly assertions of tests/reliability build on
# the trade part, this part checks that every output topic reached the cold store exactly once.)

#: Per output topic: the table of the same rows in the SQLite hot store and its key columns (the dataset's
#: natural key); dead letters are not in the hot store but in the DLQ store (`dlq.sqlite3`).
_HOT_TABLES = {
    FEATURES: ("hot.sqlite3", "features", ("ticker", "start_ms")),  # by second: the latest revision
    ANOMALIES: ("hot.sqlite3", "anomalies", ("anomaly_id",)),
    CORRELATIONS: ("hot.sqlite3", "correlations", ("correlation_id",)),
    BARS: ("hot.sqlite3", "bars", ("ticker", "start_ms")),
    DEAD_LETTERS: ("dlq.sqlite3", "dead_letters", ("dead_letter_id",)),
}


def cold_natural_keys(settings: Settings, topic: str) -> list[tuple[Any, ...]]:
    """The natural key of every row of a topic's cold dataset (duplicates kept)."""
    dataset = DATASETS[topic]
    keys: list[tuple[Any, ...]] = []
    for path in sorted((settings.cold_dir / dataset.name).rglob("*.parquet")):
        table = pq.read_table(path, columns=list(dataset.key), partitioning=None)
        keys.extend(zip(*(table[k].to_pylist() for k in dataset.key), strict=True))
    return keys


def hot_natural_keys(settings: Settings, topic: str) -> set[tuple[Any, ...]]:
    """The keys of a topic's rows in the SQLite stores (primary keys: no duplicates possible)."""
    import sqlite3

    db, table, key = _HOT_TABLES[topic]
    with sqlite3.connect(f"file:{settings.data_dir / db}?mode=ro", uri=True) as conn:
        return set(conn.execute(f"SELECT {', '.join(key)} FROM {table}"))


def outputs_archived(settings: Settings, instance: str = "0") -> bool:
    """The runner reports no lag on any partition it consumes, its output topics included: everything it
    produced is in its cold store's buffers (written at the latest by the graceful stop). Waiting for this
    before the stop keeps the stop's own drain (`Runner._drain_outputs`, bounded in time) out of the
    result even on a throttled machine."""
    from tradepulse.bus.status import status_path

    try:
        status = orjson.loads(status_path(settings.data_dir, instance).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return False
    return status.get("consumer_lag") == 0 and status.get("assigned_partitions", 0) > 0


def seed_news(settings: Settings, duration_s: float, every_s: float = 2.0) -> tuple[int, int]:
    """Produce, before the run, a fixed set of news articles (one every `every_s` of the market's event
    time, round-robin over the tickers: the runner joins them into correlations once a ticker's trades
    are 60 s past them) and poison messages between them (the runner dead-letters them to
    market.dead-letters), so that those outputs and their cold datasets take part in the run.
    Deterministic: the same records on every run. Returns (articles, poison messages)."""
    from confluent_kafka import Producer

    from tradepulse.bus.clients import producer_config
    from tradepulse.sources.news import article_records
    from tradepulse.topics import NEWS

    producer = Producer(producer_config(settings))
    articles = poison = 0
    for i in range(int(duration_s / every_s)):
        ticker = TICKERS[i % len(TICKERS)]
        published_s = START_MS / 1000 + (i + 0.5) * every_s
        item = {"id": 9_000_000 + i, "datetime": published_s, "headline": f"{ticker} news {i}", "related": ""}
        for record in article_records(item, ticker, set(TICKERS), int(published_s * 1e6)):
            producer.produce(NEWS, key=ticker.encode(), value=orjson.dumps(record))
            articles += 1
        if i % 2 == 0:
            producer.produce(NEWS, key=ticker.encode(), value=b"{not json #%d" % i)
            poison += 1
    assert producer.flush(30) == 0
    return articles, poison


@dataclass
class OutputArchive:
    """One output topic's cold dataset against the topic (read_committed) and the hot/DLQ store."""

    kafka_rows: int
    kafka_duplicates: int
    cold: Reconciliation  # against the keys in Kafka
    hot: Reconciliation  # the hot (or DLQ) store's keys against the keys in Kafka

    @property
    def exact(self) -> bool:
        return self.kafka_duplicates == 0 and self.cold.exact


def output_archive(
    settings: Settings, read: Callable[[Settings, str], list[dict[str, Any]]]
) -> dict[str, OutputArchive]:
    """Every output topic's cold dataset reconciled with the topic and the stores, by dataset name.
    `read(settings, topic)` reads a topic read_committed (the callers' own readers)."""
    out = {}
    for topic in OUTPUT_TOPICS:
        dataset = DATASETS[topic]
        rows = read(settings, topic)
        in_kafka = [tuple(row[k] for k in dataset.key) for row in rows]
        expected = set(in_kafka)
        in_hot = expected
        if topic == FEATURES:
            # Revisions (docs/schema.md): a duplicate is a repeated (ticker, second, revision); the cold
            # dataset holds the final revisions, the hot store one row (the latest revision) per second.
            in_kafka = [(r["ticker"], r["snapshot_start_ms"], r["revision"]) for r in rows]
            expected = {(r["ticker"], r["ts_ms"]) for r in rows if r["final"]}
            in_hot = {(r["ticker"], r["snapshot_start_ms"]) for r in rows}
        out[dataset.name] = OutputArchive(
            kafka_rows=len(in_kafka),
            kafka_duplicates=len(in_kafka) - len(set(in_kafka)),
            cold=Reconciliation.of(cold_natural_keys(settings, topic), expected),
            hot=Reconciliation.of(list(hot_natural_keys(settings, topic)), in_hot),
        )
    return out


@dataclass
class ChaosReport:
    name: str
    sent_trades: int
    sent_quotes: int
    market_trades: int  # the market's trades from each ticker's first one published (the oracle)
    sent_not_in_kafka: int
    runner_kills: int
    ingest_kills: int
    kafka: Reconciliation
    hot: Reconciliation
    cold: Reconciliation
    kafka_quotes: Reconciliation  # against the quotes sent
    cold_quotes: Reconciliation  # against the quotes in Kafka
    features_checked: int
    seconds: float
    # The cold archive of every output topic (see `output_archive`), by dataset.
    cold_outputs: dict[str, OutputArchive] = field(default_factory=dict)
    news_articles: int = 0  # articles seeded into market.news (`seed_news`)
    news_poison: int = 0  # poison messages seeded into market.news (dead letters expected)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    contention: dict[str, float] = field(default_factory=dict)
    anomalies_checked: int = 0  # equal to an uninterrupted run (test_chaos.assert_outputs_like_uninterrupted)
    correlations_checked: int = 0
    anomaly_restores: int = 0  # partitions whose anomaly model a restarted runner took from a checkpoint

    def save(self) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"chaos-{self.name}.json"
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


# --- anomalies and correlations against an uninterrupted run -----------------------------------------

#: Anomaly model settings of the chaos runs: a 16 s market must see models come and go, so tickers are
#: scored after 2 s, learn 50 trades/s, join the model with 100 of them, and refits fall due every 2 s
#: of market time (effective 0.5 s later). Passed to the runner as environment and to the oracle.
CHAOS_ANOMALY = {
    "anomaly_warmup_s": 2.0,
    "anomaly_sample_ms": 20,
    "anomaly_min_train": 100,
    "anomaly_refit_interval_s": 2.0,
    "anomaly_refit_delay_s": 0.5,
}


def chaos_anomaly_env() -> dict[str, str]:
    return {f"TRADEPULSE_{k.upper()}": str(v) for k, v in CHAOS_ANOMALY.items()}


def read_messages(settings: Settings, topics: tuple[str, ...] = INPUT_TOPICS) -> dict[int, list[Any]]:
    """Every committed message of the topics, per partition number in (timestamp, offset) order."""
    consumer = Consumer(consumer_config(settings, "reliability-oracle", **{"enable.partition.eof": True}))
    assignment = [
        TopicPartition(topic, p, 0)
        for topic in topics
        for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ]
    consumer.assign(assignment)
    pending = {(tp.topic, tp.partition) for tp in assignment}
    by_partition: dict[int, list[Any]] = {}
    deadline = time.monotonic() + 300
    while pending and time.monotonic() < deadline:
        for message in consumer.consume(10_000, timeout=0.5):
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard((message.topic(), message.partition()))
                continue
            by_partition.setdefault(message.partition(), []).append(message)
    consumer.close()
    assert not pending, f"could not read {sorted(pending)} to the end"
    for messages in by_partition.values():
        messages.sort(key=lambda m: (m.timestamp()[1], topics.index(m.topic()), m.offset()))
    return by_partition


def uninterrupted_outputs(
    settings: Settings, state_dir: Path, anomaly: dict[str, Any] = CHAOS_ANOMALY
) -> tuple[list[dict], list[dict]]:
    """Anomalies and correlations of the pure core fed once with what reached the input topics: each
    partition's records in order (trades in offset order), in batches, no crash, no rebuild."""
    from tradepulse.bus.decode import decode_batch
    from tradepulse.bus.pipeline import CoreProcessor

    processor = CoreProcessor(settings.model_copy(update={**anomaly, "data_dir": state_dir}))
    anomalies: list[dict] = []
    correlations: list[dict] = []
    try:
        for _, messages in sorted(read_messages(settings).items()):
            for start in range(0, len(messages), settings.batch_max_messages):
                batch = decode_batch(messages[start : start + settings.batch_max_messages])
                processor.flag_outliers(batch)  # as the runner does, before the core
                out = processor.process(batch, emit=True)
                anomalies += out.anomalies
                correlations += out.correlations
    finally:
        processor.close()
    return anomalies, correlations


def hot_anomalies(settings: Settings) -> list[dict]:
    import sqlite3

    with sqlite3.connect(f"file:{settings.sqlite_path}?mode=ro", uri=True) as conn:
        return [orjson.loads(doc) for (doc,) in conn.execute("SELECT doc FROM anomalies")]


def anomaly_keys(rows: list[dict]) -> list[tuple]:
    return sorted((a["anomaly_id"], a["anomaly_score"], a["threshold"], a["model_version"]) for a in rows)


def correlation_keys(rows: list[dict]) -> list[str]:
    return sorted(orjson.dumps(row, option=orjson.OPT_SORT_KEYS).decode() for row in rows)
