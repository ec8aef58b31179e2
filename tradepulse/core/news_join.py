"""Event-time join of news articles with volume z-score spikes (±60 s, both directions).

An article for ticker T published at t correlates with a `volume_zscore` ≥ 2.0 for T anywhere in
[t − 60 s, t + 60 s] (both ends inclusive). Markets can react after the news and polling delivers
articles late, so the joiner

* remembers z-scores per ticker, compressed to one *peak* point (highest z, its exact timestamp) and
  one *last* point per `resolution_ms` bucket (default 100 ms), for `window_ms + max_delay_ms`
  (default 11 min) behind the ticker's watermark: memory is bounded by time, not by trade rate;
* holds each article until the ticker's event-time watermark reaches t + 60 s + `settle_ms` (a later
  spike can still arrive until then: the feature engine still accepts trades up to its late grace
  behind the watermark), then emits exactly one `tradepulse.models.Correlation` dict for it.

The output is a function of the z-score and article streams alone (their order within a ticker, not
how they are split into calls or how often `advance` is called): an article is only finalised once
no z-score of its window can still arrive, and it only looks at points of its own window, which
eviction never reaches before the article is final (unless it arrived more than `max_delay_ms`
behind the watermark: counted as `beyond_retention`).

Definitions (all in event time):

* `peak_zscore` — highest z in the window; None if the window holds no z-score at all.
* `matched_zscore` — the peak, when it is ≥ `z_threshold` (the spike that matched); else None.
* `lag_seconds` — (time of the matched peak − t) / 1000; negative when the spike came first. Ties go
  to the earliest point. None when nothing matched.
* `volume_zscore_at_publish` — z of the last remembered point in [t − 60 s, t] (exact to the bucket
  resolution); None if there is none.
* `correlation_strength` — strong if |compound| ≥ 0.5 and matched z ≥ 3.0; moderate if
  |compound| ≥ 0.2 and matched z ≥ 2.0; weak if matched with a lower sentiment magnitude; none if no
  z ≥ 2.0 in the window. Thresholds are inclusive.

Sentiment: `add_articles` takes `NewsArticle` dicts as published on `market.news` (which carry no
sentiment) and scores them here with `tradepulse.core.sentiment.score_article`; a dict that already
has a `sentiment` key (a `Sentiment` dict, e.g. from a replay) is used as given.

Exactly once: the output is keyed by `correlation_id = stable_id("corr", article_id, ticker)` and
every sink (Kafka key, hot-store key) is keyed by it, so a replayed result overwrites itself. On top of
that the joiner never emits an id twice within its dedupe horizon: duplicates delivered again are
dropped, and a joiner rebuilt after a crash can be seeded with the ids already emitted
(`NewsJoiner(emitted_ids=...)` or `mark_emitted`) so replaying the look-back emits only what was
still pending.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from tradepulse.core.trade_state import group_sizes
from tradepulse.errors import InvalidArgument
from tradepulse.ids import stable_id

STRONG_SENTIMENT = 0.5
STRONG_ZSCORE = 3.0
MODERATE_SENTIMENT = 0.2


def correlation_id(article_id: int | str, ticker: str) -> str:
    """Deterministic id of the one correlation result of (article, ticker)."""
    return stable_id("corr", article_id, ticker)


def correlation_strength(compound: float, matched_z: float | None, z_threshold: float = 2.0) -> str:
    """Strength of a news↔volume correlation from the sentiment compound and the matched z-score."""
    if matched_z is None or not matched_z >= z_threshold:
        return "none"
    magnitude = abs(compound)
    if magnitude >= STRONG_SENTIMENT and matched_z >= STRONG_ZSCORE:
        return "strong"
    if magnitude >= MODERATE_SENTIMENT:
        return "moderate"
    return "weak"


_EMPTY = np.iinfo(np.int64).min  # bucket number of a slot that holds nothing
_LAP_BIAS = 2**30  # a stored lap: the bucket's lap (bucket // ring size) + this; 0 = the slot is free
_NO_MIN = np.iinfo(np.int64).max  # min_bucket of a ticker with nothing remembered
_NO_WATERMARK = -(2**62)


class _Rings:
    """Per-bucket peak and last z-score points of every ticker, in fixed-size numpy ring arrays.

    Row `code` is one ticker's ring; slot `b % size` holds bucket `b`: its peak (z, ts) and its last
    (ts, z), timestamps stored as offsets into the bucket. `lap` holds which bucket of its slot it is,
    `b // size` (biased by `_LAP_BIAS`, so that 0 marks a free slot), so a stale slot is told apart from
    the current one (`buckets`). Every array starts as zeros, so a ring takes memory only for the pages
    written: its slots', or every row a growth for new tickers copied (a ring is ~7,300 slots of 24
    bytes: ~12 minutes at 100 ms). A ring covers the
    retention, the amortised eviction slack and one window ahead of the watermark, so in normal
    operation (z-scores no further ahead of the watermark than that) no remembered bucket is ever
    overwritten; beyond that the newer bucket wins and the displaced points are counted as dropped.
    Eviction is amortised (only once the cutoff is a full `evict_slack` past the oldest bucket).
    """

    def __init__(self, size: int, res: int) -> None:
        self.size, self.res = size, res
        self.off_dtype = np.int16 if res <= np.iinfo(np.int16).max else np.int64
        self.codes: dict[str, int] = {}
        self._alloc(0)

    def _alloc(self, rows: int) -> None:
        shape = (rows, self.size)
        self.lap = np.zeros(shape, dtype=np.int32)
        self.peak_z = np.zeros(shape, dtype=np.float64)
        self.peak_off = np.zeros(shape, dtype=self.off_dtype)
        self.last_off = np.zeros(shape, dtype=self.off_dtype)
        self.last_z = np.zeros(shape, dtype=np.float64)
        self.min_bucket = np.full(rows, _NO_MIN, dtype=np.int64)

    def _grow(self, rows: int) -> None:
        old = (self.lap, self.peak_z, self.peak_off, self.last_off, self.last_z, self.min_bucket)
        self._alloc(rows)
        n = old[0].shape[0]
        for new, prev in zip(
            (self.lap, self.peak_z, self.peak_off, self.last_off, self.last_z, self.min_bucket),
            old,
            strict=True,
        ):
            new[:n] = prev

    def codes_of(self, names: list[str]) -> np.ndarray:
        """The row of each name; new names get the next rows, in one re-allocation for all of them
        (a batch can bring hundreds of new tickers: a copy of every ring per ticker took ~0.2 s)."""
        codes = self.codes
        rows = [codes.setdefault(name, len(codes)) for name in names]
        last = len(codes) - 1
        if last >= self.lap.shape[0]:
            self._grow(last + 1 + min(32, last // 8))  # some headroom: tickers arrive in bursts
        return np.array(rows, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        arrays = (self.lap, self.peak_z, self.peak_off, self.last_off, self.last_z, self.min_bucket)
        return sum(a.nbytes for a in arrays)

    def count(self) -> int:
        return int(np.count_nonzero(self.lap))

    def buckets(self, slots: np.ndarray, laps: np.ndarray) -> np.ndarray:
        """The bucket numbers that `laps` (stored laps) mean at ring slots `slots`; `_EMPTY` where free."""
        return np.where(laps != 0, (laps.astype(np.int64) - _LAP_BIAS) * self.size + slots, _EMPTY)

    def stored_laps(self, bucket: np.ndarray) -> np.ndarray:
        """The stored lap of each bucket number (int64; what `lap` holds for it)."""
        laps = bucket // self.size + _LAP_BIAS
        if len(laps) and (laps.min() <= 0 or laps.max() > np.iinfo(np.int32).max):
            raise InvalidArgument("a z-score timestamp is too far from 1970 for the join's rings")
        return laps

    def merge(self, code: np.ndarray, bucket: np.ndarray, ts: np.ndarray, z: np.ndarray) -> int:
        """Fold points of any tickers into the rings; returns how many were lost to ring collisions."""
        # Peak per (ticker, bucket): sort by z descending then ts ascending (earliest peak wins).
        order = np.lexsort((ts, -z, bucket, code))
        c_s, b_s = code[order], bucket[order]
        new_group = np.r_[True, (b_s[1:] != b_s[:-1]) | (c_s[1:] != c_s[:-1])]
        starts = np.flatnonzero(new_group)
        peak_idx = order[starts]
        # Last per (ticker, bucket): sort by ts (stable: arrival order breaks ts ties); the group's end.
        order_t = np.lexsort((ts, bucket, code))
        ends = np.r_[starts[1:], order.size] - 1  # same groups in the same order
        last_idx = order_t[ends]
        gc_, bk = c_s[starts], b_s[starts]
        counts = group_sizes(starts, order.size)
        pz, pts, lts, lz = z[peak_idx], ts[peak_idx], ts[last_idx], z[last_idx]
        size = self.size
        slot = gc_ * size + bk % size
        lost = 0
        if slot.size > 1:
            # Buckets of this batch that share a slot (more than a ring apart): the newest wins.
            o = np.lexsort((bk, slot))
            so = slot[o]
            keep = np.zeros(slot.size, dtype=bool)
            keep[o[np.r_[so[1:] != so[:-1], True]]] = True
            if not keep.all():
                lost += int(counts[~keep].sum())
                gc_, bk, counts, pz, pts, lts, lz, slot = (
                    a[keep] for a in (gc_, bk, counts, pz, pts, lts, lz, slot)
                )
        flat_lap = self.lap.reshape(-1)
        cur = self.buckets(slot % size, flat_lap[slot])
        older = (cur != _EMPTY) & (cur > bk)  # the slot holds a newer bucket: drop these points
        if older.any():
            lost += int(counts[older].sum())
            keep = ~older
            gc_, bk, pz, pts, lts, lz, slot, cur = (a[keep] for a in (gc_, bk, pz, pts, lts, lz, slot, cur))
        lost += int(np.count_nonzero((cur != _EMPTY) & (cur < bk)))  # displaced: past the design bound
        base = bk * self.res
        peak_z, peak_off = self.peak_z.reshape(-1), self.peak_off.reshape(-1)
        last_z, last_off = self.last_z.reshape(-1), self.last_off.reshape(-1)
        same = cur == bk
        fresh = ~same
        if fresh.any():
            s = slot[fresh]
            flat_lap[s] = self.stored_laps(bk[fresh])
            peak_z[s] = pz[fresh]
            peak_off[s] = pts[fresh] - base[fresh]
            last_off[s] = lts[fresh] - base[fresh]
            last_z[s] = lz[fresh]
            np.minimum.at(self.min_bucket, gc_[fresh], bk[fresh])
        if same.any():
            s, b0, spz, spts, slts, slz = slot[same], base[same], pz[same], pts[same], lts[same], lz[same]
            cpz = peak_z[s]
            up = (spz > cpz) | ((spz == cpz) & (spts < peak_off[s] + b0))
            peak_z[s[up]] = spz[up]
            peak_off[s[up]] = spts[up] - b0[up]
            upl = slts >= last_off[s] + b0
            last_off[s[upl]] = slts[upl] - b0[upl]
            last_z[s[upl]] = slz[upl]
        return lost

    def evict_before(self, code: int, cutoff_bucket: int, slack: int) -> None:
        low = int(self.min_bucket[code])
        if low == _NO_MIN or cutoff_bucket < low + slack:
            return
        laps = self.lap[code]
        b = self.buckets(np.arange(self.size), laps)
        laps[(b != _EMPTY) & (b < cutoff_bucket)] = 0
        live = b[(b != _EMPTY) & (b >= cutoff_bucket)]
        self.min_bucket[code] = live.min() if live.size else _NO_MIN

    def lookup(self, code: int, t: int, window_ms: int) -> tuple[float | None, float | None, int]:
        """(z at publish, peak z in [t − window, t + window], time of that peak) from one ring."""
        if self.min_bucket[code] == _NO_MIN:
            return None, None, 0
        res, size = self.res, self.size
        laps = self.lap[code]
        lo, hi = t - window_ms, t + window_ms
        want = np.arange(lo // res, hi // res + 1, dtype=np.int64)
        slot = want % size
        found = self.buckets(slot, laps[slot]) == want
        hit = slot[found]
        peak_z: float | None = None
        peak_ts = 0
        if hit.size:
            base = want[found] * res
            z = np.concatenate((self.peak_z[code, hit], self.last_z[code, hit]))
            ts = np.concatenate((self.peak_off[code, hit] + base, self.last_off[code, hit] + base))
            inside = (ts >= lo) & (ts <= hi)  # window edges inclusive
            if inside.any():
                z, ts = z[inside], ts[inside]
                best = z.max()
                peak_z, peak_ts = float(best), int(ts[z == best].min())  # ties: the earliest
        # Last point in [lo, t]: the bucket of t may hold only later points, then the one before. Only
        # the window's own buckets: older ones may or may not be evicted yet (the advance schedule).
        at_publish: float | None = None
        tb = t // res
        for b in range(tb, lo // res - 1, -1):
            if laps[b % size] == b // size + _LAP_BIAS:
                at_publish = self._last_in(code, b, lo, t)
                if at_publish is not None:
                    break
        return at_publish, peak_z, peak_ts

    def _last_in(self, code: int, b: int, lo: int, t: int) -> float | None:
        s, base = b % self.size, b * self.res
        pts, lts = int(self.peak_off[code, s]) + base, int(self.last_off[code, s]) + base
        if lo <= lts <= t and lts > pts:
            return float(self.last_z[code, s])  # equal times: the peak point, below
        if lo <= pts <= t:
            return float(self.peak_z[code, s])
        return None


class NewsJoiner:
    """Joins NewsArticle dicts with volume z-scores in event time; emits Correlation dicts.

    Args:
        window_ms: half-width of the join window around the publication time.
        z_threshold: z-score at or above which a volume spike correlates.
        max_delay_ms: how far behind the ticker's watermark an article may arrive and still join against
            the full window; z-score history is kept for `window_ms + max_delay_ms`.
        resolution_ms: bucket width of the compressed z-score history.
        settle_ms: how far behind the watermark z-scores can still arrive: the z-scores up to
            (watermark − settle_ms) are complete. The runner's watermark is the feature engine's, which
            still accepts trades at its late grace behind it (`FeatureConfig.zscore_settle_ms`).
        emitted_ids: correlation ids already emitted (restart after a crash): never emitted again.
        max_pending: bound on articles waiting for their window; beyond it the oldest is finalised early.
        dedupe_horizon_ms: how long (event time after publication) an emitted id is remembered; a
            duplicate older than that is emitted again, which the keyed sinks absorb. Ids are ~100 B
            each and news is sparse, so a day is cheap.
    """

    def __init__(
        self,
        window_ms: int = 60_000,
        z_threshold: float = 2.0,
        *,
        max_delay_ms: int = 600_000,
        resolution_ms: int = 100,
        emitted_ids: Iterable[str] = (),
        max_pending: int = 100_000,
        dedupe_horizon_ms: int = 86_400_000,
        settle_ms: int = 0,
    ) -> None:
        if window_ms <= 0 or resolution_ms <= 0 or max_delay_ms < 0 or settle_ms < 0:
            raise InvalidArgument("window_ms and resolution_ms must be > 0, max_delay_ms and settle_ms >= 0")
        self.window_ms = int(window_ms)
        self.z_threshold = float(z_threshold)
        self.max_delay_ms = int(max_delay_ms)
        self.resolution_ms = int(resolution_ms)
        self.max_pending = int(max_pending)
        self.dedupe_horizon_ms = int(dedupe_horizon_ms)
        self.history_ms = self.window_ms + self.max_delay_ms
        self.settle_ms = int(settle_ms)
        self._evict_slack = max(1, 10_000 // self.resolution_ms)  # evict in ~10 s chunks
        # Ring slots per ticker: retention + eviction slack + one window of z-scores ahead of the
        # watermark (the runner's watermark is the ticker's newest trade, so nothing is ahead of it).
        self._ring_size = -(-(self.history_ms + self.window_ms) // self.resolution_ms) + self._evict_slack + 2
        self._rings = _Rings(self._ring_size, self.resolution_ms)
        self._watermark: dict[str, int] = {}
        # Pending articles: per-ticker heap of (published_ts_ms, seq, correlation_id) + the articles.
        self._heaps: dict[str, list[tuple[int, int, str]]] = {}
        self._pending: dict[str, dict[str, Any]] = {}
        self._seq = 0
        # Emitted ids -> (ticker, expiry watermark); seeded ids get their expiry at the first advance.
        self._emitted: dict[str, tuple[str, int] | None] = {}
        self._unexpired_seeds = 0
        self._sweep_at = 1024
        self.stats: dict[str, int] = {
            "articles": 0,
            "duplicates": 0,
            "emitted": 0,
            "beyond_retention": 0,
            "forced_early": 0,
            "zscores_dropped": 0,
        }
        self.mark_emitted(emitted_ids)

    # --- input --------------------------------------------------------------------------------

    def add_zscores(self, ticker: np.ndarray, ts_ms: np.ndarray, zscore: np.ndarray) -> None:
        """Remember volume z-scores (one per accepted trade, any order). Non-finite z are dropped."""
        tk = np.asarray(ticker)
        ts = np.asarray(ts_ms, dtype=np.int64)
        z = np.asarray(zscore, dtype=np.float64)
        if not (tk.shape == ts.shape == z.shape):
            raise InvalidArgument("ticker, ts_ms and zscore must have the same shape")
        if z.size == 0:
            return
        ok = np.isfinite(z)
        if not ok.all():
            self.stats["zscores_dropped"] += int((~ok).sum())
            tk, ts, z = tk[ok], ts[ok], z[ok]
        names, inv = np.unique(tk, return_inverse=True)
        names = names.tolist()
        # Older than anything an article could still need (per ticker): nothing to remember.
        floor = np.array([self._watermark.get(n, _NO_WATERMARK) for n in names], dtype=np.int64)
        keep = ts >= floor[inv] - self.history_ms
        if not keep.all():
            self.stats["zscores_dropped"] += int((~keep).sum())
            inv, ts, z = inv[keep], ts[keep], z[keep]
            if ts.size == 0:
                return
        codes = self._rings.codes_of(names)
        lost = self._rings.merge(codes[inv], ts // self.resolution_ms, ts, z)
        if lost:
            self.stats["zscores_dropped"] += lost

    def add_articles(self, articles: Sequence[Mapping[str, Any]]) -> None:
        """Queue NewsArticle dicts (one per (article, ticker)); duplicates and emitted ids are dropped."""
        from tradepulse.core.sentiment import score_article

        for art in articles:
            ticker = str(art["ticker"])
            cid = correlation_id(art["article_id"], ticker)
            if cid in self._pending or cid in self._emitted:
                self.stats["duplicates"] += 1
                continue
            sentiment = art.get("sentiment")
            if sentiment is None:
                sentiment = score_article(art.get("headline", ""), art.get("summary", "") or "")
            entry = {
                "correlation_id": cid,
                "article_id": art["article_id"],
                "ticker": ticker,
                "headline": art.get("headline", ""),
                "source": art.get("source", ""),
                "url": art.get("url", ""),
                "published_at": art.get("published_at", ""),
                "published_ts_ms": int(art["published_ts_ms"]),
                "sentiment": dict(sentiment),
            }
            self._pending[cid] = entry
            self._seq += 1
            heapq.heappush(self._heaps.setdefault(ticker, []), (entry["published_ts_ms"], self._seq, cid))
            self.stats["articles"] += 1

    def mark_emitted(self, ids: Iterable[str]) -> None:
        """Record correlation ids emitted before a restart, so a replay does not emit them again."""
        for cid in ids:
            if cid not in self._emitted:
                self._emitted[cid] = None
                self._unexpired_seeds += 1

    # --- output -------------------------------------------------------------------------------

    def advance(self, watermark_ms: Mapping[str, int]) -> list[dict[str, Any]]:
        """Move per-ticker event-time watermarks forward; return the Correlation dicts now final.

        An article at t is final once its ticker's watermark − settle_ms ≥ t + window. Watermarks never
        move back: a smaller value than seen before is ignored. Everything below works on the settled
        watermark (watermark − settle_ms).
        """
        for name, wm in watermark_ms.items():
            wm = int(wm) - self.settle_ms
            if wm > self._watermark.get(name, _NO_WATERMARK):
                self._watermark[name] = wm
        out: list[dict[str, Any]] = []
        for name in watermark_ms:
            wm = self._watermark[name]
            heap = self._heaps.get(name)
            while heap and heap[0][0] + self.window_ms <= wm:
                _, _, cid = heapq.heappop(heap)
                out.append(self._finalise(cid, wm))
            code = self._rings.codes.get(name)
            if code is not None:
                self._rings.evict_before(
                    code, (wm - self.history_ms) // self.resolution_ms, self._evict_slack
                )
        if len(self._pending) > self.max_pending:
            out.extend(self._force_oldest(len(self._pending) - self.max_pending))
        self._expire_emitted()
        return out

    def flush(self) -> list[dict[str, Any]]:
        """Finalise every pending article now (shutdown / end of data), oldest first."""
        out = self._force_oldest(len(self._pending), count_forced=False)
        self._expire_emitted()
        return out

    @property
    def memory_ms(self) -> int:
        """How far behind the (unsettled) watermark a z-score can still be needed."""
        return self.history_ms + self.settle_ms

    @property
    def pending_count(self) -> int:
        """Articles still waiting for their window to close."""
        return len(self._pending)

    def is_pending(self, cid: str) -> bool:
        """Whether the article of correlation id `cid` is still waiting for its window to close."""
        return cid in self._pending

    def history_size(self) -> int:
        """Remembered z-score buckets over all tickers (bounded by time × tickers / resolution)."""
        return self._rings.count()

    def history_nbytes(self) -> int:
        """Bytes of the z-score ring arrays over all tickers (fixed per ticker once it is seen)."""
        return self._rings.nbytes

    # --- internals ----------------------------------------------------------------------------

    def _force_oldest(self, n: int, count_forced: bool = True) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if n <= 0:
            return out
        items = sorted((e["published_ts_ms"], cid) for cid, e in self._pending.items())[:n]
        for _, cid in items:
            ticker = self._pending[cid]["ticker"]
            out.append(self._finalise(cid, self._watermark.get(ticker)))
            if count_forced:
                self.stats["forced_early"] += 1
        for ticker in {r["ticker"] for r in out}:
            heap = [item for item in self._heaps.get(ticker, []) if item[2] in self._pending]
            heapq.heapify(heap)
            self._heaps[ticker] = heap
        return out

    def _finalise(self, cid: str, watermark: int | None) -> dict[str, Any]:
        entry = self._pending.pop(cid)
        ticker, t = entry["ticker"], entry["published_ts_ms"]
        if watermark is not None and t - self.window_ms < watermark - self.history_ms:
            self.stats["beyond_retention"] += 1  # part of its window was already forgotten
        at_publish, peak_z, peak_ts = self._lookup(ticker, t)
        matched = peak_z if peak_z is not None and peak_z >= self.z_threshold else None
        compound = float(entry["sentiment"].get("compound", 0.0))
        if not math.isfinite(compound):
            compound = 0.0
        result = {
            **entry,
            "volume_zscore_at_publish": at_publish,
            "matched_zscore": matched,
            "peak_zscore": peak_z,
            "lag_seconds": (peak_ts - t) / 1000.0 if matched is not None else None,
            "correlation_strength": correlation_strength(compound, matched, self.z_threshold),
        }
        expiry = t + self.dedupe_horizon_ms
        self._emitted[cid] = (ticker, expiry)
        self.stats["emitted"] += 1
        return result

    def _lookup(self, ticker: str, t: int) -> tuple[float | None, float | None, int]:
        """(z at publish, peak z in window, time of peak) for an article of `ticker` at `t`."""
        code = self._rings.codes.get(ticker)
        if code is None:
            return None, None, 0
        return self._rings.lookup(code, t, self.window_ms)

    def _expire_emitted(self) -> None:
        if self._unexpired_seeds and self._watermark:
            # Seeded ids have no publication time: keep them one full horizon past the current watermark.
            horizon = max(self._watermark.values()) + self.dedupe_horizon_ms
            for cid, val in self._emitted.items():
                if val is None:
                    self._emitted[cid] = ("", horizon)
            self._unexpired_seeds = 0
        if len(self._emitted) < self._sweep_at:
            return  # amortised: sweep only when the set has doubled since the last sweep
        top = max(self._watermark.values(), default=None)
        if top is None:
            return
        self._emitted = {
            cid: val
            for cid, val in self._emitted.items()
            if val is None or val[1] > (self._watermark.get(val[0], top) if val[0] else top)
        }
        self._sweep_at = max(1024, 2 * len(self._emitted))
