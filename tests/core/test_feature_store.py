"""FeatureStore: latest per ticker only moves forward; snapshot rings are bounded and queryable."""

from __future__ import annotations

from tradepulse.core.columns import QuoteColumns, TradeColumns
from tradepulse.core.feature_store import FeatureStore
from tradepulse.core.features import FeatureEngine

T0 = 1_700_000_000_000


def trade(ticker: str, ts: int, price: float, i: int) -> dict:
    return {"ticker": ticker, "price": price, "size": 10.0, "exchange_ts_ms": T0 + ts, "sequence": i, "event_id": f"{ticker}{i}"}  # fmt: skip


def test_latest_and_snapshots_from_engine_output() -> None:
    engine, store = FeatureEngine(), FeatureStore(max_snapshots=5)
    trades = [trade("A", 1000 * s + 10, 10.0 + s, s) for s in range(12)] + [trade("B", 500, 7.0, 99)]
    for chunk in (trades[:4], trades[4:]):
        store.update(engine.process(TradeColumns.from_records(chunk), QuoteColumns.empty()))
    assert store.tickers() == ["A", "B"]
    assert store.latest("A")["price"] == 21.0 and store.latest("C") is None
    # Seconds 0..8 of A closed (second 8 ends at 9000 <= watermark 11010 − grace 2000); the ring
    # keeps the newest 5.
    assert [s["ts_ms"] - T0 for s in store.snapshots("A")] == [4010, 5010, 6010, 7010, 8010]
    assert [s["ts_ms"] - T0 for s in store.snapshots("A", since_ms=T0 + 7000)] == [7010, 8010]
    assert store.snapshots("B") == [] and store.snapshots("nope") == []

    # A folded-in trade 1.5 s behind the watermark does not move `latest` back in time.
    store.update(engine.process(TradeColumns.from_records([trade("A", 9600, 1.0, 50)]), QuoteColumns.empty()))
    assert store.latest("A")["price"] == 21.0
