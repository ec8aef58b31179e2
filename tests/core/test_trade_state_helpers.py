"""The trade state's array helpers against the plain numpy they replace (the engine's tests cover them
in use; these pin the edge cases: no runs, one run, a run at the very end), and the packing of the
float prefix sums against the values packed."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tradepulse.core.trade_state import (
    ACC,
    ACC_BYTES,
    FLOAT_SUMS,
    KOFF,
    SUMS_DTYPE,
    K,
    group_sizes,
    group_starts,
    kts,
    pack_sums,
    unpack_sums,
)


@given(st.lists(st.integers(0, 3), max_size=40))
def test_group_sizes_are_the_run_lengths(values: list[int]) -> None:
    keys = np.asarray(values, dtype=np.int64)
    starts = group_starts(keys)
    sizes = group_sizes(starts, len(keys))
    assert sizes.dtype == np.int64
    assert sizes.tolist() == np.diff(np.r_[starts, len(keys)]).tolist()
    assert int(sizes.sum()) == len(keys)


@given(st.lists(st.integers(-(2**44), 2**44), max_size=20))
def test_kts_clips_like_np_clip(values: list[int]) -> None:
    ts = np.asarray(values, dtype=np.int64)
    assert kts(ts).tolist() == np.clip(ts + KOFF, 0, int(K) - 2).tolist()
    if values:
        assert int(kts(values[0])) == int(np.clip(values[0] + KOFF, 0, int(K) - 2))


def value_bytes(values: np.ndarray) -> list[bytes]:
    """The bytes of each ACC that hold its value (not the padding of x86's 80-bit format)."""
    raw = np.ascontiguousarray(values, dtype=ACC).view(np.uint8).reshape(len(values), np.dtype(ACC).itemsize)
    return [row[:ACC_BYTES].tobytes() for row in raw]


finite = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)


@given(st.lists(st.tuples(finite, finite, finite, st.integers(-70, 70)), max_size=30))
def test_packed_sums_unpack_to_the_same_bits(rows: list[tuple[float, float, float, int]]) -> None:
    # Sums of float64 terms carry more mantissa bits than a float64: scale by 2^k and add a third of a
    # value so that the low bits of the extended format are in use too.
    sums = np.zeros((FLOAT_SUMS, len(rows)), dtype=ACC)
    for i, (a, b, c, k) in enumerate(rows):
        sums[:, i] = [np.ldexp(ACC(a), k) + ACC(b) / 3, ACC(b), -ACC(c) / 7]
    packed = pack_sums(sums)
    assert packed.dtype == SUMS_DTYPE and packed.shape == (len(rows),)
    unpacked = unpack_sums(packed)
    assert unpacked.dtype == ACC and unpacked.shape == sums.shape
    for got, want in zip(unpacked, sums, strict=True):
        assert value_bytes(got) == value_bytes(want)
        assert np.array_equal(got, want)
    reordered = unpack_sums(packed[::-1])  # a gather of records, as the state reads them
    assert np.array_equal(reordered, sums[:, ::-1])
