"""Ingest service end to end: simulator (or a scripted feed) → IngestService → real Kafka + SQLite DLQ."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from websockets.asyncio.server import ServerConnection, serve

from tests.sources.test_backfill import generated_trades
from tests.sources.test_news_poller import consume
from tradepulse.bus.clients import producer_config
from tradepulse.cli import sources as cli_sources
from tradepulse.cli.main import cli
from tradepulse.config import Settings
from tradepulse.gc_tuning import GC_THRESHOLDS
from tradepulse.models import DeadLetter, Quote, Trade
from tradepulse.sources import ingest as ingest_module
from tradepulse.sources.backfill import backfill_window
from tradepulse.sources.ingest import IngestService, RecentIds, client_from_settings, seed_published_sequences
from tradepulse.sources.simulator import SimulatorConfig, SimulatorHandle, run_simulator_in_thread
from tradepulse.stores.factory import open_dlq
from tradepulse.topics import QUOTES, TRADES

pytestmark = pytest.mark.kafka

KEY = "ingest-test-key"
TICKERS = ["AAPL", "MSFT", "AMZN", "TSLA", "NVDA"]


def fast_settings(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(
        update={"massive_reconnect_initial_s": 0.02, "massive_reconnect_max_s": 0.1, **update}
    )


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def run_service(service: IngestService, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run the service while `scenario` drives the feed, then stop it (flushes the producer)."""
    task = asyncio.create_task(service.run())
    try:
        await scenario()
    finally:
        await service.stop()
        await asyncio.wait_for(task, 60)


def published_keys(settings: Settings, topic: str, expect: int) -> list[tuple[str, int]]:
    """(ticker, sequence) of every record in `topic`, each validated against its model."""
    model = Trade if topic == TRADES else Quote
    out = []
    for message in consume(settings, topic, expect=expect):
        record = model.model_validate(orjson.loads(message.value()))
        assert message.key().decode() == record.ticker
        out.append((record.ticker, record.sequence))
    return out


def simulator(**kwargs: Any) -> SimulatorHandle:
    config = {
        "seed": 7,
        "tickers": TICKERS,
        "api_key": KEY,
        "ws_port": 0,
        "http_port": 0,
        "record_sent": True,
    }
    return run_simulator_in_thread(SimulatorConfig(**(config | kwargs)))


def test_drop_reconnect_backfills_the_gap_and_publishes_every_trade_exactly_once(
    kafka_settings: Settings,
) -> None:
    """The feed drops the connection and discards what it had queued; while ingest reconnects the market
    goes on. The REST backfill after the reconnect fills that gap, so Kafka holds every trade generated
    since the first one published, once each; quotes are not backfilled (exactly those sent)."""
    # Reconnecting after 0.15–0.3 s: several 50 ms ticks go by unsent.
    settings = fast_settings(
        kafka_settings, tickers=TICKERS, massive_reconnect_initial_s=0.3, massive_reconnect_max_s=0.3
    )
    dlq = open_dlq(settings)
    with simulator(rate=5000, duration_s=3.0) as sim:
        service = IngestService(
            settings, dlq=dlq, client=client_from_settings(settings, sim.ws_url + "/stocks", KEY)
        )

        async def scenario() -> None:
            await until(lambda: service.metrics.published >= 2000)
            assert await asyncio.to_thread(sim.drop_connections) == 1
            await until(lambda: service.client.stats.connections == 2)
            await asyncio.to_thread(sim.wait_finished, 30)
            await until(lambda: service.metrics.queue_depth == 0)
            await until(lambda: service.metrics.published >= service.metrics.produced)

        asyncio.run(run_service(service, scenario))
        generated = generated_trades(sim)
        sent_trades, sent_quotes = sim.sent_trade_keys(), sim.sent_quote_keys()
        connections = sim.stats()["connections_total"]

    m = service.metrics
    assert connections == 2 and m.reconnects == 1
    trades = published_keys(settings, TRADES, m.published - len(sent_quotes))
    quotes = published_keys(settings, QUOTES, len(sent_quotes))
    assert len(trades) == len(set(trades)) and len(quotes) == len(set(quotes))  # no duplicates
    first = {t: min(q for tt, q in trades if tt == t) for t, _ in trades}
    expected = {(t, q) for t, q in generated if q >= first[t]}
    assert set(trades) == expected  # nothing lost or invented, gap included
    # The gap (generated, never sent) came by REST, and with it some trades the new connection also sent
    # before the backfill's request: those live copies were dropped by event id.
    assert m.backfilled >= len(expected - sent_trades) > 0
    assert set(quotes) == sent_quotes
    assert m.published == m.produced == len(trades) + len(quotes)
    assert m.failed == m.dead_lettered == m.backfill_errors == 0
    assert dlq.depth() == 0
    dlq.close()


def test_full_producer_queue_applies_backpressure_instead_of_dropping(kafka_settings: Settings) -> None:
    settings = fast_settings(kafka_settings, tickers=TICKERS, ingest_queue_frames=4)
    dlq = open_dlq(settings)
    with simulator(rate=20_000, duration_s=1.5, max_events_per_frame=200) as sim:
        service = IngestService(
            settings,
            dlq=dlq,
            client=client_from_settings(settings, sim.ws_url, KEY),
            # A tiny producer queue that only drains when a slow-lingering batch is acknowledged.
            producer_overrides={"queue.buffering.max.messages": 500, "linger.ms": 100},
        )

        async def scenario() -> None:
            await asyncio.to_thread(sim.wait_finished, 60)
            sent = sim.sent_trades() + sim.sent_quotes()
            await until(lambda: service.metrics.published >= sent)

        asyncio.run(run_service(service, scenario))
        sent = len(sim.sent_trade_keys()) + len(sim.sent_quote_keys())
    m = service.metrics
    assert m.backpressure_waits > 0
    assert m.published == sent and m.failed == 0 and m.duplicates == 0
    assert len(published_keys(settings, TRADES, 1)) + len(published_keys(settings, QUOTES, 1)) == sent
    dlq.close()


# --- a scripted feed: exact frames, for what the simulator never sends -------------------------

TRADE = {
    "ev": "T",
    "sym": "AAPL",
    "x": 4,
    "i": "1",
    "z": 3,
    "p": 190.0,
    "s": 10,
    "c": [],
    "t": 1_700_000_000_000,
}
QUOTE = {
    "ev": "Q",
    "sym": "MSFT",
    "bx": 1,
    "bp": 370.0,
    "bs": 2,
    "ax": 2,
    "ap": 370.1,
    "as": 3,
    "t": 1_700_000_000_000,
    "z": 3,
}


def trade(q: int, **over: Any) -> dict[str, Any]:
    return {**TRADE, "i": str(q), "q": q, "t": TRADE["t"] + q, **over}


def quote(q: int, **over: Any) -> dict[str, Any]:
    return {**QUOTE, "q": q, "t": QUOTE["t"] + q, **over}


class ScriptedFeed:
    """Speaks the Massive handshake, then sends connection i its list of frames; every connection
    but the last is aborted afterwards (like a network failure)."""

    def __init__(self, scripts: list[list[bytes | str]]) -> None:
        self.scripts = scripts
        self.connections = 0
        self.subscriptions: list[str] = []
        self.done = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        index = self.connections
        self.connections += 1
        await ws.send('[{"ev":"status","status":"connected","message":"Connected Successfully"}]')
        assert orjson.loads(await ws.recv())["action"] == "auth"
        await ws.send('[{"ev":"status","status":"auth_success","message":"authenticated"}]')
        self.subscriptions.append(orjson.loads(await ws.recv())["params"])
        for frame in self.scripts[index]:
            await ws.send(frame)
        if index < len(self.scripts) - 1:
            ws.transport.abort()
        else:
            self.done.set()
            with contextlib.suppress(Exception):
                await ws.wait_closed()


async def run_scripted(
    settings: Settings, scripts: list[list[bytes | str]], dlq: Any
) -> tuple[IngestService, ScriptedFeed]:
    feed = ScriptedFeed(scripts)
    async with serve(feed.handler, "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        service = IngestService(
            settings, dlq=dlq, client=client_from_settings(settings, f"ws://127.0.0.1:{port}", KEY)
        )
        expected = sum(1 for script in scripts for frame in script)

        async def scenario() -> None:
            await feed.done.wait()
            await until(lambda: service.client.stats.frames >= expected)
            await until(
                lambda: (
                    service.metrics.queue_depth == 0 and service.metrics.published >= service.metrics.produced
                )
            )

        await run_service(service, scenario)
    return service, feed


def test_events_resent_after_a_reconnect_are_published_once(kafka_settings: Settings) -> None:
    settings = fast_settings(kafka_settings, tickers=["AAPL", "MSFT"])
    first = [orjson.dumps([trade(1), quote(1)]), orjson.dumps([trade(2), trade(3), quote(2)])]
    # After reconnecting, the feed resends the last frame before carrying on.
    second = [orjson.dumps([trade(2), trade(3), quote(2)]), orjson.dumps([trade(4), quote(3)])]
    dlq = open_dlq(settings)
    service, feed = asyncio.run(run_scripted(settings, [first, second], dlq))

    assert feed.connections == 2
    # resubscribed (with the simulator, `TRADEPULSE_VENDOR_BARS=auto` adds the per-minute aggregates)
    assert feed.subscriptions == ["T.AAPL,Q.AAPL,AM.AAPL,T.MSFT,Q.MSFT,AM.MSFT"] * 2
    assert service.metrics.duplicates == 3
    assert sorted(published_keys(settings, TRADES, 4)) == [("AAPL", q) for q in (1, 2, 3, 4)]
    assert sorted(published_keys(settings, QUOTES, 3)) == [("MSFT", q) for q in (1, 2, 3)]
    dlq.close()


def test_malformed_frames_and_events_are_dead_lettered_and_the_stream_continues(
    kafka_settings: Settings,
) -> None:
    settings = fast_settings(kafka_settings, tickers=["AAPL", "MSFT"], massive_max_frame_bytes=20_000)
    oversize = orjson.dumps([trade(100 + i) for i in range(300)])
    assert len(oversize) > 20_000
    script: list[bytes | str] = [
        orjson.dumps([trade(1), quote(1)]),
        b'[{"ev":"T","sym":"AAPL",',  # truncated JSON
        '{"ev":"T"}',  # not an array
        orjson.dumps([trade(2, p=-1.0), trade(3), quote(2, sym=None)]),  # 2 bad events, 1 good
        '[{"ev":"T","sym":"AAPL","x":4,"i":"9","z":3,"p":NaN,"s":1,"t":1,"q":9}]',
        orjson.dumps([{"ev": "XA", "pair": "BTC-USD"}, trade(4, s="10")]),  # unknown type, wrong type
        oversize,
        orjson.dumps([trade(5), quote(3)]),  # still streaming after all that
    ]
    dlq = open_dlq(settings)
    service, _ = asyncio.run(run_scripted(settings, [script], dlq))

    letters = dlq.pending(limit=100)
    assert service.metrics.dead_lettered == len(letters) == 8
    for letter in letters:
        assert DeadLetter.model_validate(letter).stage == "ingest"
    by_type: dict[str, list[dict[str, Any]]] = {}
    for letter in letters:
        by_type.setdefault(letter["error_type"], []).append(letter)
    assert {k: len(v) for k, v in by_type.items()} == {
        "BadJSON": 1,
        "BadFrame": 1,
        "InvalidEvent": 4,  # p ≤ 0, NaN, unknown type, size as a string
        "MissingField": 1,  # sym null: like an absent field (and as the runner calls it)
        "OversizeFrame": 1,
    }
    assert by_type["BadJSON"][0]["payload"] == '[{"ev":"T","sym":"AAPL",'
    reasons = " | ".join(letter["reason"] for letter in letters)
    for fragment in ("must be > 0", "'sym'", "finite number", "unknown event type 'XA'", "'s'", "oversize"):
        assert fragment in reasons
    assert service.client.stats.reconnects == 0  # bad data never cost the connection
    assert sorted(published_keys(settings, TRADES, 3)) == [("AAPL", 1), ("AAPL", 3), ("AAPL", 5)]
    assert sorted(published_keys(settings, QUOTES, 2)) == [("MSFT", 1), ("MSFT", 3)]
    dlq.close()


def test_structurally_impossible_prints_are_dead_lettered_at_ingest_with_the_reason(
    kafka_settings: Settings,
) -> None:
    """Issue 17: a print no US equity can have (a 1e308 price with a valid size, whose p × s is inf in
    any VWAP) never reaches Kafka: ingest dead-letters it with the reason, like every broken event."""
    settings = fast_settings(kafka_settings, tickers=["AAPL", "MSFT"])
    script: list[bytes | str] = [
        orjson.dumps([trade(1), trade(2, p=1e308), quote(1)]),
        orjson.dumps([trade(3, s=2e11), trade(4, p=900_000.0, s=1_000_000)]),  # size; notional $9e11
        orjson.dumps([quote(2, bp=1e308), quote(3, **{"as": 1e12}), trade(5), quote(4)]),
    ]
    dlq = open_dlq(settings)
    service, _ = asyncio.run(run_scripted(settings, [script], dlq))

    letters = {}
    for letter in dlq.pending(limit=100):
        event = orjson.loads(letter["payload"])
        letters[(event["ev"], event["q"])] = letter
    assert service.metrics.dead_lettered == 5
    assert {key: letter["reason"] for key, letter in letters.items()} == {
        ("T", 2): "field 'p' must be <= 10000000.0, got 1e+308",
        ("T", 3): "field 's' must be <= 100000000000.0, got 200000000000.0",
        ("T", 4): "notional 'p' × 's' must be <= 100000000000.0, got 900000000000.0",
        ("Q", 2): "field 'bp' must be <= 10000000.0, got 1e+308",
        ("Q", 3): "field 'as' must be <= 100000000000.0, got 1000000000000.0",
    }
    assert all(letter["failure_class"] == "permanent" for letter in letters.values())
    assert sorted(published_keys(settings, TRADES, 2)) == [("AAPL", 1), ("AAPL", 5)]
    assert sorted(published_keys(settings, QUOTES, 2)) == [("MSFT", 1), ("MSFT", 4)]
    dlq.close()


def test_recent_ids_window_is_bounded() -> None:
    recent = RecentIds(capacity=3)
    assert [recent.seen(i) for i in "abca"] == [False, False, False, True]
    assert not recent.seen("d")  # evicts "a"
    assert not recent.seen("a")  # forgotten, so it counts as new again
    assert recent.seen("d")


def partitions_of(settings: Settings, topic: str, expect: int) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for message in consume(settings, topic, expect=expect):
        out.setdefault(message.key().decode(), set()).add(message.partition())
    return out


def test_restart_with_a_replaying_feed_publishes_exactly_once_on_uneven_partitions(
    kafka_settings: Settings,
) -> None:
    """A restarted ingest against a feed that replays its recent past: AAPL trades 10× as often as MSFT,
    on another partition. The killed predecessor got a prefix of each ticker into Kafka (AAPL ≤ 80,
    MSFT ≤ 8) and lost the rest; the feed replays AAPL 41–100 and MSFT 5–10 before going on. The old
    seed (an equal count of ids per partition, here 10) knew only AAPL 71–80 and republished 41–70
    behind newer trades."""
    tickers = ["AAPL", "MSFT"]
    settings = fast_settings(kafka_settings, tickers=tickers, ingest_dedupe_window=60)

    def frames(aapl: range, msft: range) -> list[bytes | str]:
        # Ten AAPL trades per MSFT trade, interleaved in frames of one MSFT tick each.
        out: list[bytes | str] = []
        for m in msft:
            batch = [trade(a) for a in aapl if (a - 1) // 10 == m - 1] + [trade(m, sym="MSFT")]
            out.append(orjson.dumps(batch))
        return out

    dlq = open_dlq(settings)
    first, _ = asyncio.run(run_scripted(settings, [frames(range(1, 81), range(1, 9))], dlq))
    assert first.metrics.published == 88
    where = partitions_of(settings, TRADES, 88)
    assert len(where["AAPL"] | where["MSFT"]) == 2  # one partition each: the uneven case

    replay_and_more = frames(range(41, 151), range(5, 16))
    restarted, _ = asyncio.run(run_scripted(settings, [replay_and_more], dlq))
    assert restarted.metrics.duplicates == 40 + 4  # AAPL 41–80, MSFT 5–8 were already in Kafka

    records = [orjson.loads(m.value()) for m in consume(settings, TRADES, expect=150 + 15)]
    for ticker, last in (("AAPL", 150), ("MSFT", 15)):
        in_kafka_order = [r["sequence"] for r in records if r["ticker"] == ticker]
        assert in_kafka_order == list(range(1, last + 1))  # exactly once, in sequence order
    assert dlq.depth() == 0
    dlq.close()


def test_a_resend_longer_than_the_id_window_after_a_reconnect_is_published_once(
    kafka_settings: Settings,
) -> None:
    """After a reconnect the feed resends more than the event-id window holds (in the throttled chaos run
    a 60 s replay met a window of 480,000 ids that a 330,000-trade backfill had filled): what this
    service already published is recognised by its per-ticker sequence mark, kept up to date on every
    publish, not only by the bounded id window. Before, trades 1–15 went to Kafka twice, behind 20."""
    settings = fast_settings(
        kafka_settings, tickers=["AAPL"], ingest_dedupe_window=5, ingest_backfill_max_s=0
    )
    first = [orjson.dumps([trade(q) for q in range(1, 21)])]
    second = [orjson.dumps([trade(q) for q in range(1, 21)]), orjson.dumps([trade(q) for q in range(21, 26)])]
    dlq = open_dlq(settings)
    service, feed = asyncio.run(run_scripted(settings, [first, second], dlq))

    assert feed.connections == 2
    assert service.metrics.duplicates == 20
    records = [orjson.loads(m.value()) for m in consume(settings, TRADES, expect=25)]
    assert [r["sequence"] for r in records] == list(range(1, 26))  # once each, in sequence order
    dlq.close()


DAY_MS = 86_400_000


def test_sequences_restarting_on_a_new_day_are_not_taken_for_resends(kafka_settings: Settings) -> None:
    """Sequence numbers restart every day. A mark (highest sequence published) compared by sequence alone
    dropped the next day's trades until their sequence passed the previous day's: in a long-running
    ingest, and in one restarted overnight (its seed reads the last trades in Kafka, the previous
    evening's). A resend is at or below the mark in sequence *and* in time."""
    settings = fast_settings(kafka_settings, tickers=["AAPL"], ingest_backfill_max_s=0)
    day1 = [orjson.dumps([trade(q) for q in range(1, 11)])]
    next_day = [orjson.dumps([trade(q, t=TRADE["t"] + DAY_MS + q) for q in range(1, 6)])]
    dlq = open_dlq(settings)
    # One process across the day boundary (a reconnect between the days)...
    service, _ = asyncio.run(run_scripted(settings, [day1, next_day], dlq))
    assert service.metrics.duplicates == 0
    # ...and a restart overnight: the seed's marks are the previous day's.
    third_day = [orjson.dumps([trade(q, t=TRADE["t"] + 2 * DAY_MS + q) for q in range(1, 4)])]
    restarted, _ = asyncio.run(run_scripted(settings, [third_day], dlq))
    assert restarted.metrics.duplicates == 0

    records = [orjson.loads(m.value()) for m in consume(settings, TRADES, expect=18)]
    assert [(r["exchange_ts_ms"] - TRADE["t"]) // DAY_MS for r in records] == [0] * 10 + [1] * 5 + [2] * 3
    assert [r["sequence"] for r in records] == [*range(1, 11), *range(1, 6), *range(1, 4)]
    dlq.close()


def produce_at(settings: Settings, records: list[tuple[str, int, int, int]]) -> None:
    """(ticker, sequence, exchange ms, Kafka timestamp ms) as ingest's trade records, with the Kafka time set
    explicitly: what a killed ingest left behind, minutes of broker time collapsed into one test."""
    producer = Producer(producer_config(settings))
    for ticker, sequence, exchange_ms, kafka_ms in records:
        value = orjson.dumps({"ticker": ticker, "sequence": sequence, "exchange_ts_ms": exchange_ms})
        producer.produce(TRADES, value, ticker, timestamp=kafka_ms)
    assert producer.flush(30) == 0


def test_a_ticker_left_out_of_an_interrupted_backfill_is_backfilled_from_its_own_last_trade(
    kafka_settings: Settings,
) -> None:
    """An ingest killed while backfilling leaves some tickers filled up to the reconnect and others not.
    The next start's seed read only the tail (the replay horizon): a ticker absent from it got the oldest
    exchange time read there as its backfill start, which is the *other* tickers' backfill, later than its
    own last trade, so its trades in between were never fetched (busy chaos run: 132,499 trades lost).
    Each subscribed ticker's backfill must start at its own last trade in Kafka, however far back."""
    settings = kafka_settings.model_copy(
        update={"ingest_replay_horizon_s": 10.0, "ingest_backfill_max_s": 600.0}
    )
    now = int(time.time() * 1000)
    feed0 = now - 400_000
    records = [(t, q, feed0 + q, now - 300_000 + q) for t in ("AAPL", "MSFT") for q in range(1, 6)]
    # The interrupted backfill: AAPL's gap since its seq 5 was published just now, MSFT's never was.
    records += [("AAPL", q, feed0 + 60_000 + q, now - 1_000 + q) for q in range(6, 50)]
    produce_at(settings, records)

    seed = seed_published_sequences(settings, ["AAPL", "MSFT", "NVDA"])

    assert seed.marks[TRADES]["AAPL"] == (49, feed0 + 60_049)
    assert seed.marks[TRADES]["MSFT"] == (5, feed0 + 5)  # 300 s of broker time before the tail
    feed_now = feed0 + 120_000
    msft = backfill_window(5 + feed0, seed.floor_ms, feed_now, settings.ingest_backfill_max_s)
    assert msft is not None and msft.start_ms <= feed0 + 6  # MSFT's first trade not in Kafka is fetched
    # NVDA has never been in Kafka: nothing vouches for any part of its history, so its backfill reaches
    # back as far as backfills do (clipped), instead of from a time other tickers happened to have.
    nvda = backfill_window(None, seed.floor_ms, feed_now, settings.ingest_backfill_max_s)
    assert nvda is not None and nvda.clipped and nvda.start_ms == feed_now - 600_000


def test_a_restart_after_the_market_went_quiet_backfills_without_waiting_for_events(
    kafka_settings: Settings,
) -> None:
    """The backfill ran at a connection's first events, so an ingest restarted after the last trade of the
    day (or, on a busy machine, after the simulator's market had ended) waited for an event that never
    came and left the end of the session missing (test_ingest_backfill under load: 18,114 of 22,222). A
    connection that stays quiet after subscribing is backfilled all the same, up to whatever REST has."""
    settings = fast_settings(kafka_settings, tickers=TICKERS)
    dlq = open_dlq(settings)
    with simulator(rate=4000, duration_s=8.0) as sim:
        first = IngestService(
            settings, dlq=dlq, client=client_from_settings(settings, sim.ws_url + "/stocks", KEY)
        )

        async def until_some_published() -> None:
            await until(lambda: first.metrics.published >= 1000)

        asyncio.run(run_service(first, until_some_published))
        assert sim.wait_finished(60)  # the market ends while no ingest is connected
        generated = generated_trades(sim)
        restarted = IngestService(
            settings, dlq=dlq, client=client_from_settings(settings, sim.ws_url + "/stocks", KEY)
        )

        async def until_backfilled() -> None:
            await until(
                lambda: (
                    restarted.metrics.backfilled > 0
                    and restarted.metrics.published >= restarted.metrics.produced
                )
            )

        asyncio.run(run_service(restarted, until_backfilled))

    assert restarted.metrics.received == 0  # nothing came live: all of it came by REST
    trades = published_keys(settings, TRADES, len(generated) // 2)
    assert len(trades) == len(set(trades))
    first_published = {t: min(q for tt, q in trades if tt == t) for t, _ in trades}
    assert set(trades) == {(t, q) for t, q in generated if q >= first_published[t]}
    dlq.close()


def rest_trade(q: int) -> dict[str, Any]:
    """`trade(q)` as Massive's REST trades endpoint returns it (nanosecond times)."""
    ns = (TRADE["t"] + q) * 1_000_000
    return {
        "exchange": 4,
        "id": str(q),
        "participant_timestamp": ns,
        "price": 190.0,
        "sequence_number": q,
        "sip_timestamp": ns,
        "size": 10,
        "tape": 3,
    }


def test_a_feed_gone_silent_mid_connection_is_backfilled_up_to_rests_newest_trade(
    kafka_settings: Settings,
) -> None:
    """The feed stops sending while the market has traded on (busy chaos run: a connection stalled by a
    long backfill was dropped, the next one got only a replay of older blocks, and the market's last 9 s,
    60,065 trades, were never published). Once the stream has been silent for a while, whatever REST has
    beyond the last published trade is fetched, without waiting for an event that may never come."""
    settings = fast_settings(kafka_settings, tickers=["AAPL"])
    feed = ScriptedFeed([[orjson.dumps([trade(q) for q in range(1, 6)])]])
    tape = [rest_trade(q) for q in range(1, 11)]  # REST has 6..10 too: the feed never sent them

    def answer_rest(connection: ServerConnection, request: Any) -> Any:
        if not request.path.startswith("/v3/trades/AAPL"):
            return None  # the WebSocket
        return connection.respond(200, orjson.dumps({"status": "OK", "results": tape}).decode())

    async def main() -> IngestService:
        async with serve(feed.handler, "127.0.0.1", 0, process_request=answer_rest) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            service = IngestService(
                settings, dlq=dlq, client=client_from_settings(settings, f"ws://127.0.0.1:{port}", KEY)
            )

            async def scenario() -> None:
                await until(lambda: service.metrics.published >= 10, timeout_s=60)

            await run_service(service, scenario)
            return service

    dlq = open_dlq(settings)
    service = asyncio.run(main())
    assert service.metrics.backfilled == 5 and service.metrics.duplicates == 5
    records = [orjson.loads(m.value()) for m in consume(settings, TRADES, expect=10)]
    assert [r["sequence"] for r in records] == list(range(1, 11))
    dlq.close()


def test_a_frame_is_sent_when_the_publisher_has_no_more_frames_not_after_the_linger(
    kafka_settings: Settings,
) -> None:
    """The producer's linger waits for more records to share a request; once the publisher has produced
    a frame and no other frame is queued, none will come from it, so the frame is sent at once. With a
    one-minute linger the frame's records must still reach the broker while the connection stays open."""
    settings = fast_settings(
        kafka_settings, tickers=["AAPL", "MSFT"], ingest_linger_ms=60_000, ingest_backfill_max_s=0
    )
    feed = ScriptedFeed([[orjson.dumps([trade(1), trade(2), quote(1)])]])

    async def main() -> IngestService:
        async with serve(feed.handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            service = IngestService(
                settings, dlq=dlq, client=client_from_settings(settings, f"ws://127.0.0.1:{port}", KEY)
            )

            async def scenario() -> None:
                await feed.done.wait()
                # Acknowledged by the broker while the connection is open: not the stop's flush.
                await until(lambda: service.metrics.published == 3, timeout_s=20)
                assert not feed.connections > 1 and not service.client.stats.reconnects

            await run_service(service, scenario)
            return service

    dlq = open_dlq(settings)
    service = asyncio.run(main())
    assert service.metrics.produced == 3 and service.metrics.failed == 0
    assert sorted(published_keys(settings, TRADES, 2)) == [("AAPL", 1), ("AAPL", 2)]
    dlq.close()


@pytest.fixture
def gc_restored() -> Iterator[None]:
    """The ingest's entry point changes process-wide GC settings: put back what the test process had."""
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("gc_restored")
def test_the_ingest_entry_point_freezes_its_setup_out_of_the_collector_before_it_streams(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full collection walks every tracked object alive, the imported modules' included: with the
    default thresholds the ingest at 15k ev/s ran one every ~2 s, each stalling its event loop ~35 ms
    (docs/benchmarks.md). Its entry point tunes the collector as the runner's does, before streaming."""
    seen: dict[str, Any] = {}
    services: list[IngestService] = []

    class Recorded(IngestService):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            services.append(self)

    def streaming(main: Coroutine[Any, Any, None]) -> None:
        seen.update(thresholds=gc.get_threshold(), frozen=gc.get_freeze_count())

        async def stopped_first() -> None:  # the service then runs without a feed, and ends cleanly
            await services[0].stop()
            await main

        run_loop(stopped_first())

    run_loop = asyncio.run
    monkeypatch.setattr(cli_sources, "get_settings", lambda: kafka_settings)
    monkeypatch.setattr(ingest_module, "IngestService", Recorded)
    monkeypatch.setattr(cli_sources.asyncio, "run", streaming)
    gc.unfreeze()
    result = CliRunner().invoke(cli, ["ingest", "--progress-s", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen["thresholds"] == GC_THRESHOLDS and seen["frozen"] > 0
