"""The exactly-once runner against the real broker and the real stores: every emitted feature checked
against an independent recomputation, poison messages dead-lettered, a slow sink engaging backpressure.

Helpers here (recording, producing, reading back, the reference recomputation) are shared with
`test_runner_processes.py` (SIGKILL/restart and two processes in one group).
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from tests.core.zscore_fixed_point import bucket_value, quantised
from tests.doubles import HangingDepthDlq, SlowHotStore
from tradepulse.bus.clients import consumer_config, producer_config
from tradepulse.bus.pipeline import build_runner
from tradepulse.bus.runner import Runner
from tradepulse.bus.stages import merge_summaries
from tradepulse.bus.status import stages_path
from tradepulse.config import Settings
from tradepulse.core.bars import BarEngine
from tradepulse.core.columns import TradeColumns
from tradepulse.core.conditions import ConditionRules
from tradepulse.core.features import FeatureConfig
from tradepulse.core.news_join import correlation_id
from tradepulse.core.sessions import SessionTable
from tradepulse.models import Bar, Correlation, DeadLetter, FeatureVector
from tradepulse.sources.news import article_records
from tradepulse.sources.parse import quote_record, trade_record
from tradepulse.sources.simulator.market import MarketConfig, MarketModel
from tradepulse.stores.dlq import encode_payload
from tradepulse.stores.factory import open_dlq, open_hot_store
from tradepulse.topics import BARS, CORRELATIONS, DEAD_LETTERS, FEATURES, INPUT_TOPICS, NEWS, QUOTES, TRADES

pytestmark = pytest.mark.kafka

START_MS = 1_767_000_000_000  # fixed event time, so the recording is the same on every run
# Spread over all 3 test partitions (crc32 partitioner): AAPL → 0, MSFT and NVDA → 1, GOOG → 2.
TICKERS = ["AAPL", "MSFT", "NVDA", "GOOG"]
FEATURE_FIELDS = [
    "price",
    "volume",
    "vwap_1min",
    "vwap_5min",
    "rolling_avg_5min",
    "volume_zscore",
    "price_momentum",
    "vwap_deviation_bps",
]


# --- recording --------------------------------------------------------------------------------------


@dataclass
class Recording:
    """Topic records in event-time order: (topic, ticker, record dict)."""

    events: list[tuple[str, str, dict[str, Any]]]

    def of(self, topic: str) -> list[dict[str, Any]]:
        return [r for t, _, r in self.events if t == topic]


def make_recording(duration_s: float, rate: float, seed: int = 11) -> Recording:
    """A deterministic multi-ticker stream from the simulator's market model, converted by the ingest's
    own parsers into topic payloads (injected volume spikes, price jumps and news included)."""
    model = MarketModel(
        MarketConfig(
            seed=seed, tickers=TICKERS, rate=rate, start_ms=START_MS, news_interval_s=20.0, tick_ms=500
        )
    )
    events: list[tuple[str, str, dict[str, Any]]] = []
    for block in model.generate(duration_s):
        for wire in block.records():
            received = wire["t"] * 1000 + 500
            if wire["ev"] == "T":
                rec = trade_record(wire, received)
                events.append((TRADES, rec["ticker"], rec))
            else:
                rec = quote_record(wire, received)
                events.append((QUOTES, rec["ticker"], rec))
        for item in block.news:
            for rec in article_records(item, item["related"], set(TICKERS), block.end_ms * 1000):
                events.append((NEWS, rec["ticker"], rec))
    return Recording(events)


def produce(settings: Settings, events: list[tuple[str, str, Any]], producer: Producer | None = None) -> None:
    """Produce (topic, key, value) with the idempotent producer; dict values are JSON-encoded."""
    producer = producer or Producer(producer_config(settings))
    for topic, key, value in events:
        payload = value if isinstance(value, bytes) else orjson.dumps(value)
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=payload)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0


def read_topic(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every committed record of a topic (read_committed, all partitions, to the end)."""
    return [orjson.loads(value) for _, value, _ in read_records(settings, topic)]


def read_records(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes | None, tuple[int, int]]]:
    """Every committed record of a topic as (key, raw value, (partition, offset)), read_committed, all
    partitions, to the end."""
    consumer = Consumer(consumer_config(settings, "test-reader", **{"enable.partition.eof": True}))
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    pending: set[int] = set(partitions)
    out: list[tuple[bytes | None, bytes | None, tuple[int, int]]] = []
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for message in consumer.consume(1000, timeout=0.5):
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                continue
            out.append((message.key(), message.value(), (message.partition(), message.offset())))
    consumer.close()
    assert not pending, f"could not read {topic} to the end"
    return out


def assert_dead_letters_published_once(settings: Settings, poison: list[bytes]) -> list[dict[str, Any]]:
    """market.dead-letters, read_committed, holds exactly one letter per input message whose value is in
    `poison` and none for any other input: each keyed by its dead_letter_id, a valid DeadLetter whose
    topic/partition/offset point at that message and whose payload is its value. Returns the letters."""
    records = read_records(settings, DEAD_LETTERS)
    letters = [orjson.loads(value) for _, value, _ in records]
    assert [key for key, _, _ in records] == [letter["dead_letter_id"].encode() for letter in letters]
    ids = [letter["dead_letter_id"] for letter in letters]
    assert len(ids) == len(set(ids)), "a dead letter was published more than once"
    bad = set(poison)
    poison_at = {
        (topic, *position): value
        for topic in INPUT_TOPICS
        for _, value, position in read_records(settings, topic)
        # an empty value may come back as None
        if (value if value is not None else b"") in bad
    }
    by_source: dict[tuple[str, int, int], dict[str, Any]] = {}
    for letter in letters:
        DeadLetter.model_validate(letter)
        source = (letter["source_topic"], letter["source_partition"], letter["source_offset"])
        assert source in poison_at, f"dead letter for a good input (or without context): {source}"
        assert source not in by_source, f"two dead letters for {source}"
        by_source[source] = letter
        original = encode_payload(poison_at[source])
        if "the DLQ store holds it whole" in letter["reason"]:
            assert original.startswith(letter["payload"]) and len(letter["payload"]) < len(original)
        else:
            assert letter["payload"] == original
    assert by_source.keys() == poison_at.keys(), "poison messages without a dead letter on the topic"
    return letters


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if _runner_errors:
            raise AssertionError(f"the runner failed while waiting for {what}") from _runner_errors[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


_runner_errors: list[BaseException] = []


@contextmanager
def running(runner: Runner) -> Iterator[Runner]:
    """Run a runner in a thread; stop it gracefully (finish batch, commit, flush) on exit. A runner
    that dies fails the test at the next `wait_for` instead of at a timeout."""
    errors = _runner_errors
    errors.clear()

    def target() -> None:
        try:
            runner.run()
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="runner", daemon=True)
    thread.start()
    try:
        yield runner
    finally:
        runner.request_stop()
        thread.join(60)
    assert not thread.is_alive(), "runner did not stop"
    if errors:
        raise errors[0]


# --- independent reference ------------------------------------------------------------------------


def reference_snapshots(rec: Recording, grace_ms: int = 2000) -> dict[tuple[str, int], dict[str, Any]]:
    """1-second feature snapshots recomputed from the definitions with plain pandas/numpy, one second at
    a time (no prefix sums, no incremental state): for every second of a ticker whose end is at least
    `grace_ms` behind the ticker's last trade, the vector as of the last trade of that second."""
    trades = pd.DataFrame(rec.of(TRADES))
    quotes = pd.DataFrame(rec.of(QUOTES))
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for ticker, tr in trades.groupby("ticker", sort=False):
        tr = tr.reset_index(drop=True)
        ts = tr["exchange_ts_ms"].to_numpy()
        # The reference assumes an in-order tape (no late events), which the simulator produces.
        assert (np.diff(ts) >= 0).all()
        price, raw_size = tr["price"].to_numpy(), tr["size"].to_numpy()
        # Trade conditions (the simulator's mix): volume-eligible trades count with their size, the
        # others with 0; only price-eligible trades set the last price (tradepulse.core.conditions).
        masks = ConditionRules.bundled().masks(list(tr["conditions"]))
        vol, ok = masks.volume, masks.last_price
        size = np.where(vol, raw_size, 0.0)
        sec = ts // 1000
        q = quotes[quotes["ticker"] == ticker]
        q_ts = q["exchange_ts_ms"].to_numpy()
        q_spread = np.where(
            (q["bid_price"] > 0) & (q["ask_price"] > 0), q["ask_price"] - q["bid_price"], np.nan
        )
        vol_by_sec = pd.Series(size).groupby(sec).sum()
        # volume_zscore counts each trade's size capped at `zscore_size_cap` × the mean size over the
        # closed seconds of the previous `zscore_cap_window_buckets`; in order, closed = ≤ ts − grace.
        cfg = FeatureConfig()
        own = sec * 1000
        closed_end = np.minimum((ts - grace_ms) // 1000 * 1000, own)
        lo = np.searchsorted(ts, own - cfg.zscore_cap_window_buckets * 1000, side="left")
        hi = np.maximum(np.searchsorted(ts, closed_end, side="left"), lo)
        # In the z-score's fixed point (sizes in 2^-16 units, the cap floored, x rounded to 2^-32).
        qsize = quantised(size)
        sums = np.r_[0, np.cumsum(qsize)]
        n_vol = np.r_[0, np.cumsum(vol)]
        with np.errstate(invalid="ignore", divide="ignore"):
            cap_q = np.floor(
                cfg.zscore_size_cap * (sums[hi] - sums[lo]).astype(float) / (n_vol[hi] - n_vol[lo])
            )
        capped = np.where(n_vol[hi] > n_vol[lo], np.minimum(qsize, cap_q), qsize) / 2**16
        x_by_sec = bucket_value(pd.Series(capped).groupby(sec).sum(), cfg)
        closed_until = ts.max() - grace_ms
        last_of_second = np.flatnonzero(np.r_[sec[1:] != sec[:-1], True])
        for i in last_of_second:
            s, t, p = int(sec[i]), int(ts[i]), float(price[i])
            if (s + 1) * 1000 > closed_until:
                continue
            upto = slice(0, i + 1)
            t_up, p_up, s_up, v_up, ok_up = ts[upto], price[upto], size[upto], vol[upto], ok[upto]
            last = np.flatnonzero(ok_up & (t_up > t - 300_000))
            p = float(p_up[last[-1]]) if len(last) else p  # the last price
            w1, w5 = (t_up > t - 60_000) & v_up, (t_up > t - 300_000) & v_up
            vwap1 = float(np.sum(p_up[w1] * s_up[w1]) / np.sum(s_up[w1])) if w1.any() else p
            vwap5 = float(np.sum(p_up[w5] * s_up[w5]) / np.sum(s_up[w5])) if w5.any() else p
            a5 = (t_up > t - 300_000) & ok_up
            avg5 = float(np.mean(p_up[a5])) if a5.any() else p
            ref = np.flatnonzero((t_up <= t - 60_000) & ok_up)
            momentum = 0.0
            if len(ref) and t_up[ref[-1]] > t - 300_000:
                momentum = (p - p_up[ref[-1]]) / p_up[ref[-1]] * 100
            volume = float(vol_by_sec[s])
            hist = x_by_sec[(x_by_sec.index >= s - 300) & (x_by_sec.index <= s - 1)]
            z = 0.0
            if len(hist):
                n = s - int(hist.index.min())
                values = np.zeros(n)
                values[hist.index.to_numpy() - (s - n)] = hist.to_numpy()
                mean, mean_sq = values.mean(), float(np.mean(values**2))
                var = mean_sq - mean * mean
                if n >= 30 and var > 1e-12 * mean_sq:
                    z = (float(x_by_sec[s]) - mean) / math.sqrt(var)
            before = np.flatnonzero(q_ts <= t)
            spread = None
            if len(before) and not math.isnan(q_spread[before[-1]]):
                spread = float(q_spread[before[-1]])
            out[(ticker, t)] = {
                "ticker": ticker,
                "ts_ms": t,
                "price": p,
                "volume": volume,
                "vwap_1min": vwap1,
                "vwap_5min": vwap5,
                "rolling_avg_5min": avg5,
                "volume_zscore": z,
                "price_momentum": momentum,
                "trade_frequency": int(np.sum((t_up > t - 60_000) & v_up)),
                "vwap_deviation_bps": (p - vwap5) / vwap5 * 1e4,
                "bid_ask_spread": spread,
                "window_start_ms": t - 300_000,
                "window_end_ms": t,
                "late_events": 0,
            }
    return out


def assert_revisions(emitted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The revisions of market.features (docs/schema.md#featurevector-revisions), in topic order: per
    (ticker, second) the revision numbers strictly grow (so no (key, revision) pair repeats) and only
    the last one may be final. Returns the final revisions."""
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for f in emitted:
        assert f["snapshot_start_ms"] <= f["ts_ms"] < f["snapshot_start_ms"] + 1000
        by_key[f["ticker"], f["snapshot_start_ms"]].append(f)
    for key, revisions in by_key.items():
        numbers = [f["revision"] for f in revisions]
        assert numbers == sorted(set(numbers)), (key, numbers)
        assert not any(f["final"] for f in revisions[:-1]), key
    return [f for f in emitted if f["final"]]


def assert_features_match(
    emitted: list[dict[str, Any]], expected: dict[tuple[str, int], dict[str, Any]], *, spread: bool = True
) -> list[dict[str, Any]]:
    """Well-formed revisions, and the final ones: the same snapshot keys, no duplicates, every numeric
    field within rtol 1e-9. Returns the final revisions."""
    emitted = assert_revisions(emitted)
    keys = [(f["ticker"], f["ts_ms"]) for f in emitted]
    assert len(keys) == len(set(keys)), "duplicate feature snapshots"
    assert set(keys) == set(expected), (
        f"missing {len(set(expected) - set(keys))}, unexpected {len(set(keys) - set(expected))}"
    )
    ordered = sorted(emitted, key=lambda f: (f["ticker"], f["ts_ms"]))
    exp = [expected[(f["ticker"], f["ts_ms"])] for f in ordered]
    for name in FEATURE_FIELDS:
        np.testing.assert_allclose(
            [f[name] for f in ordered], [e[name] for e in exp], rtol=1e-9, atol=1e-9, err_msg=name
        )
    for name in ("trade_frequency", "window_start_ms", "window_end_ms", "late_events"):
        assert [f[name] for f in ordered] == [e[name] for e in exp], name
    if spread:
        got = [f["bid_ask_spread"] for f in ordered]
        want = [e["bid_ask_spread"] for e in exp]
        assert [g is None for g in got] == [w is None for w in want]
        np.testing.assert_allclose(
            [g for g in got if g is not None], [w for w in want if w is not None], rtol=1e-9, atol=1e-12
        )
    return emitted


def expected_correlation_ids(rec: Recording) -> set[str]:
    """Articles whose ±60 s window has closed: the ticker's last trade is ≥ 60 s after publication."""
    last_ts: dict[str, int] = defaultdict(int)
    for trade in rec.of(TRADES):
        last_ts[trade["ticker"]] = max(last_ts[trade["ticker"]], trade["exchange_ts_ms"])
    return {
        correlation_id(a["article_id"], a["ticker"])
        for a in rec.of(NEWS)
        if a["published_ts_ms"] + 60_000 <= last_ts[a["ticker"]]
    }


def own_group(settings: Settings) -> Settings:
    """The settings with a consumer group of their own: static members of earlier tests stay registered
    in their group until their session times out, and committed offsets would outlive the topics."""
    return settings.model_copy(update={"consumer_group": f"runner-{uuid.uuid4().hex[:8]}"})


@pytest.fixture
def runner_settings(kafka_settings: Settings) -> Settings:
    return own_group(kafka_settings)


@pytest.fixture(scope="module")
def recording() -> Recording:
    # ~20k events over 6.5 minutes of event time: longer than the 5-minute windows.
    return make_recording(duration_s=390, rate=52)


# --- tests --------------------------------------------------------------------------------------------


def test_every_emitted_feature_matches_an_independent_recomputation(
    runner_settings: Settings, recording: Recording
) -> None:
    settings = runner_settings.model_copy(update={"batch_max_messages": 2000})
    expected = reference_snapshots(recording)
    assert len(recording.events) > 15_000 and len(expected) > 1000
    runner = build_runner(settings, instance="features")
    # Replay the recording as a live feed, in chunks of 10 s of event time, each consumed before the next
    # is produced, with the quotes one chunk ahead of the trades: every quote at or before a trade has
    # then been consumed when the trade is, as in a live feed. (From a pre-filled topic the runner may
    # read trades minutes ahead of the quotes, and the bid-ask spread, the latest quote at or before a
    # trade, would depend on fetch timing.)
    chunks: dict[int, list[tuple[str, str, Any]]] = defaultdict(list)
    for topic, key, row in recording.events:
        ts = row.get("exchange_ts_ms", row.get("published_ts_ms"))
        index = (ts - START_MS) // 10_000
        chunks[index - 1 if topic == QUOTES else index].append((topic, key, row))
    producer = Producer(producer_config(settings, **{"linger.ms": 0}))
    with running(runner):
        sent = 0
        for index in sorted(chunks):
            produce(settings, chunks[index], producer)
            sent += len(chunks[index])
            wait_for(lambda sent=sent: runner.metrics.events_processed >= sent, 60, "the chunk")
        assert runner.metrics.events_processed == len(recording.events)

    emitted = read_topic(settings, FEATURES)
    finals = assert_features_match(emitted, expected)
    # Fresh features: provisional revisions as the trades arrived, at least one per chunk (each chunk is
    # one or more batches with trades of every ticker).
    assert len(emitted) - len(finals) >= len(chunks)
    # Every snapshot is tagged with the session of its event time (04:20 ET on a Monday: pre-market).
    sessions = SessionTable.nyse().session_of(np.array([f["ts_ms"] for f in emitted]))
    assert [f["session"] for f in emitted] == list(sessions) and set(sessions) == {"pre_market"}
    for row in emitted[:50]:
        FeatureVector.model_validate(row)

    hot = open_hot_store(settings)
    stored = [row for t in TICKERS for row in hot.feature_history(t, 0, limit=100_000)]
    assert_features_match(stored, expected)
    # The hot store holds the latest revision of every second: the last one on the topic, bit for bit.
    last_revision = {(f["ticker"], f["snapshot_start_ms"]): f for f in emitted}
    assert {(f["ticker"], f["snapshot_start_ms"]): f for f in stored} == last_revision
    assert hot.trade_ids() == {t["event_id"] for t in recording.of(TRADES)}

    correlations = read_topic(settings, CORRELATIONS)
    ids = [c["correlation_id"] for c in correlations]
    assert len(ids) == len(set(ids)) and set(ids) == expected_correlation_ids(recording)
    for row in correlations:
        Correlation.model_validate(row)
    assert {c["correlation_id"] for c in hot.correlations(None, 0, limit=10_000)} == set(ids)

    # One-minute bars: exactly the pure bar core's, by the condition rules, over the recording's trades (a ticker's trades keep
    # their order in its partition), once each, on the topic and in the hot store.
    bars = read_topic(settings, BARS)
    columns = TradeColumns.from_records(recording.of(TRADES))
    rule = ConditionRules.bundled().masks(columns.conditions)  # the simulator's condition mix
    expected_bars = BarEngine(settings.late_grace_ms, SessionTable.nyse()).process(
        columns,
        volume_eligible=rule.volume,
        high_low_eligible=rule.high_low,
        open_close_eligible=rule.open_close,
    )
    assert not rule.volume.all() and not rule.last_price.all()  # the rules matter to these bars
    assert len(expected_bars) >= 5 * len(TICKERS)
    assert sorted(bars, key=lambda b: (b["start_ms"], b["ticker"])) == expected_bars
    for row in bars:
        Bar.model_validate(row)
    assert [b for t in TICKERS for b in hot.bars(t, 0)] == sorted(
        expected_bars, key=lambda b: (TICKERS.index(b["ticker"]), b["start_ms"])
    )
    hot.close()

    status = orjson.loads(runner.status_file.read_bytes())
    assert status["events_processed"] == len(recording.events)
    assert status["last_commit_at"] > 0 and status["pid"] > 0
    # The last heartbeat of a clean stop says the runner left (/health then does not list it as missing).
    assert status["stopped_at"] >= status["last_commit_at"]
    # And it leaves its whole run's stage histograms beside the status (what `tradepulse bench` merges
    # the percentiles of several instances from): the same run as the status's summaries.
    histograms = orjson.loads(stages_path(runner.status_file.parent, runner.instance).read_bytes())
    assert merge_summaries([histograms]) == status["stages_ms"]
    assert histograms["e2e"]["total"] == status["e2e_latency_ms"]["count"] > 0


POISON: list[tuple[str, bytes, str]] = [
    (TRADES, b"{not json", "bad_json"),
    (TRADES, b"[1, 2, 3]", "bad_json"),
    (TRADES, b"", "bad_json"),
    (QUOTES, b'{"ticker": "AAPL"}', "missing_field"),
    (NEWS, b'{"event_id": "x", "ticker": "AAPL", "headline": "h"}', "missing_field"),
    (TRADES, b"\xff\xfe binary", "bad_json"),
]


def _bad_trades(template: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """Well-formed JSON trades with one bad value each."""
    cases = [
        ({"price": -1.0}, "bad_value"),
        ({"size": 0}, "bad_value"),
        ({"exchange_ts_ms": template["exchange_ts_ms"] // 1000}, "bad_value"),  # seconds, not ms
        ({"exchange_ts_ms": True}, "bad_value"),
        ({"price": "12.5"}, "bad_value"),
        ({"ticker": ""}, "bad_value"),
    ]
    return [({**template, **change, "event_id": f"bad-{i}"}, kind) for i, (change, kind) in enumerate(cases)]


def test_poison_messages_go_to_the_dlq_with_context_and_the_runner_keeps_going(
    runner_settings: Settings, recording: Recording
) -> None:
    kafka_settings = runner_settings
    good = recording.events[:3000]
    template = next(r for t, _, r in good if t == TRADES)
    bad = [(topic, "AAPL", raw) for topic, raw, _ in POISON]
    bad += [(TRADES, "AAPL", orjson.dumps(row)) for row, _ in _bad_trades(template)]
    # Interleave the poison with good messages of the same partition (key AAPL).
    mixed = list(good)
    for i, item in enumerate(bad):
        mixed.insert(200 + i * 300, item)
    runner = build_runner(kafka_settings, instance="poison")
    with running(runner):
        produce(kafka_settings, mixed)
        wait_for(
            lambda: runner.metrics.events_processed >= len(mixed) and runner.metrics.dead_letters >= len(bad),
            60,
            "every message",
        )
    assert runner.metrics.events_processed == len(mixed)
    assert runner.metrics.dead_letters == len(bad)

    dlq = open_dlq(kafka_settings)
    letters = dlq.pending(limit=1000)
    dlq.close()
    assert len(letters) == len(bad)
    for letter in letters:
        DeadLetter.model_validate(letter)
        assert letter["stage"] == "processor"
        assert letter["source_topic"] in (TRADES, QUOTES, NEWS)
        assert letter["source_partition"] is not None and letter["source_offset"] is not None
        assert letter["ticker"] == "AAPL" and letter["reason"]
    expected_types = sorted([kind for *_, kind in POISON] + [kind for _, kind in _bad_trades(template)])
    assert sorted(letter["error_type"] for letter in letters) == expected_types
    # The original payload is kept (binary as base64).
    assert any(letter["payload"] == "{not json" for letter in letters)
    assert any(letter["payload"].startswith("b64:") for letter in letters)

    # The same letters, once each, on market.dead-letters (committed with their batch's offsets).
    published = assert_dead_letters_published_once(kafka_settings, [value for *_, value in bad])
    assert len(published) == len(bad)
    assert {letter["dead_letter_id"] for letter in published} == {lt["dead_letter_id"] for lt in letters}

    hot = open_hot_store(kafka_settings)
    good_trades = {r["event_id"] for t, _, r in good if t == TRADES}
    assert hot.trade_ids() == good_trades  # accepted + dead-lettered = sent
    hot.close()
    status = orjson.loads(runner.status_file.read_bytes())
    assert status["dlq_depth"] == len(bad)


def test_slow_hot_store_engages_backpressure_and_loses_nothing(
    runner_settings: Settings, recording: Recording
) -> None:
    settings = runner_settings.model_copy(update={"batch_max_messages": 500})
    events = recording.events[:4000]
    slow = SlowHotStore(open_hot_store(settings), delay_s=0.3)
    runner = build_runner(settings, instance="slow", hot=slow)
    produce(settings, events)
    with running(runner):
        wait_for(lambda: runner.metrics.events_processed >= len(events), 120, "the slow drain")
    assert runner.metrics.backpressure_activations >= 2
    assert slow.writes >= 3 * runner.metrics.backpressure_activations  # a slow sink, not one slow write
    # While paused nothing new was fetched: every third 300 ms write started a 500 ms pause.
    assert runner.metrics.batches >= len(events) // 500
    hot = open_hot_store(settings)
    assert hot.trade_ids() == {r["event_id"] for t, _, r in events if t == TRADES}
    hot.close()
    status = orjson.loads(runner.status_file.read_bytes())
    assert status["backpressure_activations"] == runner.metrics.backpressure_activations
    assert status["write_p99_ms"] >= 300


class FailingHotStore:
    """A real hot store whose first `failures` writes with rows raise (a sink outage), then recovers.
    Writes without rows (a batch of quotes only) pass: they would leave nothing to dead-letter, and
    whether the first batch is one depends on how the consumer's first fetch happens to cut."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner, self.failures = inner, failures

    def write_batch(self, **rows: Any) -> None:
        if self.failures > 0 and any(rows.values()):
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        self.inner.write_batch(**rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_hanging_heartbeat_does_not_hold_up_the_batches(
    runner_settings: Settings, recording: Recording
) -> None:
    """The heartbeat's DLQ depth (an SQS call in AWS) hangs: the runner's thread goes on with the
    batches, since the heartbeat is published on a thread of its own."""
    events = recording.events[:3000]
    runner = build_runner(runner_settings, instance="heartbeat")
    hanging = HangingDepthDlq(runner.dlq)
    runner.dlq = hanging
    with running(runner):
        try:
            # Idle, the loop asks for a heartbeat within `batch_max_wait_ms`; the events come after.
            assert hanging.entered.wait(30), "no heartbeat was published"
            produce(runner_settings, events)
            wait_for(
                lambda: runner.metrics.events_processed >= len(events),
                30,
                "the batches, the heartbeat hanging",
            )
            assert not hanging.release.is_set()
        finally:
            hanging.release.set()
    status = orjson.loads(runner.status_file.read_bytes())
    assert status["events_processed"] == len(events) and status["stopped_at"] is not None


def test_the_heartbeat_stops_while_the_runners_thread_is_stuck(
    runner_settings: Settings, recording: Recording
) -> None:
    """The heartbeat is published by its own thread but only when the runner's loop asks for it, so a
    loop that hangs (here in a hot-store write) stops it, and /health sees a stale `updated_at`."""
    armed, entered, release = threading.Event(), threading.Event(), threading.Event()

    def hang(_delay_s: float) -> None:
        if armed.is_set():
            entered.set()
            release.wait(120)

    before, after = recording.events[:1000], recording.events[1000:2000]
    hot = SlowHotStore(open_hot_store(runner_settings), sleep=hang)
    runner = build_runner(runner_settings, instance="stuck", hot=hot)
    with running(runner):
        produce(runner_settings, before)
        wait_for(
            lambda: runner.metrics.events_processed >= len(before) and runner.status_file.exists(),
            30,
            "the first events and a heartbeat",
        )
        armed.set()
        produce(runner_settings, after)
        try:
            assert entered.wait(30), "the hot store was never written"
            time.sleep(2 * runner.status_interval_s)  # a heartbeat asked for just before lands
            stuck_at = orjson.loads(runner.status_file.read_bytes())["updated_at"]
            time.sleep(3 * runner.status_interval_s)
            assert orjson.loads(runner.status_file.read_bytes())["updated_at"] == stuck_at
        finally:
            release.set()
        wait_for(
            lambda: runner.metrics.events_processed >= len(before) + len(after),
            60,
            "the batches after the hang",
        )
        wait_for(
            lambda: orjson.loads(runner.status_file.read_bytes())["updated_at"] > stuck_at,
            10,
            "a heartbeat after the hang",
        )


def test_sink_failure_retries_three_times_then_dead_letters_and_continues(
    runner_settings: Settings, recording: Recording
) -> None:
    events = recording.events[:3000]
    failing = FailingHotStore(open_hot_store(runner_settings), failures=3)  # = the in-line attempts
    runner = build_runner(runner_settings, instance="sinkfail", hot=failing)
    produce(runner_settings, events)
    with running(runner):
        wait_for(lambda: runner.metrics.events_processed >= len(events), 60, "every message")
    assert failing.failures == 0
    dlq = open_dlq(runner_settings)
    letters = dlq.pending(limit=10_000)
    dlq.close()
    assert letters and all(letter["stage"] == "sink:hot" for letter in letters)
    dead_trades = {
        orjson.loads(letter["payload"])["row"]["event_id"]
        for letter in letters
        if orjson.loads(letter["payload"])["kind"] == "trade"
    }
    hot = open_hot_store(runner_settings)
    stored = hot.trade_ids()
    hot.close()
    # The failed batch's trades are in the DLQ (for redrive), every other trade is stored.
    assert dead_trades and not (dead_trades & stored)
    assert dead_trades | stored == {r["event_id"] for t, _, r in events if t == TRADES}


def _cold_rows_on_disk(settings: Settings) -> int:
    """Rows of the input datasets in the cold store's Parquet files (temporary files are not *.parquet)."""
    import pyarrow.parquet as pq

    return sum(
        pq.ParquetFile(path).metadata.num_rows
        for dataset in ("trades", "quotes", "news")
        for path in (settings.cold_dir / dataset).rglob("*.parquet")
    )


def test_cold_store_is_flushed_while_running_so_its_buffers_stay_bounded(
    runner_settings: Settings, recording: Recording
) -> None:
    # The cold store buffers every input row until a flush; a runner that only flushed on shutdown or
    # revocation held its whole input in memory (RSS 221 MiB → 3.6 GiB in the market-open bench).
    settings = runner_settings.model_copy(update={"batch_max_messages": 500, "cold_flush_rows": 200})
    events = recording.events[:6000]
    runner = build_runner(settings, instance="coldflush")
    produce(settings, events)
    with running(runner):
        wait_for(lambda: runner.metrics.events_processed >= len(events), 60, "every event")
        on_disk = _cold_rows_on_disk(settings)  # still running: before the shutdown flush
    # After each batch every (topic, partition) holds fewer than cold_flush_rows buffered rows.
    buffered_at_most = len(INPUT_TOPICS) * settings.topic_partitions * (settings.cold_flush_rows - 1)
    assert on_disk >= len(events) - buffered_at_most
    assert _cold_rows_on_disk(settings) == len(events)  # and the shutdown flush wrote the rest
