"""News ↔ volume z-score join: event-time window edges, both directions, thresholds, exactly-once."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tradepulse.core.news_join import NewsJoiner, correlation_id, correlation_strength
from tradepulse.errors import InvalidArgument
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


@pytest.mark.parametrize(("before_ms", "expected"), [(60_000, 1.1), (60_001, None)])
def test_at_publish_looks_back_over_the_window_only(before_ms: int, expected: float | None) -> None:
    """Older points may or may not be evicted yet when the article is final (that depends on how
    often the watermark advanced), so they never count: the result is the same for any schedule."""
    j = NewsJoiner()
    zs(j, "AAPL", [(T0 - before_ms, 1.1), (T0 + 1, 0.9)])
    j.add_articles([article(1, "AAPL", T0, -0.7)])
    (res,) = check(j.advance({"AAPL": T0 + 60_000}))
    assert res["volume_zscore_at_publish"] == expected


def test_an_article_waits_for_the_settle_time() -> None:
    """With settle_ms, z-scores up to watermark − settle_ms are complete: the article waits for it."""
    j = NewsJoiner(settle_ms=2_001)
    zs(j, "AAPL", background(T0 - 10_000, T0 + 62_000))
    j.add_articles([article(1, "AAPL", T0)])
    assert j.advance({"AAPL": T0 + 62_000}) == []
    zs(j, "AAPL", [(T0 + 60_000, 5.0)])  # still accepted by the features 2 s behind their watermark
    (res,) = check(j.advance({"AAPL": T0 + 62_001}))
    assert res["matched_zscore"] == 5.0


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


def test_history_memory_is_a_fixed_ring_per_ticker() -> None:
    j = NewsJoiner()
    tickers = np.array([f"T{i:02d}" for i in range(50)], dtype=object)
    sizes = []
    for start in range(T0, T0 + 1_200_000, 20_000):  # 20 minutes, 10 trades/s per ticker
        ts = np.repeat(np.arange(start, start + 20_000, 100, dtype=np.int64), tickers.size)
        tk = np.tile(tickers, ts.size // tickers.size)
        j.add_zscores(tk, ts + np.arange(ts.size) % 97, np.full(ts.size, 0.5))
        j.advance(dict.fromkeys(tickers.tolist(), int(ts[-1])))
        sizes.append(j.history_nbytes())
    per_ticker = sizes[0] // tickers.size
    assert sizes == [sizes[0]] * len(sizes) and 0 < per_ticker < 300_000
    assert j.history_size() <= tickers.size * (j.history_ms + 10_000) // 100


def test_a_ring_slot_takes_24_bytes_and_a_free_one_is_zeros() -> None:
    """A slot is its lap (int32), two z (float64) and two offsets (int16): 24 bytes, and a free slot is
    all zeros, so the rings' pages take memory only once written (issue 19: the slot's int64 bucket
    number, filled with a sentinel at allocation, made 13.5 MiB resident for 232 tickers at once)."""
    j = NewsJoiner()
    tickers = np.array([f"T{i:03d}" for i in range(200)], dtype=object)
    j.add_zscores(tickers, np.full(tickers.size, T0, dtype=np.int64), np.full(tickers.size, 0.5))
    rings = j._rings
    rows = rings.lap.shape[0]
    assert j.history_nbytes() == rows * rings.size * 24 + rows * 8  # + each ticker's min_bucket
    arrays = (rings.lap, rings.peak_z, rings.peak_off, rings.last_off, rings.last_z)
    written = sum(int(np.count_nonzero(a)) for a in arrays)
    assert written <= 200 * 5  # one slot a ticker: its lap, z twice and the offsets (0 when at the start)


def test_rings_remember_buckets_before_1970_and_refuse_times_beyond_their_laps() -> None:
    j = NewsJoiner()
    t = -86_400_000  # 1969-12-31
    j.add_zscores(np.array(["AAPL"], dtype=object), np.array([t + 5], dtype=np.int64), np.array([2.5]))
    j.add_articles([article(1, "AAPL", t)])
    (out,) = j.advance({"AAPL": t + 120_000})
    assert out["matched_zscore"] == 2.5 and out["lag_seconds"] == 0.005
    far = np.array([2**62], dtype=np.int64)
    with pytest.raises(InvalidArgument, match="too far from 1970"):
        j.add_zscores(np.array(["AAPL"], dtype=object), far, np.array([1.0]))


def test_a_batch_of_new_tickers_allocates_the_rings_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rings grow once per batch that brings new tickers, not once per ticker: a copy of every ring
    per new ticker made a runner's first batch of 200 tickers take ~0.2 s here."""
    from tradepulse.core import news_join

    allocations = []
    alloc = news_join._Rings._alloc
    monkeypatch.setattr(
        news_join._Rings, "_alloc", lambda rings, rows: (allocations.append(rows), alloc(rings, rows))
    )
    j = NewsJoiner()
    tickers = np.array([f"T{i:03d}" for i in range(200)], dtype=object)
    ts = np.full(tickers.size, T0, dtype=np.int64)
    j.add_zscores(tickers, ts, np.full(tickers.size, 0.5))
    assert allocations[0] == 0 and len(allocations) == 2
    assert 200 <= allocations[1] <= 200 + 32  # the headroom stays bounded
    more = np.array([f"U{i:03d}" for i in range(5)], dtype=object)
    j.add_zscores(more, np.full(more.size, T0 + 100, dtype=np.int64), np.full(more.size, 0.5))
    assert len(allocations) == 2  # within the headroom: no allocation
    assert j.history_size() == 205


class _ReferenceJoin:
    """Plain-Python model of the documented join: every point kept, bucket peak/last derived on demand."""

    def __init__(self, window_ms: int, z_threshold: float, max_delay_ms: int, resolution_ms: int) -> None:
        self.window, self.threshold, self.res = window_ms, z_threshold, resolution_ms
        self.history = window_ms + max_delay_ms
        self.slack = max(1, 10_000 // resolution_ms)
        self.points: dict[str, dict[int, list[tuple[int, float, int]]]] = {}
        self.wm: dict[str, int] = {}
        self.pending: list[tuple[int, int, str, dict]] = []
        self.beyond_retention = 0
        self.seq = 0

    def add_zscores(self, tk: list[str], ts: list[int], z: list[float]) -> None:
        for name, t, v in zip(tk, ts, z, strict=True):
            if not math.isfinite(v) or (name in self.wm and t < self.wm[name] - self.history):
                continue
            self.seq += 1
            self.points.setdefault(name, {}).setdefault(t // self.res, []).append((t, v, self.seq))

    def add_article(self, art: dict) -> None:
        self.seq += 1
        self.pending.append((art["published_ts_ms"], self.seq, art["ticker"], art))

    def _buckets(self, name: str) -> dict[int, tuple[tuple[float, int], tuple[float, int]]]:
        """bucket -> ((peak z, its earliest ts), (last z, its ts; the later arrival on a tie))."""
        out = {}
        for b, pts in self.points.get(name, {}).items():
            peak = max(pts, key=lambda p: (p[1], -p[0]))
            last = max(pts, key=lambda p: (p[0], p[2]))
            out[b] = ((peak[1], peak[0]), (last[1], last[0]))
        return out

    def result(self, name: str, t: int, art: dict) -> dict:
        wm = self.wm.get(name)
        if wm is not None and t - self.window < wm - self.history:
            self.beyond_retention += 1
        buckets = self._buckets(name)
        cands = [p for pair in buckets.values() for p in pair if t - self.window <= p[1] <= t + self.window]
        peak = max(cands, key=lambda p: (p[0], -p[1])) if cands else None
        at_publish = None
        lo = t - self.window  # the last point of the window's first half, [t − window, t]
        for b in sorted((b for b in buckets if b <= t // self.res), reverse=True):
            (pz, pts), (lz, lts) = buckets[b]
            if lo <= lts <= t and lts > pts:
                at_publish = lz
            elif lo <= pts <= t:
                at_publish = pz  # equal times: the peak point
            if at_publish is not None:
                break
        matched = peak[0] if peak is not None and peak[0] >= self.threshold else None
        compound = art["sentiment"]["compound"]
        return {
            "correlation_id": correlation_id(art["article_id"], name),
            "volume_zscore_at_publish": at_publish,
            "peak_zscore": peak[0] if peak else None,
            "matched_zscore": matched,
            "lag_seconds": (peak[1] - t) / 1000 if matched is not None else None,
            "correlation_strength": correlation_strength(compound, matched, self.threshold),
        }

    def advance(self, watermarks: dict[str, int]) -> list[dict]:
        for name, wm in watermarks.items():
            self.wm[name] = max(wm, self.wm.get(name, wm))
        out = []
        for name in watermarks:
            ready = sorted(p for p in self.pending if p[2] == name and p[0] + self.window <= self.wm[name])
            for p in ready:
                self.pending.remove(p)
                out.append(self.result(name, p[0], p[3]))
            buckets = self.points.get(name)
            cutoff = (self.wm[name] - self.history) // self.res
            if buckets and cutoff >= min(buckets) + self.slack:
                self.points[name] = {b: v for b, v in buckets.items() if b >= cutoff}
        return out

    def flush(self) -> list[dict]:
        out = [self.result(p[2], p[0], p[3]) for p in sorted(self.pending)]
        self.pending = []
        return out


FIELDS = ("correlation_id", "volume_zscore_at_publish", "peak_zscore", "matched_zscore", "lag_seconds")


@pytest.mark.parametrize("seed", range(6))
def test_matches_a_reference_join_on_random_streams(seed: int) -> None:
    rng = np.random.default_rng(seed)
    window, max_delay, res = 1_000, 3_000, 50 if seed % 2 else 100
    j = NewsJoiner(window, 2.0, max_delay_ms=max_delay, resolution_ms=res)
    ref = _ReferenceJoin(window, 2.0, max_delay, res)
    names = ["AAA", "BBB", "CCC"]
    now, aid, got, want = T0, 0, [], []
    for _ in range(120):
        now += int(rng.integers(0, 700))
        n = int(rng.integers(0, 40))
        tk = rng.choice(names, n).tolist()
        # Out of order, shared timestamps, a few far-late points, tied and non-finite z values.
        ts = (now - rng.integers(0, 1_500, n) - 6_000 * (rng.random(n) < 0.05)).tolist()
        z = (np.round(rng.normal(0.5, 1.5, n) * 2) / 2).tolist()
        z = [float("nan") if rng.random() < 0.02 else v for v in z]
        j.add_zscores(np.array(tk, dtype=object), np.array(ts, dtype=np.int64), np.array(z))
        ref.add_zscores(tk, ts, z)
        for _ in range(int(rng.poisson(0.4))):
            aid += 1  # late by up to ~6 s: some within, some beyond the retention
            art = article(
                aid, str(rng.choice(names)), now - int(rng.integers(0, 6_000)), float(rng.uniform(-1, 1))
            )
            j.add_articles([art])
            ref.add_article(art)
        seen = {
            name: max((t for k, t in zip(tk, ts, strict=True) if k == name), default=None) for name in names
        }
        wms = {name: t for name, t in seen.items() if t is not None}
        if wms:
            got.append([{f: r[f] for f in (*FIELDS, "correlation_strength")} for r in j.advance(wms)])
            want.append(ref.advance(wms))
    got.append([{f: r[f] for f in (*FIELDS, "correlation_strength")} for r in j.flush()])
    want.append(ref.flush())
    assert got == want
    assert sum(map(len, want)) == aid > 10
    assert j.stats["beyond_retention"] == ref.beyond_retention
    assert 0 < ref.beyond_retention < aid  # late articles both within and beyond the retention
    assert any(r["matched_zscore"] is not None for batch in want for r in batch)
    assert any(r["volume_zscore_at_publish"] is not None for batch in want for r in batch)
