"""`string_hashes` is pandas' `hash_array(strings, categorize=False)`, bit for bit, without pandas (the
reference here: pandas is a development dependency; the runner does not load it)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tradepulse.core.row_hash import string_hashes
from tradepulse.ids import trade_event_id


def pandas_hashes(strings: list[str]) -> list[int]:
    values: list[int] = pd.util.hash_array(np.array(strings, dtype=object), categorize=False).tolist()
    return values


@pytest.mark.parametrize("seed", range(3))
def test_equal_to_pandas_for_any_length_and_any_characters(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Every length from 0 to 40 bytes and beyond (block boundaries at 8, 16, 24 …), ASCII to CJK.
    strings = ["".join(map(chr, rng.integers(32, 0x3000, rng.integers(0, 30)))) for _ in range(2_000)]
    strings += ["x" * n for n in range(0, 41)] + ["", "é", "\U0001f600"]
    assert string_hashes(strings).tolist() == pandas_hashes(strings)


def test_equal_to_pandas_for_our_event_ids_and_pinned() -> None:
    ids = [trade_event_id("AAPL", 4, str(n), 1_764_772_200_000 + n, n) for n in range(1_000)]
    assert string_hashes(ids).tolist() == pandas_hashes(ids)
    assert string_hashes([]).dtype == np.uint64 and len(string_hashes([])) == 0
    # The values checkpoints hold (tests/core/test_anomaly.py pins them through `row_keys` too).
    assert string_hashes(["AAPL-1", "MSFT-42"]).tolist() == [1402087537774936940, 15531035983199011399]
