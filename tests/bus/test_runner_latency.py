"""Latency instrumentation and adaptive batching of the real runner on the real broker (issue 19): every
stage is recorded, the heartbeat carries the last minute's e2e percentiles that /health, /metrics and the
dashboard show, and a caught-up runner takes a batch as soon as its first message is there (a linger is
an explicit setting). Timings are never asserted as goals here, only what the settings guarantee."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from tests.bus.test_runner import make_recording, own_group, produce, read_topic, running, wait_for
from tradepulse.bus.clients import producer_config
from tradepulse.bus.decode import DecodedBatch
from tradepulse.bus.outputs import BatchOutputs
from tradepulse.bus.pipeline import build_runner
from tradepulse.bus.runner import Runner
from tradepulse.bus.stages import BATCH_STAGES, RECORD_STAGES
from tradepulse.config import Settings
from tradepulse.stores.factory import open_hot_store
from tradepulse.topics import FEATURES, TRADES

pytestmark = pytest.mark.kafka


def _live(events: list[tuple[str, str, dict[str, object]]]) -> list[tuple[str, str, dict[str, object]]]:
    """The events as if received now (e2e and ingest are measured from `received_ts_us`)."""
    now_us = time.time_ns() // 1000
    return [(topic, key, row | {"received_ts_us": now_us}) for topic, key, row in events]


def test_every_stage_is_recorded_and_the_heartbeat_has_the_last_minutes_e2e(kafka_settings: Settings) -> None:
    settings = own_group(kafka_settings)
    events = make_recording(duration_s=20, rate=40, seed=5).events
    runner = build_runner(settings, instance="latency")
    producer = Producer(producer_config(settings, **{"linger.ms": 0}))
    with running(runner):
        for start in range(0, len(events), 100):
            produce(settings, _live(events[start : start + 100]), producer)
            wait_for(
                lambda n=start + 100: runner.metrics.events_processed >= min(n, len(events)), 60, "a chunk"
            )
    # The last heartbeat (written by the graceful stop), after the runner's last batch.
    status = orjson.loads(runner.status_file.read_bytes())
    stages = status["stages_ms"]
    batches = status["batches"]
    # Batch stages: once per committed batch with inputs (archived-output-only batches skip the core).
    for stage in BATCH_STAGES:
        assert 0 < stages[stage]["count"] <= batches, stage
    assert stages["batch"]["count"] == batches
    trades = sum(1 for topic, _, _ in events if topic == TRADES)
    # One e2e sample per trade (small batches are not strided); kafka/ingest at least one per batch.
    assert stages["e2e"]["count"] == trades
    for stage in RECORD_STAGES:
        assert stages[stage]["p50"] <= stages[stage]["p99"] <= stages[stage]["max"], stage
    # The e2e of a trade includes its kafka and ingest times (p50s of the same trades, roughly).
    assert stages["e2e"]["max"] >= stages["kafka"]["p50"]
    assert 0 < status["e2e_latency_p50_ms"] <= status["e2e_latency_p99_ms"]
    assert status["e2e_latency_ms"]["count"] == trades
    assert set(status["stage_p99_ms"]) >= {*BATCH_STAGES, *RECORD_STAGES}
    # Feature freshness: every accepted trade is in a provisional revision of its own batch or of its
    # ticker's next (the revision interval; the stop emits those still waiting); the final
    # revisions cover the trades of the seconds closed by the end (the last ~3 s stay open).
    assert stages["fresh_first"]["count"] > stages["fresh_final"]["count"] > 0.8 * trades


def test_a_batchs_trades_are_in_the_hot_store_before_its_core_runs(kafka_settings: Settings) -> None:
    """A trade's e2e ends at its hot-store commit, which does not wait for the features, anomalies and
    bars of its batch: the runner commits the batch's trades to the hot store before the core runs."""
    settings = own_group(kafka_settings)
    events = make_recording(duration_s=10, rate=40, seed=7).events
    runner = build_runner(settings, instance="trades-first")
    reader = open_hot_store(settings)
    missing: list[set[str]] = []  # per core call with trades: the batch's trades not in the hot store yet
    process = runner.processor.process

    def checked(batch: DecodedBatch, **kwargs: Any) -> BatchOutputs:
        if batch.trades:
            missing.append({t["event_id"] for t in batch.trades} - reader.trade_ids())
        return process(batch, **kwargs)

    runner.processor.process = checked  # type: ignore[method-assign]
    try:
        with running(runner):
            produce(settings, _live(events))
            wait_for(lambda: runner.metrics.events_processed >= len(events), 60, "the events")
    finally:
        reader.close()
    assert len(missing) >= 1
    assert [len(m) for m in missing] == [0] * len(missing)


def _one_trade_at_a_time(
    kafka_settings: Settings, count: int, **update: int
) -> tuple[Runner, list[tuple[str, str, dict[str, object]]], Producer]:
    """A runner of its own group with the `update` settings, the first `count` trades of a recording
    (to be sent one at a time), and a producer that sends each at once."""
    settings = own_group(kafka_settings).model_copy(update=update)
    trades = [e for e in make_recording(duration_s=20, rate=20, seed=9).events if e[0] == TRADES][:count]
    instance = "-".join(f"{name}{value}" for name, value in update.items())
    return (
        build_runner(settings, instance=instance),
        trades,
        Producer(producer_config(settings, **{"linger.ms": 0})),
    )


@pytest.mark.parametrize("linger_ms", [0, 300])
def test_a_caught_up_runner_waits_for_more_only_with_a_linger(
    kafka_settings: Settings, linger_ms: int
) -> None:
    """One trade at a time into an idle runner: without a linger each is its own batch with no batch wait;
    with one, every batch waited the whole linger for more (it never got batch_max_messages)."""
    runner, trades, producer = _one_trade_at_a_time(kafka_settings, 5, batch_linger_ms=linger_ms)
    settings = runner.settings
    with running(runner):
        wait_for(lambda: bool(runner._assignment), 60, "the assignment")
        for i, event in enumerate(trades, start=1):
            produce(settings, _live([event]), producer)
            wait_for(lambda i=i: runner.metrics.events_processed >= i, 60, "the trade")
    wait = runner.metrics.stages.summary()["batch_wait"]
    assert wait["count"] >= len(trades)
    if linger_ms == 0:
        assert wait["max"] < 5.0  # no consume call after the first message: bookkeeping only
    else:
        assert wait["p50"] >= linger_ms * 0.99


@pytest.mark.parametrize("fetch_wait_ms", [0, 400])
def test_a_caught_up_runners_fetch_gathers_what_lands_during_its_wait(
    kafka_settings: Settings, fetch_wait_ms: int
) -> None:
    """Trades sent one at a time, 20 ms apart, to an idle runner. With `batch_fetch_wait_ms` its
    fetch.min.bytes is above what they carry, so the broker answers a fetch when the wait is over, with
    every trade that landed meanwhile: with 400 ms the runner takes them a few to a batch. Without (0, the
    default) the broker answers at the first record: one by one."""
    runner, trades, producer = _one_trade_at_a_time(kafka_settings, 60, batch_fetch_wait_ms=fetch_wait_ms)
    settings = runner.settings
    with running(runner):
        wait_for(lambda: bool(runner._assignment), 60, "the assignment")
        batches_before = runner.metrics.stages.summary()["batch"]["count"]
        for event in trades:
            produce(settings, _live([event]), producer)
            time.sleep(0.020)
        wait_for(lambda: runner.metrics.events_processed >= len(trades), 60, "the trades")
        batches = runner.metrics.stages.summary()["batch"]["count"] - batches_before
    if fetch_wait_ms == 0:
        assert batches >= len(trades) // 2, batches
    else:
        # ~1.2 s of trades in 400-ms fetches (and read-backs of the runner's own outputs in them).
        assert batches <= len(trades) // 4, batches


def test_a_runner_behind_by_more_than_a_batch_waits_to_fill_it(tmp_path: Path) -> None:
    """The linger `_next_batch` applies: none when caught up, the backlog linger when behind by more than
    a batch (from the lag of the last status), and `batch_linger_ms` whenever it is the longer."""
    settings = Settings(data_dir=tmp_path, batch_max_messages=1000, batch_backlog_linger_ms=20)
    runner = build_runner(settings, instance="linger")
    assert runner._linger_s() == 0.0
    runner.metrics.consumer_lag = 1000
    assert runner._linger_s() == 0.0  # one batch behind: the next batch takes it all anyway
    runner.metrics.consumer_lag = 1001
    assert runner._linger_s() == 0.020
    longer = build_runner(settings.model_copy(update={"batch_linger_ms": 30}), instance="longer")
    assert longer._linger_s() == 0.030
    longer.metrics.consumer_lag = 50_000
    assert longer._linger_s() == 0.030
    never = build_runner(settings.model_copy(update={"batch_backlog_linger_ms": 0}), instance="never")
    never.metrics.consumer_lag = 50_000
    assert never._linger_s() == 0.0


@pytest.mark.parametrize("interval_ms", [0, 1500])
def test_the_batches_of_one_commit_interval_share_a_transaction(
    kafka_settings: Settings, interval_ms: int
) -> None:
    """Trades one at a time into an idle runner, each its own batch, each in the hot store before the
    next is sent. With a commit interval a transaction begins at most once per interval (one more for
    the stop's last commit), so most batches share one; the hot store never waits for them."""
    runner, trades, producer = _one_trade_at_a_time(kafka_settings, 12, commit_interval_ms=interval_ms)
    settings = runner.settings
    with running(runner):
        wait_for(lambda: bool(runner._assignment), 60, "the assignment")
        started = time.monotonic()
        for i, event in enumerate(trades, start=1):
            produce(settings, _live([event]), producer)
            wait_for(lambda i=i: runner.metrics.stages.summary()["e2e"]["count"] >= i, 60, "the hot store")
        fed_s = time.monotonic() - started
        commits_when_fed = runner.metrics.stages.summary()["commit"]["count"]
        wait_for(lambda: runner.metrics.events_processed >= len(trades), 60, "the commits")
        run_s = time.monotonic() - started
    stages = runner.metrics.stages.summary()
    assert stages["batch"]["count"] >= len(trades)  # each trade its own batch (and some read-backs)
    if interval_ms:
        interval_s = interval_ms / 1000
        # Every trade was in the hot store while at most one transaction per interval had begun.
        assert commits_when_fed <= fed_s // interval_s + 1
        assert stages["commit"]["count"] <= run_s // interval_s + 2


def test_an_idle_runner_emits_the_revisions_its_interval_held_back(kafka_settings: Settings) -> None:
    """A ticker's first trade gets its provisional feature revision at once; the next ones, right
    behind it, wait for the revision interval. Nothing else comes, and the idle runner emits their
    revision anyway (hot store and market.features): every trade is in one, and counted once."""
    settings = own_group(kafka_settings).model_copy(update={"feature_revision_interval_ms": 1900})
    events = [e for e in make_recording(duration_s=20, rate=20, seed=9).events if e[0] == TRADES]
    ticker = events[0][2]["ticker"]
    trades = [e for e in events if e[2]["ticker"] == ticker][:4]
    last_ts = max(row["exchange_ts_ms"] for _, _, row in trades)
    runner = build_runner(settings, instance="idle-flush")
    producer = Producer(producer_config(settings, **{"linger.ms": 0}))
    hot = open_hot_store(settings)

    def latest_ts() -> object:
        row = hot.latest_features(ticker)
        return None if row is None else row["ts_ms"]

    try:
        with running(runner):
            wait_for(lambda: bool(runner._assignment), 60, "the assignment")
            produce(settings, _live(trades[:1]), producer)
            wait_for(lambda: latest_ts() == trades[0][2]["exchange_ts_ms"], 60, "the first revision")
            produce(settings, _live(trades[1:]), producer)
            summary = runner.metrics.stages.summary
            wait_for(lambda: summary()["e2e"]["count"] >= len(trades), 60, "the trades")
            assert latest_ts() != last_ts  # held back: the interval since the first revision has not passed
            # Idle and not due yet: the runner polls without running the pipeline on empty batches.
            calls = []
            process = runner.processor.process
            runner.processor.process = lambda *a, **k: calls.append(1) or process(*a, **k)  # type: ignore[method-assign]
            time.sleep(0.5)
            assert not calls and latest_ts() != last_ts
            wait_for(lambda: latest_ts() == last_ts, 30, "the held-back revision")
            assert summary()["fresh_first"]["count"] == len(trades)
    finally:
        hot.close()
    revisions = [f for f in read_topic(settings, FEATURES) if f["ticker"] == ticker]
    assert [f["ts_ms"] for f in revisions] == [trades[0][2]["exchange_ts_ms"], last_ts]
    assert not any(f["final"] for f in revisions)  # no later trade closed a second
