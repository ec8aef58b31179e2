"""Frame parsing: protocol fields → model dicts, deterministic ids, and every way an event can be bad."""

from __future__ import annotations

import json
import random

import orjson
import pytest

from tradepulse.ids import quote_event_id, trade_event_id
from tradepulse.models import Quote, Trade
from tradepulse.sources import parse
from tradepulse.sources.parse import ParsedFrame, parse_frame

TS = 1_700_000_000_123_456

TRADE = {
    "ev": "T",
    "sym": "AAPL",
    "x": 4,
    "i": "52983525029461",
    "z": 3,
    "p": 189.25,
    "s": 100,
    "c": [14, 41],
    "t": 1_700_000_000_001,
    "q": 1001,
    "trfi": 202,
    "trft": 1_700_000_000_000,
}
QUOTE = {
    "ev": "Q",
    "sym": "MSFT",
    "bx": 11,
    "bp": 370.1,
    "bs": 3,
    "ax": 12,
    "ap": 370.2,
    "as": 5,
    "c": 1,
    "i": [604],
    "t": 1_700_000_000_002,
    "q": 2002,
    "z": 3,
}


def frame(*events: object) -> bytes:
    return orjson.dumps(list(events))


def test_multi_event_frame_yields_model_valid_records() -> None:
    status = {"ev": "status", "status": "success", "message": "subscribed to: T.AAPL"}
    parsed = parse_frame(frame(TRADE, QUOTE, status, {**TRADE, "q": 1002, "i": "x2"}), TS)

    assert len(parsed.trades) == 2 and len(parsed.quotes) == 1
    assert parsed.statuses == [status]
    assert parsed.rejects == []
    assert parsed.events == 3
    trade = Trade.model_validate(parsed.trades[0]).model_dump()
    assert trade == parsed.trades[0]  # exactly the model's fields, nothing more
    assert trade["price"] == 189.25 and trade["size"] == 100.0
    assert trade["exchange_ts_ms"] == TRADE["t"] and trade["sequence"] == 1001
    assert trade["received_ts_us"] == TS
    assert trade["trf_id"] == 202 and trade["conditions"] == [14, 41]
    assert trade["event_id"] == trade_event_id("AAPL", 4, "52983525029461", TRADE["t"], 1001)
    quote = Quote.model_validate(parsed.quotes[0]).model_dump()
    assert quote == parsed.quotes[0]
    assert quote["conditions"] == [1] and quote["indicators"] == [604]
    assert quote["event_id"] == quote_event_id("MSFT", QUOTE["t"], 2002)


def test_event_ids_are_deterministic_and_distinct() -> None:
    first = parse_frame(frame(TRADE), 1).trades[0]["event_id"]
    again = parse_frame(frame(TRADE), 2).trades[0]["event_id"]  # receive time is not identity
    other = parse_frame(frame({**TRADE, "q": 1002}), 1).trades[0]["event_id"]
    assert first == again != other
    assert len(first) == 16


def test_optional_fields_may_be_absent() -> None:
    trade = {k: v for k, v in TRADE.items() if k not in ("c", "trfi", "trft")}
    quote = {k: v for k, v in QUOTE.items() if k not in ("c", "i")}
    parsed = parse_frame(frame(trade, quote), TS)
    assert parsed.trades[0]["conditions"] == [] and parsed.trades[0]["trf_id"] is None
    assert parsed.quotes[0]["conditions"] == [] and parsed.quotes[0]["indicators"] == []


def test_fractional_share_size_comes_from_ds() -> None:
    parsed = parse_frame(frame({**TRADE, "s": 0, "ds": "0.25"}), TS)
    assert parsed.trades[0]["size"] == 0.25


@pytest.mark.parametrize(
    ("event", "error_type", "reason_part"),
    [
        ({k: v for k, v in TRADE.items() if k != "p"}, "MissingField", "'p'"),
        ({k: v for k, v in QUOTE.items() if k != "bp"}, "MissingField", "'bp'"),
        ({**TRADE, "p": 0}, "InvalidEvent", "> 0"),
        ({**TRADE, "p": -1.5}, "InvalidEvent", "> 0"),
        ({**TRADE, "s": 0}, "InvalidEvent", "'s'"),
        ({**QUOTE, "ap": -0.01}, "InvalidEvent", ">= 0"),
        ({**TRADE, "p": "189.25"}, "InvalidEvent", "finite number"),
        ({**TRADE, "x": "4"}, "InvalidEvent", "integer"),
        ({**TRADE, "x": True}, "InvalidEvent", "integer"),
        ({**TRADE, "i": 5298}, "InvalidEvent", "'i'"),
        ({**TRADE, "sym": ""}, "InvalidEvent", "'sym'"),
        ({**TRADE, "c": ["14"]}, "InvalidEvent", "'c'"),
        ({**TRADE, "t": 1.7e12}, "InvalidEvent", "'t'"),
        ({**TRADE, "ev": "A"}, "InvalidEvent", "unknown event type 'A'"),
        ({k: v for k, v in TRADE.items() if k != "ev"}, "MissingField", "'ev'"),
    ],
)
def test_invalid_event_is_rejected_and_its_frame_mates_survive(
    event: dict, error_type: str, reason_part: str
) -> None:
    parsed = parse_frame(frame(TRADE, event, QUOTE), TS)
    assert len(parsed.trades) == 1 and len(parsed.quotes) == 1
    [reject] = parsed.rejects
    assert reject.error_type == error_type
    assert reason_part in reject.reason
    assert orjson.loads(reject.payload) == event


def test_nan_price_rejects_only_that_event() -> None:
    # orjson refuses NaN literals; the frame is still decoded so only the NaN event is dead-lettered.
    raw = frame(TRADE)[:-1] + b',{"ev":"T","sym":"TSLA","x":1,"i":"9","z":3,"p":NaN,"s":5,"t":1,"q":2}]'
    parsed = parse_frame(raw, TS)
    assert len(parsed.trades) == 1
    [reject] = parsed.rejects
    assert reject.ticker == "TSLA" and "finite" in reject.reason and "NaN" in reject.payload


@pytest.mark.parametrize(
    ("raw", "error_type"),
    [
        (b'[{"ev":"T","sym":"AAPL"', "BadJSON"),
        (b"\xff\xfe not json", "BadJSON"),
        (b'{"ev":"T"}', "BadFrame"),
        (b'[1, [2], "x"]', "BadEvent"),
    ],
)
def test_bad_frames_are_rejected_with_their_raw_payload(raw: bytes, error_type: str) -> None:
    parsed = parse_frame(raw, TS)
    assert parsed.trades == [] and parsed.quotes == []
    assert parsed.rejects and {r.error_type for r in parsed.rejects} == {error_type}
    if error_type != "BadEvent":  # frame-level: the exact bytes received
        assert parsed.rejects[0].payload == raw


def test_oversize_frame_is_one_truncated_reject() -> None:
    big = frame(*([TRADE] * 2000))
    parsed = parse_frame(big, TS, max_frame_bytes=len(big) - 1)
    assert parsed.trades == []
    [reject] = parsed.rejects
    assert reject.error_type == "OversizeFrame"
    assert str(len(big)) in reject.reason
    assert len(reject.payload) <= 64 * 1024 < len(big)


AM_EVENT = {
    "ev": "AM",
    "sym": "AAPL",
    "v": 4110,
    "av": 9470157,
    "op": 189.9,
    "vw": 190.0372,
    "o": 190.01,
    "c": 190.05,
    "h": 190.09,
    "l": 189.99,
    "a": 189.8834,
    "z": 685,
    "s": 1_764_685_800_000,
    "e": 1_764_685_860_000,
}


def test_an_am_aggregate_becomes_a_vendor_bar() -> None:
    from tradepulse.models import VendorBar

    frame = parse_frame(orjson.dumps([AM_EVENT]), 7)
    assert not frame.rejects and frame.events == 0  # aggregates are not market events
    (bar,) = frame.aggregates
    VendorBar.model_validate(bar)
    assert bar["ticker"] == "AAPL" and bar["volume"] == 4110.0 and bar["vwap"] == 190.0372
    assert (bar["open"], bar["high"], bar["low"], bar["close"]) == (190.01, 190.09, 189.99, 190.05)
    assert bar["avg_trade_size"] == 685.0 and bar["received_ts_us"] == 7 and bar["otc"] is False


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"v": -1}, "'v'"),
        ({"vw": float("inf")}, "'vw'"),
        ({"o": 0}, "'o'"),
        ({"e": 1_764_685_900_000}, "one minute"),
        ({"otc": "yes"}, "'otc'"),
        ({"sym": ""}, "'sym'"),
    ],
)
def test_a_malformed_am_aggregate_is_rejected_with_the_reason(change: dict, reason: str) -> None:
    frame = parse_frame(json.dumps([AM_EVENT | change]), 0)
    assert not frame.aggregates
    (reject,) = frame.rejects
    assert reason in reject.reason


def test_ingest_subscribes_to_am_when_vendor_bars_is_on() -> None:
    from tradepulse.config import Settings
    from tradepulse.sources.ingest import client_from_settings

    on = client_from_settings(Settings(vendor_bars="on", tickers=["AAPL"]))
    off = client_from_settings(Settings(vendor_bars="off", tickers=["AAPL"]))
    auto_simulator = client_from_settings(Settings(tickers=["AAPL"]))
    assert on.subscriptions == ["T.AAPL", "Q.AAPL", "AM.AAPL"] == auto_simulator.subscriptions
    assert off.subscriptions == ["T.AAPL", "Q.AAPL"]


# --- the column pass (`_columns`) against the per-event path --------------------------------------

# Values a fuzzed field may take instead of its own: wrong types, bounds, nulls, int64 edges; and sizes
# and prices that pass their own rule but not the notional (price × size) with their partner; an int
# where a float is due (valid: the record holds it as a float).
ODD_VALUES = [
    None,
    "7",
    True,
    False,
    0,
    -1,
    0.0,
    -0.5,
    1.5,
    2**63 - 1,
    2**63,
    -(2**63),
    1e300,
    [],
    [1],
    ["1"],
    {},
]
NEAR_MISSES = ["", 7, 5e10, 10_000_000.0, 10_000_000.5]


def _fuzzed_event(rnd: random.Random, i: int) -> object:
    """A trade, quote, status, AM or odd event; about one in six has a field changed or removed."""
    roll = rnd.random()
    if roll < 0.02:
        return rnd.choice([1, "x", [TRADE], None])  # not an object
    if roll < 0.45:
        event = {**TRADE, "sym": rnd.choice(["AAPL", "MSFT", "T"]), "p": round(rnd.uniform(1, 500), 4)}
        event |= {
            "s": rnd.choice([1, 100, 250.0]),
            "q": i,
            "t": TRADE["t"] + i,
            "i": str(rnd.randrange(10**9)),
        }
        for key in ("c", "trfi", "trft"):
            if rnd.random() < 0.3:
                event.pop(key)
        if rnd.random() < 0.05:
            event["ds"] = rnd.choice(["0.5", "x", None, 3])
    elif roll < 0.93:
        event = {**QUOTE, "sym": rnd.choice(["AAPL", "MSFT"]), "bp": round(rnd.uniform(1, 500), 2), "q": i}
        event |= {
            "t": QUOTE["t"] + i,
            "c": rnd.choice([1, 0, None, [1, 2]]),
            "i": rnd.choice([[604], [], None]),
        }
        for key in ("c", "i"):
            if rnd.random() < 0.2:
                event.pop(key)
    elif roll < 0.96:
        event = {"ev": "status", "status": "success", "message": f"m{i}"}
    elif roll < 0.98:
        event = dict(AM_EVENT)
    else:
        event = {**TRADE, "ev": rnd.choice(["A", None, 5])}
    if rnd.random() < 1 / 6:
        key = rnd.choice(sorted(event))
        if rnd.random() < 0.2:
            del event[key]
        else:
            event[key] = rnd.choice(NEAR_MISSES if rnd.random() < 0.5 else ODD_VALUES)
    return event


def _wire(parsed: ParsedFrame) -> tuple[bytes, ...]:
    """Everything a parsed frame holds, as bytes: JSON tells 1 from 1.0 and True from 1, == does not."""
    rejects = [(r.payload, r.reason, r.error_type, r.ticker, r.topic) for r in parsed.rejects]
    parts = (parsed.trades, parsed.quotes, parsed.statuses, parsed.aggregates, rejects)
    return tuple(orjson.dumps(part) for part in parts)


def test_the_column_pass_gives_every_frame_the_per_event_paths_records_and_rejects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rnd = random.Random(20261205)
    frames = [
        frame(*(_fuzzed_event(rnd, j) for j in range(rnd.choice([1, 2, 5, 40, 300])))) for _ in range(600)
    ]
    # And every field of a trade and a quote changed to every odd value, or removed, beside valid events.
    for base in (TRADE, QUOTE):
        for key in base:
            changed = [{**base, key: value} for value in [*ODD_VALUES, *NEAR_MISSES]]
            changed.append({k: v for k, v in base.items() if k != key})
            frames += [frame(TRADE, QUOTE, event) for event in changed]
    taken = []

    def columns(events: list, frame: ParsedFrame) -> list:
        rest = columns_pass(events, frame)
        taken.append(rest is not events)
        return rest

    columns_pass = parse._columns
    with monkeypatch.context() as m:
        m.setattr(parse, "_columns", columns)
        fast = [parse_frame(raw, TS) for raw in frames]
    with monkeypatch.context() as m:
        m.setattr(parse, "_columns", lambda events, frame: events)  # every event on its own
        each = [parse_frame(raw, TS) for raw in frames]
    for i, (got, want) in enumerate(zip(fast, each, strict=True)):
        assert _wire(got) == _wire(want), f"frame {i}: {frames[i][:300]!r}"
    # Both paths ran on many frames (and their trades and quotes): the column pass on the valid ones.
    assert sum(taken) > 150 and taken.count(False) > 150
    assert sum(len(p.trades) for p, t in zip(fast, taken, strict=True) if t) > 100
    assert sum(len(p.quotes) for p, t in zip(fast, taken, strict=True) if t) > 100


def test_a_frame_of_valid_trades_and_quotes_takes_the_column_pass() -> None:
    events = orjson.loads(
        frame(TRADE, QUOTE, {**TRADE, "q": 7}, {k: v for k, v in QUOTE.items() if k != "c"})
    )
    parsed = ParsedFrame(TS)
    assert parse._columns(events, parsed) == []
    assert [t["sequence"] for t in parsed.trades] == [1001, 7] and len(parsed.quotes) == 2
    status = {"ev": "status", "status": "success", "message": "hi"}
    assert parse._columns([*events, status], ParsedFrame(TS)) == [status]  # the rest, for the loop
    bad = [*events, {**TRADE, "p": 0}]
    assert parse._columns(bad, ParsedFrame(TS)) is bad  # one may be invalid: all go one at a time
