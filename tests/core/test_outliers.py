"""The outlier flag (`tradepulse.core.outliers`): LULD-style bands, a reference that follows the market,
flags that do not depend on how the stream is split into batches or where a rebuild starts, and the
simulator's labelled bad ticks: every impossible one rejected by ingest's validation, every fat finger
flagged, nothing else."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from tradepulse.core.outliers import (
    LULD_TIER2_BANDS,
    OutlierConfig,
    ReferenceHistory,
    band_half_width,
    flag_outliers,
)
from tradepulse.sources.parse import parse_frame
from tradepulse.sources.simulator.market import MarketConfig, MarketModel

START_MS = 1_767_000_000_000


def run(
    tickers: list[str], prices: list[float], ts: list[int], config: OutlierConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    result = flag_outliers(
        np.array(tickers, dtype=object),
        np.array(prices, dtype=float),
        np.array(ts, dtype=np.int64),
        ReferenceHistory(),
        config or OutlierConfig(),
    )
    return result.outlier, result.reference


def test_the_bands_are_the_luld_tier2_percentage_parameters() -> None:
    reference = np.array([100.0, 3.01, 3.00, 0.75, 0.74, 0.10, np.nan])
    width = band_half_width(reference, LULD_TIER2_BANDS)
    # > $3.00: 10 %; $0.75 up to and including $3.00: 20 %; < $0.75: the lesser of $0.15 or 75 %.
    np.testing.assert_allclose(width[:6], [10.0, 0.301, 0.60, 0.15, 0.15, 0.075])
    assert np.isnan(width[6])
    np.testing.assert_allclose(band_half_width(reference[:1], LULD_TIER2_BANDS, 2.0), [20.0])


def test_a_fat_finger_is_flagged_above_or_below_and_normal_prints_are_not() -> None:
    prices = [100.0, 100.1, 99.9, 100.0, 150.0, 100.05, 45.0, 109.9, 90.1]
    flags, reference = run(["X"] * len(prices), prices, [START_MS + i for i in range(len(prices))])
    assert flags.tolist() == [False, False, False, False, True, False, True, False, False]
    assert np.isnan(reference[:3]).all()  # fewer than min_reference_trades before them: no reference
    assert reference[4] == pytest.approx(100.0)
    result = flag_outliers(
        np.array(["X"] * len(prices), dtype=object),
        np.array(prices),
        np.arange(len(prices)) + START_MS,
        ReferenceHistory(),
        OutlierConfig(),
    )
    assert result.counts() == {"above_band": 1, "below_band": 1}
    assert result.reason[4] == "above_band" and result.reason[6] == "below_band"


def test_the_band_multiplier_and_the_switch() -> None:
    prices = [100.0, 100.0, 100.0, 115.0]
    ts = [START_MS + i for i in range(4)]
    assert run(["X"] * 4, prices, ts)[0].tolist() == [False, False, False, True]
    assert not run(["X"] * 4, prices, ts, OutlierConfig(band_multiplier=2.0))[0].any()
    assert not run(["X"] * 4, prices, ts, OutlierConfig(enabled=False))[0].any()


def test_tickers_have_their_own_references_and_old_trades_leave_the_window() -> None:
    tickers = ["A", "B", "A", "B", "A", "B", "A", "B"]
    prices = [10.0, 500.0, 10.0, 500.0, 10.0, 500.0, 10.5, 520.0]
    flags, reference = run(tickers, prices, [START_MS + i for i in range(8)])
    assert not flags.any() and reference[6] == 10.0 and reference[7] == 500.0
    # Five minutes later the old trades no longer count: no reference, no flag.
    later = START_MS + 300_001 + 10
    flags, reference = run(["A"] * 4, [10.0, 10.0, 10.0, 20.0], [START_MS, START_MS + 1, START_MS + 2, later])
    assert not flags[3] and np.isnan(reference[3])


def test_the_reference_follows_a_genuine_level_shift() -> None:
    """A halt reopening 15 % higher: the first prints at the new level are flagged until they are half
    of the reference trades, then the market is the new level (a reference of unflagged trades would
    flag every later trade for ever)."""
    prices = [100.0] * 20 + [115.0] * 20
    flags, _ = run(["X"] * 40, prices, [START_MS + i * 100 for i in range(40)])
    assert flags[:20].sum() == 0
    assert flags[20:30].all() and not flags[31:].any()


def test_an_ineligible_trade_is_checked_but_is_no_reference() -> None:
    prices = np.array([100.0, 100.0, 100.0, 60.0, 60.0, 60.0, 100.0])
    eligible = np.array([True, True, True, False, False, False, True])
    result = flag_outliers(
        np.array(["X"] * 7, dtype=object),
        prices,
        np.arange(7) + START_MS,
        ReferenceHistory(),
        OutlierConfig(),
        eligible,
    )
    assert result.outlier.tolist() == [False, False, False, True, True, True, False]


def _stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tickers = rng.choice(np.array(["A", "B", "C"], dtype=object), n)
    base = {"A": 50.0, "B": 2.0, "C": 0.5}
    price = np.array([base[t] for t in tickers]) * np.exp(rng.normal(0, 0.01, n))
    fat = rng.random(n) < 0.03
    price[fat] *= np.where(rng.random(fat.sum()) < 0.5, 1.5, 0.5)
    ts = START_MS + np.cumsum(rng.integers(0, 2000, n))
    return tickers, np.round(price, 4), ts


def test_flags_do_not_depend_on_the_batch_split() -> None:
    tickers, price, ts = _stream(3000, seed=5)
    whole = flag_outliers(tickers, price, ts, ReferenceHistory(), OutlierConfig())
    assert 50 < whole.outlier.sum() < 150
    rng = np.random.default_rng(9)
    cuts = np.sort(rng.choice(np.arange(1, 3000), 40, replace=False))
    history, flags, refs = ReferenceHistory(), [], []
    for part in np.split(np.arange(3000), cuts):
        result = flag_outliers(tickers[part], price[part], ts[part], history, OutlierConfig())
        flags.append(result.outlier)
        refs.append(result.reference)
    assert np.array_equal(np.concatenate(flags), whole.outlier)
    np.testing.assert_array_equal(np.concatenate(refs), whole.reference)


def test_a_rebuild_from_the_window_before_a_point_flags_as_the_uninterrupted_run() -> None:
    """What the runner's rebuild relies on: state rebuilt from the trades of the last
    `reference_window_ms` before a restart point flags every later trade exactly as before."""
    tickers, price, ts = _stream(3000, seed=6)
    config = OutlierConfig()
    whole = flag_outliers(tickers, price, ts, ReferenceHistory(), config)
    restart = 2000
    replay = np.flatnonzero((ts >= ts[restart] - config.reference_window_ms) & (np.arange(3000) < restart))
    history = ReferenceHistory()
    flag_outliers(tickers[replay], price[replay], ts[replay], history, config)
    after = flag_outliers(tickers[restart:], price[restart:], ts[restart:], history, config)
    assert np.array_equal(after.outlier, whole.outlier[restart:])
    np.testing.assert_array_equal(after.reference, whole.reference[restart:])


def test_the_simulators_bad_ticks_are_all_rejected_or_flagged_and_nothing_else() -> None:
    """The labelled bad ticks of a seeded simulator run through ingest's validation and the flag: every
    impossible one rejected, every fat finger flagged, no other print rejected or flagged."""
    model = MarketModel(MarketConfig(seed=3, rate=200, start_ms=START_MS, bad_tick_rate=0.02, tick_ms=500))
    trades, rejects = [], []
    for block in model.generate(300):
        frame = parse_frame(orjson.dumps(block.records()), 1)
        trades += frame.trades
        rejects += frame.rejects
    labels = [g for g in model.ground_truth if g["type"] == "bad_tick"]
    impossible = {(g["ticker"], g["trade_id"]) for g in labels if g["kind"] == "impossible"}
    fat = {g["event_id"] for g in labels if g["kind"] == "fat_finger"}
    assert len(impossible) > 100 and len(fat) > 100
    assert {g["defect"] for g in labels} >= {"huge_price", "zero_price", "negative_price", "zero_size"}
    rejected = {(r["sym"], r["i"]) for r in (orjson.loads(j.payload) for j in rejects)}
    assert rejected == impossible
    flagged = flag_outliers(
        np.array([t["ticker"] for t in trades], dtype=object),
        np.array([t["price"] for t in trades]),
        np.array([t["exchange_ts_ms"] for t in trades]),
        ReferenceHistory(),
        OutlierConfig(),
    ).outlier
    assert {t["event_id"] for t, f in zip(trades, flagged.tolist(), strict=True) if f} == fat
