"""News ↔ volume z-score join: event-time window edges, both directions, thresholds, exactly-once."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tradepulse.core.news_join import NewsJoiner, correlation_id
from tradepulse.ids import news_event_id
from tradepulse.models import Correlation

T0 = 1_764_000_000_000  # an event time in ms


def article(article_id: int, ticker: str, ts_ms: int, compound: float | None = 0.8, **kw) -> dict:
    """A market.news NewsArticle dict; `compound` given = sentiment precomputed (None = score here)."""
    art = {
        "event_id": news_event_id(article_id, ticker),
        "article_id": article_id,
        "ticker": ticker,
        "related": [ticker],
        "headline": kw.pop("headline", f"headline {article_id}"),
        "summary": "",
        "source": "test",
        "url": f"https://example.test/{article_id}",
        "image": "",
        "category": "company",
        "published_at": "2025-11-24T16:00:00Z",
        "published_ts_ms": ts_ms,
        "received_ts_us": ts_ms * 1000,
    }
    if compound is not None:
        label = "positive" if compound >= 0.05 else "negative" if compound <= -0.05 else "neutral"
        art["sentiment"] = {"compound": compound, "label": label, "pos": 0.0, "neg": 0.0, "neu": 1.0}
    art.update(kw)
    return art


def zs(j: NewsJoiner, ticker: str, points: list[tuple[int, float]]) -> None:
    ts = np.array([p[0] for p in points], dtype=np.int64)
    z = np.array([p[1] for p in points], dtype=np.float64)
    j.add_zscores(np.array([ticker] * len(points), dtype=object), ts, z)


def background(start: int, end: int, step: int = 250, z: float = 0.3) -> list[tuple[int, float]]:
    return [(t, z) for t in range(start, end, step)]


def check(results: list[dict]) -> list[dict]:
    """Every output is a valid Correlation with no NaN/inf anywhere."""
    for r in results:
        Correlation.model_validate(r)
        for v in [*r.values(), *r["sentiment"].values()]:
            assert not (isinstance(v, float) and not math.isfinite(v)), r
    return results


def run_one(spike_offset_ms: int | None, compound: float = 0.8, z: float = 4.0) -> dict:
    """One AAPL article at T0, background z, one spike at T0 + offset; returns its single result."""
    j = NewsJoiner()
    pts = background(T0 - 120_000, T0 + 120_000)
    if spike_offset_ms is not None:
        pts.append((T0 + spike_offset_ms, z))
    zs(j, "AAPL", pts)
    j.add_articles([article(1, "AAPL", T0, compound)])
    (res,) = check(j.advance({"AAPL": T0 + 120_000}))
    return res


@pytest.mark.parametrize(
    ("offset_ms", "matched"),
    [(59_900, True), (60_000, True), (60_100, False), (-59_900, True), (-60_000, True), (-60_100, False)],
)
def test_window_edges(offset_ms: int, matched: bool) -> None:
    res = run_one(offset_ms)
    if matched:
        assert res["matched_zscore"] == 4.0
        assert res["lag_seconds"] == pytest.approx(offset_ms / 1000)
        assert res["correlation_strength"] == "strong"
    else:
        assert res["matched_zscore"] is None and res["lag_seconds"] is None
        assert res["correlation_strength"] == "none"
        assert res["peak_zscore"] == pytest.approx(0.3)


def test_spike_after_article_waits_for_the_window() -> None:
    j = NewsJoiner()
    zs(j, "AAPL", background(T0 - 60_000, T0 + 30_000))
    j.add_articles([article(1, "AAPL", T0, 0.6)])
    assert j.advance({"AAPL": T0 + 30_000}) == []  # still inside the window: keep waiting
    zs(j, "AAPL", [(T0 + 45_000, 2.5), *background(T0 + 30_000, T0 + 61_000)])
    assert j.advance({"AAPL": T0 + 59_999}) == []
    (res,) = check(j.advance({"AAPL": T0 + 60_000}))
    assert res["matched_zscore"] == 2.5 and res["lag_seconds"] == 45.0
    assert res["correlation_strength"] == "moderate"
    assert res["volume_zscore_at_publish"] == pytest.approx(0.3)
    assert j.pending_count == 0


def test_spike_before_article_has_negative_lag_and_at_publish_is_last_z_before_t() -> None:
    j = NewsJoiner()
    zs(j, "AAPL", [(T0 - 20_000, 3.5), (T0 - 5_000, 1.2), (T0 - 1, 1.7), (T0 + 1, 0.9)])
    j.add_articles([article(1, "AAPL", T0, -0.7)])
    (res,) = check(j.advance({"AAPL": T0 + 60_000}))
    assert res["lag_seconds"] == -20.0
    assert res["matched_zscore"] == res["peak_zscore"] == 3.5
    assert res["volume_zscore_at_publish"] == 1.7
    assert res["correlation_strength"] == "strong"


def test_peak_is_the_highest_in_window_and_ties_go_to_the_earliest() -> None:
    j = NewsJoiner()
    zs(j, "AAPL", [(T0 - 10_000, 2.2), (T0 + 5_000, 6.0), (T0 + 30_000, 6.0), (T0 + 70_000, 9.0)])
    j.add_articles([article(1, "AAPL", T0, 0.9)])
    (res,) = j.advance({"AAPL": T0 + 60_000})
    assert res["peak_zscore"] == 6.0 and res["lag_seconds"] == 5.0


@pytest.mark.parametrize(
    ("compound", "z", "strength"),
    [
        (0.5, 3.0, "strong"),
        (-0.5, 3.0, "strong"),
        (0.4999, 3.0, "moderate"),
        (0.5, 2.9999, "moderate"),
        (0.2, 2.0, "moderate"),
        (-0.2, 2.0, "moderate"),
        (0.1999, 2.0, "weak"),
        (0.0, 5.0, "weak"),
        (0.9, 1.9999, "none"),
    ],
)
def test_strength_thresholds_are_inclusive(compound: float, z: float, strength: str) -> None:
    res = run_one(10_000, compound=compound, z=z)
    assert res["correlation_strength"] == strength
    if strength == "none":
        assert res["matched_zscore"] is None and res["peak_zscore"] == z


def test_duplicate_article_delivered_twice_gives_one_result() -> None:
    j = NewsJoiner()
    zs(j, "AAPL", [(T0 + 1_000, 3.0)])
    art = article(7, "AAPL", T0)
    j.add_articles([art, dict(art)])
    j.add_articles([art])
    out = j.advance({"AAPL": T0 + 60_000})
    assert [r["correlation_id"] for r in out] == [correlation_id(7, "AAPL")]
    j.add_articles([art])  # delivered again after its result went out
    assert j.advance({"AAPL": T0 + 90_000}) == [] and j.flush() == []
    assert j.stats["duplicates"] == 3


def test_restart_mid_window_replays_without_re_emitting() -> None:
    zpts = [*background(T0 - 60_000, T0 + 100_000), (T0 - 30_000, 2.4), (T0 + 50_000, 3.2)]
    arts = [article(1, "AAPL", T0 - 40_000, 0.3), article(2, "AAPL", T0 + 10_000, -0.9)]

    # The run that "crashes": article 1 is emitted, article 2 is mid-window.
    before = NewsJoiner()
    zs(before, "AAPL", [p for p in zpts if p[0] <= T0 + 30_000])
    before.add_articles(arts)
    emitted = before.advance({"AAPL": T0 + 30_000})
    assert [r["article_id"] for r in emitted] == [1]

    # The reference: the same run without a crash.
    ref = NewsJoiner()
    zs(ref, "AAPL", zpts)
    ref.add_articles(arts)
    expected = {r["article_id"]: r for r in ref.advance({"AAPL": T0 + 100_000})}

    # Rebuilt joiner: the runner replays the look-back (z-scores and articles) and passes emitted ids.
    after = NewsJoiner(emitted_ids=[r["correlation_id"] for r in emitted])
    zs(after, "AAPL", zpts)
    after.add_articles(arts)
    out = check(after.advance({"AAPL": T0 + 100_000}))
    assert [r["article_id"] for r in out] == [2]
    assert out[0] == expected[2]
    assert out[0]["lag_seconds"] == 40.0 and out[0]["correlation_strength"] == "strong"
    assert emitted[0] == expected[1]  # what went out before the crash is what a clean run emits
    assert after.flush() == []


def test_multiple_tickers_are_joined_and_watermarked_independently() -> None:
    j = NewsJoiner()
    n = 200
    rng = np.random.default_rng(0)
    tickers = np.array(["AAPL", "MSFT"] * n, dtype=object)
    ts = np.repeat(np.arange(T0 - 50_000, T0 + 50_000, 500, dtype=np.int64), 2)
    z = np.full(2 * n, 0.5)
    z[(tickers == "MSFT") & (ts == T0 + 20_000)] = 4.0  # only MSFT spikes
    perm = rng.permutation(2 * n)  # arrival order does not matter
    j.add_zscores(tickers[perm], ts[perm], z[perm])
    # One article naming both tickers arrives as one NewsArticle per ticker.
    j.add_articles([article(9, "AAPL", T0, 0.7), article(9, "MSFT", T0, 0.7)])
    out_aapl = check(j.advance({"AAPL": T0 + 60_000}))
    assert [r["ticker"] for r in out_aapl] == ["AAPL"]  # MSFT's watermark has not moved
    assert out_aapl[0]["correlation_strength"] == "none" and out_aapl[0]["peak_zscore"] == 0.5
    out_msft = check(j.advance({"MSFT": T0 + 60_000}))
    assert [r["ticker"] for r in out_msft] == ["MSFT"]
    assert out_msft[0]["correlation_strength"] == "strong" and out_msft[0]["lag_seconds"] == 20.0
    assert out_aapl[0]["correlation_id"] != out_msft[0]["correlation_id"]


def test_late_article_joins_remembered_zscores() -> None:
    j = NewsJoiner()
    zs(j, "TSLA", [*background(T0 - 60_000, T0 + 300_000), (T0 + 15_000, 5.0)])
    assert j.advance({"TSLA": T0 + 300_000}) == []
    j.add_articles([article(3, "TSLA", T0, -0.6)])  # polled 5 min after publication
    (res,) = check(j.advance({"TSLA": T0 + 300_000}))
    assert res["correlation_strength"] == "strong" and res["lag_seconds"] == 15.0
    assert j.stats["beyond_retention"] == 0


def test_no_nan_in_outputs_even_with_nan_input_and_no_history() -> None:
    j = NewsJoiner()
    zs(j, "NVDA", [(T0 - 1_000, float("nan")), (T0 + 2_000, float("inf")), (T0 + 3_000, 2.1)])
    j.add_articles([article(4, "NVDA", T0, 0.3), article(5, "AMZN", T0, 0.0)])
    out = check(j.advance({"NVDA": T0 + 60_000}) + j.flush())
    by_ticker = {r["ticker"]: r for r in out}
    assert by_ticker["NVDA"]["matched_zscore"] == 2.1
    assert by_ticker["NVDA"]["volume_zscore_at_publish"] is None  # the NaN before t was dropped
    amzn = by_ticker["AMZN"]  # no z-score ever seen: all None, strength none
    assert amzn["peak_zscore"] is None and amzn["correlation_strength"] == "none"
    assert j.stats["zscores_dropped"] == 2


def test_sentiment_is_scored_when_absent() -> None:
    j = NewsJoiner()
    zs(j, "AAPL", [(T0 + 5_000, 3.1)])
    j.add_articles([article(6, "AAPL", T0, None, headline="Apple shares plunge after weak China sales")])
    (res,) = check(j.flush())
    assert res["sentiment"]["label"] == "negative" and res["sentiment"]["compound"] <= -0.5
    assert res["correlation_strength"] == "strong"


def test_history_is_bounded_by_time_not_by_trade_rate() -> None:
    j = NewsJoiner(max_delay_ms=120_000, resolution_ms=100)
    step = 5  # 200 trades/s for 30 minutes, fed in 10 s batches
    for start in range(T0, T0 + 1_800_000, 10_000):
        ts = np.arange(start, start + 10_000, step, dtype=np.int64)
        j.add_zscores(np.full(ts.size, "AAPL", dtype=object), ts, np.full(ts.size, 0.1))
        j.advance({"AAPL": int(ts[-1])})
    bound = (j.history_ms + 20_000) // 100  # retention plus the amortised-eviction slack
    assert 0 < j.history_size() <= bound


def test_max_pending_finalises_oldest_early() -> None:
    j = NewsJoiner(max_pending=2)
    j.add_articles([article(i, "AAPL", T0 + i * 1000) for i in range(4)])
    out = j.advance({"AAPL": T0})
    assert [r["article_id"] for r in out] == [0, 1] and j.pending_count == 2
    assert [r["article_id"] for r in j.flush()] == [2, 3]
