"""The accepted-trade state of the feature core: per-ticker regions of one set of row arrays, sorted by
a composite (ticker code, ts) key, with persistent prefix sums (see `TradeState`), and the array
helpers it is built from. Pure numpy; `tradepulse.core.features` documents what is computed from it.
"""

from __future__ import annotations

import mmap
from typing import TYPE_CHECKING

import numpy as np

from tradepulse.errors import InvalidArgument

if TYPE_CHECKING:
    from tradepulse.core.feature_config import FeatureConfig


NO_TS = np.int64(-(2**62))  # "no watermark yet"; far below any real ts, and safe to subtract from


def composite_span(ncodes: int, span: int) -> None:
    if ncodes * span >= 2**62:
        raise InvalidArgument("timestamp range of the batch is too wide for the composite key")


def group_starts(*keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal consecutive values of (keys...)."""
    n = len(keys[0])
    if n == 0:
        return np.empty(0, dtype=np.int64)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


def group_sizes(starts: np.ndarray, n: int) -> np.ndarray:
    """Length of each run, from the runs' ascending start indices in a sequence of `n`
    (`np.diff(np.r_[starts, n])` without its fixed cost, which small batches pay many times)."""
    sizes = np.empty(len(starts), dtype=np.int64)
    if len(starts):
        sizes[:-1] = starts[1:] - starts[:-1]
        sizes[-1] = n - starts[-1]
    return sizes


KEY_BITS = 43
K = np.int64(2**KEY_BITS)  # composite key: code * K + clipped ts (or bucket id); code = key >> KEY_BITS
KOFF = 2**42
KTS_MASK = np.int64(2**KEY_BITS - 1)  # a row's ts = (key & KTS_MASK) − KOFF (`TradeState.ts_of`)
TS_MIN, TS_MAX = -KOFF, 2**KEY_BITS - 2 - KOFF  # the ts a row's key holds unclipped (`kts`)
MIN_CAP = 64
FILL_PROJECTION = 2.0
"""Most a re-layout sizes a region beyond its live rows while the code's window is still filling."""
SLICE_MOVE_ROWS = 128
"""A re-layout copies each code's rows as slices when codes hold this many rows on average, else with
one gather (~10 µs of slicing a code against ~0.1 µs a row saved; 200 and 3,000 tickers measured)."""
RELEASE_DEAD_ROWS = 512
"""A code's rows below the eviction cutoff are given back to the operating system (`_release_dead`) once
this many more have gathered: a release is a system call per array, and a dead row is 84 bytes. At 15k
ev/s and 200 tickers, 512 rather than 4,096 held ~20 MiB less on average for the same core time (at most
~200 codes × 11 calls a second of market time; docs/benchmarks.md)."""
RELEASE_CHECK_MS = 1000
"""How far the eviction cutoff advances (market time) between two looks for dead rows to give back: a
look searches every code's cutoff (tens of µs for 200 tickers), which every batch would pay at 15k ev/s."""
Runs = tuple[np.ndarray, np.ndarray, np.ndarray]
"""`TradeState._runs`: (start of each run, the row before it, whether the run continues that row)."""
ROW_INDEX_LIMIT = 2**31  # slots at most: `ok_row` (1 + a row) and a region's prefix counts are int32
ACC = np.longdouble  # prefix-sum accumulator (80-bit extended on x86-64)
# The bytes of an ACC that hold its value: x86's 80-bit extended format sits in the low 10 of its 12 or
# 16 bytes (the rest is padding the FPU never reads); other formats (IEEE quad, or double) use them all.
ACC_ITEMSIZE = np.dtype(ACC).itemsize
ACC_BYTES = 10 if np.finfo(ACC).nmant == 63 else ACC_ITEMSIZE
FLOAT_SUMS = 3  # the float prefix sums of a row, in this order: (price − centre) · size, size, price − centre
SUMS_DTYPE = np.dtype((np.void, FLOAT_SUMS * ACC_BYTES))
"""A row's float prefix sums packed into one record: their value bytes only (30 instead of 48 bytes on
x86-64; `pack_sums`, `unpack_sums`). Unpacked, they are the same ACC values, bit for bit."""

# The volume z-score is computed in fixed point, so that it is exact: integer sums do not depend on
# where a batch starts or when a region was re-laid out (float sums round differently for each), and
# a restart that replays the look-back in other batches gives the same bits (see `volume_zscore` in
# `tradepulse.core.features`). int64 prefix sums wrap around on overflow; a difference of two of them
# is still exact as long as the window's own sum stays below 2^63.
SIZE_BITS = 16  # sizes in units of 2^-16
SIZE_QMAX = 2**40  # per trade: 2^24 (~16.8 M) units of size at most (a window of 2^23 of them fits)
LOG_X_BITS = 32  # log(1 + capped volume) in units of 2^-32
X_QMAX = 2**48 - 1  # a bucket value; raw mode: capped volume up to ~4.3e9 (log mode: never reached)
LIMB_BITS = 24  # x² is summed as three limbs of x = hi·2^24 + lo (each limb sum below 2^63)
LIMB_MASK = 2**LIMB_BITS - 1


# Private anonymous mappings and `madvise` (Linux, macOS; not Windows).
RELEASABLE = all(hasattr(mmap, name) for name in ("MADV_DONTNEED", "MAP_PRIVATE", "MAP_ANONYMOUS"))


def zeros_releasable(n: int, dtype: type | np.dtype) -> np.ndarray:
    """`np.zeros(n, dtype)` in a private anonymous mapping of its own, so that `release_zeroed` can give
    the pages of slots no longer in use back to the operating system (where `madvise` is available;
    else plain `np.zeros`). Its pages take memory only once written, like those of `np.zeros`."""
    nbytes = n * np.dtype(dtype).itemsize
    if nbytes == 0 or not RELEASABLE:
        return np.zeros(n, dtype)
    mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(mapping, dtype=dtype, count=n)


def release_zeroed(array: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """Give the operating system back the whole pages inside slots [lo[i], hi[i]) of `array` (from
    `zeros_releasable`): a private anonymous page reads back as zeros once released (`MADV_DONTNEED`),
    and takes memory again only when written. So the slots must hold zeros, or never be read again.
    Partial pages stay."""
    buffer = getattr(array.base, "obj", None)  # `np.frombuffer`'s base: a memoryview of the mapping
    if not isinstance(buffer, mmap.mmap):
        return
    page, size = mmap.PAGESIZE, array.itemsize
    starts = -(-lo * size // page) * page  # rounded up to a page
    ends = hi * size // page * page  # rounded down
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if end > start:
            buffer.madvise(mmap.MADV_DONTNEED, start, end - start)


def quantise_size(size: np.ndarray) -> np.ndarray:
    """A size as the fixed-point integer of the z-score path (round to 2^-16, at most 2^24)."""
    return np.minimum(np.rint(np.asarray(size, dtype=np.float64) * 2.0**SIZE_BITS), SIZE_QMAX).astype(
        np.int64
    )


def square_limbs(x: np.ndarray) -> np.ndarray:
    """(hi², 2·hi·lo, lo²) of x = hi·2^24 + lo, as a (3, n) int64 array: x² = Σ limb_k · 2^(24·(2−k))."""
    hi, lo = x >> LIMB_BITS, x & LIMB_MASK
    return np.stack([hi * hi, 2 * hi * lo, lo * lo])


def limbs_value(limbs: np.ndarray) -> np.ndarray:
    """The float64 value of Σ limb_k · 2^(24·(2−k)) (a function of the exact integers alone)."""
    f = limbs.astype(np.float64)
    return (f[0] * 2.0**LIMB_BITS + f[1]) * 2.0**LIMB_BITS + f[2]


def _value_parts(itemsize: int) -> np.dtype:
    """An ACC's value as typed fields (copied as integers: faster than bytes), in `itemsize` bytes:
    x86's 80-bit format is a 64-bit significand then 16 bits of sign and exponent; any other ACC is
    copied whole."""
    if ACC_BYTES == 10:
        return np.dtype(
            {
                "names": ["significand", "sign_exponent"],
                "formats": ["<u8", "<u2"],
                "offsets": [0, 8],
                "itemsize": itemsize,
            }
        )
    return np.dtype({"names": ["value"], "formats": [ACC], "offsets": [0], "itemsize": itemsize})


_PACKED_VALUE, _FULL_VALUE = _value_parts(ACC_BYTES), _value_parts(ACC_ITEMSIZE)


def pack_sums(sums: np.ndarray) -> np.ndarray:
    """(FLOAT_SUMS, n) ACC values as n `SUMS_DTYPE` records (each value's `ACC_BYTES`)."""
    n = sums.shape[1]
    full = np.ascontiguousarray(sums, dtype=ACC).view(_FULL_VALUE)
    packed = np.empty((n, FLOAT_SUMS), dtype=_PACKED_VALUE)
    for name in _PACKED_VALUE.names or ():
        packed.T[name] = full[name]
    return packed.view(SUMS_DTYPE).reshape(n)


def unpack_sums(records: np.ndarray) -> np.ndarray:
    """`SUMS_DTYPE` records (from `pack_sums`) as a (FLOAT_SUMS, n) ACC array: the values packed."""
    n = len(records)
    packed = np.ascontiguousarray(records).view(_PACKED_VALUE).reshape(n, FLOAT_SUMS).T
    full = np.zeros((FLOAT_SUMS, n), dtype=_FULL_VALUE)  # an 80-bit value's padding: zeros
    for name in _PACKED_VALUE.names or ():
        full[name] = packed[name]
    return full.view(ACC)


def kts(values: np.ndarray | int) -> np.ndarray:
    """A ts (or bucket id) as the low part of a composite key; K − 1 is the gap sentinel."""
    # np.minimum/np.maximum: the same as np.clip, without its ~10 µs of argument checks per call.
    return np.minimum(np.maximum(np.asarray(values, dtype=np.int64) + KOFF, 0), int(K) - 2)


def ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated indices of [lo_i, hi_i) and the i of each."""
    n = np.maximum(hi - lo, 0)
    grp = np.repeat(np.arange(len(lo)), n)
    offs = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    return lo[grp] + offs, grp


def seg_cumsum(values: np.ndarray, starts: np.ndarray, base: np.ndarray, dtype: type = ACC) -> np.ndarray:
    """Inclusive prefix sums that restart at each group start from that group's `base`. The restart
    keeps the rounding relative to the group's own (batch-sized) sums, not to other groups'. Float
    sums are extended precision: they run over up to ~2 windows of rows, and window sums are their
    differences (float64 would lose ~1e-9 of a VWAP deviation over a busy 5-minute window). With
    dtype int64 (the fixed-point z-score sums) they are exact, modulo 2^64."""
    x: np.ndarray = values.astype(dtype)
    if len(x) == 0:
        return x
    if len(starts) > 1:
        totals = np.add.reduceat(x, starts)
        x[starts[1:]] -= totals[:-1]
    through = np.cumsum(x)
    return through + np.repeat(base.astype(dtype), group_sizes(starts, len(x)))


class TradeState:
    """Accepted trades per code in a gapped layout, with persistent prefix sums.

    Code c owns slots [reg0[c], reg0[c] + cap[c]) of every row array (regions in code order, so the
    composite key code·K + ts is sorted globally); its rows occupy [.., tail[c]), sorted by (ts,
    arrival), and the rest of the region holds the gap sentinel key. Rows below the eviction cutoff
    stay until the region fills (they can never fall inside a future window), but as they gather their
    pages are given back to the operating system, all but their keys' and `ok_row`'s (`_release_dead`:
    else a region's slack fills with resident dead rows before each compaction); then, if the live rows
    fit in three quarters of the region, that code alone is compacted in place (`_compact`: its dead
    rows dropped, its prefix sums re-based at zero and its prices re-centred, and the pages of its
    region past the live rows given back to the operating system), else everything is
    re-laid out with regions of twice the live rows (twice the rows a filling window is projected to
    hold: `_projected`): dead rows are dropped and the live ones copied with their float sums and centre
    as they are (the exact integer sums re-based), so a re-layout changes no vector. A code's float sums span the rows since its last
    re-base (a compaction, or a batch that rewrote its region from the start): a few regions' worth of
    rows, which extended precision carries without a loss a vector shows (the drift test in
    tests/core/test_features.py holds vectors to 1e-9 of a naive recomputation over 15 minutes). A
    batch only rewrites each code's suffix from
    its earliest trade (bounded by the late grace) and the buckets from that trade's bucket on.
    The z-score bucket table (one slot per (code, bucket) with a trade) has a gapped layout of its
    own, regions [breg0[c], breg0[c] + bcap[c]) sized by the code's live buckets: a bucket (one
    ticker-second) holds many trades, so sizing it like the rows would waste most of its slots. A
    batch adds at most one bucket per trade, so room for the batch's trades in both layouts is room
    enough. The z-score's sums are fixed-point int64 (`quantise_size`, `bucket_value`), exact
    whatever the batches and re-layouts.
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.bucket_ms = config.zscore_bucket_ms
        self.cap_multiple = config.zscore_size_cap
        self.cap_window_ms = config.zscore_cap_window_buckets * config.zscore_bucket_ms
        self.log_volume = config.zscore_log_volume
        self.reg0 = np.empty(0, dtype=np.int64)
        self.cap = np.empty(0, dtype=np.int64)
        self.tail = np.empty(0, dtype=np.int64)
        self.breg0 = np.empty(0, dtype=np.int64)
        self.bcap = np.empty(0, dtype=np.int64)
        self.btail = np.empty(0, dtype=np.int64)
        self.centre = np.empty(0, dtype=np.float64)  # per code: prices are summed as price − centre
        self.released = np.empty(0, dtype=np.int64)  # per code: dead rows given back up to here
        self.release_checked = int(NO_TS)  # the latest eviction cutoff `_release_dead` looked at
        none = np.empty(0, dtype=np.int64)
        self._alloc_rows(none, none)
        self._alloc_buckets(none, none)

    def _alloc_rows(self, codes: np.ndarray, caps: np.ndarray) -> None:
        """Fresh row arrays with `caps[i]` slots for `codes[i]`."""
        n = int(caps.sum())
        if n >= ROW_INDEX_LIMIT:
            raise InvalidArgument(f"{n:,} row slots: more than the int32 row indices of `ok_row` hold")
        # Every array but `key` takes its pages only once written (a region's slack: none), and gives
        # back those of a compacted region's freed slots (`release_zeroed`).
        zeros = zeros_releasable
        # Each slot's code is its key's high bits (`code_of`) and its ts the low bits (`ts_of`): neither
        # is stored (16 bytes a slot).
        self.key = np.repeat(codes * K + (K - 1), caps)
        self.price = zeros(n, np.float64)
        self.size = zeros(n, np.float64)
        self.late = zeros(n, np.int32)  # late events attached to the row (a count)
        # Inclusive prefix sums, per code, of the `price_terms` and the effective size, packed
        # (`SUMS_DTYPE`; read and written through `sums_at` and `_prefix_sums`).
        self.t_sums = zeros(n, SUMS_DTYPE)
        # The z-score path, in fixed point (exact): the sizes' sums (each size is `quantise_size(size)`,
        # computed where needed, not stored) and the capped sizes' (see the volume_zscore definition;
        # fixed at acceptance), per code (wrapping int64). A capped size is not stored either: it is
        # the difference of two of its sums (`csize`), whose region starts at zero.
        self.t_qsize = zeros(n, np.int64)
        self.t_csize = zeros(n, np.int64)
        # Trade-condition eligibility (`tradepulse.core.conditions`). `size` above is the effective
        # size: 0 for a trade that does not count toward volume.
        self.vol_ok = zeros(n, np.bool_)  # counts toward volume, VWAP and the trade count
        self.price_ok = zeros(n, np.bool_)  # may set the last price
        # Inclusive prefix counts of the two, per code (a region's count fits int32: its slots do).
        self.t_vol_ok = zeros(n, np.int32)
        self.t_price_ok = zeros(n, np.int32)
        # 1 + the latest price-eligible row <= this one (0: none; `last_ok`): zeros where nothing is.
        self.ok_row = zeros(n, np.int32)

    def _alloc_buckets(self, codes: np.ndarray, bcaps: np.ndarray) -> None:
        """Fresh z-score bucket arrays with `bcaps[i]` slots for `codes[i]`."""
        bowner = np.repeat(codes, bcaps)
        nb = len(bowner)
        self.b_key = bowner * K + (K - 1)
        self.b_id = np.zeros(nb, dtype=np.int64)
        self.b_cap = np.zeros(nb, dtype=np.int64)  # Σ capped size of the bucket
        self.b_val = np.zeros(nb, dtype=np.int64)  # its z-score value x = bucket_value(b_cap)
        self.b_t1 = np.zeros(nb, dtype=np.int64)  # inclusive prefix sums of bucket values
        self.b_t2 = np.zeros((3, nb), dtype=np.int64)  # and of their squares' limbs (`square_limbs`)

    def bucket_value(self, capped_volume: np.ndarray) -> np.ndarray:
        """A bucket's z-score value x from its fixed-point capped volume, itself fixed point:
        log(1 + v) in units of 2^-32, or (raw mode) v itself in the size units, at most `X_QMAX`."""
        if self.log_volume:
            x = np.rint(np.log1p(capped_volume * 2.0**-SIZE_BITS) * 2.0**LOG_X_BITS).astype(np.int64)
        else:
            x = capped_volume
        return np.minimum(x, X_QMAX)

    # --- lookups ------------------------------------------------------------------------------
    def code_of(self, rows: np.ndarray) -> np.ndarray:
        """The code owning each of `rows` (a row or a gap slot of its region)."""
        return self.key[rows] >> KEY_BITS

    def first_after(self, code: np.ndarray, t: np.ndarray) -> np.ndarray:
        """First row of `code` with ts > t (its tail if none)."""
        return np.searchsorted(self.key, code * K + kts(t), side="right")

    def first_at(self, code: np.ndarray, t: np.ndarray) -> np.ndarray:
        """First row of `code` with ts >= t."""
        return np.searchsorted(self.key, code * K + kts(t), side="left")

    def bucket_slot(self, code: np.ndarray, bucket: np.ndarray) -> np.ndarray:
        """First bucket slot of `code` with id >= bucket."""
        return np.searchsorted(self.b_key, code * K + kts(bucket), side="left")

    def ts_of(self, rows: np.ndarray) -> np.ndarray:
        """The ts of each of `rows` (live rows: a gap slot has no ts). The key holds it unclipped: the
        core folds in only ts in [`TS_MIN`, `TS_MAX`] (`FeatureEngine.process` rejects the others)."""
        return (self.key[rows] & KTS_MASK) - KOFF

    def bucket_of(self, rows: np.ndarray) -> np.ndarray:
        return self.bucket_slot(self.code_of(rows), self.ts_of(rows) // self.bucket_ms)

    def live_rows(self, cutoff: np.ndarray) -> int:
        """Rows with ts > cutoff[code]."""
        codes = np.arange(len(self.tail))
        return int((self.tail - np.minimum(self.first_after(codes, cutoff[codes]), self.tail)).sum())

    # --- updates ------------------------------------------------------------------------------
    def reserve(self, ncodes: int, codes: np.ndarray, need: np.ndarray, cutoff: np.ndarray) -> None:
        """Room for `need` more rows, and buckets, of each of `codes`. When a row region is full or
        codes are new, re-lays out the rows and the buckets (dropping rows with ts <= cutoff[code], and
        the buckets before the first row left); when only a bucket region is full, the buckets alone
        (moving every row costs far more than the buckets). No vector depends on either layout."""
        same_codes = ncodes == len(self.tail)
        self._release_dead(cutoff)
        rows_fit = same_codes and bool((self.tail[codes] + need <= self.reg0[codes] + self.cap[codes]).all())
        if same_codes and not rows_fit:
            rows_fit = self._compact(codes, need, cutoff)
        if rows_fit and (self.btail[codes] + need <= self.breg0[codes] + self.bcap[codes]).all():
            return
        if ncodes >= 2**62 // int(K):
            raise InvalidArgument("too many tickers for the composite key")
        old = len(self.tail)
        grow = ncodes - old
        end = np.int64(len(self.key))
        tail = np.r_[self.tail, np.full(grow, end)]
        all_codes = np.arange(ncodes, dtype=np.int64)
        first = np.minimum(self.first_after(all_codes, cutoff), tail)
        first[old:] = end
        live = tail - first
        has = live > 0
        want = np.zeros(ncodes, dtype=np.int64)
        want[codes] = need
        self._relayout_buckets(all_codes, has, first, want)
        if rows_fit:
            return
        self.centre = np.r_[self.centre, np.zeros(grow)]
        cap = np.maximum(MIN_CAP, 2 * (self._projected(first, tail, live, cutoff) + want))
        new0 = np.r_[0, np.cumsum(cap)[:-1]].astype(np.int64)
        # The rows move with their prefix sums, `ok_row` and their code's price centre as they are,
        # not recomputed: a row's float sums are then the same bits, so no vector depends on when a
        # re-layout happened (only a compaction re-bases a code's sums), and the stall is the copy.
        # Recomputing them was most of it: 178 of 273 ms for 1.1 M rows (docs/benchmarks.md).
        csize_base = np.zeros(ncodes, dtype=np.int64)
        csize_base[has] = self.t_csize_before(first[has])
        previous = self._moved_as_they_are(), self._prefix_counts(), self.ok_row, csize_base
        self._alloc_rows(all_codes, cap)
        self._move_rows(previous, first, tail, new0)
        self.reg0, self.cap = new0, cap
        self.tail = new0 + live
        self.released = new0.copy()

    def _move_rows(
        self,
        previous: tuple[
            tuple[np.ndarray, ...], tuple[tuple[np.ndarray, np.ndarray], ...], np.ndarray, np.ndarray
        ],
        first: np.ndarray,
        tail: np.ndarray,
        new0: np.ndarray,
    ) -> None:
        """Copy rows [first[c], tail[c]) of the `previous` arrays (`_moved_as_they_are`, `_prefix_counts`,
        `ok_row` of the previous layout, and each code's capped-size sum before its first row kept) to
        new0[c] on: the values and sums as they are, but the integer sums re-based at the first row kept
        (exact: the same window sums; a prefix count then never exceeds its int32 region, and a region's
        capped-size sums start at zero, as `csize` reads them), and `ok_row` shifted with its row (a row
        dropped: none)."""
        old_arrays, old_counts, old_ok_row, csize_base = previous
        arrays, counts = self._moved_as_they_are(), self._prefix_counts()
        live = tail - first
        moving = np.flatnonzero(live > 0)
        if int(live.sum()) >= SLICE_MOVE_ROWS * len(moving):
            # One slice per code and array: a region moves as one block.
            for c in moving.tolist():
                lo, hi, at = int(first[c]), int(tail[c]), int(new0[c])
                to = slice(at, at + hi - lo)
                for old_array, array in zip(old_arrays, arrays, strict=True):
                    array[to] = old_array[lo:hi]
                for (old_values, old_through), (_, through) in zip(old_counts, counts, strict=True):
                    through[to] = old_through[lo:hi] - (old_through[lo] - old_values[lo])
                moved_ok = old_ok_row[lo:hi]
                self.ok_row[to] = np.where(moved_ok > lo, moved_ok + (at - lo), 0)
                self.t_csize[to] -= csize_base[c]
            return
        # Few rows a code: one gather and scatter of every row beats a slice per code.
        src, grp = ranges(first, tail)
        dst = new0[grp] + (src - first[grp])
        for old_array, array in zip(old_arrays, arrays, strict=True):
            array[dst] = old_array[src]
        for (old_values, old_through), (_, through) in zip(old_counts, counts, strict=True):
            base = np.zeros(len(first), dtype=np.int64)
            base[moving] = old_through[first[moving]] - old_values[first[moving]]
            through[dst] = old_through[src] - base[grp]
        moved_ok = old_ok_row[src]
        self.ok_row[dst] = np.where(moved_ok > first[grp], moved_ok + (new0 - first)[grp], 0)
        self.t_csize[dst] -= csize_base[grp]

    def _projected(
        self, first: np.ndarray, tail: np.ndarray, live: np.ndarray, cutoff: np.ndarray
    ) -> np.ndarray:
        """Rows each code is sized for: its live rows, or, while they span less than its window (the
        window is filling: the first minutes of a run), the rows the full window will hold at its rate
        so far, at most `FILL_PROJECTION` × the live rows. With regions sized at twice the live rows, a
        run's filling windows re-laid out everything ~11 times (at 1.5× the time of the previous one),
        the last ones stalls of ~1 s at 15k ev/s; projected, 2–3 times. Once the windows are full the
        projection is the live rows: the steady-state size is unchanged. 2×, not more: a projection
        made during a burst (a market open) sizes for the burst's rate, and at 4× one re-layout of the
        5k market-open run allocated 6.8 M slots and stalled the runner 3.6 s (docs/benchmarks.md)."""
        has = live > 0
        projected = live.astype(np.float64)
        newest = self.ts_of(tail[has] - 1)
        span = np.maximum(newest - self.ts_of(first[has]), 1).astype(np.float64)
        window = (newest - np.maximum(cutoff[has], newest - 2**52)).astype(np.float64)
        projected[has] *= np.clip(window / span, 1.0, FILL_PROJECTION)
        return np.ceil(projected).astype(np.int64)

    def _row_values(self) -> tuple[np.ndarray, ...]:
        """The row arrays a re-layout or a compaction moves; the prefix sums and `ok_row` are
        recomputed from them (`_resum`)."""
        return (
            self.key, self.price, self.size, self.late, self.vol_ok, self.price_ok,
        )  # fmt: skip

    def _moved_as_they_are(self) -> tuple[np.ndarray, ...]:
        """The row arrays a re-layout copies: the values and the prefix sums (the float sums keep their
        bits; the int64 ones wrap, so their base does not matter: `_move_rows` re-bases the capped
        sizes')."""
        return (*self._row_values(), self.t_sums, self.t_qsize, self.t_csize)

    def _prefix_counts(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """(flag, its inclusive prefix count) of the two eligibility flags."""
        return ((self.vol_ok, self.t_vol_ok), (self.price_ok, self.t_price_ok))

    def _compact(self, codes: np.ndarray, need: np.ndarray, cutoff: np.ndarray) -> bool:
        """Room for `need` more rows of each of `codes` by dropping, in place, the rows with ts <=
        cutoff[code] of the codes whose region is full: their live rows move to the start of their own
        region and are re-based there, the other codes are not touched. That costs those codes' rows,
        where a re-layout moves every code's (~90 ms for 1.2 M rows at 15k ev/s). Only
        when every full code is left with at least a quarter of its region free (a region is sized at
        twice its live rows, so a steady ticker fills it with about a window of dead rows); otherwise
        nothing changes and False is returned (a re-layout sizes the regions anew)."""
        full = self.tail[codes] + need > self.reg0[codes] + self.cap[codes]
        fcodes, fneed = codes[full], need[full]
        tail, reg0 = self.tail[fcodes], self.reg0[fcodes]
        first = np.minimum(self.first_after(fcodes, cutoff[fcodes]), tail)
        live = tail - first
        if ((live + fneed) * 4 > 3 * self.cap[fcodes]).any():
            return False
        has = live > 0
        self.centre[fcodes[has]] = self.price[first[has]]
        src, grp = ranges(first, tail)
        dst = reg0[grp] + (src - first[grp])
        moved = self._row_values()
        values = [array[src] for array in moved]
        csize = self.csize(src)
        # The slots left behind get what a fresh region has (`_alloc_rows`): the gap sentinel key first,
        # and zeros. Then every whole page of the region past its live rows (zeros, like the slots
        # never written) goes back to the operating system: a steady ticker's region is half dead rows
        # when it is compacted, so this is ~a quarter of the state's memory over a run.
        freed, fgrp = ranges(reg0 + live, tail)
        self.key[freed] = fcodes[fgrp] * K + (K - 1)
        for array in (*self._zeroed(), self.ok_row):
            array[freed] = np.zeros(1, array.dtype)[0]  # a zero of the array's type (`t_sums` is records)
            release_zeroed(array, reg0 + live, reg0 + self.cap[fcodes])
        for array, kept in zip(moved, values, strict=True):
            array[dst] = kept
        self.tail[fcodes] = reg0 + live
        self.released[fcodes] = reg0
        self._resum(dst, self._runs(dst, grp), csize)
        return True

    def _release_dead(self, cutoff: np.ndarray) -> None:
        """Give the operating system back the pages of each code's rows with ts <= cutoff[code] (out of
        reach of every future window) once `RELEASE_DEAD_ROWS` more have gathered since the last time,
        looked for when the latest cutoff has advanced `RELEASE_CHECK_MS` since the last look. In every
        row array but `key` (the searches read it) and `ok_row` (a live row may point at a dead one;
        its ts is read, from the key, to tell it is out of reach). The row just before the first live
        one stays: a batch's prefix sums continue from it. The slots then read as zeros: a dead row's
        values are never read again, and a compaction or re-layout writes its slots anew."""
        ncodes = len(self.tail)
        if not RELEASABLE or ncodes == 0:
            return
        latest = int(cutoff[:ncodes].max())
        if latest - self.release_checked < RELEASE_CHECK_MS:
            return
        self.release_checked = latest
        codes = np.arange(ncodes)
        keep = np.minimum(self.first_after(codes, cutoff[:ncodes]), self.tail) - 1
        due = keep - self.released[codes] >= RELEASE_DEAD_ROWS
        if not due.any():
            return
        codes, keep = codes[due], keep[due]
        for array in self._zeroed():
            release_zeroed(array, self.reg0[codes], keep)
        self.released[codes] = keep

    def _zeroed(self) -> tuple[np.ndarray, ...]:
        """The row arrays whose free slots hold zeros and whose dead rows are given back: all but `key`
        (its free slots hold the gap sentinel) and `ok_row` (zeros too, but a live row may point at a
        dead one)."""
        return (
            self.price, self.size, self.late, self.vol_ok, self.price_ok,
            self.t_sums, self.t_qsize, self.t_csize, self.t_vol_ok, self.t_price_ok,
        )  # fmt: skip

    def _relayout_buckets(
        self, codes: np.ndarray, has: np.ndarray, first: np.ndarray, want: np.ndarray
    ) -> None:
        """New bucket regions for `codes` (all of them, in order), keeping each code's buckets from
        that of its first live row (`first`, where `has`) on, with room for `want` more. Their sums
        are exact integers: re-basing them changes no value."""
        bend = np.int64(len(self.b_key))
        btail = np.r_[self.btail, np.full(len(codes) - len(self.btail), bend)]
        bfirst = btail.copy()
        bfirst[has] = self.bucket_slot(codes[has], self.ts_of(first[has]) // self.bucket_ms)
        blive = btail - bfirst
        bcap = np.maximum(MIN_CAP, 2 * (blive + want))
        bnew0 = np.r_[0, np.cumsum(bcap)[:-1]].astype(np.int64)
        bsrc, bgrp = ranges(bfirst, btail)
        bucket_arrays = ("b_key", "b_id", "b_cap", "b_val")
        keep = [getattr(self, name)[bsrc] for name in bucket_arrays]
        self._alloc_buckets(codes, bcap)
        bdst = bnew0[bgrp] + (bsrc - bfirst[bgrp])
        for name, values in zip(bucket_arrays, keep, strict=True):
            getattr(self, name)[bdst] = values
        self.breg0, self.bcap = bnew0, bcap
        self.btail = bnew0 + blive
        self._resum_buckets(bdst, codes[bgrp])

    def _resum(self, rows: np.ndarray, runs: Runs, csize: np.ndarray | None) -> None:
        """Recompute the prefix sums at `rows` (ascending runs, `runs = _runs(rows, grp)`, each continuing
        from the row just before it when that row is in the same region); the capped sizes' from their
        `csize` (None: not now)."""
        if len(rows) == 0:
            return
        ps, p = self.price_terms(rows)
        self._prefix_sums(rows, runs, (ps, self.size[rows], p))
        pairs: list[tuple[np.ndarray, np.ndarray]] = [(quantise_size(self.size[rows]), self.t_qsize)]
        if csize is not None:
            pairs.append((csize, self.t_csize))
        self._prefix(rows, runs, tuple(pairs))
        self._eligibility_sums(rows, runs)

    def _runs(self, rows: np.ndarray, grp: np.ndarray) -> Runs:
        """(start of each run of `rows` per `grp`, the row just before each run (0 for a run at slot 0),
        whether the run continues that row: it is in the same region). Computed once per merge or
        compaction, and passed to every prefix sum's recomputation."""
        starts = group_starts(grp)
        prev = rows[starts] - 1
        cont = prev >= self.reg0[self.code_of(rows[starts])]
        return starts, np.maximum(prev, 0), cont

    def _eligibility_sums(self, rows: np.ndarray, runs: Runs) -> None:
        """The prefix counts of the two eligibility flags (integers: exact and cheap) and `ok_row` at
        `rows` (ascending `runs`), each run continuing from the row just before it when that row is in
        the same region."""
        starts, prev, cont = runs
        sizes = group_sizes(starts, len(rows))
        for values, through in self._prefix_counts():
            counts = np.cumsum(values[rows].astype(np.int64))
            before = np.concatenate(([0], counts))[starts]  # the batch's count before each run
            base = np.where(cont, through[prev], 0)
            through[rows] = counts + np.repeat(base - before, sizes)
        self._fill_ok_row(rows, runs)

    def t_csize_before(self, rows: np.ndarray) -> np.ndarray:
        """The capped-size prefix sum just before each of `rows` in its region (0 at a region's start)."""
        prev = rows - 1
        inside = prev >= self.reg0[self.code_of(rows)]
        return np.where(inside, self.t_csize[np.maximum(prev, 0)], 0)

    def csize(self, rows: np.ndarray) -> np.ndarray:
        """The capped size of each of `rows` (live rows, whose previous row keeps its sums)."""
        return self.t_csize[rows] - self.t_csize_before(rows)

    def last_ok(self, rows: np.ndarray) -> np.ndarray:
        """The latest price-eligible row <= each of `rows` in its region (int64; -1: none)."""
        return self.ok_row[rows].astype(np.int64) - 1

    def _fill_ok_row(self, rows: np.ndarray, runs: Runs) -> None:
        """`ok_row` at `rows` (ascending `runs`): a forward fill of the price-eligible rows, continuing
        from the row just before each run when it is in the same region."""
        starts, prev, cont = runs
        base = np.where(cont, self.ok_row[prev], 0)
        ok = self.price_ok[rows] > 0
        marker = np.arange(len(rows))
        is_start = np.zeros(len(rows), dtype=bool)
        is_start[starts] = True
        # Runs start at a marked position, so the running max never reaches into the previous run.
        src = np.maximum.accumulate(np.where(ok | is_start, marker, -1))
        run = np.repeat(np.arange(len(starts)), group_sizes(starts, len(rows)))
        self.ok_row[rows] = np.where(ok[src], rows[src] + 1, base[run])

    @staticmethod
    def window_count(
        values: np.ndarray, through: np.ndarray, start: np.ndarray, end: np.ndarray
    ) -> np.ndarray:
        """Σ of a 0/1 flag (`values`, prefix counts `through`) over rows [start, end]: exact, int64."""
        return through[end].astype(np.int64) - through[start] + values[start]

    def price_terms(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What `t_sums` sums at `rows` besides the size: (price − centre) · size and, over the price-eligible
        trades only (the rolling average), price − centre. Computed, not stored: the same float64
        operations on the same values give the same bits the sums were built from."""
        centred = self.price[rows] - self.centre[self.code_of(rows)]
        return centred * self.size[rows], centred * self.price_ok[rows]

    def _prefix(self, rows: np.ndarray, runs: Runs, pairs: tuple[tuple[np.ndarray, np.ndarray], ...]) -> None:
        """Recompute each `through` prefix sum at `rows` (ascending `runs`) from its `values` at those
        rows, each run continuing from the row just before it when that is in the region."""
        starts, prev, cont = runs
        for values, through in pairs:
            base = np.where(cont, through[prev], through.dtype.type(0))
            through[rows] = seg_cumsum(values, starts, base, through.dtype.type)

    def _prefix_sums(self, rows: np.ndarray, runs: Runs, values: tuple[np.ndarray, ...]) -> None:
        """`_prefix` for the packed float sums (`t_sums`), from the `FLOAT_SUMS` terms' `values`."""
        starts, prev, cont = runs
        bases = np.where(cont, self.sums_at(prev), ACC(0))
        self.t_sums[rows] = pack_sums(
            np.stack([seg_cumsum(v, starts, base) for v, base in zip(values, bases, strict=True)])
        )

    def sums_at(self, rows: np.ndarray) -> np.ndarray:
        """The float prefix sums at `rows`, as (FLOAT_SUMS, len(rows)) ACC: (price − centre) · size,
        size and price − centre (the `price_terms` and the effective size), inclusive."""
        return unpack_sums(self.t_sums[rows])

    def _resum_buckets(self, slots: np.ndarray, codes: np.ndarray) -> None:
        """Recompute the bucket prefix sums at `slots` (ascending runs, one per code; `codes[i]` is the
        code of slot i), each run continuing from the slot before it when that is in the code's region."""
        if len(slots) == 0:
            return
        starts = group_starts(codes)
        prev = slots[starts] - 1
        cont = prev >= self.breg0[codes[starts]]
        val = self.b_val[slots]
        limbs = square_limbs(val)
        for values, through in ((val, self.b_t1), *zip(limbs, self.b_t2, strict=True)):
            base = np.where(cont, through[np.maximum(prev, 0)], 0)
            through[slots] = seg_cumsum(values, starts, base, np.int64)

    def merge(
        self,
        code: np.ndarray,
        ts: np.ndarray,
        price: np.ndarray,
        size: np.ndarray,
        late: np.ndarray,
        closed_end: np.ndarray,
        vol_ok: np.ndarray,
        price_ok: np.ndarray,
    ) -> np.ndarray:
        """Insert trades sorted by (code, ts, arrival) (room reserved); returns their rows.
        `closed_end[i]`: end of the last z-score bucket closed when trade i was accepted (its cap).
        `size` is the effective size (0 when not volume-eligible); `vol_ok` / `price_ok` the masks."""
        ustart = group_starts(code)
        ucode, ucount = code[ustart], group_sizes(ustart, len(code))
        ins = self.first_after(ucode, ts[ustart])  # equal ts: earlier arrivals (the state) first
        tail = self.tail[ucode]
        fresh = tail == self.reg0[ucode]
        self.centre[ucode[fresh]] = price[ustart[fresh]]
        sidx, _ = ranges(ins, tail)
        ns = len(sidx)
        csize = np.concatenate((self.csize(sidx), quantise_size(size)))  # the batch's caps follow
        ckey = np.concatenate((self.key[sidx], code * K + kts(ts)))
        order = np.argsort(ckey, kind="stable")  # state suffix before the batch on equal keys
        total = (tail - ins) + ucount
        grp = np.repeat(np.arange(len(ucode)), total)
        dest = ins[grp] + np.arange(len(grp)) - np.repeat(np.cumsum(total) - total, total)
        self.key[dest] = ckey[order]
        self.price[dest] = np.concatenate((self.price[sidx], price))[order]
        self.size[dest] = np.concatenate((self.size[sidx], size))[order]
        self.late[dest] = np.concatenate((self.late[sidx], late))[order]
        csize = csize[order]
        self.vol_ok[dest] = np.concatenate((self.vol_ok[sidx], vol_ok))[order]
        self.price_ok[dest] = np.concatenate((self.price_ok[sidx], price_ok))[order]
        self.tail[ucode] = tail + ucount
        # With a cap, the batch's capped sizes need the size sums first; their own sums follow below.
        runs = self._runs(dest, grp)
        self._resum(dest, runs, None if self.cap_multiple > 0 else csize)
        rows = np.empty(len(code), dtype=np.int64)
        is_batch = order >= ns
        rows[order[is_batch] - ns] = dest[is_batch]
        if self.cap_multiple > 0:
            # Cap = multiple × mean size over the closed buckets of the cap window. Every row there was
            # accepted before the trade (a later arrival in a closed bucket is late), so the state's
            # plain prefix sums hold exactly those rows (and, fixed point, exactly their sum).
            own = ts // self.bucket_ms * self.bucket_ms
            lo = self.first_at(code, own - self.cap_window_ms)
            hi = np.maximum(self.first_at(code, np.minimum(closed_end, own)), lo)
            # The mean is over the volume-eligible trades (the others have effective size 0).
            n = np.zeros(len(code), dtype=np.int64)
            rows_in = hi > lo
            n[rows_in] = self.window_count(self.vol_ok, self.t_vol_ok, lo[rows_in], hi[rows_in] - 1)
            has = n > 0
            lo_h, hi_h = lo[has], hi[has]
            total = self.t_qsize[hi_h - 1] - (self.t_qsize[lo_h] - quantise_size(self.size[lo_h]))
            qsize = quantise_size(size)
            capped = qsize.copy()
            cap = np.floor(self.cap_multiple * total.astype(np.float64) / n[has])
            capped[has] = np.minimum(qsize[has], cap).astype(np.int64)
            csize[is_batch] = capped[order[is_batch] - ns]
            self._prefix(dest, runs, ((csize, self.t_csize),))

        # Buckets from the batch's earliest bucket of each code on, recomputed from the rows.
        bucket_ms = self.bucket_ms
        minb = ts[ustart] // bucket_ms
        ridx, rgrp = ranges(self.first_at(ucode, minb * bucket_ms), self.tail[ucode])
        rb = self.ts_of(ridx) // bucket_ms
        bstart = group_starts(rgrp, rb)
        bgrp = rgrp[bstart]
        nb = np.bincount(bgrp, minlength=len(ucode))
        slot0 = self.bucket_slot(ucode, minb)
        slots = slot0[bgrp] + np.arange(len(bgrp)) - np.repeat(np.cumsum(nb) - nb, nb)
        self.b_id[slots] = rb[bstart]
        self.b_key[slots] = ucode[bgrp] * K + kts(rb[bstart])
        self.b_cap[slots] = np.add.reduceat(self.csize(ridx), bstart) if len(ridx) else 0
        self.b_val[slots] = self.bucket_value(self.b_cap[slots])
        self.btail[ucode] = slot0 + nb
        self._resum_buckets(slots, ucode[bgrp])
        return rows
