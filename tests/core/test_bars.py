"""One-minute bars against a naive reference, across batch splits and restarts, and the sessions.

The reference walks the stream trade by trade in arrival order with plain Python (a dict of lists per
(ticker, minute)), following the definitions in `tradepulse.core.bars`, and closes bars only at the
end of the stream; the engine must emit exactly those bars, whatever the batch split.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from tradepulse.core.bars import BAR_MS, NO_TS, BarEngine, bar_id
from tradepulse.core.columns import QuoteColumns, TradeColumns
from tradepulse.core.features import FeatureEngine
from tradepulse.core.sessions import SessionTable
from tradepulse.errors import InvalidArgument
from tradepulse.models import Bar

GRACE = 2000
T0 = 1_764_685_800_000  # 2025-12-02 14:30 UTC = 09:30 ET


def make_trades(seed: int, seconds: int = 400, tickers: tuple[str, ...] = ("AAA", "BBB", "CCC")) -> dict:
    """Trades in arrival order, with ties, delays within and beyond the grace, odd masks, bad prices."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, ticker in enumerate(tickers):
        ts = np.sort(rng.uniform(0, seconds * 1000, int(2 * seconds))).astype(np.int64)
        dup = rng.random(len(ts)) < 0.05  # equal timestamps
        ts[1:][dup[1:]] = ts[:-1][dup[1:]]
        price = 50.0 * (k + 1) * np.exp(np.cumsum(rng.normal(0, 0.002, len(ts))))
        for i, t in enumerate(ts):
            delay = rng.choice([0, 0, 0, 0, 500, 1900, 3500])  # some late beyond the 2 s grace
            rows.append(
                (
                    int(T0 + t + delay),
                    ticker,
                    float(round(price[i], 4)),
                    float(rng.choice([1, 50, 100, 300, 0.37, 12.5])),  # fractional: volume sums round
                    int(T0 + t),
                )
            )
    rows.sort(key=lambda r: r[0])  # arrival order
    n = len(rows)
    price = np.array([r[2] for r in rows])
    price[rng.random(n) < 0.003] = np.nan  # never accepted, never move the watermark
    return {
        "ticker": np.array([r[1] for r in rows], dtype=object),
        "price": price,
        "size": np.array([r[3] for r in rows]),
        "ts_ms": np.array([r[4] for r in rows], dtype=np.int64),
        "vol": rng.random(n) > 0.1,
        "hl": rng.random(n) > 0.2,
        "oc": rng.random(n) > 0.25,
    }


def columns(t: dict, sl: slice) -> TradeColumns:
    n = len(t["ts_ms"][sl])
    return TradeColumns(
        ticker=t["ticker"][sl],
        price=t["price"][sl],
        size=t["size"][sl],
        ts_ms=t["ts_ms"][sl],
        sequence=np.arange(n, dtype=np.int64),
        event_id=np.array([f"e{i}" for i in range(n)], dtype=object),
    )


def run(engine: BarEngine, t: dict, cuts: list[int]) -> list[dict]:
    bars: list[dict] = []
    bounds = [0, *cuts, len(t["ts_ms"])]
    for lo, hi in itertools.pairwise(bounds):
        sl = slice(lo, hi)
        bars += engine.process(
            columns(t, sl),
            volume_eligible=t["vol"][sl],
            high_low_eligible=t["hl"][sl],
            open_close_eligible=t["oc"][sl],
        )
    return bars


def by_key(bars: list[dict]) -> list[dict]:
    """Bars in (start, ticker) order: each batch emits its own bars in that order, so a stream's bars
    are in that order per batch, not overall."""
    return sorted(bars, key=lambda b: (b["start_ms"], b["ticker"]))


def reference(t: dict) -> tuple[list[dict], int]:
    """(bars closed by the final watermarks, how many (ticker, minute) with an accepted trade are
    still open), the slow way."""
    wm: dict[str, int] = {}
    minutes: dict[tuple[str, int], list[tuple]] = defaultdict(list)
    for i in range(len(t["ts_ms"])):
        ticker, ts, p, s = t["ticker"][i], int(t["ts_ms"][i]), t["price"][i], t["size"][i]
        if not (math.isfinite(p) and p > 0 and math.isfinite(s) and s > 0):
            continue
        if ticker in wm and ts < wm[ticker] - GRACE:
            continue  # late
        wm[ticker] = max(wm.get(ticker, ts), ts)
        minutes[(ticker, ts // BAR_MS * BAR_MS)].append((ts, i, p, s, t["vol"][i], t["hl"][i], t["oc"][i]))
    bars, still_open = [], 0
    for (ticker, start), rows in minutes.items():
        if start + BAR_MS > wm[ticker] - GRACE:
            still_open += 1
            continue
        # The sums trade by trade in arrival order (the list's order); open and close by (ts, arrival).
        vol = [r for r in rows if r[4]]
        volume, notional = 0.0, 0.0
        for r in vol:
            volume += r[3]
            notional += r[2] * r[3]
        rows.sort(key=lambda r: (r[0], r[1]))
        hl = [r[2] for r in rows if r[5]]
        oc = [r[2] for r in rows if r[6]]
        if not vol and not hl and not oc:
            continue
        bars.append(
            {
                "ticker": ticker,
                "start_ms": start,
                "open": oc[0] if oc else None,
                "close": oc[-1] if oc else None,
                "high": max(hl) if hl else None,
                "low": min(hl) if hl else None,
                "volume": volume,
                "vwap": notional / volume if volume else None,
                "trade_count": len(vol),
            }
        )
    bars.sort(key=lambda b: (b["start_ms"], b["ticker"]))
    return bars, still_open


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bars_match_the_naive_reference(seed: int) -> None:
    t = make_trades(seed)
    bars = by_key(run(BarEngine(GRACE), t, cuts=list(range(37, len(t["ts_ms"]), 37))))
    expected, _ = reference(t)
    assert len(bars) == len(expected) > 10
    for got, want in zip(bars, expected, strict=True):
        for key, value in want.items():
            assert got[key] == value, (key, got, want)  # bit for bit: the same sums in the same order
        assert got["bar_id"] == bar_id(got["ticker"], got["start_ms"])
        assert got["end_ms"] == got["start_ms"] + BAR_MS
        Bar.model_validate(got)
    # Some fields had no eligible trade somewhere, and some trades were late: the masks and the grace
    # were exercised.
    assert len({(b["ticker"], b["start_ms"]) for b in bars}) == len(bars)


def test_bars_are_bit_identical_across_batch_splits() -> None:
    t = make_trades(7)
    n = len(t["ts_ms"])
    rng = np.random.default_rng(0)
    whole = run(BarEngine(GRACE), t, cuts=[])
    assert whole  # one batch still closes every minute the final watermark passed
    for _ in range(3):
        cuts = sorted(rng.choice(np.arange(1, n), size=rng.integers(5, 200), replace=False).tolist())
        assert by_key(run(BarEngine(GRACE), t, cuts)) == whole
    assert by_key(run(BarEngine(GRACE), t, cuts=list(range(1, n)))) == whole  # one trade per batch


def test_each_bar_is_emitted_by_the_batch_whose_watermark_closes_it() -> None:
    """One trade per batch: a bar comes out of exactly the batch after which its ticker's watermark −
    grace first reaches its end, and only the open minutes' bars are kept after it."""
    t = make_trades(11, seconds=300)
    engine = BarEngine(GRACE)
    expected, still_open = reference(t)
    wm: dict[str, int] = {}
    due: dict[tuple[str, int], int] = {}  # (ticker, start) -> batch that must emit it
    emitted: dict[tuple[str, int], int] = {}
    for i in range(len(t["ts_ms"])):
        sl = slice(i, i + 1)
        for bar in engine.process(
            columns(t, sl),
            volume_eligible=t["vol"][sl],
            high_low_eligible=t["hl"][sl],
            open_close_eligible=t["oc"][sl],
        ):
            assert (bar["ticker"], bar["start_ms"]) not in emitted
            emitted[(bar["ticker"], bar["start_ms"])] = i
        ticker, p, s = t["ticker"][i], t["price"][i], t["size"][i]
        if math.isfinite(p) and p > 0 and math.isfinite(s) and s > 0:
            wm[ticker] = max(wm.get(ticker, int(t["ts_ms"][i])), int(t["ts_ms"][i]))
        for bar in expected:
            key = (bar["ticker"], bar["start_ms"])
            if (
                key not in due
                and bar["ticker"] in wm
                and bar["start_ms"] + BAR_MS <= wm[bar["ticker"]] - GRACE
            ):
                due[key] = i
    assert len(expected) > 10
    assert emitted == due
    assert engine.open_bars == still_open  # the closed minutes were let go


def test_a_bar_closes_when_the_watermark_minus_grace_reaches_its_end_exactly() -> None:
    engine = BarEngine(GRACE)
    minute = T0 // BAR_MS * BAR_MS
    t = {
        "ticker": np.array(["AAA"] * 3, dtype=object),
        "price": np.array([10.0, 10.5, 11.0]),
        "size": np.array([100.0, 100.0, 100.0]),
        "ts_ms": np.array([minute + 1000, minute + BAR_MS + GRACE - 1, minute + BAR_MS + GRACE], np.int64),
    }
    emitted = [engine.process(columns(t, slice(i, i + 1))) for i in range(3)]
    assert emitted[0] == emitted[1] == []
    assert [(b["start_ms"], b["close"]) for b in emitted[2]] == [(minute, 10.0)]


def test_restart_replaying_a_lookback_emits_each_bar_once_and_the_same() -> None:
    """The runner's rebuild: a fresh engine replays the input look-back with outputs discarded, then
    goes on from the committed offset; the bars after the cut are those of an uninterrupted run."""
    t = make_trades(11, seconds=900)
    n = len(t["ts_ms"])
    whole = run(BarEngine(GRACE), t, cuts=list(range(50, n, 50)))
    committed = n // 2
    head = {k: v[:committed] for k, v in t.items()}
    before = run(BarEngine(GRACE), head, cuts=list(range(50, committed, 50)))
    lookback_ms = 390_000
    cut_ts = int(t["ts_ms"][:committed].max())
    start = int(np.argmax(t["ts_ms"] >= cut_ts - lookback_ms))  # first trade in the look-back
    rebuilt = BarEngine(GRACE)
    run(rebuilt, {k: v[start:committed] for k, v in t.items()}, cuts=[])  # outputs discarded
    after = run(rebuilt, {k: v[committed:] for k, v in t.items()}, cuts=list(range(40, n - committed, 40)))
    assert by_key(before + after) == by_key(whole)
    assert len({b["bar_id"] for b in before + after}) == len(whole)


def test_masks_default_to_every_trade_and_must_match_the_batch() -> None:
    t = make_trades(5, seconds=200)
    everything = {
        **t,
        "vol": np.ones(len(t["vol"]), bool),
        "hl": np.ones(len(t["vol"]), bool),
        "oc": np.ones(len(t["vol"]), bool),
    }
    engine = BarEngine(GRACE)
    assert engine.process(columns(t, slice(None))) == run(BarEngine(GRACE), everything, cuts=[])
    with pytest.raises(InvalidArgument):
        BarEngine(GRACE).process(columns(t, slice(0, 10)), volume_eligible=np.ones(9, bool))


def test_bar_acceptance_is_the_feature_cores() -> None:
    """Bars count exactly the trades the feature core accepts: volume and trade count per minute from
    the bars equal the feature core's per-trade rows summed per minute."""
    t = make_trades(3)
    cols = columns(t, slice(None))
    bars = BarEngine(GRACE).process(cols)
    engine = FeatureEngine()
    out = engine.process(cols, QuoteColumns.empty())
    per = pd.DataFrame(
        {"ticker": out.per_trade["ticker"], "ts": out.per_trade["ts_ms"], "size": out.per_trade["size"]}
    )
    per["start"] = per["ts"] // BAR_MS * BAR_MS
    sums = per.groupby(["ticker", "start"])["size"].agg(["sum", "count"])
    for bar in bars:
        row = sums.loc[(bar["ticker"], bar["start_ms"])]
        assert bar["trade_count"] == row["count"]
        assert bar["volume"] == pytest.approx(row["sum"], rel=1e-12)  # summed in another order
        assert bar["ticker"] in out.latest and engine.watermark(bar["ticker"]) is not None


def test_a_minute_with_no_eligible_trade_yields_no_bar_and_price_fields_can_be_none() -> None:
    engine = BarEngine(GRACE)
    base = T0
    trades = {
        "ticker": np.array(["X"] * 4, dtype=object),
        "price": np.array([10.0, 11.0, 12.0, 13.0]),
        "size": np.array([5.0, 7.0, 9.0, 1.0]),
        "ts_ms": np.array([base + 1000, base + 2000, base + BAR_MS + 10, base + 3 * BAR_MS], dtype=np.int64),
        "vol": np.array([True, True, False, True]),
        "hl": np.array([False, False, False, True]),
        "oc": np.array([False, True, False, True]),
    }
    bars = run(engine, trades, cuts=[])
    assert [b["start_ms"] for b in bars] == [base]  # the minute of the 12.0 print has nothing eligible
    (bar,) = bars
    assert (bar["open"], bar["close"], bar["high"], bar["low"]) == (11.0, 11.0, None, None)
    assert bar["volume"] == 12.0 and bar["trade_count"] == 2
    assert bar["vwap"] == pytest.approx((10 * 5 + 11 * 7) / 12)


# --- sessions --------------------------------------------------------------------------------------
def _ms(text: str) -> int:
    return int(pd.Timestamp(text, tz="America/New_York").tz_convert("UTC").value // 1_000_000)


@pytest.mark.parametrize(
    ("local", "session"),
    [
        ("2025-12-02 03:59", "closed"),
        ("2025-12-02 04:00", "pre_market"),
        ("2025-12-02 09:29", "pre_market"),
        ("2025-12-02 09:30", "regular"),
        ("2025-12-02 15:59", "regular"),
        ("2025-12-02 16:00", "after_hours"),
        ("2025-12-02 19:59", "after_hours"),
        ("2025-12-02 20:00", "closed"),
        ("2025-12-06 11:00", "closed"),  # Saturday
        ("2025-12-25 11:00", "closed"),  # Christmas
        ("2025-11-28 12:59", "regular"),  # day after Thanksgiving: early close at 13:00
        ("2025-11-28 13:00", "after_hours"),
        ("2025-11-28 17:00", "closed"),
        ("2025-07-03 13:30", "after_hours"),  # early close before Independence Day
        ("2025-07-15 09:30", "regular"),  # summer time (EDT): 13:30 UTC
        ("1990-01-02 10:00", "unknown"),  # before the calendar's span
    ],
)
def test_sessions_from_the_nyse_calendar(local: str, session: str) -> None:
    assert SessionTable.nyse().session_of(np.array([_ms(local)]))[0] == session


def test_bars_carry_the_session_of_their_minute() -> None:
    engine = BarEngine(GRACE, sessions=SessionTable.nyse())
    ts = np.array([_ms("2025-12-02 09:29") + 5, _ms("2025-12-02 09:30") + 5, _ms("2025-12-02 09:32")])
    trades = TradeColumns(
        ticker=np.array(["X"] * 3, dtype=object),
        price=np.array([1.0, 2.0, 3.0]),
        size=np.array([1.0, 1.0, 1.0]),
        ts_ms=ts.astype(np.int64),
        sequence=np.arange(3, dtype=np.int64),
        event_id=np.array(["a", "b", "c"], dtype=object),
    )
    assert [b["session"] for b in engine.process(trades)] == ["pre_market", "regular"]


def test_watermarks_at_once_are_the_watermark_of_each_ticker() -> None:
    t = make_trades(5, seconds=100)
    engine = BarEngine(GRACE)
    run(engine, t, cuts=list(range(50, len(t["ts_ms"]), 50)))
    names = ["BBB", "ZZZ", "AAA", "CCC", "AAA"]  # one never seen, one twice
    marks = engine.watermarks(names)
    assert [None if m == NO_TS else int(m) for m in marks] == [engine.watermark(n) for n in names]
    assert engine.watermark("ZZZ") is None and engine.watermark("AAA") is not None
    assert len(engine.watermarks([])) == 0
