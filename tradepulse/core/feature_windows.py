"""Window features of the feature core, computed from the accepted-trade state (`TradeState`): the
feature columns of vectors ending at given rows, the corrections for within-batch disorder (the arrival
view), and the rows of the snapshots that close in a batch. `tradepulse.core.features` documents the
definitions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from tradepulse.core.trade_state import (
    TradeState,
    group_sizes,
    group_starts,
    limbs_value,
    ranges,
    square_limbs,
)

_INT64_MAX = np.iinfo(np.int64).max

if TYPE_CHECKING:
    from tradepulse.core.feature_config import FeatureConfig

PAIR_CHUNK = 2_000_000  # disorder-correction pairs materialised at once


@dataclass
class Corrections:
    """Contributions to subtract from each accepted trade's sums (trades that arrived after it)."""

    ps: np.ndarray
    size: np.ndarray
    price: np.ndarray
    count: np.ndarray
    bucket_volume: np.ndarray  # in the trade's own z-score bucket
    # The z-score's, in its fixed point (int64, exact: see `TradeState`).
    bucket_capped: np.ndarray  # capped size in the trade's own z-score bucket
    hist_s1: np.ndarray  # change of Σx over the history buckets
    hist_s2: np.ndarray  # change of Σx² over the history buckets, as (3, n) limbs (`square_limbs`)
    # Trade conditions: `count` above counts volume-eligible trades, `price` sums eligible prices.
    count_price: np.ndarray  # price-eligible trades
    last_row: np.ndarray  # latest price-eligible row among the trades that arrived before (-1: none)

    @classmethod
    def zeros(cls, last_row: np.ndarray) -> Corrections:
        """No corrections for `len(last_row)` trades whose latest price-eligible rows are `last_row`."""
        n = len(last_row)
        zero, izero = np.zeros(n), np.zeros(n, dtype=np.int64)
        return cls(
            zero,
            zero.copy(),
            zero.copy(),
            izero,
            zero.copy(),
            izero.copy(),
            izero.copy(),
            np.zeros((3, n), dtype=np.int64),
            izero.copy(),
            last_row,
        )

    def extended(self, last_row: np.ndarray) -> Corrections:
        """These corrections followed by none for `len(last_row)` more rows (`last_row`: their latest
        price-eligible rows), for one `window_features` call over both."""
        more = Corrections.zeros(last_row)
        return Corrections(
            *(
                np.concatenate((mine, theirs), axis=-1)
                for mine, theirs in zip(_fields_of(self), _fields_of(more), strict=True)
            )
        )


def _fields_of(c: Corrections) -> tuple[np.ndarray, ...]:
    """The arrays of `c` in declaration order, not copied (`dataclasses.astuple` deep-copies)."""
    return tuple(getattr(c, f.name) for f in fields(c))


def window_features(
    cfg: FeatureConfig,
    st: TradeState,
    rows: np.ndarray,
    code: np.ndarray,
    ts: np.ndarray,
    price: np.ndarray,
    corr: Corrections | None,
) -> dict[str, np.ndarray]:
    """Feature columns of the vectors ending at state `rows` (minus the corrections, if any), and
    `price`: the last price (the trade's own `price` when no price-eligible trade is in reach)."""
    c = corr or Corrections.zeros(st.last_ok(rows))
    starts: dict[int, np.ndarray] = {}

    def first_after(ms: int) -> np.ndarray:
        """Per vector, the first state row of its ticker with ts > t − ms."""
        if ms not in starts:
            starts[ms] = st.first_after(code, ts - ms)
        return starts[ms]

    # The float sums at every row the windows read, gathered (and unpacked) at once: each vector's own
    # row, the first row of each distinct window length (by default the 1-minute VWAP, the trade
    # frequency and the momentum reference share one) and the first row of the trade's z-score bucket.
    lengths = list(dict.fromkeys((cfg.vwap_short_ms, cfg.vwap_long_ms, cfg.frequency_ms)))
    b_now = ts // cfg.zscore_bucket_ms
    b_row = st.first_at(code, b_now * cfg.zscore_bucket_ms)  # first row of the trade's bucket
    at = (rows, *(first_after(ms) for ms in lengths), b_row)  # start <= rows: a window holds its trade
    through, *at_starts, at_bucket = np.split(st.sums_at(np.concatenate(at)), len(at), axis=1)

    def window_sums(
        start: np.ndarray, at_start: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Σ (price − centre) · size, Σ size, Σ price − centre, and the two counts over rows [start, rows]
        (`at_start`: the float sums at `start`)."""
        ps_start, p_start = st.price_terms(start)
        t_ps, t_size, t_p = at_start
        return (
            (through[0] - (t_ps - ps_start)).astype(np.float64) - c.ps,
            (through[1] - (t_size - st.size[start])).astype(np.float64) - c.size,
            (through[2] - (t_p - p_start)).astype(np.float64) - c.price,
            st.window_count(st.vol_ok, st.t_vol_ok, start, rows) - c.count,
            st.window_count(st.price_ok, st.t_price_ok, start, rows) - c.count_price,
        )

    sums = {
        ms: window_sums(first_after(ms), at_start) for ms, at_start in zip(lengths, at_starts, strict=True)
    }

    # Last price: the latest price-eligible trade the vector may see, within the momentum look-back.
    last = c.last_row
    last_c = np.maximum(last, 0)
    has_last = (last >= 0) & (st.ts_of(last_c) > ts - cfg.momentum_lookback_ms)
    price = np.where(has_last, st.price[last_c], price)

    ps1, s1, _, v1, _ = sums[cfg.vwap_short_ms]
    ps5, s5, p5, v5, n5 = sums[cfg.vwap_long_ms]
    nfreq = sums[cfg.frequency_ms][3]
    centre = st.centre[code]
    with np.errstate(divide="ignore", invalid="ignore"):
        # VWAP over the volume-eligible trades (an exact count decides "none": sums may round).
        rel1 = np.where((v1 > 0) & (s1 > 0), ps1 / s1, price - centre)  # vwap − centre
        rel5 = np.where((v5 > 0) & (s5 > 0), ps5 / s5, price - centre)
        vwap1, vwap5 = centre + rel1, centre + rel5
        avg5 = centre + np.where(n5 > 0, p5 / np.maximum(n5, 1), price - centre)
        dev = ((price - centre) - rel5) / vwap5 * 1e4

    # Momentum: the last price-eligible row with ts <= t − M (all rows up to t − M arrived before the
    # trade: see docstring).
    ref = first_after(cfg.momentum_ms) - 1
    ref_ok = ref >= 0
    ref_c = np.where(ref_ok, ref, 0)
    ref_ok &= st.code_of(ref_c) == code
    ref_c = np.where(ref_ok, st.last_ok(ref_c), 0)
    ref_ok &= ref_c >= 0
    ref_c = np.maximum(ref_c, 0)
    ref_ok &= st.ts_of(ref_c) > ts - cfg.momentum_lookback_ms
    ref_price = np.where(ref_ok, st.price[ref_c], price)
    momentum = np.where(ref_ok, (price - ref_price) / ref_price * 100.0, 0.0)

    # Volume z-score: exact integer sums (fixed point), then one float formula of those integers, so
    # the result does not depend on the batch split or the state's layout. z is scale-free, so it is
    # computed in the fixed-point units.
    volume = (through[1] - (at_bucket[1] - st.size[b_row])).astype(np.float64) - c.bucket_volume
    capped = (st.t_csize[rows] - st.t_csize_before(b_row)) - c.bucket_capped
    x_now = st.bucket_value(capped)
    bidx = st.bucket_slot(code, b_now)
    h_lo = st.bucket_slot(code, b_now - cfg.zscore_window_buckets)
    has_hist = h_lo < bidx
    first = st.b_id[np.where(has_hist, h_lo, bidx)]
    n_hist = np.where(has_hist, b_now - first, 0)
    h_last = np.maximum(bidx - 1, 0)
    x_lo = st.b_val[h_lo]
    s1h = np.where(has_hist, st.b_t1[h_last] - (st.b_t1[h_lo] - x_lo), 0) - c.hist_s1
    s2h = np.where(has_hist, st.b_t2[:, h_last] - (st.b_t2[:, h_lo] - square_limbs(x_lo)), 0) - c.hist_s2
    with np.errstate(divide="ignore", invalid="ignore"):
        nf = np.maximum(n_hist, 1)
        mean = s1h.astype(np.float64) / nf
        mean_sq = limbs_value(s2h) / nf
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
        "price": price,
    }
    for key in ("vwap_1min", "vwap_5min", "rolling_avg_5min", "volume", "volume_zscore"):
        out[key] = np.where(np.isfinite(out[key]), out[key], 0.0)
    for key in ("price_momentum", "vwap_deviation_bps"):
        out[key] = np.where(np.isfinite(out[key]), out[key], 0.0)
    return out


def pair_chunks(counts: np.ndarray) -> Iterator[slice]:
    """Slices of `counts` whose sums stay around `PAIR_CHUNK` (bounded memory for adversarial input)."""
    total = np.cumsum(counts)
    start = 0
    while start < len(counts):
        offset = total[start - 1] if start else 0
        stop = int(np.searchsorted(total, offset + PAIR_CHUNK, side="right"))
        stop = max(stop, start + 1)
        yield slice(start, stop)
        start = stop


def disorder_corrections(pos: np.ndarray, group: np.ndarray, st: TradeState) -> Corrections | None:
    """Contributions of trades that arrived after a trade but sort before it (same code, same batch).

    `pos` is the state row of each accepted trade in code-grouped arrival order, `group` its code
    group. Prefix sums up to `pos` include such later arrivals; the arrival view must not.
    """
    price, size = st.price, st.size
    n = len(pos)
    if n < 2:
        return None
    # Merged positions of different codes occupy disjoint ascending ranges, so plain running min/max
    # over the code-grouped sequence never mix codes.
    suffix_min = np.minimum.accumulate(pos[::-1])[::-1]
    later_min = np.concatenate((suffix_min[1:], [_INT64_MAX]))
    disordered = np.flatnonzero(pos > later_min)
    if len(disordered) == 0:
        return None
    prefix_max = np.maximum.accumulate(pos)
    earlier_max = np.concatenate(([-1], prefix_max[:-1]))
    overtaken = np.flatnonzero(pos < earlier_max)  # arrived after a later-keyed trade
    group_end = np.searchsorted(group, group[disordered], side="right")
    lo = np.searchsorted(overtaken, disordered, side="right")
    hi = np.searchsorted(overtaken, group_end, side="left")
    counts = hi - lo

    c = Corrections.zeros(st.last_ok(pos))
    for chunk in pair_chunks(counts):
        d = np.repeat(disordered[chunk], counts[chunk])
        starts = np.repeat(lo[chunk] - np.concatenate(([0], np.cumsum(counts[chunk])[:-1])), counts[chunk])
        j = overtaken[np.arange(len(d)) + starts]
        hit = pos[j] < pos[d]
        d, j = d[hit], j[hit]
        if len(d) == 0:
            continue
        pj = pos[j]
        centred = price[pj] - st.centre[st.code_of(pj)]  # the sums are over centred prices
        np.add.at(c.ps, d, centred * size[pj])
        np.add.at(c.size, d, size[pj])
        np.add.at(c.price, d, centred * st.price_ok[pj])
        np.add.at(c.count, d, st.vol_ok[pj].astype(np.int64))
        np.add.at(c.count_price, d, st.price_ok[pj].astype(np.int64))
        _skip_later_arrivals(c.last_row, pos, d, pj, st)
        bd, bj = st.ts_of(pos[d]) // st.bucket_ms, st.ts_of(pj) // st.bucket_ms
        same = bd == bj
        np.add.at(c.bucket_volume, d[same], size[pj[same]])
        np.add.at(c.bucket_capped, d[same], st.csize(pj[same]))
        # History buckets: aggregate the missing capped volume per (trade, bucket), then fix Σx, Σx²
        # (integers: exact).
        prev = ~same
        if prev.any():
            pair_key = np.stack([d[prev], st.bucket_of(pj[prev])], axis=1)
            keys, inv = np.unique(pair_key, axis=0, return_inverse=True)
            missing = np.zeros(len(keys), dtype=np.int64)
            np.add.at(missing, inv.ravel(), st.csize(pj[prev]))
            slots = keys[:, 1]
            full, seen = st.b_val[slots], st.bucket_value(st.b_cap[slots] - missing)
            np.add.at(c.hist_s1, keys[:, 0], full - seen)
            for k, delta in enumerate(square_limbs(full) - square_limbs(seen)):
                np.add.at(c.hist_s2[k], keys[:, 0], delta)
    return c


def _skip_later_arrivals(
    last_row: np.ndarray, pos: np.ndarray, d: np.ndarray, pj: np.ndarray, st: TradeState
) -> None:
    """Move `last_row` of the trades `d` back past the price-eligible rows `pj` that arrived after them
    (pairs (d, pj)): one step back per pass, only for the trades whose candidate is such a row."""
    n_rows = np.int64(len(st.key))
    later = np.unique(d.astype(np.int64) * n_rows + pj)
    todo = np.unique(d)
    while len(todo):
        cand = last_row[todo]
        hit = (cand >= 0) & np.isin(todo.astype(np.int64) * n_rows + cand, later)
        todo, cand = todo[hit], cand[hit]
        if len(todo) == 0:
            break
        back = cand - 1
        same_region = back >= st.reg0[st.code_of(pos[todo])]
        last_row[todo] = np.where(same_region, st.last_ok(np.maximum(back, 0)), -1)


def closing_snapshots(
    cfg: FeatureConfig,
    st: TradeState,
    codes: np.ndarray,
    wm_before: np.ndarray,
    wm_after: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Last row of every (code, second) that closes in this batch, its attached late count, and every
    row of those seconds (the trades whose final revision this is).

    Only the codes of the batch moved their watermark, and a closing second lies in
    [wm_before − grace − snapshot, wm_after − grace), so only those rows are looked at."""
    lo = st.first_at(codes, wm_before[codes] - cfg.late_grace_ms - cfg.snapshot_ms)
    hi = st.first_at(codes, wm_after[codes] - cfg.late_grace_ms)
    rows, _ = ranges(lo, hi)
    code, ts = st.code_of(rows), st.ts_of(rows)
    second = ts // cfg.snapshot_ms
    starts = group_starts(code, second)
    last = np.concatenate((starts[1:], [len(ts)])) - 1
    s_code, s_end = code[starts], (second[starts] + 1) * cfg.snapshot_ms
    closing = (s_end <= wm_after[s_code] - cfg.late_grace_ms) & (
        s_end > wm_before[s_code] - cfg.late_grace_ms
    )
    late = st.late[rows].astype(np.int64)
    late_sum = np.add.reduceat(late, starts) if len(starts) else np.empty(0, dtype=np.int64)
    closing_rows = rows[np.repeat(closing, group_sizes(starts, len(rows)))]
    return rows[last[closing]], late_sum[closing], closing_rows


def open_snapshots(
    cfg: FeatureConfig, st: TradeState, codes: np.ndarray, wm: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Last row of the newest second of each of `codes` (the second holding its watermark, never
    closed: it ends after the watermark) and its attached late count, for the provisional revisions."""
    start = wm[codes] // cfg.snapshot_ms * cfg.snapshot_ms
    lo = st.first_at(codes, start)
    hi = st.first_at(codes, start + cfg.snapshot_ms)  # > lo: the watermark's trade is in the second
    rows, grp = ranges(lo, hi)
    late_sum = np.bincount(grp, weights=st.late[rows], minlength=len(codes)).astype(np.int64)
    return hi - 1, late_sum


def revision_numbers(cfg: FeatureConfig, st: TradeState, rows: np.ndarray, final: bool) -> np.ndarray:
    """Revision of the vector of the second of each of `rows`: the number of its ticker's accepted
    trades with ts in [second start − grace, second end) so far, plus one for the final revision.

    While a second is its ticker's newest, every trade accepted has ts >= watermark − grace >= start −
    grace, so each provisional revision counts more trades than the one before; once the second has
    closed no trade of that range can be accepted any more, so the final's count (+1) exceeds them all
    and is a function of the accepted trades alone, like the vector."""
    code = st.code_of(rows)
    start = st.ts_of(rows) // cfg.snapshot_ms * cfg.snapshot_ms
    count = st.first_at(code, start + cfg.snapshot_ms) - st.first_at(code, start - cfg.late_grace_ms)
    return count + 1 if final else count
