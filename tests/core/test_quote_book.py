"""The feature core's quote book: the spread a trade sees, before and after trimming."""

from __future__ import annotations

import numpy as np

from tradepulse.core.columns import QuoteColumns
from tradepulse.core.feature_config import FeatureConfig
from tradepulse.core.quote_book import QuoteBook
from tradepulse.core.trade_state import NO_TS


def _naive_spread(quotes: list[tuple[int, int, int, float]], code: int, t: int) -> float:
    """The spread of the latest quote (by ts, then arrival) of `code` with ts <= t; NaN when none."""
    seen = [(ts, arrival, spread) for c, ts, arrival, spread in quotes if c == code and ts <= t]
    return max(seen)[2] if seen else float("nan")


def test_a_trimmed_book_answers_every_trade_it_may_still_see_as_the_whole_book_does() -> None:
    rng = np.random.default_rng(5)
    cfg = FeatureConfig()
    book, ncodes = QuoteBook(), 7
    book.grow(ncodes)
    held: list[tuple[int, int, int, float]] = []  # (code, ts, arrival, spread) of every quote ingested
    trade_wm = np.full(ncodes, NO_TS)
    arrival = 0
    for step in range(40):
        n = int(rng.integers(1, 60))
        codes = rng.integers(0, ncodes, n)
        ts = step * 700 + rng.integers(-3000, 800, n)  # out of order, equal times included
        bid = np.round(rng.uniform(9, 10, n), 2)
        ask = bid + np.where(rng.random(n) < 0.1, -1.0, rng.integers(1, 5, n) / 100)  # some crossed
        names = np.array([f"T{c}" for c in codes], dtype=object)
        book.ingest(codes, QuoteColumns(names, bid, ask, ts, np.arange(arrival, arrival + n)))
        for i in range(n):
            spread = ask[i] - bid[i] if ask[i] > 0 and bid[i] > 0 else float("nan")
            held.append((int(codes[i]), int(ts[i]), arrival + i, float(spread)))
        arrival += n
        moved = rng.random(ncodes) < 0.6
        trade_wm = np.where(moved, np.maximum(trade_wm, step * 700 + rng.integers(0, 700, ncodes)), trade_wm)
        book.trim(trade_wm, cfg)
        # Every trade still to come has ts >= wm − grace, and the snapshots still to close start at the
        # second holding that time.
        code = np.repeat(np.arange(ncodes), 20)
        open_from = (trade_wm - cfg.late_grace_ms) // cfg.snapshot_ms * cfg.snapshot_ms
        lowest = np.where(trade_wm > NO_TS, open_from, step * 700 - 3000)
        t = lowest[code] + rng.integers(0, 4000, len(code))
        got = book.spread_at(code, t)
        want = np.array([_naive_spread(held, int(c), int(x)) for c, x in zip(code, t, strict=True)])
        np.testing.assert_array_equal(got, want)
    assert len(book) < len(held) / 2  # the trims dropped quotes
