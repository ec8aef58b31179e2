"""The trade state's array helpers against the plain numpy they replace (the engine's tests cover them
in use; these pin the edge cases: no runs, one run, a run at the very end)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tradepulse.core.trade_state import KOFF, K, group_sizes, group_starts, kts


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
