"""The runner as real processes (`tradepulse process`): killed with SIGKILL mid-stream and restarted, and
two processes sharing one consumer group. Outputs are read back read_committed and the stores are
checked row by row: no duplicates and no gaps versus the input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from tests.bus.test_runner import (
    POISON,
    TICKERS,
    Recording,
    assert_dead_letters_published_once,
    assert_features_match,
    expected_correlation_ids,
    make_recording,
    own_group,
    produce,
    read_topic,
    reference_snapshots,
)
from tests.reliability.harness import output_archive
from tradepulse.bus.clients import producer_config
from tradepulse.bus.status import status_path
from tradepulse.config import Settings
from tradepulse.stores.factory import open_hot_store
from tradepulse.topics import (
    ANOMALIES,
    CORRELATIONS,
    FEATURES,
    INPUT_TOPICS,
    NEWS,
    OUTPUT_TOPICS,
    QUOTES,
    TRADES,
    topic_specs,
)

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recording() -> Recording:
    return make_recording(duration_s=340, rate=50, seed=23)


@pytest.fixture
def runner_settings(kafka_settings: Settings) -> Settings:
    return own_group(kafka_settings)


_started: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def no_runner_left_behind() -> Iterator[None]:
    """Kills what a test's runners still run at its end: after a failed wait they would otherwise keep
    polling the broker, and load the box, for the rest of the session."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def start_runner(settings: Settings, instance: str, *extra: str, batch: int = 300) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "TRADEPULSE_KAFKA_BOOTSTRAP": str(settings.kafka_bootstrap),
        "TRADEPULSE_CONSUMER_GROUP": settings.consumer_group,
        "TRADEPULSE_DATA_DIR": str(settings.data_dir),
        "TRADEPULSE_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "TRADEPULSE_BATCH_MAX_MESSAGES": str(batch),
        "TRADEPULSE_LOG_LEVEL": "INFO",
        # The recording's event times (START_MS, 2025-12) are older than the hot TTL by the wall clock:
        # the retention purge would remove the rows these tests compare.
        "TRADEPULSE_HOT_PURGE_INTERVAL_S": "0",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tradepulse.cli.main",
            "process",
            "--instance",
            instance,
            "--progress-s",
            "0",
            *extra,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    _started.append(proc)
    return proc


def status(settings: Settings, instance: str) -> dict[str, Any]:
    try:
        return orjson.loads(status_path(settings.data_dir, instance).read_bytes())
    except FileNotFoundError:
        return {}


def wait_until(condition, timeout_s: float, what: str, *procs: subprocess.Popen[bytes]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(
                    f"runner exited ({proc.returncode}) while waiting for {what}:\n{out[-3000:]}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def finish(proc: subprocess.Popen[bytes], timeout_s: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout_s)
    text = out.decode()
    assert proc.returncode == 0, text[-3000:]
    return text


def cold_ids(settings: Settings, dataset: str) -> list[str]:
    ids: list[str] = []
    for path in sorted((settings.cold_dir / dataset).rglob("*.parquet")):
        ids += pq.read_table(path, columns=["event_id"]).column("event_id").to_pylist()
    return ids


def assert_exactly_once(settings: Settings, rec: Recording) -> None:
    """Outputs and stores hold every input-derived item exactly once."""
    expected = reference_snapshots(rec)
    # Spread excluded: from a pre-filled topic the trade/quote interleaving is timing-dependent (see
    # test_runner.py); every other feature is a function of the trades alone.
    assert_features_match(read_topic(settings, FEATURES), expected, spread=False)
    correlations = [c["correlation_id"] for c in read_topic(settings, CORRELATIONS)]
    assert len(correlations) == len(set(correlations))
    assert set(correlations) == expected_correlation_ids(rec)
    anomalies = [a["anomaly_id"] for a in read_topic(settings, ANOMALIES)]
    assert len(anomalies) == len(set(anomalies))

    hot = open_hot_store(settings)
    try:
        stored = [row for t in TICKERS for row in hot.feature_history(t, 0, limit=100_000)]
        assert_features_match(stored, expected, spread=False)
        assert hot.trade_ids() == {t["event_id"] for t in rec.of(TRADES)}
        assert hot.count("trades") == len(rec.of(TRADES))
        assert {c["correlation_id"] for c in hot.correlations(None, 0, limit=10_000)} == set(correlations)
        # Anomalies of an aborted attempt may differ from the replay's (the model refits in the
        # background), but every emitted one is stored.
        assert set(anomalies) <= {a["anomaly_id"] for a in hot.anomalies(None, 0, limit=100_000)}
    finally:
        hot.close()

    for topic, dataset in ((TRADES, "trades"), (QUOTES, "quotes"), (NEWS, "news")):
        ids = cold_ids(settings, dataset)
        assert len(ids) == len(set(ids)), f"duplicate {dataset} rows in the cold store"
        assert set(ids) == {r["event_id"] for r in rec.of(topic)}, (
            f"{dataset} rows missing from the cold store"
        )
    # Every output topic archived: the cold dataset holds the topic's rows (read_committed) exactly once.
    archives = output_archive(settings, read_topic)
    for name, archive in archives.items():
        assert archive.exact, (name, archive)
    assert archives["features"].cold.distinct > 0 and archives["correlations"].cold.distinct > 0


def produce_paced(settings: Settings, events: list[tuple[str, str, Any]], step: int = 100) -> None:
    """Produce `events` in order, `step` at a time with a 25-ms pause after each (one producer)."""
    producer = Producer(producer_config(settings))
    for start in range(0, len(events), step):
        produce(settings, events[start : start + step], producer)
        time.sleep(0.025)


def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(
    runner_settings: Settings, recording: Recording
) -> None:
    kafka_settings = runner_settings
    # Poison every 100 messages, on every input topic and partition: the batches in flight when the runner
    # is killed hold dead letters, and the restart replays them.
    mixed: list[tuple[str, str, Any]] = list(recording.events)
    poison = []
    for i in range(len(mixed) // 100):
        topic, raw, _ = POISON[i % len(POISON)]
        poison.append((topic, TICKERS[i % len(TICKERS)], raw + b" #%d" % i))  # distinct payloads
    for i, item in enumerate(poison):
        mixed.insert(50 + i * 101, item)
    total = len(mixed)
    head, rest = mixed[:3000], mixed[3000:]
    produce(kafka_settings, head)
    first = start_runner(kafka_settings, "k", batch=200)
    wait_until(lambda: status(kafka_settings, "k").get("events_processed", 0) >= 2000, 120, "progress", first)
    # The rest arrives while the runner works, in 100-message steps (~4 s in all), so that the kill
    # lands mid-stream however fast the runner is: produced at once, the whole recording was processed
    # within the status file's one-second refresh, before the kill.
    feeder = threading.Thread(target=produce_paced, args=(kafka_settings, rest), daemon=True)
    feeder.start()
    wait_until(
        lambda: status(kafka_settings, "k").get("events_processed", 0) >= len(head) + 2000,
        120,
        "progress through the paced rest",
        first,
    )
    # The cold store has archived by now, through pyarrow, which imports pandas (if it can) the first
    # time it builds an array: the runner's process keeps it out (`tradepulse.bus.runner.keep_pandas_out`).
    libraries = Path(f"/proc/{first.pid}/maps").read_text()
    assert "/pyarrow/" in libraries and "/pandas/" not in libraries
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    killed_at = status(kafka_settings, "k")["events_processed"]
    feeder.join(120)
    assert not feeder.is_alive()
    assert killed_at < total, "the runner finished before it was killed; pace the rest more slowly"

    second = start_runner(kafka_settings, "k", "--exit-when-idle", "3")
    log = finish(second)
    # The restart rebuilt its windows from the look-back, then resumed after the committed offsets.
    assert "rebuilt state from" in log and "rebuilt state from 0 records" not in log, log[-2000:]
    assert status(kafka_settings, "k")["events_processed"] < total
    letters = assert_dead_letters_published_once(kafka_settings, [raw for _, _, raw in poison])
    assert len(letters) == len(poison)
    assert_exactly_once(kafka_settings, recording)


def test_two_processes_share_the_partitions_of_one_group(
    runner_settings: Settings, recording: Recording
) -> None:
    kafka_settings = runner_settings
    runners = {name: start_runner(kafka_settings, name) for name in ("a", "b")}
    procs = list(runners.values())
    # Inputs and the outputs the runners read back for the cold archive.
    consumed = {*INPUT_TOPICS, *OUTPUT_TOPICS}
    specs = topic_specs(kafka_settings.topic_partitions, kafka_settings.topic_retention_ms)
    total_partitions = sum(spec.partitions for spec in specs if spec.name in consumed)

    def both_assigned() -> bool:
        counts = [status(kafka_settings, name).get("assigned_partitions", 0) for name in runners]
        return all(counts) and sum(counts) == total_partitions

    wait_until(both_assigned, 60, "both runners to own partitions", *procs)
    produce(kafka_settings, recording.events)
    wait_until(
        lambda: (
            sum(status(kafka_settings, n).get("events_processed", 0) for n in runners)
            >= len(recording.events)
        ),
        120,
        "the two runners to process everything",
        *procs,
    )
    # Graceful (finish the batch, commit, archive the outputs to their end, flush, exit 0), one after
    # the other: the last batches of one runner may produce into output partitions the other archives,
    # and the survivor takes all partitions over before it stops itself.
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        finish(proc)
    processed = {name: status(kafka_settings, name)["events_processed"] for name in runners}
    assert all(processed.values()), processed
    assert sum(processed.values()) == len(recording.events)
    assert_exactly_once(kafka_settings, recording)
