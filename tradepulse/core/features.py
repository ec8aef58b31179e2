"""Vectorised per-ticker windowed features over micro-batches of trades and quotes.

Definitions (all per ticker; event time = exchange timestamp `ts`; windows are half-open (t − W, t]):

* Order. Trades are ordered by the key (ts, arrival): equal timestamps keep their arrival order. A
  trade's vector is computed over S_i = the accepted trades of its ticker that arrived at or before it
  and whose key is ≤ its own key. For an in-order stream that is simply "every trade up to this one".
* Late events. The ticker watermark is the highest ts accepted so far. A trade with
  ts < watermark − grace (`late_grace_ms`, default 2 s) is *late*: it is excluded from every window and
  reported in `late_event_ids` (the caller stores and counts it). A trade within the grace is *folded
  in*: it is inserted into the windows at its event-time position, so it counts for every vector
  computed after it arrives (including its own, which then equals what a time-sorted stream would give)
  and for every snapshot not yet closed. Vectors already emitted for later-keyed trades are not revised.
  Because S_i only depends on the arrival sequence, per-trade vectors and snapshots do not depend on how
  the stream is split into batches.
* `vwap_1min` / `vwap_5min`: Σ price·size / Σ size over the last 60 s / 300 s of S_i.
* `rolling_avg_5min`: mean trade price over the last 300 s of S_i.
* `trade_frequency`: number of trades of S_i in the last 60 s.
* `volume`: size traded in the current z-score bucket (floor(ts / 1000 ms)) by the trades of S_i.
* `volume_zscore`: how unusual the volume of the current z-score bucket is, robust to single block
  trades. Each accepted trade j gets a *capped size* c_j = min(size_j, `zscore_size_cap` (10) × the
  mean trade size of its ticker over the *closed* buckets among the previous `zscore_cap_window_buckets`
  (60): buckets b_j−60 … whose end is ≤ (watermark after j) − grace, so no trade can still enter them;
  c_j = size_j when there are none or the cap is 0). c_j is fixed when j is accepted. A bucket's value
  is x = log(1 + Σc) over its trades (`zscore_log_volume`; plain Σc when off). Then
  z = (x_now − mean) / std, x_now over the trades of S_i in the current bucket, mean and std over the
  history buckets: the previous `zscore_window_buckets` (300) buckets b−300 … b−1 of S_i, *starting at
  the first of them that has a trade* (empty buckets after that count as x = 0). With n history
  buckets, mean = Σx/n and std is the population std (ddof 0). z = 0 while n <
  `zscore_min_history_buckets` (30, warm-up and after a quiet spell of ≥ 270 s), and 0 when the
  variance is ≤ 1e-12 × mean(x²) (a flat history has no scale).
  Why not raw volume: trade sizes are power-law distributed (tail exponent ~1.5 in real markets, 1.6
  in the simulator), so one block print makes a 1-s bucket "extreme" on raw mean/std many times a
  minute per ticker, and a few such prints inflate the std so that a real sustained surge scores
  low. With `zscore_size_cap=0` and `zscore_log_volume=false` z is the raw-volume z-score.
* `price_momentum`: (price − ref) / ref × 100, ref = price of the last trade with ts ≤ t − 60 s, looked
  up no further back than `momentum_lookback_ms` (300 s); 0 when there is no such trade.
* `vwap_deviation_bps`: (price − vwap_5min) / vwap_5min × 10,000.
* `bid_ask_spread`: ask − bid of the latest quote (by (ts, arrival)) with ts ≤ t among the quotes
  received up to and including the current batch (quotes of a batch are applied before its trades);
  undefined (NaN in arrays, None in dicts) when there is none or it has a zero side. This is the one
  feature that depends on how the quote and trade topics interleave, not only on event time.
* `late_events`: late trades of the ticker that arrived since its previous accepted trade (attached to
  the next accepted trade); for a snapshot, the sum over the trades of that second, so that summed over
  snapshots every late trade is counted once.
* Snapshots: for every second with trades, the vector as of the last trade (by key) of that second,
  computed once the ticker watermark passes the end of the second + grace. From then on no trade of
  that second can be accepted, so the snapshot is final: it is a function of the accepted trades alone.

Vectorisation: accepted trades live in per-ticker regions of one set of arrays, sorted by a
composite (ticker code, ts) key, with persistent per-ticker prefix sums (`_TradeState`). A batch
rewrites only each ticker's suffix from its earliest trade (bounded by the grace) and the z-score
buckets from that trade's bucket on; windowed sums are differences of prefix sums at `searchsorted`
positions, so the cost per batch follows the batch, not the 5-minute state. Trades that arrive after a
later-keyed trade of the same batch (within-grace disorder) are corrected for by subtracting their
contributions from the earlier arrivals' sums (cost proportional to the number of such pairs; zero for
in-order feeds). State is bounded: per ticker only trades with ts > watermark − grace − horizon
(300 s + one bucket) can be reached; older rows are dropped, and the prefix sums re-based, when a
ticker's region fills (amortised), and only the quotes a future trade can still use are kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tradepulse.core.columns import QuoteColumns, TradeColumns
from tradepulse.errors import InvalidArgument

if TYPE_CHECKING:
    from tradepulse.config import Settings

NO_TS = np.int64(-(2**62))  # "no watermark yet"; far below any real ts, and safe to subtract from
_PAIR_CHUNK = 2_000_000  # disorder-correction pairs materialised at once

FEATURE_COLUMNS = (
    "vwap_1min",
    "vwap_5min",
    "rolling_avg_5min",
    "volume",
    "volume_zscore",
    "price_momentum",
    "trade_frequency",
    "vwap_deviation_bps",
    "bid_ask_spread",
)


@dataclass(frozen=True)
class FeatureConfig:
    """Windows and tolerances of the feature core (all in ms unless named otherwise)."""

    late_grace_ms: int = 2000
    zscore_bucket_ms: int = 1000
    zscore_window_buckets: int = 300
    vwap_short_ms: int = 60_000
    vwap_long_ms: int = 300_000
    momentum_ms: int = 60_000
    frequency_ms: int = 60_000
    zscore_min_history_buckets: int = 30
    zscore_size_cap: float = 10.0
    zscore_cap_window_buckets: int = 60
    zscore_log_volume: bool = True
    momentum_lookback_ms: int = 300_000
    snapshot_ms: int = 1000

    def __post_init__(self) -> None:
        windows = (self.vwap_short_ms, self.vwap_long_ms, self.momentum_ms, self.frequency_ms)
        if self.late_grace_ms < 0 or self.zscore_bucket_ms <= 0 or self.snapshot_ms <= 0:
            raise InvalidArgument("grace must be >= 0 and bucket sizes > 0")
        # A trade folded in within the grace must lie inside every window of the trades it arrives
        # after; that is what makes the disorder correction a plain subtraction.
        if min(windows) <= self.late_grace_ms:
            raise InvalidArgument("every window must be longer than the late grace")
        if self.momentum_lookback_ms < self.momentum_ms:
            raise InvalidArgument("momentum_lookback_ms must be >= momentum_ms")
        if not (
            self.zscore_size_cap >= 0 and 0 < self.zscore_cap_window_buckets <= self.zscore_window_buckets
        ):
            raise InvalidArgument(
                "need zscore_size_cap >= 0 and 0 < zscore_cap_window_buckets <= window buckets"
            )
        grace_buckets = -(-self.late_grace_ms // self.zscore_bucket_ms) + 1
        if not grace_buckets < self.zscore_min_history_buckets <= self.zscore_window_buckets:
            raise InvalidArgument(
                "need ceil(grace/bucket) + 1 < zscore_min_history_buckets <= window buckets"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> FeatureConfig:
        """Config from `tradepulse.config.Settings` (imported for type checking only: the core loads no
        pydantic at run time)."""
        return cls(
            late_grace_ms=settings.late_grace_ms,
            zscore_bucket_ms=settings.zscore_bucket_ms,
            zscore_window_buckets=settings.zscore_window_buckets,
            zscore_size_cap=settings.zscore_size_cap,
            zscore_log_volume=settings.zscore_log_volume,
        )

    @property
    def horizon_ms(self) -> int:
        """How far behind (watermark − grace) a future trade's windows can reach."""
        return max(
            self.vwap_short_ms,
            self.vwap_long_ms,
            self.frequency_ms,
            self.momentum_lookback_ms,
            (self.zscore_window_buckets + 1) * self.zscore_bucket_ms,
            self.snapshot_ms,
        )

    @property
    def rebuild_ms(self) -> int:
        """Event time of input a fresh engine must replay to reproduce a running one exactly: the
        windows, plus the cap window of the oldest z-score history bucket's trades, plus the grace."""
        return self.horizon_ms + self.zscore_cap_window_buckets * self.zscore_bucket_ms + self.late_grace_ms


@dataclass
class FeatureOutput:
    """Result of one batch. Arrays may hold NaN (spread only); dicts hold finite floats or None."""

    per_trade: dict[str, np.ndarray]
    snapshots: list[dict] = field(default_factory=list)
    latest: dict[str, dict] = field(default_factory=dict)
    late_event_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    zscores: dict[str, np.ndarray] = field(default_factory=dict)
    rejected_event_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    """Trades with a non-finite or non-positive price or size: never folded in (dead-letter them)."""

    def vectors(self) -> list[dict]:
        """Every per-trade row as a FeatureVector dict (processing order)."""
        return [vector_dict(self.per_trade, i) for i in range(len(self.per_trade["ts_ms"]))]


_PER_TRADE_KEYS = (
    "ticker",
    "ts_ms",
    "event_id",
    "price",
    "size",
    *FEATURE_COLUMNS,
    "late_events",
    "window_start_ms",
    "window_end_ms",
)


def _empty_per_trade() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key in _PER_TRADE_KEYS:
        if key in ("ticker", "event_id"):
            out[key] = np.empty(0, dtype=object)
        elif key in ("ts_ms", "trade_frequency", "late_events", "window_start_ms", "window_end_ms"):
            out[key] = np.empty(0, dtype=np.int64)
        else:
            out[key] = np.empty(0, dtype=np.float64)
    return out


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def vector_dict(cols: dict[str, np.ndarray], i: int) -> dict:
    """Row `i` of per-trade (or snapshot) columns as a `tradepulse.models.FeatureVector` dict."""

    def num(key: str) -> float:
        value = float(cols[key][i])
        return value if math.isfinite(value) else 0.0

    return {
        "ticker": str(cols["ticker"][i]),
        "ts_ms": int(cols["ts_ms"][i]),
        "price": num("price"),
        "volume": num("volume"),
        "vwap_1min": num("vwap_1min"),
        "vwap_5min": num("vwap_5min"),
        "rolling_avg_5min": num("rolling_avg_5min"),
        "volume_zscore": num("volume_zscore"),
        "price_momentum": num("price_momentum"),
        "trade_frequency": int(cols["trade_frequency"][i]),
        "vwap_deviation_bps": num("vwap_deviation_bps"),
        "bid_ask_spread": _finite_or_none(cols["bid_ask_spread"][i]),
        "window_start_ms": int(cols["window_start_ms"][i]),
        "window_end_ms": int(cols["window_end_ms"][i]),
        "late_events": int(cols["late_events"][i]),
    }


def _group_starts(*keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal consecutive values of (keys...)."""
    n = len(keys[0])
    if n == 0:
        return np.empty(0, dtype=np.int64)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


def _composite_span(ncodes: int, span: int) -> None:
    if ncodes * span >= 2**62:
        raise InvalidArgument("timestamp range of the batch is too wide for the composite key")


_K = np.int64(2**43)  # composite key: code * _K + clipped ts (or bucket id)
_KOFF = 2**42
_MIN_CAP = 64
_ACC = np.longdouble  # prefix-sum accumulator (80-bit extended on x86-64)


def _kts(values: np.ndarray | int) -> np.ndarray:
    """A ts (or bucket id) as the low part of a composite key; _K − 1 is the gap sentinel."""
    return np.clip(np.asarray(values, dtype=np.int64) + _KOFF, 0, int(_K) - 2)


def _ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated indices of [lo_i, hi_i) and the i of each."""
    n = np.maximum(hi - lo, 0)
    grp = np.repeat(np.arange(len(lo)), n)
    offs = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    return lo[grp] + offs, grp


def _seg_cumsum(values: np.ndarray, starts: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Inclusive prefix sums that restart at each group start from that group's `base`. The restart
    keeps the rounding relative to the group's own (batch-sized) sums, not to other groups'. The
    sums are extended precision: they run over up to ~2 windows of rows, and window sums are their
    differences (float64 would lose ~1e-9 of a VWAP deviation over a busy 5-minute window)."""
    x = values.astype(_ACC)
    if len(x) == 0:
        return x
    if len(starts) > 1:
        totals = np.add.reduceat(x, starts)
        x[starts[1:]] -= totals[:-1]
    through = np.cumsum(x)
    return through + np.repeat(base.astype(_ACC), np.diff(np.r_[starts, len(x)]))


class _TradeState:
    """Accepted trades per code in a gapped layout, with persistent prefix sums.

    Code c owns slots [reg0[c], reg0[c] + cap[c]) of every row array (regions in code order, so the
    composite key code·_K + ts is sorted globally); its rows occupy [.., tail[c]), sorted by (ts,
    arrival), and the rest of the region holds the gap sentinel key. Rows below the eviction cutoff
    stay until the region fills (they can never fall inside a future window), then everything is
    re-laid out: dead rows dropped, prefix sums re-based at zero and prices re-centred, so the sums
    never span more than ~2 regions' worth of rows. A batch only rewrites each code's suffix from
    its earliest trade (bounded by the late grace) and the buckets from that trade's bucket on.
    The z-score bucket table (one slot per (code, bucket) with a trade) shares the region layout:
    a bucket always has a row, so it never needs more slots than the rows.
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.bucket_ms = config.zscore_bucket_ms
        self.cap_multiple = config.zscore_size_cap
        self.cap_window_ms = config.zscore_cap_window_buckets * config.zscore_bucket_ms
        self.log_volume = config.zscore_log_volume
        self.reg0 = np.empty(0, dtype=np.int64)
        self.cap = np.empty(0, dtype=np.int64)
        self.tail = np.empty(0, dtype=np.int64)
        self.btail = np.empty(0, dtype=np.int64)
        self.centre = np.empty(0, dtype=np.float64)  # per code: prices are summed as price − centre
        self._alloc(0, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))

    def _alloc(self, n: int, codes: np.ndarray, caps: np.ndarray) -> None:
        owner = np.repeat(codes, caps)
        self.code = owner.copy()
        self.key = owner * _K + (_K - 1)
        self.ts = np.full(n, np.iinfo(np.int64).max // 2, dtype=np.int64)
        self.price = np.zeros(n)
        self.size = np.zeros(n)
        self.late = np.zeros(n, dtype=np.int64)
        self.v_ps = np.zeros(n)  # (price − centre) · size
        self.v_p = np.zeros(n)  # price − centre
        self.t_ps = np.zeros(n, dtype=_ACC)  # inclusive prefix sums of the three, per code
        self.t_size = np.zeros(n, dtype=_ACC)
        self.t_p = np.zeros(n, dtype=_ACC)
        self.csize = np.zeros(n)  # capped size (see the volume_zscore definition), fixed at acceptance
        self.t_csize = np.zeros(n, dtype=_ACC)
        self.b_key = owner * _K + (_K - 1)
        self.b_id = np.zeros(n, dtype=np.int64)
        self.b_cap = np.zeros(n)  # Σ capped size of the bucket
        self.b_val = np.zeros(n)  # its z-score value x = bucket_value(b_cap)
        self.b_t1 = np.zeros(n, dtype=_ACC)  # inclusive prefix sums of bucket values and squares
        self.b_t2 = np.zeros(n, dtype=_ACC)

    def bucket_value(self, capped_volume: np.ndarray) -> np.ndarray:
        """A bucket's z-score value from its capped volume (log(1 + v), or v itself)."""
        v = np.maximum(capped_volume, 0.0)  # a difference of sums may round to a hair below 0
        return np.log1p(v) if self.log_volume else v

    # --- lookups ------------------------------------------------------------------------------
    def first_after(self, code: np.ndarray, t: np.ndarray) -> np.ndarray:
        """First row of `code` with ts > t (its tail if none)."""
        return np.searchsorted(self.key, code * _K + _kts(t), side="right")

    def first_at(self, code: np.ndarray, t: np.ndarray) -> np.ndarray:
        """First row of `code` with ts >= t."""
        return np.searchsorted(self.key, code * _K + _kts(t), side="left")

    def bucket_slot(self, code: np.ndarray, bucket: np.ndarray) -> np.ndarray:
        """First bucket slot of `code` with id >= bucket."""
        return np.searchsorted(self.b_key, code * _K + _kts(bucket), side="left")

    def bucket_of(self, rows: np.ndarray) -> np.ndarray:
        return self.bucket_slot(self.code[rows], self.ts[rows] // self.bucket_ms)

    def live_rows(self, cutoff: np.ndarray) -> int:
        """Rows with ts > cutoff[code]."""
        codes = np.arange(len(self.tail))
        return int((self.tail - np.minimum(self.first_after(codes, cutoff[codes]), self.tail)).sum())

    # --- updates ------------------------------------------------------------------------------
    def reserve(self, ncodes: int, codes: np.ndarray, need: np.ndarray, cutoff: np.ndarray) -> None:
        """Room for `need` more rows of each of `codes`; re-lays out (dropping rows with
        ts <= cutoff[code]) when a region is full or codes are new."""
        if ncodes == len(self.tail) and (self.tail[codes] + need <= self.reg0[codes] + self.cap[codes]).all():
            return
        if ncodes >= 2**62 // int(_K):
            raise InvalidArgument("too many tickers for the composite key")
        old = len(self.tail)
        grow = ncodes - old
        end = np.int64(len(self.key))
        tail = np.r_[self.tail, np.full(grow, end)]
        btail = np.r_[self.btail, np.full(grow, end)]
        self.centre = np.r_[self.centre, np.zeros(grow)]
        all_codes = np.arange(ncodes, dtype=np.int64)
        first = np.minimum(self.first_after(all_codes, cutoff), tail)
        first[old:] = end
        live = tail - first
        has = live > 0
        bfirst = btail.copy()
        bfirst[has] = self.bucket_slot(all_codes[has], self.ts[first[has]] // self.bucket_ms)
        want = np.zeros(ncodes, dtype=np.int64)
        want[codes] = need
        cap = np.maximum(_MIN_CAP, 2 * (live + want))
        new0 = np.r_[0, np.cumsum(cap)[:-1]].astype(np.int64)
        src, grp = _ranges(first, tail)
        bsrc, bgrp = _ranges(bfirst, btail)
        keep = (
            self.key[src], self.ts[src], self.price[src], self.size[src], self.late[src], self.csize[src],
            self.b_key[bsrc], self.b_id[bsrc], self.b_cap[bsrc], self.b_val[bsrc],
        )  # fmt: skip
        self.centre[has] = self.price[first[has]]
        self._alloc(int(cap.sum()), all_codes, cap)
        dst = new0[grp] + (src - first[grp])
        bdst = new0[bgrp] + (bsrc - bfirst[bgrp])
        row_arrays = (self.key, self.ts, self.price, self.size, self.late, self.csize)
        for array, values in zip(row_arrays, keep[:6], strict=True):
            array[dst] = values
        for array, values in zip((self.b_key, self.b_id, self.b_cap, self.b_val), keep[6:], strict=True):
            array[bdst] = values
        self.reg0, self.cap = new0, cap
        self.tail = new0 + live
        self.btail = new0 + (btail - bfirst)
        self._resum(dst, grp)
        self._resum_buckets(bdst, bgrp)

    def _resum(self, rows: np.ndarray, grp: np.ndarray, capped: bool = True) -> None:
        """Recompute the prefix sums at `rows` (ascending runs, one per `grp`, each continuing from the
        row just before it when that row is in the same region)."""
        if len(rows) == 0:
            return
        centred = self.price[rows] - self.centre[self.code[rows]]
        self.v_p[rows] = centred
        self.v_ps[rows] = centred * self.size[rows]
        pairs = ((self.v_ps, self.t_ps), (self.size, self.t_size), (self.v_p, self.t_p))
        self._prefix(rows, grp, pairs + (((self.csize, self.t_csize),) if capped else ()))

    def _prefix(
        self, rows: np.ndarray, grp: np.ndarray, pairs: tuple[tuple[np.ndarray, np.ndarray], ...]
    ) -> None:
        starts = _group_starts(grp)
        prev = rows[starts] - 1
        cont = prev >= self.reg0[self.code[rows[starts]]]
        for values, through in pairs:
            base = np.where(cont, through[np.maximum(prev, 0)], _ACC(0))
            through[rows] = _seg_cumsum(values[rows], starts, base)

    def _resum_buckets(self, slots: np.ndarray, grp: np.ndarray) -> None:
        if len(slots) == 0:
            return
        starts = _group_starts(grp)
        prev = slots[starts] - 1
        cont = prev >= self.reg0[self.code[slots[starts]]]
        val = self.b_val[slots]
        for values, through in ((val, self.b_t1), (val * val, self.b_t2)):
            base = np.where(cont, through[np.maximum(prev, 0)], _ACC(0))
            through[slots] = _seg_cumsum(values, starts, base)

    def merge(
        self,
        code: np.ndarray,
        ts: np.ndarray,
        price: np.ndarray,
        size: np.ndarray,
        late: np.ndarray,
        closed_end: np.ndarray,
    ) -> np.ndarray:
        """Insert trades sorted by (code, ts, arrival) (room reserved); returns their rows.
        `closed_end[i]`: end of the last z-score bucket closed when trade i was accepted (its cap)."""
        ustart = _group_starts(code)
        ucode, ucount = code[ustart], np.diff(np.r_[ustart, len(code)])
        ins = self.first_after(ucode, ts[ustart])  # equal ts: earlier arrivals (the state) first
        tail = self.tail[ucode]
        fresh = tail == self.reg0[ucode]
        self.centre[ucode[fresh]] = price[ustart[fresh]]
        sidx, _ = _ranges(ins, tail)
        ns = len(sidx)
        ckey = np.r_[self.key[sidx], code * _K + _kts(ts)]
        order = np.argsort(ckey, kind="stable")  # state suffix before the batch on equal keys
        total = (tail - ins) + ucount
        grp = np.repeat(np.arange(len(ucode)), total)
        dest = ins[grp] + np.arange(len(grp)) - np.repeat(np.cumsum(total) - total, total)
        self.key[dest] = ckey[order]
        self.code[dest] = ucode[grp]
        self.ts[dest] = np.r_[self.ts[sidx], ts][order]
        self.price[dest] = np.r_[self.price[sidx], price][order]
        self.size[dest] = np.r_[self.size[sidx], size][order]
        self.late[dest] = np.r_[self.late[sidx], late][order]
        self.csize[dest] = np.r_[self.csize[sidx], size][order]  # the batch's caps follow
        self.tail[ucode] = tail + ucount
        # With a cap, the batch's capped sizes need the size sums first; their own sums follow below.
        self._resum(dest, grp, capped=self.cap_multiple <= 0)
        rows = np.empty(len(code), dtype=np.int64)
        is_batch = order >= ns
        rows[order[is_batch] - ns] = dest[is_batch]
        if self.cap_multiple > 0:
            # Cap = multiple × mean size over the closed buckets of the cap window. Every row there was
            # accepted before the trade (a later arrival in a closed bucket is late), so the state's
            # plain prefix sums are exact.
            own = ts // self.bucket_ms * self.bucket_ms
            lo = self.first_at(code, own - self.cap_window_ms)
            hi = np.maximum(self.first_at(code, np.minimum(closed_end, own)), lo)
            n = hi - lo
            has = n > 0
            lo_h, hi_h = lo[has], hi[has]
            total = (self.t_size[hi_h - 1] - (self.t_size[lo_h] - self.size[lo_h])).astype(np.float64)
            capped = size.copy()
            capped[has] = np.minimum(size[has], self.cap_multiple * total / n[has])
            self.csize[rows] = capped
            self._prefix(dest, grp, ((self.csize, self.t_csize),))

        # Buckets from the batch's earliest bucket of each code on, recomputed from the rows.
        bucket_ms = self.bucket_ms
        minb = ts[ustart] // bucket_ms
        ridx, rgrp = _ranges(self.first_at(ucode, minb * bucket_ms), self.tail[ucode])
        rb = self.ts[ridx] // bucket_ms
        bstart = _group_starts(rgrp, rb)
        bgrp = rgrp[bstart]
        nb = np.bincount(bgrp, minlength=len(ucode))
        slot0 = self.bucket_slot(ucode, minb)
        slots = slot0[bgrp] + np.arange(len(bgrp)) - np.repeat(np.cumsum(nb) - nb, nb)
        self.b_id[slots] = rb[bstart]
        self.b_key[slots] = ucode[bgrp] * _K + _kts(rb[bstart])
        self.b_cap[slots] = np.add.reduceat(self.csize[ridx], bstart) if len(ridx) else 0.0
        self.b_val[slots] = self.bucket_value(self.b_cap[slots])
        self.btail[ucode] = slot0 + nb
        self._resum_buckets(slots, bgrp)
        return rows


class FeatureEngine:
    """Stateful per-ticker feature computation over micro-batches (see the module docstring)."""

    def __init__(self, config: FeatureConfig = FeatureConfig()) -> None:
        self.config = config
        self._codes: dict[str, int] = {}
        self._names: list[str] = []
        self._wm = np.empty(0, dtype=np.int64)  # trade watermark per code
        self._qwm = np.empty(0, dtype=np.int64)  # quote watermark per code
        self._pending_late = np.empty(0, dtype=np.int64)  # late trades waiting for the next accepted one
        self.late_total = np.empty(0, dtype=np.int64)  # late trades per code, since start
        self._trades = _TradeState(config)  # accepted trades, per-code prefix sums
        # Quotes, sorted by (code, ts, arrival).
        self._q_code = np.empty(0, dtype=np.int64)
        self._q_ts = np.empty(0, dtype=np.int64)
        self._q_spread = np.empty(0, dtype=np.float64)

    # --- bookkeeping ----------------------------------------------------------------------------
    @property
    def state_rows(self) -> int:
        """Trades plus quotes in the window state (bounded by the horizon; trades below the cutoff
        that wait for their region's next compaction are not counted, see `state_capacity`)."""
        cutoff = self._wm - self.config.late_grace_ms - self.config.horizon_ms
        return self._trades.live_rows(cutoff) + len(self._q_ts)

    @property
    def state_capacity(self) -> int:
        """Slots allocated for trades (live, awaiting compaction, and free) plus quotes held."""
        return len(self._trades.key) + len(self._q_ts)

    def watermark(self, ticker: str) -> int | None:
        """Highest accepted exchange ts of `ticker`, or None before its first trade."""
        code = self._codes.get(ticker)
        if code is None or self._wm[code] == NO_TS:
            return None
        return int(self._wm[code])

    def _codes_for(self, tickers: np.ndarray) -> np.ndarray:
        local, uniques = pd.factorize(tickers)
        mapping = np.empty(len(uniques), dtype=np.int64)
        for j, name in enumerate(uniques):
            code = self._codes.get(name)
            if code is None:
                code = len(self._names)
                self._codes[name] = code
                self._names.append(str(name))
            mapping[j] = code
        grow = len(self._names) - len(self._wm)
        if grow > 0:
            self._wm = np.r_[self._wm, np.full(grow, NO_TS)]
            self._qwm = np.r_[self._qwm, np.full(grow, NO_TS)]
            self._pending_late = np.r_[self._pending_late, np.zeros(grow, dtype=np.int64)]
            self.late_total = np.r_[self.late_total, np.zeros(grow, dtype=np.int64)]
        return mapping[local]

    # --- quotes ---------------------------------------------------------------------------------
    def _ingest_quotes(self, quotes: QuoteColumns) -> None:
        if len(quotes) == 0:
            return
        codes = self._codes_for(quotes.ticker)
        ts = quotes.ts_ms.astype(np.int64)
        bid, ask = quotes.bid_price, quotes.ask_price
        ok = np.isfinite(bid) & np.isfinite(ask) & (bid > 0) & (ask > 0)
        spread = np.where(ok, ask - bid, np.nan)
        np.maximum.at(self._qwm, codes, ts)
        base = min(ts.min(), self._q_ts.min() if len(self._q_ts) else ts.min()) - 1
        span = max(ts.max(), self._q_ts.max() if len(self._q_ts) else ts.max()) - base + 1
        _composite_span(len(self._names), int(span))
        state_key = self._q_code * span + (self._q_ts - base)
        batch_key = codes * span + (ts - base)
        order = np.argsort(batch_key, kind="stable")
        at = np.searchsorted(state_key, batch_key[order], side="right")
        self._q_code = np.insert(self._q_code, at, codes[order])
        self._q_ts = np.insert(self._q_ts, at, ts[order])
        self._q_spread = np.insert(self._q_spread, at, spread[order])

    def _spread_at(self, codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
        out = np.full(len(ts), np.nan)
        if len(self._q_ts) == 0 or len(ts) == 0:
            return out
        base = min(ts.min(), self._q_ts.min()) - 1
        span = max(ts.max(), self._q_ts.max()) - base + 1
        state_key = self._q_code * span + (self._q_ts - base)
        idx = np.searchsorted(state_key, codes * span + (ts - base), side="right") - 1
        found = idx >= 0
        idx_ok = np.where(found, idx, 0)
        found &= self._q_code[idx_ok] == codes
        out[found] = self._q_spread[idx_ok[found]]
        return out

    def _trim_quotes(self) -> None:
        if len(self._q_ts) == 0:
            return
        cfg = self.config
        # Future trades have ts >= wm − grace, and snapshots still to close start at the second
        # containing it: keep the quotes those can see.
        open_from = (self._wm - cfg.late_grace_ms) // cfg.snapshot_ms * cfg.snapshot_ms
        cutoff = np.where(self._wm > NO_TS, open_from, self._qwm - cfg.horizon_ms)
        row_cut = cutoff[self._q_code]
        keep = self._q_ts > row_cut
        # ...plus the last quote at or before the cutoff of each code.
        older = np.flatnonzero(~keep)
        if len(older):
            last_of_code = np.r_[self._q_code[older][1:] != self._q_code[older][:-1], True]
            keep[older[last_of_code]] = True
        if not keep.all():
            self._q_code = self._q_code[keep]
            self._q_ts = self._q_ts[keep]
            self._q_spread = self._q_spread[keep]

    # --- trades ---------------------------------------------------------------------------------
    def process(self, trades: TradeColumns, quotes: QuoteColumns) -> FeatureOutput:
        """Fold a batch in (quotes first, then trades in arrival order) and return its outputs."""
        self._ingest_quotes(quotes)
        valid = np.isfinite(trades.price) & (trades.price > 0) & np.isfinite(trades.size) & (trades.size > 0)
        rejected = trades.event_id[~valid]
        if not valid.all():
            trades = trades.take(valid)
        n = len(trades)
        if n == 0:
            self._trim_quotes()
            return FeatureOutput(
                per_trade=_empty_per_trade(),
                zscores=_zscores(_empty_per_trade()),
                rejected_event_ids=rejected,
            )
        cfg = self.config
        codes = self._codes_for(trades.ticker)
        ts = trades.ts_ms.astype(np.int64)

        # 1. Lateness, per code in arrival order: watermark before each trade vs its ts.
        by_code = np.argsort(codes, kind="stable")
        c_s, t_s = codes[by_code], ts[by_code]
        gstart = _group_starts(c_s)
        gsize = np.diff(np.r_[gstart, n])
        gcode = c_s[gstart]
        gidx = np.repeat(np.arange(len(gstart)), gsize)
        lo = int(t_s.min()) - 1
        span = int(t_s.max()) - lo + 1
        _composite_span(len(gstart), span)
        running = np.maximum.accumulate(gidx * span + (t_s - lo))  # groups never leak: offsets grow
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = running[:-1] - gidx[1:] * span + lo
        prev[gstart] = NO_TS
        wm_before_trade = np.maximum(prev, self._wm[c_s])
        late_s = t_s < wm_before_trade - cfg.late_grace_ms
        wm_before = self._wm.copy()
        np.maximum.at(self._wm, c_s[~late_s], t_s[~late_s])

        # 2. Late trades attach to the next accepted trade of their code (arrival order).
        cum_late = np.cumsum(late_s)
        acc_s = np.flatnonzero(~late_s)  # code-sorted arrival-order positions of accepted trades
        late_per_group = np.add.reduceat(late_s.astype(np.int64), gstart)
        np.add.at(self.late_total, gcode, late_per_group)
        attached = np.zeros(len(acc_s), dtype=np.int64)
        if len(acc_s):
            acc_g = gidx[acc_s]
            first = np.r_[True, acc_g[1:] != acc_g[:-1]]
            before = np.empty(len(acc_s), dtype=np.int64)
            before[1:] = cum_late[acc_s[:-1]]
            group_base = np.where(gstart > 0, cum_late[gstart - 1], 0)
            before[first] = group_base[acc_g[first]] - self._pending_late[gcode[acc_g[first]]]
            attached = cum_late[acc_s] - before
            # Pending after the batch: lates after the group's last accepted trade.
            last = np.r_[acc_g[1:] != acc_g[:-1], True]
            group_end = gstart + gsize - 1
            self._pending_late[gcode[acc_g[last]]] = cum_late[group_end[acc_g[last]]] - cum_late[acc_s[last]]
        no_accept = np.setdiff1d(np.arange(len(gstart)), gidx[acc_s], assume_unique=False)
        self._pending_late[gcode[no_accept]] += late_per_group[no_accept]
        late_ids = trades.event_id[np.sort(by_code[late_s])]  # arrival order

        if len(acc_s) == 0:
            self._trim_quotes()
            return FeatureOutput(
                per_trade=_empty_per_trade(),
                late_event_ids=late_ids,
                zscores=_zscores(_empty_per_trade()),
                rejected_event_ids=rejected,
            )

        # 3. Merge accepted trades into the state, key order (code, ts, arrival).
        arrival = by_code[acc_s]  # batch index of each accepted trade, code-grouped arrival order
        a_code, a_ts = c_s[acc_s], t_s[acc_s]
        a_price, a_size = trades.price[arrival], trades.size[arrival]
        wm_at = np.maximum(wm_before_trade[acc_s], a_ts)  # the watermark once each trade is accepted
        bucket_ms = cfg.zscore_bucket_ms
        closed_end = (wm_at - cfg.late_grace_ms) // bucket_ms * bucket_ms
        key_order = np.argsort(a_code * _K + _kts(a_ts), kind="stable")  # equal ts keep arrival order
        k_code = a_code[key_order]
        ustart = _group_starts(k_code)
        state = self._trades
        # Rows with ts <= wm − grace − horizon are out of reach of this batch and every later one.
        state.reserve(
            len(self._names),
            k_code[ustart],
            np.diff(np.r_[ustart, len(k_code)]),
            wm_before - cfg.late_grace_ms - cfg.horizon_ms,
        )
        pos = np.empty(len(acc_s), dtype=np.int64)  # state row of each accepted trade
        pos[key_order] = state.merge(
            k_code,
            a_ts[key_order],
            a_price[key_order],
            a_size[key_order],
            attached[key_order],
            closed_end[key_order],
        )

        # 4. Per-trade vectors (arrival view, corrected for within-batch disorder).
        corr = _disorder_corrections(pos, gidx[acc_s], state)
        feats = _features(cfg, state, pos, a_code, a_ts, a_price, corr)
        feats["bid_ask_spread"] = self._spread_at(a_code, a_ts)

        # 5. Snapshots of the seconds that close in this batch (final view, no correction).
        snap_rows, snap_late = _closing_snapshots(cfg, state, k_code[ustart], wm_before, self._wm)
        snap_cols: dict[str, np.ndarray] = {}
        if len(snap_rows):
            s_code, s_ts = state.code[snap_rows], state.ts[snap_rows]
            snap_cols = _features(cfg, state, snap_rows, s_code, s_ts, state.price[snap_rows], None)
            snap_cols["bid_ask_spread"] = self._spread_at(s_code, s_ts)
            snap_cols["ticker"] = np.asarray(self._names, dtype=object)[s_code]
            snap_cols["ts_ms"] = s_ts
            snap_cols["price"] = state.price[snap_rows]
            snap_cols["late_events"] = snap_late
            snap_cols["window_start_ms"] = s_ts - cfg.vwap_long_ms
            snap_cols["window_end_ms"] = s_ts
        snapshots = [vector_dict(snap_cols, i) for i in range(len(snap_rows))]
        snapshots.sort(key=lambda v: (v["ts_ms"], v["ticker"]))

        # 6. Output in processing (arrival) order.
        out_order = np.argsort(arrival, kind="stable")
        names = np.asarray(self._names, dtype=object)
        per_trade: dict[str, np.ndarray] = {
            "ticker": names[a_code][out_order],
            "ts_ms": a_ts[out_order],
            "event_id": trades.event_id[arrival][out_order],
            "price": a_price[out_order],
            "size": a_size[out_order],
        }
        for key in FEATURE_COLUMNS:
            per_trade[key] = feats[key][out_order]
        per_trade["late_events"] = attached[out_order]
        per_trade["window_start_ms"] = per_trade["ts_ms"] - cfg.vwap_long_ms
        per_trade["window_end_ms"] = per_trade["ts_ms"].copy()

        # Latest: per ticker, the batch's accepted trade with the highest key.
        last_in_code = key_order[np.r_[a_code[key_order][1:] != a_code[key_order][:-1], True]]
        row_of = np.empty(len(arrival), dtype=np.int64)
        row_of[out_order] = np.arange(len(arrival))
        latest = {str(names[a_code[k]]): vector_dict(per_trade, int(row_of[k])) for k in last_in_code}

        self._trim_quotes()

        return FeatureOutput(
            per_trade=per_trade,
            snapshots=snapshots,
            latest=latest,
            late_event_ids=late_ids,
            zscores=_zscores(per_trade),
            rejected_event_ids=rejected,
        )


def _zscores(per_trade: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "ticker": per_trade["ticker"],
        "ts_ms": per_trade["ts_ms"],
        "volume_zscore": per_trade["volume_zscore"],
    }


@dataclass
class _Corrections:
    """Contributions to subtract from each accepted trade's sums (trades that arrived after it)."""

    ps: np.ndarray
    size: np.ndarray
    price: np.ndarray
    count: np.ndarray
    bucket_volume: np.ndarray  # in the trade's own z-score bucket
    bucket_capped: np.ndarray  # capped size in the trade's own z-score bucket
    hist_s1: np.ndarray  # change of Σx over the history buckets
    hist_s2: np.ndarray  # change of Σx² over the history buckets


def _features(
    cfg: FeatureConfig,
    st: _TradeState,
    rows: np.ndarray,
    code: np.ndarray,
    ts: np.ndarray,
    price: np.ndarray,
    corr: _Corrections | None,
) -> dict[str, np.ndarray]:
    """Feature columns of the vectors ending at state `rows` (minus the corrections, if any)."""
    end = rows + 1
    zero = np.zeros(len(rows))
    c = corr or _Corrections(zero, zero, zero, zero.astype(np.int64), zero, zero, zero, zero)

    def window(ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        start = st.first_after(code, ts - ms)  # <= rows: a window holds its own trade
        return (
            (st.t_ps[rows] - (st.t_ps[start] - st.v_ps[start])).astype(np.float64) - c.ps,
            (st.t_size[rows] - (st.t_size[start] - st.size[start])).astype(np.float64) - c.size,
            (st.t_p[rows] - (st.t_p[start] - st.v_p[start])).astype(np.float64) - c.price,
            end - start - c.count,
        )

    ps1, s1, _, _ = window(cfg.vwap_short_ms)
    ps5, s5, p5, n5 = window(cfg.vwap_long_ms)
    nfreq = window(cfg.frequency_ms)[3]
    centre = st.centre[code]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel1 = np.where(s1 > 0, ps1 / s1, price - centre)  # vwap − centre
        rel5 = np.where(s5 > 0, ps5 / s5, price - centre)
        vwap1, vwap5 = centre + rel1, centre + rel5
        avg5 = centre + np.where(n5 > 0, p5 / np.maximum(n5, 1), price - centre)
        dev = ((price - centre) - rel5) / vwap5 * 1e4

    # Momentum: last row with ts <= t − M (all such rows arrived before the trade: see docstring).
    ref = st.first_after(code, ts - cfg.momentum_ms) - 1
    ref_ok = ref >= 0
    ref_c = np.where(ref_ok, ref, 0)
    ref_ok &= (st.code[ref_c] == code) & (st.ts[ref_c] > ts - cfg.momentum_lookback_ms)
    ref_price = np.where(ref_ok, st.price[ref_c], price)
    momentum = np.where(ref_ok, (price - ref_price) / ref_price * 100.0, 0.0)

    # Volume z-score.
    b_now = ts // cfg.zscore_bucket_ms
    b_row = st.first_at(code, b_now * cfg.zscore_bucket_ms)  # first row of the trade's bucket
    volume = (st.t_size[rows] - (st.t_size[b_row] - st.size[b_row])).astype(np.float64) - c.bucket_volume
    capped = (st.t_csize[rows] - (st.t_csize[b_row] - st.csize[b_row])).astype(np.float64) - c.bucket_capped
    x_now = st.bucket_value(capped)
    bidx = st.bucket_slot(code, b_now)
    h_lo = st.bucket_slot(code, b_now - cfg.zscore_window_buckets)
    has_hist = h_lo < bidx
    first = st.b_id[np.where(has_hist, h_lo, bidx)]
    n_hist = np.where(has_hist, b_now - first, 0)
    h_last = np.maximum(bidx - 1, 0)
    x_lo = st.b_val[h_lo]
    s1h = (st.b_t1[h_last] - (st.b_t1[h_lo] - x_lo)).astype(np.float64)
    s2h = (st.b_t2[h_last] - (st.b_t2[h_lo] - x_lo * x_lo)).astype(np.float64)
    s1h = np.where(has_hist, s1h, 0.0) - c.hist_s1
    s2h = np.where(has_hist, s2h, 0.0) - c.hist_s2
    with np.errstate(divide="ignore", invalid="ignore"):
        nf = np.maximum(n_hist, 1)
        mean = s1h / nf
        mean_sq = s2h / nf
        var = mean_sq - mean * mean
        ok = (n_hist >= cfg.zscore_min_history_buckets) & (var > 1e-12 * mean_sq)
        z = np.where(ok, (x_now - mean) / np.sqrt(np.where(ok, var, 1.0)), 0.0)

    out = {
        "vwap_1min": vwap1,
        "vwap_5min": vwap5,
        "rolling_avg_5min": avg5,
        "volume": volume,
        "volume_zscore": z,
        "price_momentum": momentum,
        "trade_frequency": nfreq.astype(np.int64),
        "vwap_deviation_bps": dev,
    }
    for key in ("vwap_1min", "vwap_5min", "rolling_avg_5min", "volume", "volume_zscore"):
        out[key] = np.where(np.isfinite(out[key]), out[key], 0.0)
    for key in ("price_momentum", "vwap_deviation_bps"):
        out[key] = np.where(np.isfinite(out[key]), out[key], 0.0)
    return out


def _pair_chunks(counts: np.ndarray) -> Iterator[slice]:
    """Slices of `counts` whose sums stay around `_PAIR_CHUNK` (bounded memory for adversarial input)."""
    total = np.cumsum(counts)
    start = 0
    while start < len(counts):
        offset = total[start - 1] if start else 0
        stop = int(np.searchsorted(total, offset + _PAIR_CHUNK, side="right"))
        stop = max(stop, start + 1)
        yield slice(start, stop)
        start = stop


def _disorder_corrections(pos: np.ndarray, group: np.ndarray, st: _TradeState) -> _Corrections | None:
    """Contributions of trades that arrived after a trade but sort before it (same code, same batch).

    `pos` is the state row of each accepted trade in code-grouped arrival order, `group` its code
    group. Prefix sums up to `pos` include such later arrivals; the arrival view must not.
    """
    price, size, csize = st.price, st.size, st.csize
    n = len(pos)
    if n < 2:
        return None
    # Merged positions of different codes occupy disjoint ascending ranges, so plain running min/max
    # over the code-grouped sequence never mix codes.
    suffix_min = np.minimum.accumulate(pos[::-1])[::-1]
    later_min = np.r_[suffix_min[1:], np.iinfo(np.int64).max]
    disordered = np.flatnonzero(pos > later_min)
    if len(disordered) == 0:
        return None
    prefix_max = np.maximum.accumulate(pos)
    earlier_max = np.r_[-1, prefix_max[:-1]]
    overtaken = np.flatnonzero(pos < earlier_max)  # arrived after a later-keyed trade
    group_end = np.searchsorted(group, group[disordered], side="right")
    lo = np.searchsorted(overtaken, disordered, side="right")
    hi = np.searchsorted(overtaken, group_end, side="left")
    counts = hi - lo

    zero = np.zeros(n)
    c = _Corrections(
        zero.copy(),
        zero.copy(),
        zero.copy(),
        np.zeros(n, dtype=np.int64),
        zero.copy(),
        zero.copy(),
        zero.copy(),
        zero.copy(),
    )
    for chunk in _pair_chunks(counts):
        d = np.repeat(disordered[chunk], counts[chunk])
        starts = np.repeat(lo[chunk] - np.r_[0, np.cumsum(counts[chunk])[:-1]], counts[chunk])
        j = overtaken[np.arange(len(d)) + starts]
        hit = pos[j] < pos[d]
        d, j = d[hit], j[hit]
        if len(d) == 0:
            continue
        pj = pos[j]
        centred = price[pj] - st.centre[st.code[pj]]  # the sums are over centred prices
        np.add.at(c.ps, d, centred * size[pj])
        np.add.at(c.size, d, size[pj])
        np.add.at(c.price, d, centred)
        np.add.at(c.count, d, 1)
        bd, bj = st.ts[pos[d]] // st.bucket_ms, st.ts[pj] // st.bucket_ms
        same = bd == bj
        np.add.at(c.bucket_volume, d[same], size[pj[same]])
        np.add.at(c.bucket_capped, d[same], csize[pj[same]])
        # History buckets: aggregate the missing capped volume per (trade, bucket), then fix Σx, Σx².
        prev = ~same
        if prev.any():
            pair_key = np.stack([d[prev], st.bucket_of(pj[prev])], axis=1)
            keys, inv = np.unique(pair_key, axis=0, return_inverse=True)
            missing = np.bincount(inv.ravel(), weights=csize[pj[prev]], minlength=len(keys))
            slots = keys[:, 1]
            full, seen = st.b_val[slots], st.bucket_value(st.b_cap[slots] - missing)
            np.add.at(c.hist_s1, keys[:, 0], full - seen)
            np.add.at(c.hist_s2, keys[:, 0], full * full - seen * seen)
    return c


def _closing_snapshots(
    cfg: FeatureConfig,
    st: _TradeState,
    codes: np.ndarray,
    wm_before: np.ndarray,
    wm_after: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Last row of every (code, second) that closes in this batch, and its attached late count.

    Only the codes of the batch moved their watermark, and a closing second lies in
    [wm_before − grace − snapshot, wm_after − grace), so only those rows are looked at."""
    lo = st.first_at(codes, wm_before[codes] - cfg.late_grace_ms - cfg.snapshot_ms)
    hi = st.first_at(codes, wm_after[codes] - cfg.late_grace_ms)
    rows, _ = _ranges(lo, hi)
    code, ts = st.code[rows], st.ts[rows]
    second = ts // cfg.snapshot_ms
    starts = _group_starts(code, second)
    last = np.r_[starts[1:], len(ts)] - 1
    s_code, s_end = code[starts], (second[starts] + 1) * cfg.snapshot_ms
    closing = (s_end <= wm_after[s_code] - cfg.late_grace_ms) & (
        s_end > wm_before[s_code] - cfg.late_grace_ms
    )
    late = st.late[rows]
    late_sum = np.add.reduceat(late, starts) if len(starts) else np.empty(0, dtype=np.int64)
    return rows[last[closing]], late_sum[closing]
