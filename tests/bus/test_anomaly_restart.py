"""Anomaly models across a runner restart, against the real broker: a runner that stops half-way and a
second one that takes its partitions over (restoring each partition's model from its newest checkpoint
at the committed offset and replaying from there) emit exactly the anomalies of one uninterrupted pass
of the core over the same input, and the news↔volume correlations of that pass: the articles the first
runner still held at its committed offset are re-read by the second one (their offsets are committed as
metadata) and joined against the same z-score memory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.bus.test_runner import Recording, make_recording, own_group, read_topic
from tests.reliability.harness import anomaly_keys, uninterrupted_outputs
from tradepulse.bus.clients import consumer_config, producer_config
from tradepulse.bus.pipeline import build_runner
from tradepulse.bus.rebuild import decode_pending
from tradepulse.config import Settings
from tradepulse.topics import ANOMALIES, CORRELATIONS, NEWS

pytestmark = pytest.mark.kafka

# Models within a 5-minute market: scored 10 s after a ticker's first trade, 10 training events a
# second, refits every 10 s of market time (so a checkpoint every 10 s), effective 2 s later.
ANOMALY = {
    "anomaly_warmup_s": 10.0,
    "anomaly_sample_ms": 100,
    "anomaly_min_train": 100,
    "anomaly_refit_interval_s": 10.0,
    "anomaly_refit_delay_s": 2.0,
}


def test_a_runner_restarted_from_checkpoints_flags_what_an_uninterrupted_pass_flags(
    kafka_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = own_group(kafka_settings).model_copy(update={**ANOMALY, "batch_max_messages": 2000})
    total = produce_at_receive_times(settings, make_recording(duration_s=300, rate=60))

    first = build_runner(settings, instance="anomaly-restart")
    first.run(stop_when=lambda m: m.events_processed >= total * 2 // 3)
    done_first = first.metrics.events_processed
    assert done_first < total
    # The articles still waiting for their join window went with the news offsets the first runner
    # committed: the second one re-reads exactly those.
    pending = committed_pending(settings)
    assert sum(len(offsets) for offsets in pending.values()) > 0, pending
    with caplog.at_level(logging.INFO, logger="tradepulse.bus.pipeline"):
        second = build_runner(settings, instance="anomaly-restart")
        second.run(stop_when=lambda m: m.events_processed >= total - done_first)
    restored = [r.args for r in caplog.records if "restored at trades offset" in r.getMessage()]
    assert restored and all(offset > 0 for _, offset in restored), restored  # type: ignore[misc]

    expected_anomalies, expected_correlations = uninterrupted_outputs(settings, tmp_path / "oracle", ANOMALY)
    anomalies = read_topic(settings, ANOMALIES)
    expected = anomaly_keys(expected_anomalies)
    assert len(expected) > 100 and len({a["model_version"] for a in expected_anomalies}) > 10
    assert anomaly_keys(anomalies) == expected
    # Correlations too, every field: an article still waiting for its window at the committed offset is
    # emitted by the second runner with the z-scores the first one would have joined it with.
    correlations = read_topic(settings, CORRELATIONS)
    assert len(expected_correlations) > 10
    assert len(correlations) == len({c["correlation_id"] for c in correlations})  # no duplicates
    got = {c["correlation_id"]: c for c in correlations}
    want = {c["correlation_id"]: c for c in expected_correlations}
    # Exactly, the z-scores included: they are fixed-point sums (tradepulse.core.trade_state), so the
    # same trades give the same bits whatever the batch split or restart.
    differing = {
        cid: {k: (got[cid].get(k), v) for k, v in row.items() if got[cid].get(k) != v}
        for cid, row in want.items()
        if cid in got
    }
    differing = {cid: fields for cid, fields in differing.items() if fields}
    assert (sorted(got.keys() - want.keys()), sorted(want.keys() - got.keys()), differing) == ([], [], {})


def produce_at_receive_times(settings: Settings, recording: Recording, part: slice = slice(None)) -> int:
    """Produce the recording's events (or a `part` of them) with record timestamps = receive times, as
    the live ingest has them: the rebuild's look-back is measured on them, so it leaves out the start of
    a recording longer than the look-back. (Shifted so that the recording ends now: older ones fall to
    retention.) Returns the number of records produced."""
    shift = int(time.time() * 1000) - max(r["received_ts_us"] // 1000 for _, _, r in recording.events)
    producer = Producer(producer_config(settings))
    events = recording.events[part]
    for topic, key, row in events:
        ts = row["received_ts_us"] // 1000 + shift
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=orjson.dumps(row), timestamp=ts)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0
    return len(events)


def committed_pending(settings: Settings) -> dict[int, frozenset[int]]:
    """Per news partition, the pending articles' offsets committed by the runner's group."""
    consumer = Consumer(consumer_config(settings, settings.consumer_group))
    try:
        partitions = consumer.list_topics(NEWS, timeout=10).topics[NEWS].partitions
        committed = consumer.committed([TopicPartition(NEWS, p) for p in partitions], timeout=30)
    finally:
        consumer.close()
    return {tp.partition: offsets for tp in committed if (offsets := decode_pending(tp.metadata)) is not None}
