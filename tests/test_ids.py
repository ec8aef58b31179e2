"""Event ids are stored (hot store keys, cold files, dead letters, anomaly ids): they must never change.
Pinned values, and the per-kind ids equal the generic `stable_id` of the same parts."""

from __future__ import annotations

import numpy as np

from tradepulse.ids import quote_event_id, stable_id, trade_event_id


def test_event_ids_are_pinned() -> None:
    assert trade_event_id("AAPL", 4, "52983525029461", 1733300000123, 1001) == "af8bb56cd4b3fa4e"
    assert trade_event_id("BRK.B", 12, "x-7", 1, 0) == "03adb474f9a91bc3"
    assert quote_event_id("MSFT", 1733300000456, 2002) == "f804a6215b50ab27"
    assert quote_event_id("Z", 0, 9223372036854775807) == "c762dec0e2d90cb8"


def test_event_ids_are_the_stable_id_of_their_parts() -> None:
    rng = np.random.default_rng(3)
    for _ in range(500):
        ticker = "".join(rng.choice(list("ABCXYZ.-"), size=int(rng.integers(1, 8))))
        exchange, ts, seq = (int(v) for v in rng.integers(0, 2**62, size=3))
        trade_id = str(int(rng.integers(0, 2**40)))
        assert trade_event_id(ticker, exchange, trade_id, ts, seq) == stable_id(
            "T", ticker, exchange, trade_id, ts, seq
        )
        assert quote_event_id(ticker, ts, seq) == stable_id("Q", ticker, ts, seq)
