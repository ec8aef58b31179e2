"""Bar reconciliation through the exactly-once runner on a real broker (issue 17): the simulator's trades
and its `AM` aggregates (framed as its WebSocket sends them, parsed by ingest's parser) on
market.trades / market.vendor_bars, two runners one after the other (the second rebuilds the
reconciler from the look-back). The runners count every ticker-minute once, with 0 mismatches except
the one vendor bar that was deliberately changed, which is reported with its field; the labelled fat
fingers only make `outlier` minutes. `tradepulse verify-bars`' summary, computed from the cold store,
says the same."""

from __future__ import annotations

import collections
from collections import defaultdict
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from tests.bus.test_runner import TICKERS, own_group, produce, running, wait_for
from tradepulse.bus.clients import producer_config
from tradepulse.bus.pipeline import build_runner
from tradepulse.cli.main import cli
from tradepulse.cli.verify_bars import verify
from tradepulse.config import Settings
from tradepulse.sources.parse import parse_frame
from tradepulse.sources.simulator.market import MarketConfig, MarketModel
from tradepulse.topics import TRADES, VENDOR_BARS

pytestmark = pytest.mark.kafka

START_MS = 1_764_685_800_000  # 2025-12-02 14:30 UTC = 09:30 ET
MINUTES = 6
WRONG = 5  # the volume of the first `AM` event from this index on whose minute has no fat finger is changed


def test_runner_reconciles_its_bars_with_the_vendors_and_reports_the_wrong_one(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = MarketModel(
        MarketConfig(seed=23, tickers=TICKERS, rate=40, start_ms=START_MS, tick_ms=500, bad_tick_rate=0.01)
    )
    chunks: dict[int, list[tuple[str, str, Any]]] = defaultdict(list)
    am_seen = 0
    wrong: dict[str, Any] = {}
    for block in model.generate(MINUTES * 60 + 5):
        aggregates = [dict(a) for a in block.aggregates]
        fat_minutes = {
            (g["ticker"], g["start_ms"] // 60_000 * 60_000)
            for g in model.ground_truth
            if g["type"] == "bad_tick" and g["kind"] == "fat_finger"
        }
        for a in aggregates:
            if am_seen >= WRONG and not wrong and (a["sym"], a["s"]) not in fat_minutes:
                a["v"] += 100  # a change the flagged prints cannot explain
                wrong = a
            am_seen += 1
        frame = parse_frame(orjson.dumps(block.records() + aggregates), block.end_ms * 1000)
        index = (block.start_ms - START_MS) // 10_000  # 10 s chunks of event time
        chunks[index] += [(TRADES, t["ticker"], t) for t in frame.trades]
        chunks[index] += [(VENDOR_BARS, a["ticker"], a) for a in frame.aggregates]
    assert wrong and am_seen == MINUTES * len(TICKERS)
    fat = [g for g in model.ground_truth if g["type"] == "bad_tick" and g["kind"] == "fat_finger"]
    assert fat

    settings = own_group(kafka_settings).model_copy(update={"vendor_bars": "on", "cold_flush_rows": 100})
    producer = Producer(producer_config(settings, **{"linger.ms": 0}))
    order = sorted(chunks)
    checks: collections.Counter[str] = collections.Counter()
    fields: collections.Counter[str] = collections.Counter()
    for instance, part in (("first", order[: len(order) // 2]), ("second", order[len(order) // 2 :])):
        runner = build_runner(settings, instance=instance)
        sent = 0
        with running(runner):
            for index in part:
                produce(settings, chunks[index], producer)
                sent += len(chunks[index])
                wait_for(lambda r=runner, n=sent: r.metrics.events_processed >= n, 120, "the chunk")
        checks.update(runner.metrics.bar_checks)
        fields.update(runner.metrics.bar_mismatch_fields)

    # Every closed minute of every ticker decided once: 6 minutes, the last one's bars closed by the
    # trades of the 5 s after it.
    assert sum(checks.values()) == MINUTES * len(TICKERS), checks
    assert checks["mismatch"] == 1 and fields == {"volume": 1}
    assert checks["vendor_only"] == checks["ours_only"] == 0
    assert checks["outlier"] >= 1  # the fat fingers' minutes, each explained exactly

    monkeypatch.setenv("TRADEPULSE_DATA_DIR", str(settings.data_dir))
    report = verify(settings)
    total = report["total"]
    assert {k: total[k] for k in ("match", "outlier", "mismatch", "vendor_only", "ours_only")} == {
        "match": checks["match"],
        "outlier": checks["outlier"],
        "mismatch": 1,
        "vendor_only": 0,
        "ours_only": 0,
    }
    (mismatch,) = report["mismatches"]
    assert (mismatch["ticker"], mismatch["start_ms"]) == (wrong["sym"], wrong["s"])
    assert mismatch["diff"]["volume"][1] == mismatch["diff"]["volume"][0] + 100
    from tradepulse.config import get_settings

    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(cli, ["verify-bars"], catch_exceptions=False).output
    finally:
        get_settings.cache_clear()
    assert "TOTAL" in out and f"mismatch {wrong['sym']} start_ms={wrong['s']}" in out
