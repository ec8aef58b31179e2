"""Bad ticks through the pipeline (issue 17), on a real broker: the simulator's labelled bad ticks, framed
as its WebSocket sends them and validated by ingest's parser, then run through the exactly-once runner.
Every structurally impossible print is rejected by ingest's validation (what `IngestService`
dead-letters; the service itself is tested in tests/sources/test_ingest.py); every fat finger is
flagged `outlier`, kept in the hot store (GET /outliers' table) and in the cold store's `trades` with the
flag, counted per reason, and left out of the features: the emitted features equal an independent
recomputation over the stream without them."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import duckdb
import orjson
import pytest
from confluent_kafka import Producer

from tests.bus.test_runner import (
    START_MS,
    TICKERS,
    Recording,
    assert_features_match,
    own_group,
    produce,
    read_topic,
    reference_snapshots,
    running,
    wait_for,
)
from tradepulse.bus.clients import producer_config
from tradepulse.bus.pipeline import build_runner
from tradepulse.config import Settings
from tradepulse.sources.news import article_records
from tradepulse.sources.parse import parse_frame
from tradepulse.sources.simulator.market import MarketConfig, MarketModel
from tradepulse.stores.factory import open_hot_store
from tradepulse.topics import FEATURES, NEWS, QUOTES, TRADES

pytestmark = pytest.mark.kafka


def test_impossible_prints_are_rejected_and_fat_fingers_flagged_kept_and_out_of_the_features(
    kafka_settings: Settings,
) -> None:
    model = MarketModel(
        MarketConfig(
            seed=17,
            tickers=TICKERS,
            rate=52,
            start_ms=START_MS,
            news_interval_s=20.0,
            tick_ms=500,
            bad_tick_rate=0.04,
        )
    )
    events: list[tuple[str, str, dict[str, Any]]] = []
    rejected: set[tuple[str, str]] = set()
    for block in model.generate(390):
        # One frame per tick, as the simulator's WebSocket sends it, through ingest's parser.
        frame = parse_frame(orjson.dumps(block.records()), block.end_ms * 1000)
        rejected |= {(r["sym"], r["i"]) for r in (orjson.loads(j.payload) for j in frame.rejects)}
        events += [(TRADES, t["ticker"], t) for t in frame.trades]
        events += [(QUOTES, q["ticker"], q) for q in frame.quotes]
        for item in block.news:
            events += [
                (NEWS, a["ticker"], a)
                for a in article_records(item, item["related"], set(TICKERS), block.end_ms * 1000)
            ]
    events.sort(key=lambda e: e[2].get("exchange_ts_ms", e[2].get("published_ts_ms")))
    labels = [g for g in model.ground_truth if g["type"] == "bad_tick"]
    impossible = {(g["ticker"], g["trade_id"]) for g in labels if g["kind"] == "impossible"}
    fat_fingers = {g["event_id"] for g in labels if g["kind"] == "fat_finger"}
    assert len(impossible) >= 50 and len(fat_fingers) >= 50
    assert rejected == impossible  # ingest dead-letters exactly the impossible ones

    settings = own_group(kafka_settings).model_copy(update={"batch_max_messages": 2000})
    # As test_runner's feature test: chunks of 10 s of event time, quotes one chunk ahead of trades.
    chunks: dict[int, list[tuple[str, str, Any]]] = defaultdict(list)
    for topic, key, row in events:
        index = (row.get("exchange_ts_ms", row.get("published_ts_ms")) - START_MS) // 10_000
        chunks[index - 1 if topic == QUOTES else index].append((topic, key, row))
    producer = Producer(producer_config(settings, **{"linger.ms": 0}))
    order = sorted(chunks)
    # Two runners one after the other: the second rebuilds the reference prices (and the windows) from
    # the look-back, and must flag and compute as one uninterrupted runner would.
    flagged: dict[str, int] = defaultdict(int)
    for instance, part in (("first", order[:20]), ("second", order[20:])):
        runner = build_runner(settings, instance=instance)
        sent = 0
        with running(runner):
            for index in part:
                produce(settings, chunks[index], producer)
                sent += len(chunks[index])
                wait_for(lambda r=runner, n=sent: r.metrics.events_processed >= n, 60, "the chunk")
        for reason, count in runner.metrics.outliers.items():
            flagged[reason] += count

    clean = Recording([e for e in events if e[2].get("event_id") not in fat_fingers])
    assert_features_match(read_topic(settings, FEATURES), reference_snapshots(clean))
    assert sum(flagged.values()) == len(fat_fingers)
    assert set(flagged) == {"above_band", "below_band"}

    hot = open_hot_store(settings)
    kept = hot.outliers(None, 0, limit=100_000)
    trade_ids = hot.trade_ids()
    hot.close()
    assert {row["event_id"] for row in kept} == fat_fingers
    assert all(row["outlier"] and row["reference_price"] > 0 for row in kept)
    assert trade_ids == {t["event_id"] for topic, _, t in events if topic == TRADES}  # all kept

    cold = duckdb.sql(
        f"SELECT event_id, outlier FROM read_parquet('{settings.cold_dir}/trades/**/*.parquet')"
    ).fetchall()
    assert len(cold) == len(trade_ids)
    assert {event_id for event_id, outlier in cold if outlier} == fat_fingers
    assert all(outlier is not None for _, outlier in cold)
