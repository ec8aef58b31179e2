"""Revisions of the feature snapshots (issue 19, fresh features): what holds across batch splits.

`tests/core/test_features.py` checks every revision the engine emits against the naive reference for
the same split. Which provisional revisions are emitted depends on the batch boundaries (one per ticker
per batch), so across splits the tests here assert the identity the topic promises instead:

- the final revision of every (ticker, second) is the same, number included, whatever the split
  (floats to 1e-9 like every cross-split comparison of the core; the runner's tests compare bits);
- a (ticker, second, revision) names one vector: the same one in every split that emits it;
- per (ticker, second), revisions strictly grow in emission order and the final one is the last;
- at most one provisional revision per ticker per batch, and every trade accepted in a batch is in a
  revision emitted by that batch (freshness: no trade waits for the grace period to be seen).
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests.core.test_features import (
    REVISION_KEYS,
    Event,
    assert_vector_equal,
    flat,
    make_stream,
    random_sizes,
    run_engine,
    split,
)
from tradepulse.core.columns import QuoteColumns, TradeColumns
from tradepulse.core.features import FeatureConfig, FeatureEngine
from tradepulse.models import FeatureVector

Key = tuple[str, int, int]  # (ticker, snapshot_start_ms, revision)


@pytest.fixture(scope="module")
def stream() -> list[Event]:
    return make_stream(seed=7)


def emitted(results: list[dict]) -> list[dict]:
    """Every revision in emission order: per batch the finals, then the provisional ones."""
    return [v for r in results for v in (*r["snapshots"], *r["provisional"])]


def by_key(results: list[dict]) -> dict[Key, dict]:
    out: dict[Key, dict] = {}
    for v in emitted(results):
        key = (v["ticker"], v["snapshot_start_ms"], v["revision"])
        assert key not in out, f"duplicate revision {key}"
        out[key] = v
    return out


SPLITS = {
    "whole": [],
    "small": random_sizes(1, 2000, hi=5),
    "mixed": random_sizes(2, 400, hi=60),
    "large": random_sizes(3, 40, hi=900),
}


@pytest.fixture(scope="module")
def runs(stream: list[Event]) -> dict[str, list[dict]]:
    return {name: run_engine(split(stream, sizes)) for name, sizes in SPLITS.items()}


def test_final_revisions_do_not_depend_on_the_split(runs: dict[str, list[dict]]) -> None:
    finals = {
        name: sorted(flat(r, "snapshots"), key=lambda v: (v["ticker"], v["ts_ms"]))
        for name, r in runs.items()
    }
    want = finals["whole"]
    assert len(want) > 1000 and all(v["final"] for v in want)
    for name, got in finals.items():
        assert len(got) == len(want), name
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            # Revision numbers exactly; floats as in test_features (the batch split rounds differently).
            assert_vector_equal(g, w, f"{name} final {i}")


def test_a_revision_names_one_vector_in_every_split(runs: dict[str, list[dict]]) -> None:
    keyed = {name: by_key(r) for name, r in runs.items()}
    common = 0
    for name, got in keyed.items():
        for other, theirs in keyed.items():
            if other <= name:
                continue
            for key in got.keys() & theirs.keys():
                assert_vector_equal(got[key], theirs[key], f"{name} vs {other} {key}")
                common += 1
    assert common > 5000  # the splits share many provisional revisions, not only the finals
    # Smaller batches emit more intermediate revisions.
    assert len(keyed["small"]) > len(keyed["mixed"]) > len(keyed["large"]) > len(keyed["whole"])


@pytest.mark.parametrize("name", list(SPLITS))
def test_revisions_grow_and_the_final_is_last(runs: dict[str, list[dict]], name: str) -> None:
    seen: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for v in emitted(runs[name]):
        seen[v["ticker"], v["snapshot_start_ms"]].append(v)
    revised = 0
    for key, revisions in seen.items():
        numbers = [v["revision"] for v in revisions]
        assert numbers == sorted(set(numbers)), (key, numbers)  # strictly increasing
        assert numbers[0] >= 1
        assert all(not v["final"] for v in revisions[:-1]), key
        revised += len(revisions) > 1
    if name != "whole":  # seconds with several revisions: many in small batches, some in large ones
        assert revised > (20 if name == "large" else 100)
    # The still-open seconds at the end of the stream have provisional revisions only.
    assert any(not revisions[-1]["final"] for revisions in seen.values())


@pytest.mark.parametrize("name", ["small", "mixed", "large"])
def test_one_provisional_per_ticker_per_batch_covering_its_trades(
    runs: dict[str, list[dict]], name: str
) -> None:
    for r in runs[name]:
        tickers = [v["ticker"] for v in r["provisional"]]
        assert len(tickers) == len(set(tickers))
        newest = {v["ticker"]: v["ts_ms"] for v in r["provisional"]}
        accepted = r["arrays"]
        assert set(newest) == set(accepted["ticker"])
        for ticker, ts in zip(accepted["ticker"], accepted["ts_ms"], strict=True):
            # The vector as of the ticker's latest trade holds every accepted trade of the batch.
            assert ts <= newest[ticker]


def test_revisions_are_valid_models(runs: dict[str, list[dict]]) -> None:
    for v in emitted(runs["mixed"])[::50]:
        model = FeatureVector.model_validate(v)
        assert all(getattr(model, key) == v[key] for key in REVISION_KEYS)


def test_provisional_revisions_can_be_turned_off(stream: list[Event]) -> None:
    batches = split(stream, random_sizes(2, 400, hi=60))
    engine = FeatureEngine(FeatureConfig(provisional=False))
    finals = []
    for trades, quotes in batches:
        out = engine.process(TradeColumns.from_records(trades), QuoteColumns.from_records(quotes))
        assert out.provisional == []
        finals += out.snapshots
    assert finals == flat(run_engine(batches), "snapshots")


def test_final_trade_times_are_the_trades_of_the_closing_seconds(stream: list[Event]) -> None:
    """`final_trade_ts_ms`: the event times of the accepted trades whose second closed in the batch
    (what the runner's freshness measurement records for the final revision): every accepted trade
    exactly once, in the batch that emits the final revision of its second."""
    cfg = FeatureConfig()
    engine = FeatureEngine(cfg)
    got: list[tuple[str, int]] = []
    accepted: list[tuple[str, int]] = []
    for trades, quotes in split(stream, random_sizes(4, 300, hi=80)):
        out = engine.process(TradeColumns.from_records(trades), QuoteColumns.from_records(quotes))
        closing = {(v["ticker"], v["snapshot_start_ms"]) for v in out.snapshots}
        pairs = list(zip(out.final_trade_ticker.tolist(), out.final_trade_ts_ms.tolist(), strict=True))
        assert {(tk, ts // cfg.snapshot_ms * cfg.snapshot_ms) for tk, ts in pairs} == closing
        got += pairs
        accepted += zip(out.per_trade["ticker"].tolist(), out.per_trade["ts_ms"].tolist(), strict=True)
    watermark: dict[str, int] = {}
    for tk, ts in accepted:
        watermark[tk] = max(ts, watermark.get(tk, ts))
    still_open = [
        (tk, ts)
        for tk, ts in accepted
        if (ts // cfg.snapshot_ms + 1) * cfg.snapshot_ms > watermark[tk] - cfg.late_grace_ms
    ]
    assert 0 < len(still_open) < 100
    assert sorted(got) == sorted(_minus(accepted, still_open))


def _minus(items: list[tuple[str, int]], remove: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Multiset difference."""
    counts: dict[tuple[str, int], int] = defaultdict(int)
    for item in remove:
        counts[item] += 1
    out = []
    for item in items:
        if counts[item]:
            counts[item] -= 1
        else:
            out.append(item)
    return out
