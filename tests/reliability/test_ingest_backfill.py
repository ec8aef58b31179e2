"""kill -9 of ingest against a feed that does NOT replay (the real Massive behaviour, `resend_blocks=0`):
the restarted ingest backfills the gap from the REST trades endpoint, so market.trades holds every trade
the simulator generated from the first one published to the end, exactly once and in sequence order per
ticker. With the backfill off, the same run loses the trades of the outage: the test can fail.

The oracle is independent of both the feed and Kafka: the simulator's market is deterministic, so its
trades are regenerated from the same config and start time (`generated_trades`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.reliability.harness import (
    ARTIFACTS,
    KEY,
    START_MS,
    TICKERS,
    Reconciliation,
    Services,
    child_env,
    high_watermarks,
    read_topic,
    wait_until,
)
from tests.sources.test_backfill import generated_trades
from tradepulse.config import Settings
from tradepulse.sources.simulator import SimulatorConfig, run_simulator_in_thread
from tradepulse.topics import TRADES

pytestmark = pytest.mark.kafka

RATE = 4000  # events/s
TRADE_FRACTION = 0.6
DURATION_S = 10.0
OUTAGE_S = 3.0  # simulated seconds the market runs between the kill and the restart


def trades_in_kafka(settings: Settings) -> int:
    return sum(high_watermarks(settings, (TRADES,)).values())


@pytest.mark.parametrize(
    ("backfill", "clock"),
    [(True, "live"), (True, "past"), (False, "live")],
    ids=["backfill", "backfill-past-clock", "no-backfill"],
)
def test_ingest_kill9_without_replay_is_exactly_once_only_with_backfill(
    kafka_settings: Settings, tmp_path: Path, backfill: bool, clock: str
) -> None:
    started = time.monotonic()
    settings = kafka_settings.model_copy(update={"tickers": TICKERS})
    # "live": event times track the wall clock, as Massive's do. "past": the market runs a year ago (a
    # replay of a recorded day, a simulator behind schedule): the backfill window is the feed's time,
    # so it must work all the same (it did not while it was measured on the wall clock).
    sim = run_simulator_in_thread(
        SimulatorConfig(
            seed=99,
            tickers=TICKERS,
            rate=RATE,
            trade_fraction=TRADE_FRACTION,
            api_key=KEY,
            ws_port=0,
            http_port=0,
            duration_s=DURATION_S,
            resend_blocks=0,
            start_ms=START_MS if clock == "past" else None,
        )
    )
    env = child_env(settings, TRADEPULSE_INGEST_BACKFILL_MAX_S="600" if backfill else "0")
    services = Services(tmp_path / "logs", env)
    try:
        # The ingest knows only the WebSocket URL; the simulator answers REST on the same port.
        services.start("ingest", "ingest", "--url", sim.ws_url + "/stocks", "--progress-s", "2")
        wait_until(lambda: trades_in_kafka(settings) >= 2000, 60, "ingest to publish", services.check_alive)
        services.kill("ingest")
        killed_at_ms = sim.sim.sim_now_ms
        wait_until(
            lambda: sim.sim.sim_now_ms >= killed_at_ms + OUTAGE_S * 1000, 30, "the outage", lambda: None
        )
        services.start("ingest")
        assert sim.wait_finished(DURATION_S * 3 + 60), "the simulator did not finish"
        generated = generated_trades(sim)
        last: dict[str, object] = {"count": -1, "since": time.monotonic()}

        def settled() -> bool:  # unchanged for 3 s with ingest alive: it has published what it will
            count = trades_in_kafka(settings)
            if count != last["count"]:
                last.update(count=count, since=time.monotonic())
            return time.monotonic() - float(last["since"]) > 3  # type: ignore[arg-type]

        wait_until(settled, 90, "market.trades to settle", services.check_alive)
        assert services.stop("ingest") == 0, services.tail("ingest")
        log = (tmp_path / "logs" / "ingest.log").read_text()
    finally:
        services.stop_all()
        sim.stop()

    records = read_topic(settings, TRADES)
    keys = [(r["ticker"], r["sequence"]) for r in records]
    # Covered period: from each ticker's first trade published (the first ingest connected a moment
    # after the market opened; with nothing in Kafka yet there is no gap to fill) to the market's end.
    first = {t: min(q for tt, q in keys if tt == t) for t in TICKERS}
    expected = {(t, q) for t, q in generated if q >= first[t]}
    report = Reconciliation.of(keys, expected)
    numbers = {
        "backfill": backfill,
        "clock": clock,
        "generated": len(generated),
        "expected": len(expected),
        **{k: getattr(report, k) for k in ("rows", "distinct", "duplicates", "missing", "unexpected")},
        "backfill_log": [line for line in log.splitlines() if "backfilled connection" in line],
        "seconds": round(time.monotonic() - started, 1),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"ingest-backfill-{'on' if backfill else 'off'}-{clock}.json").write_text(
        json.dumps(numbers, indent=2)
    )
    print(json.dumps(numbers, indent=2))

    assert report.duplicates == 0 and report.unexpected == 0, numbers
    # At least the outage's trades were generated while no ingest was connected.
    outage_trades = OUTAGE_S * RATE * TRADE_FRACTION
    if backfill:
        assert report.missing == 0, (numbers, sorted(expected - set(keys))[:10])
        assert numbers["backfill_log"], "the restarted ingest did not backfill"
        for ticker in TICKERS:  # the backfill went in before the live stream: sequence order per ticker
            in_kafka_order = [q for t, q in keys if t == ticker]
            assert in_kafka_order == sorted(in_kafka_order), ticker
    else:
        assert report.missing >= 0.8 * outage_trades, numbers
        assert not numbers["backfill_log"]
