"""Poison messages at both entry points, the gaps left by the module tests:

- at the WebSocket, through the real ingest client and service (a raw server speaking the Massive
  handshake): missing field, zero price, zero size, an unknown ticker, a 1 MiB frame over the limit, and
  the rest of the catalogue interleaved with good events. `tests/sources/test_ingest.py` already covers
  bad JSON, a non-array frame, a negative price, a null symbol, NaN, an unknown event type and a wrong
  type one at a time; here they all run together and the books must balance: accepted + dead-lettered =
  sent.
- directly into market.trades, through the real runner: NaN, zero price, a Massive wire event (an
  unknown event type on the topic), a 1 MB message, wrong types. `tests/bus/test_runner.py` covers bad
  JSON, binary, missing fields, negative price, zero size, second-resolution times and an empty ticker.

"Unknown ticker" is defined at ingest, the only producer of market.trades: an event whose symbol is not
among the subscribed tickers (not checked for a `*` subscription) is dead-lettered as `UnknownTicker`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest

from tests.bus.test_runner import (
    assert_dead_letters_published_once,
    make_recording,
    produce,
    running,
    wait_for,
)
from tests.sources.test_ingest import fast_settings, published_keys, quote, run_scripted, trade
from tradepulse.bus.outputs import TOPIC_PAYLOAD_CHARS
from tradepulse.bus.pipeline import build_runner
from tradepulse.config import Settings
from tradepulse.models import DeadLetter
from tradepulse.stores.dlq import decode_payload
from tradepulse.stores.factory import open_dlq, open_hot_store
from tradepulse.topics import QUOTES, TRADES

pytestmark = pytest.mark.kafka

MIB = 1024 * 1024


def test_websocket_poison_is_dead_lettered_with_context_and_the_books_balance(
    kafka_settings: Settings,
) -> None:
    settings = fast_settings(kafka_settings, tickers=["AAPL", "MSFT"], massive_max_frame_bytes=512 * 1024)
    no_price = trade(11)
    del no_price["p"]
    # A 1 MiB frame of otherwise valid trades: over the limit, so it is one dead letter, not 6000 events.
    big = orjson.dumps([trade(10_000 + i) for i in range(7000)])
    big = big[:-1] + b" " * max(0, MIB - len(big)) + b"]"  # whitespace padding: still valid JSON
    assert len(big) >= MIB
    poison: list[tuple[bytes | str, str, str]] = [  # (frame, error_type, reason fragment)
        (b"{not json", "BadJSON", "bad JSON"),
        ('{"ev":"T","sym":"AAPL"}', "BadFrame", "not a JSON array"),
        (orjson.dumps([no_price]), "MissingField", "'p'"),
        (orjson.dumps([trade(12, p=0)]), "InvalidEvent", "'p' must be > 0"),
        (orjson.dumps([trade(13, p=-5.0)]), "InvalidEvent", "'p' must be > 0"),
        (json.dumps([trade(14, p=float("nan"))]), "InvalidEvent", "finite number"),
        (orjson.dumps([trade(15, s=0)]), "InvalidEvent", "'s' must be > 0"),
        (orjson.dumps([trade(16, s="100")]), "InvalidEvent", "'s'"),
        (orjson.dumps([trade(17, sym="ZZZZ")]), "UnknownTicker", "'ZZZZ' is not among the subscribed"),
        (orjson.dumps([quote(18, sym="QQQQ")]), "UnknownTicker", "'QQQQ'"),
        (orjson.dumps([{"ev": "XQ", "sym": "AAPL", "q": 19}]), "InvalidEvent", "unknown event type 'XQ'"),
        (big, "OversizeFrame", "oversize frame"),
    ]
    good_trades = [trade(q) for q in range(1, 9)]
    good_quotes = [quote(q) for q in range(1, 9)]
    script: list[bytes | str] = []
    for i, (frame, _, _) in enumerate(poison):  # each poison frame between two good ones
        script.append(orjson.dumps([good_trades[i % 8], good_quotes[i % 8]]) if i < 8 else b"[]")
        script.append(frame)
    script.append(orjson.dumps([trade(50), quote(50)]))
    dlq = open_dlq(settings)
    service, _ = asyncio.run(run_scripted(settings, [script], dlq))

    letters = dlq.pending(limit=100)
    sent_good_trades, sent_good_quotes = 9, 9
    accepted_trades = published_keys(settings, TRADES, sent_good_trades)
    accepted_quotes = published_keys(settings, QUOTES, sent_good_quotes)
    # accepted + dead-lettered = sent (events in good frames + one item per poison frame)
    assert len(accepted_trades) == sent_good_trades and len(accepted_quotes) == sent_good_quotes
    assert len(letters) == len(poison) == service.metrics.dead_lettered
    assert len(accepted_trades) + len(accepted_quotes) + len(letters) == 18 + len(poison)
    assert service.client.stats.reconnects == 0  # none of it cost the connection

    remaining = list(letters)
    for _frame, error_type, fragment in poison:
        match = next(
            (lt for lt in remaining if lt["error_type"] == error_type and fragment in lt["reason"]), None
        )
        assert match is not None, f"no {error_type} letter mentioning {fragment!r}"
        remaining.remove(match)
        DeadLetter.model_validate(match)
        assert match["stage"] == "ingest" and match["payload"]
    unknown = [lt for lt in letters if lt["error_type"] == "UnknownTicker"]
    assert {lt["ticker"] for lt in unknown} == {"ZZZZ", "QQQQ"}
    assert {lt["source_topic"] for lt in unknown} == {TRADES, QUOTES}
    oversize = next(lt for lt in letters if lt["error_type"] == "OversizeFrame")
    assert str(len(big)) in oversize["reason"] and len(oversize["payload"]) <= 64 * 1024
    nan = next(lt for lt in letters if "finite" in lt["reason"])
    assert "NaN" in nan["payload"]  # the original literal, not orjson's null
    dlq.close()


def _poison_for_the_runner(template: dict[str, Any]) -> list[tuple[bytes, str]]:
    """(raw message value, expected error_type) for market.trades."""
    wire_event = {"ev": "T", "sym": "AAPL", "p": 190.0, "s": 5, "t": template["exchange_ts_ms"], "q": 1}
    # ~1 MB: just under the producer's default message.max.bytes (1,000,000).
    huge = orjson.dumps({**template, "event_id": "huge", "price": "x" * 990_000})
    return [
        (orjson.dumps({**template, "event_id": "p0", "price": 0.0}), "bad_value"),
        (
            json.dumps({**template, "event_id": "nan", "price": float("nan")}).encode(),
            "bad_json",
        ),  # NaN is not JSON
        (orjson.dumps({**template, "event_id": "inf", "size": "inf"}), "bad_value"),
        (orjson.dumps(wire_event), "missing_field"),  # a raw Massive event: unknown type on the topic
        (orjson.dumps({**template, "event_id": "seq", "sequence": 1.5}), "bad_value"),
        (orjson.dumps({**template, "event_id": "tape", "tape": None}), "missing_field"),
        (huge, "bad_value"),
        # Binary: stored as base64, a third larger than the message it came in.
        (b"\xff" * 900_000, "bad_json"),
    ]


def test_runner_poison_is_dead_lettered_with_source_context_and_the_books_balance(
    kafka_settings: Settings,
) -> None:
    settings = kafka_settings
    recording = make_recording(duration_s=30, rate=40, seed=5)
    good = recording.events
    template = next(r for t, _, r in good if t == TRADES)
    poison = _poison_for_the_runner(template)
    assert max(len(raw) for raw, _ in poison) > 990_000
    mixed: list[tuple[str, str, Any]] = list(good)
    for i, (raw, _) in enumerate(poison):
        mixed.insert(50 + i * 100, (TRADES, "AAPL", raw))
    runner = build_runner(settings, instance="poison-gaps")
    with running(runner):
        produce(settings, mixed)
        wait_for(lambda: runner.metrics.events_processed >= len(mixed), 120, "every message")
    assert runner.metrics.events_processed == len(mixed)
    assert runner.metrics.dead_letters == len(poison)

    dlq = open_dlq(settings)
    letters = dlq.pending(limit=100)
    dlq.close()
    assert sorted(lt["error_type"] for lt in letters) == sorted(kind for _, kind in poison)
    for letter in letters:
        DeadLetter.model_validate(letter)
        assert letter["stage"] == "processor" and letter["source_topic"] == TRADES
        assert letter["source_partition"] is not None and letter["source_offset"] is not None
        assert letter["ticker"] == "AAPL" and letter["reason"]
    assert any(len(letter["payload"]) > 990_000 for letter in letters)  # kept whole
    # On market.dead-letters: once each, and the two big ones cut so that each letter fits in a message
    # (1.2 MB of base64 would not).
    published = assert_dead_letters_published_once(settings, [raw for raw, _ in poison])
    assert {lt["dead_letter_id"] for lt in published} == {lt["dead_letter_id"] for lt in letters}
    cut = [lt for lt in published if "the DLQ store holds it whole" in lt["reason"]]
    assert len(cut) == 2 and all(len(lt["payload"]) == TOPIC_PAYLOAD_CHARS for lt in cut)
    binary = next(lt for lt in cut if lt["payload"].startswith("b64:"))
    assert decode_payload(binary["payload"]) == b"\xff" * (3 * (TOPIC_PAYLOAD_CHARS - 4) // 4)
    hot = open_hot_store(settings)
    good_trades = {r["event_id"] for t, _, r in good if t == TRADES}
    assert hot.trade_ids() == good_trades  # accepted + dead-lettered = sent
    assert len(good) + len(letters) == len(mixed)
    hot.close()
