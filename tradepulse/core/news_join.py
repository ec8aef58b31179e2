"""Event-time join of news articles with volume z-score spikes (±60 s, both directions).

An article for ticker T published at t correlates with a `volume_zscore` ≥ 2.0 for T anywhere in
[t − 60 s, t + 60 s] (both ends inclusive). Markets can react after the news and polling delivers
articles late, so the joiner

* remembers z-scores per ticker, compressed to one *peak* point (highest z, its exact timestamp) and
  one *last* point per `resolution_ms` bucket (default 100 ms), for `window_ms + max_delay_ms`
  (default 11 min) behind the ticker's watermark: memory is bounded by time, not by trade rate;
* holds each article until the ticker's event-time watermark reaches t + 60 s (a later spike can
  still arrive), then emits exactly one `tradepulse.models.Correlation` dict for it.

Definitions (all in event time):

* `peak_zscore` — highest z in the window; None if the window holds no z-score at all.
* `matched_zscore` — the peak, when it is ≥ `z_threshold` (the spike that matched); else None.
* `lag_seconds` — (time of the matched peak − t) / 1000; negative when the spike came first. Ties go
  to the earliest point. None when nothing matched.
* `volume_zscore_at_publish` — z of the last remembered point at or before t (exact to the bucket
  resolution); None if none is remembered.
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


class _TickerHistory:
    """Per-bucket peak and last z-score points of one ticker, in fixed-size numpy ring arrays.

    Slot `b % size` holds bucket `b`: its peak (z, ts) and its last (ts, z); timestamps are stored as
    offsets into the bucket. `bucket` holds the bucket number of each slot (`_EMPTY` when free), so a
    stale slot is told apart from the current one. The ring covers the retention, the amortised
    eviction slack and one window ahead of the watermark, so in normal operation (z-scores no further
    ahead of the watermark than that) no remembered bucket is ever overwritten; beyond that the newer
    bucket wins and the displaced points are counted as dropped. Eviction is amortised (only once the
    cutoff is a full `evict_slack` past the oldest bucket) and frees the evicted slots.
    """

    __slots__ = ("bucket", "last_off", "last_z", "min_bucket", "peak_off", "peak_z", "res", "size")

    def __init__(self, size: int, res: int) -> None:
        off_dtype = np.int16 if res <= np.iinfo(np.int16).max else np.int32 if res <= 2**31 - 1 else np.int64
        self.size, self.res = size, res
        self.bucket = np.full(size, _EMPTY, dtype=np.int64)
        self.peak_z = np.zeros(size, dtype=np.float64)
        self.peak_off = np.zeros(size, dtype=off_dtype)
        self.last_off = np.zeros(size, dtype=off_dtype)
        self.last_z = np.zeros(size, dtype=np.float64)
        self.min_bucket: int | None = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.bucket, self.peak_z, self.peak_off, self.last_off, self.last_z))

    def count(self) -> int:
        return int(np.count_nonzero(self.bucket != _EMPTY))

    def merge(self, bucket: np.ndarray, ts: np.ndarray, z: np.ndarray) -> int:
        """Fold points into the ring; returns how many were lost to ring collisions."""
        # Peak per bucket: sort by bucket, then z descending, then ts ascending (earliest peak wins).
        order = np.lexsort((ts, -z, bucket))
        b_sorted = bucket[order]
        starts = np.flatnonzero(np.r_[True, b_sorted[1:] != b_sorted[:-1]])
        peak_idx = order[starts]
        # Last per bucket: sort by bucket then ts (stable: arrival order breaks ts ties); the group's end.
        order_t = np.lexsort((ts, bucket))
        bt_sorted = bucket[order_t]
        ends = np.flatnonzero(np.r_[bt_sorted[1:] != bt_sorted[:-1], True])
        last_idx = order_t[ends]
        bk = b_sorted[starts]  # ascending, unique
        counts = np.diff(np.r_[starts, b_sorted.size])
        pz, pts, lts, lz = z[peak_idx], ts[peak_idx], ts[last_idx], z[last_idx]
        slot = bk % self.size
        lost = 0
        if bk.size > 1 and bk[-1] - bk[0] >= self.size:
            # Buckets of this batch that share a slot: the newest wins.
            o = np.lexsort((bk, slot))
            keep = np.zeros(bk.size, dtype=bool)
            keep[o[np.r_[slot[o][1:] != slot[o][:-1], True]]] = True
            lost += int(counts[~keep].sum())
            bk, counts, pz, pts, lts, lz, slot = (a[keep] for a in (bk, counts, pz, pts, lts, lz, slot))
        cur = self.bucket[slot]
        older = (cur != _EMPTY) & (cur > bk)  # the slot holds a newer bucket: drop these points
        if older.any():
            lost += int(counts[older].sum())
            keep = ~older
            bk, pz, pts, lts, lz, slot, cur = (a[keep] for a in (bk, pz, pts, lts, lz, slot, cur))
        displaced = (cur != _EMPTY) & (cur < bk)
        if displaced.any():
            lost += int(displaced.sum())  # at least one point each; only past the ring's design bound
        base = bk * self.res
        same = cur == bk
        # New (or displaced) slots take the batch's points as they are.
        fresh = ~same
        if fresh.any():
            s = slot[fresh]
            self.bucket[s] = bk[fresh]
            self.peak_z[s] = pz[fresh]
            self.peak_off[s] = pts[fresh] - base[fresh]
            self.last_off[s] = lts[fresh] - base[fresh]
            self.last_z[s] = lz[fresh]
            lo = int(bk[fresh].min())
            if self.min_bucket is None or lo < self.min_bucket:
                self.min_bucket = lo
        if same.any():
            s, b0 = slot[same], base[same]
            cpz, cpts = self.peak_z[s], self.peak_off[s] + b0
            up = (pz[same] > cpz) | ((pz[same] == cpz) & (pts[same] < cpts))
            self.peak_z[s[up]] = pz[same][up]
            self.peak_off[s[up]] = pts[same][up] - b0[up]
            upl = lts[same] >= self.last_off[s] + b0
            self.last_off[s[upl]] = lts[same][upl] - b0[upl]
            self.last_z[s[upl]] = lz[same][upl]
        return lost

    def evict_before(self, cutoff_bucket: int, slack: int) -> None:
        if self.min_bucket is None or cutoff_bucket < self.min_bucket + slack:
            return
        b = self.bucket
        b[(b != _EMPTY) & (b < cutoff_bucket)] = _EMPTY
        live = b[b != _EMPTY]
        self.min_bucket = int(live.min()) if live.size else None

    def lookup(self, t: int, window_ms: int) -> tuple[float | None, float | None, int]:
        """(z at publish, peak z in [t − window, t + window], time of that peak) from the ring."""
        if self.min_bucket is None:
            return None, None, 0
        res, size = self.res, self.size
        lo, hi = t - window_ms, t + window_ms
        want = np.arange(lo // res, hi // res + 1, dtype=np.int64)
        slot = want % size
        hit = slot[self.bucket[slot] == want]
        peak_z: float | None = None
        peak_ts = 0
        if hit.size:
            base = self.bucket[hit] * res
            z = np.concatenate((self.peak_z[hit], self.last_z[hit]))
            ts = np.concatenate((self.peak_off[hit] + base, self.last_off[hit] + base))
            inside = (ts >= lo) & (ts <= hi)  # window edges inclusive
            if inside.any():
                z, ts = z[inside], ts[inside]
                best = z.max()
                peak_z, peak_ts = float(best), int(ts[z == best].min())  # ties: the earliest
        # Last point at or before t: the bucket of t may hold only later points, then the one before.
        at_publish: float | None = None
        tb = t // res
        s = tb % size
        if self.bucket[s] == tb:
            at_publish = self._last_at_or_before(s, t)
        if at_publish is None:
            b = self.bucket
            older = np.flatnonzero((b != _EMPTY) & (b < tb))
            if older.size:
                at_publish = self._last_at_or_before(int(older[np.argmax(b[older])]), t)
        return at_publish, peak_z, peak_ts

    def _last_at_or_before(self, s: int, t: int) -> float | None:
        base = int(self.bucket[s]) * self.res
        pts, lts = int(self.peak_off[s]) + base, int(self.last_off[s]) + base
        if lts <= t and lts > pts:
            return float(self.last_z[s])
        if pts <= t:
            return float(self.peak_z[s])
        return None


class NewsJoiner:
    """Joins NewsArticle dicts with volume z-scores in event time; emits Correlation dicts.

    Args:
        window_ms: half-width of the join window around the publication time.
        z_threshold: z-score at or above which a volume spike correlates.
        max_delay_ms: how far behind the ticker's watermark an article may arrive and still join against
            the full window; z-score history is kept for `window_ms + max_delay_ms`.
        resolution_ms: bucket width of the compressed z-score history.
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
    ) -> None:
        if window_ms <= 0 or resolution_ms <= 0 or max_delay_ms < 0:
            raise ValueError("window_ms and resolution_ms must be > 0, max_delay_ms >= 0")
        self.window_ms = int(window_ms)
        self.z_threshold = float(z_threshold)
        self.max_delay_ms = int(max_delay_ms)
        self.resolution_ms = int(resolution_ms)
        self.max_pending = int(max_pending)
        self.dedupe_horizon_ms = int(dedupe_horizon_ms)
        self.history_ms = self.window_ms + self.max_delay_ms
        self._evict_slack = max(1, 10_000 // self.resolution_ms)  # evict in ~10 s chunks
        # Ring slots per ticker: retention + eviction slack + one window of z-scores ahead of the
        # watermark (the runner's watermark is the ticker's newest trade, so nothing is ahead of it).
        self._ring_size = -(-(self.history_ms + self.window_ms) // self.resolution_ms) + self._evict_slack + 2
        self._history: dict[str, _TickerHistory] = {}
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
            raise ValueError("ticker, ts_ms and zscore must have the same shape")
        if z.size == 0:
            return
        ok = np.isfinite(z)
        if not ok.all():
            self.stats["zscores_dropped"] += int((~ok).sum())
            tk, ts, z = tk[ok], ts[ok], z[ok]
        bucket = ts // self.resolution_ms
        # Group by ticker once (stable, so arrival order within a ticker is kept for ts ties).
        names, inv = np.unique(tk, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        bounds = np.searchsorted(inv[order], np.arange(len(names) + 1))
        for i, name in enumerate(names.tolist()):
            idx = order[bounds[i] : bounds[i + 1]]
            b, t, zz = bucket[idx], ts[idx], z[idx]
            wm = self._watermark.get(name)
            if wm is not None:
                # Older than anything an article could still need: nothing to remember.
                keep = t >= wm - self.history_ms
                if not keep.all():
                    self.stats["zscores_dropped"] += int((~keep).sum())
                    b, t, zz = b[keep], t[keep], zz[keep]
                    if t.size == 0:
                        continue
            hist = self._history.get(name)
            if hist is None:
                hist = self._history[name] = _TickerHistory(self._ring_size, self.resolution_ms)
            lost = hist.merge(b, t, zz)
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

        An article at t is final once its ticker's watermark ≥ t + window. Watermarks never move
        back: a smaller value than seen before is ignored.
        """
        for name, wm in watermark_ms.items():
            wm = int(wm)
            if wm > self._watermark.get(name, -(2**62)):
                self._watermark[name] = wm
        out: list[dict[str, Any]] = []
        for name in watermark_ms:
            wm = self._watermark[name]
            heap = self._heaps.get(name)
            while heap and heap[0][0] + self.window_ms <= wm:
                _, _, cid = heapq.heappop(heap)
                out.append(self._finalise(cid, wm))
            hist = self._history.get(name)
            if hist is not None:
                hist.evict_before((wm - self.history_ms) // self.resolution_ms, self._evict_slack)
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
    def pending_count(self) -> int:
        """Articles still waiting for their window to close."""
        return len(self._pending)

    def history_size(self) -> int:
        """Remembered z-score buckets over all tickers (bounded by time × tickers / resolution)."""
        return sum(h.count() for h in self._history.values())

    def history_nbytes(self) -> int:
        """Bytes of the z-score ring arrays over all tickers (fixed per ticker once it is seen)."""
        return sum(h.nbytes for h in self._history.values())

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
        hist = self._history.get(ticker)
        if hist is None:
            return None, None, 0
        return hist.lookup(t, self.window_ms)

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
