"""Revisions of the feature snapshots (issue 19, fresh features): what holds across batch splits.

`tests/core/test_features.py` checks every revision the engine emits against the naive reference for
the same split. Which provisional revisions are emitted depends on the batch boundaries (one per ticker
per batch), so across splits the tests here assert the identity the topic promises instead:

- the final revision of every (ticker, second) is the same, number included, whatever the split
  (floats to 1e-9 like every cross-split comparison of the core; the runner's tests compare bits);
- a (ticker, second, revision) names one vector: the same one in every split that emits it;
- per (ticker, second), revisions strictly grow in emission order and the final one is the last;
- at most one provisional revision per ticker per batch, and every trade accepted in a batch is in a
  revision emitted by that batch (freshness: no trade waits for the grace period to be seen);
- paced by a clock (`revision_interval_ms`), a ticker's revisions are at least the interval apart, each
  trade is in the next one of its ticker (an empty batch's too), and each is the vector the unpaced run
  names by the same (ticker, second, revision).
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


# --- paced revisions (`revision_interval_ms` on the caller's clock) ----------------------------------
INTERVAL_MS = 250.0
STEP_MS = 40.0  # the clock advances this much per batch: a ticker is due a revision every ~7 batches


def paced(batches: list[tuple[list[dict], list[dict]]]) -> tuple[FeatureEngine, list[tuple[float, dict]]]:
    """Run `batches` with the clock at STEP_MS per batch, then one empty batch once all are due."""
    engine = FeatureEngine(FeatureConfig(revision_interval_ms=INTERVAL_MS))
    results = []
    clock = 0.0
    for trades, quotes in [*batches, ([], [])]:
        if not trades and not quotes:
            clock += INTERVAL_MS
        out = engine.process(
            TradeColumns.from_records(trades), QuoteColumns.from_records(quotes), clock_ms=clock
        )
        results.append(
            (
                clock,
                {
                    "arrays": out.per_trade,
                    "snapshots": out.snapshots,
                    "provisional": out.provisional,
                    "first_ts": out.provisional_trade_ts_ms,
                },
            )
        )
        clock += STEP_MS
    return engine, results


@pytest.fixture(scope="module")
def paced_run(stream: list[Event]) -> tuple[FeatureEngine, list[tuple[float, dict]]]:
    return paced(split(stream, SPLITS["mixed"]))


def test_paced_revisions_are_an_interval_apart(
    paced_run: tuple[FeatureEngine, list[tuple[float, dict]]], runs: dict[str, list[dict]]
) -> None:
    last: dict[str, float] = {}
    count = 0
    for clock, r in paced_run[1]:
        tickers = [v["ticker"] for v in r["provisional"]]
        assert len(tickers) == len(set(tickers))
        for ticker in tickers:
            assert clock - last.get(ticker, -INTERVAL_MS) >= INTERVAL_MS, (ticker, clock)
            last[ticker] = clock
        count += len(tickers)
    # The same batches unpaced emit one per ticker and batch with its trades: several times as many.
    unpaced = len(flat(runs["mixed"], "provisional"))
    assert 0 < count * 3 < unpaced


def test_every_accepted_trade_is_first_in_the_next_revision_of_its_ticker(
    paced_run: tuple[FeatureEngine, list[tuple[float, dict]]],
) -> None:
    """A trade waits for its ticker's next provisional revision, which holds it (its vector is as of
    the ticker's latest trade), and `provisional_trade_ts_ms` names each accepted trade once, in the
    batch of that revision; the last (empty) batch emits those still waiting at the end."""
    engine, results = paced_run
    waiting: dict[str, list[int]] = defaultdict(list)
    accepted = 0
    for _, r in results:
        arrays = r["arrays"]
        for ticker, ts in zip(arrays["ticker"].tolist(), arrays["ts_ms"].tolist(), strict=True):
            waiting[ticker].append(ts)
        accepted += len(arrays["ts_ms"])
        first: list[int] = []
        for v in r["provisional"]:
            held = waiting.pop(v["ticker"])
            assert held and max(held) <= v["ts_ms"], v["ticker"]
            first += held
        assert sorted(r["first_ts"].tolist()) == sorted(first)
    assert not waiting and not engine.revisions_waiting()
    assert accepted > 1000 and sum(len(r["first_ts"]) for _, r in results) == accepted
    # The empty batch at the end emitted revisions (trades were still waiting for their interval).
    assert results[-1][1]["provisional"]


def test_a_paced_revision_is_the_vector_the_unpaced_run_names_so(
    paced_run: tuple[FeatureEngine, list[tuple[float, dict]]], runs: dict[str, list[dict]]
) -> None:
    """Same batches: each paced revision is the unpaced run's revision of the same (ticker, second,
    revision), emitted when the ticker's trades came in; only the spread may differ (the quotes that
    arrived meanwhile). The final revisions are the same."""
    unpaced = by_key(runs["mixed"])
    paced_revisions = [v for _, r in paced_run[1] for v in r["provisional"]]
    for v in paced_revisions:
        want = unpaced[v["ticker"], v["snapshot_start_ms"], v["revision"]]
        assert_vector_equal(v | {"bid_ask_spread": want["bid_ask_spread"]}, want, "paced")
    finals = [v for _, r in paced_run[1] for v in r["snapshots"]]
    assert finals == flat(runs["mixed"], "snapshots")


def test_an_empty_batch_emits_the_revisions_that_came_due(stream: list[Event]) -> None:
    engine = FeatureEngine(FeatureConfig(revision_interval_ms=INTERVAL_MS))
    trades = [record for kind, record in stream if kind == "T" and record["ticker"] == "AAA"][:6]
    empty = QuoteColumns.from_records([])

    def run(records: list[dict], clock: float) -> tuple[list[int], list[int]]:
        """(ts of the revisions emitted, ts of the trades first in them)."""
        out = engine.process(TradeColumns.from_records(records), empty, clock_ms=clock)
        return [v["ts_ms"] for v in out.provisional], sorted(out.provisional_trade_ts_ms.tolist())

    ts = [t["exchange_ts_ms"] for t in trades]
    assert run(trades[:3], 0.0) == ([max(ts[:3])], sorted(ts[:3]))  # a ticker's first: at once
    assert run(trades[3:], 100.0) == ([], []) and engine.revisions_waiting()
    assert not engine.revisions_due(249.0) and engine.revisions_due(250.0)
    assert run([], 200.0) == ([], []) and engine.revisions_waiting()  # not due yet
    assert run([], 250.0) == ([max(ts)], sorted(ts[3:]))  # the interval since the first revision
    assert not engine.revisions_waiting() and run([], 1000.0) == ([], [])


def test_the_interval_stays_below_the_grace() -> None:
    with pytest.raises(ValueError, match="revision_interval_ms"):
        FeatureConfig(revision_interval_ms=FeatureConfig().late_grace_ms)
    with pytest.raises(ValueError, match="revision_interval_ms"):
        FeatureConfig(revision_interval_ms=-1)
