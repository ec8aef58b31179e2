"""The volume z-score is a deterministic function of the accepted trades and their arrival order, to
the bit: the same trades in any batch split, and a fresh engine that replays the rebuild's look-back
(a restart), give bit-identical per-trade z-scores (the news join's input) and snapshot z-scores; and
the news join gives identical correlations for the same z-score and article stream in any batch
split and advance schedule.

Anything "close" would not do: a correlation, an anomaly and the cold rows are compared field by field
across kill -9 restarts (`tests/reliability/test_chaos.py`), so a z-score that rounds differently after
a restart is a different output.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.test_features import Event, make_stream, split
from tests.core.test_news_join import article
from tradepulse.core.columns import QuoteColumns, TradeColumns
from tradepulse.core.feature_config import FeatureConfig
from tradepulse.core.features import FeatureEngine
from tradepulse.core.news_join import NewsJoiner

CFG = FeatureConfig()
Batch = tuple[list[dict], list[dict]]


def fractional(events: list[Event], seed: int) -> list[Event]:
    """The test stream with fractional sizes (sums of these round; integer sizes would not)."""
    rng = np.random.default_rng(seed)
    out: list[Event] = []
    for kind, record in events:
        if kind == "T":
            record = record | {"size": round(record["size"] * float(rng.uniform(0.1, 3.0)), 3)}
        out.append((kind, record))
    return out


@pytest.fixture(scope="module")
def stream() -> list[Event]:
    return fractional(make_stream(seed=21, tickers=("AAA", "BBB", "CCC", "DDD"), seconds=600), seed=5)


def run(batches: list[Batch], engine: FeatureEngine | None = None) -> tuple[dict, dict]:
    """Per accepted trade (by event id) its z-score as fed to the news join, and per snapshot
    (ticker, ts) its `volume_zscore`; both as the float64 bit patterns."""
    engine = engine or FeatureEngine(CFG)
    per_trade: dict[str, int] = {}
    snapshots: dict[tuple[str, int], int] = {}
    for trades, quotes in batches:
        out = engine.process(TradeColumns.from_records(trades), QuoteColumns.from_records(quotes))
        bits = out.zscores["volume_zscore"].view(np.int64)
        ids = out.per_trade["event_id"]
        assert np.array_equal(out.zscores["ts_ms"], out.per_trade["ts_ms"])
        per_trade.update(zip(ids.tolist(), bits.tolist(), strict=True))
        for snap in out.snapshots:
            snapshots[snap["ticker"], snap["ts_ms"]] = int(np.float64(snap["volume_zscore"]).view(np.int64))
    return per_trade, snapshots


def differing(got: dict, want: dict) -> list:
    assert got.keys() == want.keys()
    return [key for key in want if got[key] != want[key]]


@pytest.fixture(scope="module")
def one_batch(stream: list[Event]) -> tuple[dict, dict]:
    return run(split(stream, []))


def test_the_stream_exercises_the_z_score(one_batch: tuple[dict, dict]) -> None:
    """Guard against a vacuous comparison: many non-zero z-scores, some extreme ones."""
    z = np.array(list(one_batch[0].values()), dtype=np.int64).view(np.float64)
    assert (z != 0).sum() > 2000 and (np.abs(z) > 2.5).sum() > 10


@pytest.mark.parametrize("hi", [50, 400, 3000])
def test_any_batch_split_gives_bit_identical_z_scores(
    stream: list[Event], one_batch: tuple[dict, dict], hi: int
) -> None:
    rng = np.random.default_rng(hi)
    per_trade, snapshots = run(split(stream, list(rng.integers(1, hi, len(stream)))))
    assert differing(per_trade, one_batch[0]) == []
    assert differing(snapshots, one_batch[1]) == []


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 400), min_size=1, max_size=60))
def test_batch_splits_property(stream: list[Event], one_batch: tuple[dict, dict], sizes: list[int]) -> None:
    per_trade, snapshots = run(split(stream, sizes))
    assert differing(per_trade, one_batch[0]) == []
    assert differing(snapshots, one_batch[1]) == []


def arrival_times(events: list[Event]) -> np.ndarray:
    """Record timestamps as the live ingest has them: the receive time, here the arrival order's
    running maximum of exchange time (a delayed trade is received late)."""
    ts = np.array([record["exchange_ts_ms"] for _, record in events], dtype=np.int64)
    return np.maximum.accumulate(ts)


@pytest.mark.parametrize("restart_at", [0.45, 0.7, 0.9])
def test_a_restarted_engine_gives_bit_identical_z_scores(
    stream: list[Event], one_batch: tuple[dict, dict], restart_at: float
) -> None:
    """A fresh engine that replays the look-back before the committed position (as
    `tradepulse.bus.rebuild` does: records with a timestamp at or after the last one − look-back, in
    chunks), then carries on, emits the z-scores of an uninterrupted run for everything after it."""
    committed = int(len(stream) * restart_at)
    record_ts = arrival_times(stream)
    lookback_ms = CFG.rebuild_ms
    start = int(np.searchsorted(record_ts, record_ts[committed - 1] - lookback_ms, side="left"))
    engine = FeatureEngine(CFG)
    run(split(stream[start:committed], [500] * len(stream)), engine)  # the rebuild: outputs discarded
    per_trade, snapshots = run(split(stream[committed:], [37, 250, 1, 900] * len(stream)), engine)
    after = {key: bits for key, bits in one_batch[0].items() if key in per_trade}
    assert len(after) == len(per_trade) > 300
    assert differing(per_trade, after) == []
    # Snapshots whose windows the look-back covers. (A quiet ticker's second can stay open for longer
    # than that: its snapshot, emitted at its next trade, needs trades from before the look-back.)
    reach = record_ts[start] + lookback_ms
    snapshots = {key: bits for key, bits in snapshots.items() if key[1] >= reach}
    snap_after = {key: bits for key, bits in one_batch[1].items() if key in snapshots}
    assert len(snap_after) == len(snapshots) > 100
    assert differing(snapshots, snap_after) == []


# --- the news join -------------------------------------------------------------------------------
T0 = 1_764_000_000_000


def join_stream(seed: int) -> list[tuple[str, object]]:
    """z-scores as the feature engine hands them to the join (arrival order, some up to the 2 s grace
    behind their ticker's newest), spikes, and articles around them, one of them after a quiet spell of
    its ticker that is about the join's memory long."""
    rng = np.random.default_rng(seed)
    events: list[tuple[float, str, object]] = []
    for k, ticker in enumerate(("AAA", "BBB")):
        ts = np.sort(rng.integers(0, 900_000, 3000)).astype(np.int64)
        if k == 1:  # quiet from 100 s to ~705 s: the last point before the article below is ~10 min old
            ts = ts[(ts < 100_000) | (ts > 705_000)]
        z = rng.normal(0, 1, len(ts))
        z[rng.random(len(ts)) < 0.01] = rng.uniform(2, 6)
        delay = np.where(rng.random(len(ts)) < 0.1, rng.integers(0, 2000, len(ts)), 0)  # within grace
        for t, zv, d in zip(ts.tolist(), z.tolist(), delay.tolist(), strict=True):
            events.append((t + d, "z", (ticker, T0 + t, zv)))
        for i, t in enumerate(rng.integers(60_000, 800_000, 12).tolist()):
            events.append((float(t), "a", article(1000 * k + i, ticker, T0 + t)))
    events.append((700_000.0, "a", article(99, "BBB", T0 + 705_500)))
    events.sort(key=lambda e: e[0])
    return [(kind, item) for _, kind, item in events]


def run_join(events: list[tuple[str, object]], sizes: list[int], joiner: NewsJoiner) -> dict[str, dict]:
    """Feed the stream in batches of `sizes` (then the rest), advancing after each batch with every
    ticker's newest z-score time as its watermark (what the runner does); returns the correlations."""
    out: dict[str, dict] = {}
    watermark: dict[str, int] = {}
    start = 0
    for size in [*sizes, len(events)]:
        batch = events[start : start + size]
        start += size
        points = [item for kind, item in batch if kind == "z"]
        articles = [item for kind, item in batch if kind == "a"]
        if articles:
            joiner.add_articles(articles)  # type: ignore[arg-type]
        if points:
            tk, ts, z = zip(*points, strict=True)  # type: ignore[misc]
            joiner.add_zscores(np.array(tk, dtype=object), np.array(ts), np.array(z))
            for ticker, t in zip(tk, ts, strict=True):
                watermark[ticker] = max(watermark.get(ticker, t), t)
        for row in joiner.advance(dict(watermark)):
            assert row["correlation_id"] not in out
            out[row["correlation_id"]] = row
        if start >= len(events):
            break
    for row in joiner.flush():
        out[row["correlation_id"]] = row
    return out


def correlation_joiner() -> NewsJoiner:
    """The joiner as the runner builds it: z-scores can still arrive up to the feature engine's grace
    behind their ticker's watermark."""
    return NewsJoiner(settle_ms=CFG.zscore_settle_ms)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_news_join_does_not_depend_on_the_batch_split(seed: int) -> None:
    events = join_stream(seed)
    # One event at a time as the baseline (one batch of the whole stream would hand the joiner
    # z-scores further ahead of its watermark than its rings hold, outside its design bound).
    want = run_join(events, [1] * len(events), correlation_joiner())
    assert len(want) == 25 and sum(r["matched_zscore"] is not None for r in want.values()) > 5
    rng = np.random.default_rng(seed)
    for hi in (5, 50, 3000):
        got = run_join(events, list(rng.integers(1, hi, len(events))), correlation_joiner())
        assert got == want, sorted(k for k in want if got.get(k) != want[k])


def test_a_spike_still_within_the_grace_joins_whatever_the_split() -> None:
    """The feature engine still accepts a trade up to its grace behind the watermark: an article whose
    window end the watermark has just passed must wait for it, or the split decides the match."""
    spike = [("z", ("AAA", T0 + 59_000, 4.5))]  # arrives after a trade at T0 + 60.5 s, within the grace
    head = [("a", article(1, "AAA", T0))] + [("z", ("AAA", T0 + t, 0.2)) for t in range(-5000, 60_501, 500)]
    tail = [("z", ("AAA", T0 + t, 0.1)) for t in range(61_000, 70_000, 500)]
    events = head + spike + tail
    together = run_join(events, [len(head) + 1], correlation_joiner())
    apart = run_join(events, [len(head)], correlation_joiner())
    assert [r["matched_zscore"] for r in together.values()] == [4.5]
    assert apart == together
