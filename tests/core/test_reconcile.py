"""Bar reconciliation (issue 17): our bars against the vendor's per-minute aggregates (Massive `AM`).

The comparison's tolerances and statuses on hand-made bars; the reconciler's one-sided decisions and
their independence from how the two streams interleave; and the simulator end to end through the
runner's processor (`CoreProcessor`, the code the runner runs per batch): its `AM` events, computed by
its own aggregation from its ground truth, reconcile with 0 mismatches against our bars; its labelled
fat fingers make `outlier` minutes only (every one of them flagged); and a deliberately wrong vendor
bar is reported as a mismatch of exactly the field that was changed."""

from __future__ import annotations

import collections
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tradepulse.bus.decode import DecodedBatch
from tradepulse.bus.pipeline import CoreProcessor
from tradepulse.config import Settings
from tradepulse.core.reconcile import BAR_MS, BarReconciler, compare, summarize
from tradepulse.sources.parse import parse_frame
from tradepulse.sources.simulator.market import MarketConfig, MarketModel

T0 = 1_764_685_800_000  # 2025-12-02 14:30 UTC = 09:30 ET


def ours(ticker: str = "AAA", minute: int = 0, **fields: Any) -> dict[str, Any]:
    bar = {
        "ticker": ticker,
        "start_ms": T0 + minute * BAR_MS,
        "open": 10.0,
        "high": 10.5,
        "low": 9.5,
        "close": 10.25,
        "volume": 1000.0,
        "vwap": 10.123456789,
        "trade_count": 7,
    }
    return bar | fields


def vendor(ticker: str = "AAA", minute: int = 0, **fields: Any) -> dict[str, Any]:
    bar = {
        "ticker": ticker,
        "start_ms": T0 + minute * BAR_MS,
        "open": 10.0,
        "high": 10.5,
        "low": 9.5,
        "close": 10.25,
        "volume": 1000.0,
        "vwap": 10.1235,  # 4 decimals, as the feed rounds it
        "avg_trade_size": 143.0,  # round(1000 / 7)
    }
    return bar | fields


def test_equal_bars_match_within_the_documented_tolerances() -> None:
    (result,) = compare([ours()], [vendor()])
    assert result["status"] == "match" and result["fields"] == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("open", 10.01),
        ("high", 10.49),
        ("low", 9.51),
        ("close", 10.24),
        ("volume", 1100.0),
        ("vwap", 10.1237),  # 2.4e-4 off: beyond the 4-decimal rounding
        ("avg_trade_size", 150.0),  # a different trade count
    ],
)
def test_a_wrong_vendor_bar_is_reported_with_the_field_that_differs(field: str, value: float) -> None:
    (result,) = compare([ours()], [vendor(**{field: value})])
    name = "avg_size" if field == "avg_trade_size" else field
    assert result["status"] == "mismatch"
    assert result["fields"] == [name]
    assert result["diff"][name][1] == value


def test_a_price_field_without_eligible_trades_is_none_on_both_sides_and_matches() -> None:
    # e.g. a minute of odd lots only: volume, no last price.
    (result,) = compare(
        [ours(open=None, close=None, high=None, low=None)],
        [vendor(open=None, close=None, high=None, low=None)],
    )
    assert result["status"] == "match"
    (result,) = compare([ours(open=None)], [vendor()])
    assert result["status"] == "mismatch" and result["fields"] == ["open"]


def test_a_difference_explained_by_the_flagged_prints_is_outlier_and_only_then() -> None:
    tape = ours(high=15.0, volume=1100.0, vwap=10.6, trade_count=8)  # with a flagged fat finger
    wrong_high = vendor(high=15.0, volume=1100.0, vwap=10.6, avg_trade_size=138.0)
    (result,) = compare([ours()], [wrong_high], [tape])
    assert result["status"] == "outlier"
    # A difference the flagged prints do not account for stays a mismatch.
    (result,) = compare([ours()], [wrong_high | {"close": 11.0}], [tape])
    assert result["status"] == "mismatch" and "close" in result["fields"]


def test_the_reconciler_decides_one_sided_minutes_from_each_streams_own_order() -> None:
    # Minute 0 on both sides, minute 1 ours only (the vendor sends minute 2 next), minute 3 vendor
    # only (ours final past it without a bar).
    our_bars = [ours(minute=0), ours(minute=1), ours(minute=4)]
    vendor_bars = [vendor(minute=0), vendor(minute=2), vendor(minute=3)]
    final = {"AAA": T0 + 5 * BAR_MS}

    def run(steps: list[tuple[list[dict], list[dict]]]) -> list[dict]:
        reconciler = BarReconciler()
        out: list[dict] = []
        for i, (o, v) in enumerate(steps):
            out += reconciler.update(o, v, final if i == len(steps) - 1 else {})
        return sorted(out, key=lambda r: r["start_ms"])

    expected = [
        (0, "match"),
        (1, "ours_only"),
        (2, "vendor_only"),
        (3, "vendor_only"),
    ]
    # Every interleaving of the two streams (each in its own order) gives the same decisions.
    for split_ours, split_vendor in itertools.product(range(4), range(4)):
        steps = [
            (our_bars[:split_ours], vendor_bars[:split_vendor]),
            (our_bars[split_ours:], vendor_bars[split_vendor:]),
        ]
        got = [((r["start_ms"] - T0) // BAR_MS, r["status"]) for r in run(steps)]
        assert got[:4] == expected, (split_ours, split_vendor)
    reconciler = BarReconciler()
    reconciler.update(our_bars, vendor_bars, final)
    assert len(reconciler.pending_keys()) == 1  # minute 4: the vendor has not sent a later minute yet


@pytest.mark.parametrize("wait_ms", [None, 90_000])
def test_the_reconciler_decides_in_the_same_update_as_a_sweep_on_every_call(wait_ms: int | None) -> None:
    """The reconciler only sweeps its pending bars when a bar arrives or a ticker's final point reaches a
    minute's end (or its end + wait_ms); against one that sweeps on every call, each update returns the
    same decisions, with final points that creep up a few seconds per update past both thresholds."""

    class SweepsEveryCall(BarReconciler):
        """Sweeps on every call: each update also brings a tape bar and the first final point of tickers
        that never trade (no decision, and the tape bar is never let go)."""

        calls = 0

        def update(self, ours, vendor, final_ms, tape=()):  # type: ignore[no-untyped-def]
            self.calls += 1
            dummy_tape = {"ticker": "~tape", "start_ms": self.calls}
            dummy_final = {f"~final{self.calls}": 0}
            return super().update(ours, vendor, {**final_ms, **dummy_final}, [*tape, dummy_tape])

    rng = np.random.default_rng(3)
    tickers = ("AAA", "BBB", "CCC")
    steps = []
    final = dict.fromkeys(tickers, T0)
    for _ in range(2500):
        our_bars, vendor_bars, tape_bars = [], [], []
        for ticker in tickers:
            final[ticker] += int(rng.integers(0, 9000))
            minute = (final[ticker] - T0) // BAR_MS - int(rng.integers(0, 2))  # often not final yet
            if rng.random() < 0.02:  # now and then a minute of ours, of the vendor's, or of both
                kind = rng.integers(0, 3)
                if kind != 1:
                    our_bars.append(ours(ticker, int(minute)))
                    tape_bars.append(ours(ticker, int(minute)))
                if kind != 0:
                    vendor_bars.append(vendor(ticker, int(minute) - int(rng.integers(0, 3))))
        moved = {t: f for t, f in final.items() if rng.random() < 0.7}
        steps.append((our_bars, vendor_bars, moved, tape_bars))
    kw = {} if wait_ms is None else {"wait_ms": wait_ms}
    gated, every = BarReconciler(**kw), SweepsEveryCall(**kw)
    statuses: collections.Counter[str] = collections.Counter()
    for our_bars, vendor_bars, moved, tape_bars in steps:
        got = gated.update(our_bars, vendor_bars, moved, tape_bars)
        assert got == every.update(our_bars, vendor_bars, moved, tape_bars)
        statuses.update(r["status"] for r in got)
    assert sum(statuses.values()) > 50
    assert {"match", "ours_only", "vendor_only"} <= set(statuses)  # every kind of decision was made


def test_summary_counts_statuses_and_mismatched_fields_per_ticker() -> None:
    results = compare([ours(), ours(minute=1)], [vendor(), vendor(minute=1, close=1.0, volume=5.0)])
    summary = summarize(results)
    assert summary["AAA"]["match"] == 1 and summary["AAA"]["mismatch"] == 1
    assert summary["AAA"]["fields"]["close"] == 1 and summary["AAA"]["fields"]["volume"] == 1


def run_simulator(
    tmp_path: Path, bad_tick_rate: float, corrupt: int | None = None
) -> tuple[list[dict], MarketModel, set[str]]:
    """The simulator's trades and `AM` events, framed as its WebSocket sends them and parsed by ingest's
    parser, one tick per batch through the runner's processor. `corrupt`: the index of the `AM` event
    whose close is changed. Returns the reconciliation decisions, the model and the flagged event ids."""
    settings = Settings(data_dir=tmp_path / "state", vendor_bars="on")
    core = CoreProcessor(settings)
    model = MarketModel(
        MarketConfig(
            seed=17,
            tickers=["AAPL", "MSFT", "NVDA"],
            rate=60,
            start_ms=T0,
            tick_ms=2000,  # one batch per 2 s tick: few batches, a short test
            bad_tick_rate=bad_tick_rate,
        )
    )
    checks: list[dict] = []
    flagged: set[str] = set()
    offset = seen_am = 0
    for block in model.generate(6 * 60 + 5):
        aggregates = block.aggregates
        if corrupt is not None and seen_am <= corrupt < seen_am + len(aggregates):
            aggregates = list(aggregates)
            wrong = dict(aggregates[corrupt - seen_am])
            wrong["c"] = round(wrong["c"] + 0.07, 2)
            aggregates[corrupt - seen_am] = wrong
        seen_am += len(aggregates)
        frame = parse_frame(orjson.dumps(block.records() + aggregates), block.end_ms * 1000)
        n = len(frame.trades)
        batch = DecodedBatch(
            trades=frame.trades,
            trade_pos=[(0, offset + i) for i in range(n)],
            vendor_bars=frame.aggregates,
            vendor_bar_pos=[(0, i) for i in range(len(frame.aggregates))],
        )
        offset += n
        core.flag_outliers(batch)
        flagged |= {t["event_id"] for t in batch.trades if t["outlier"]}
        checks += core.process(batch, emit=True).bar_checks
    core.close()
    return checks, model, flagged


def test_a_seeded_simulator_run_reconciles_with_zero_mismatches(tmp_path: Path) -> None:
    checks, _, _ = run_simulator(tmp_path, bad_tick_rate=0.0)
    statuses = collections.Counter(c["status"] for c in checks)
    # 6 closed minutes × 3 tickers (the 7th is still open), every one compared and equal.
    assert statuses == {"match": 18}, statuses


def test_labelled_fat_fingers_are_flagged_and_explain_their_minutes_exactly(tmp_path: Path) -> None:
    checks, model, flagged = run_simulator(tmp_path, bad_tick_rate=0.01)
    fat = [g for g in model.ground_truth if g["type"] == "bad_tick" and g["kind"] == "fat_finger"]
    assert len(fat) >= 5
    assert {g["event_id"] for g in fat} <= flagged  # every labelled fat finger is flagged
    statuses = collections.Counter(c["status"] for c in checks)
    assert statuses["mismatch"] == 0 and statuses["vendor_only"] == 0 and statuses["ours_only"] == 0
    # The minutes that differ are those holding a fat finger the vendor's aggregate counted.
    fat_minutes = {(g["ticker"], g["start_ms"] // BAR_MS * BAR_MS) for g in fat}
    outlier_minutes = {(c["ticker"], c["start_ms"]) for c in checks if c["status"] == "outlier"}
    assert outlier_minutes and outlier_minutes <= fat_minutes
    assert statuses["match"] + statuses["outlier"] == 18


def test_a_deliberately_wrong_vendor_bar_is_reported(tmp_path: Path) -> None:
    checks, _, _ = run_simulator(tmp_path, bad_tick_rate=0.0, corrupt=4)
    wrong = [c for c in checks if c["status"] != "match"]
    assert len(wrong) == 1 and len(checks) == 18
    (check,) = wrong
    assert check["status"] == "mismatch" and check["fields"] == ["close"]
    ours_close, vendor_close = check["diff"]["close"]
    assert vendor_close == pytest.approx(ours_close + 0.07)
    assert np.isfinite(ours_close)
