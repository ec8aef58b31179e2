"""`factorize`, the core's hash factorisation (the features, bars, outliers, anomaly detector and
condition rules group their rows by it): pandas' `factorize` is the reference on the inputs the core
sees (pandas is a development dependency here; the runner no longer loads it)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tradepulse.core.columns import factorize, object_array


@pytest.mark.parametrize("n", [0, 1, 7, 5_000])
def test_codes_and_uniques_are_pandas_on_ticker_columns(n: int) -> None:
    rng = np.random.default_rng(n)
    tickers = object_array([f"T{i:03d}" for i in rng.zipf(1.3, n) % 300])
    codes, uniques = factorize(tickers)
    expected_codes, expected_uniques = pd.factorize(tickers)
    assert codes.dtype == np.int64 and uniques.dtype == object and uniques.ndim == 1
    assert codes.tolist() == expected_codes.tolist()
    assert uniques.tolist() == expected_uniques.tolist()
    assert [type(u) for u in factorize(np.array(["B", "A", "B"]))[1]] == [str, str]  # not numpy scalars


def test_tuples_stay_one_value_each_and_none_is_a_value() -> None:
    codes, uniques = factorize([(), (12, 37), None, (12, 37), (), None])
    assert codes.tolist() == [0, 1, 2, 1, 0, 2]
    assert uniques.shape == (3,) and uniques.tolist() == [(), (12, 37), None]
    codes, uniques = factorize(map(tuple, [[4], [4], [1, 2]]))  # any iterable, e.g. a map
    assert codes.tolist() == [0, 0, 1] and uniques.tolist() == [(4,), (1, 2)]
    with pytest.raises(TypeError):
        factorize([[1], [1]])  # unhashable: the caller's fallback (`conditions._factorize`) handles it
