"""The synthetic market model: determinism, profile, injected events and their ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from tradepulse.models import NewsArticle
from tradepulse.sources.simulator import MarketConfig, MarketModel, make_tickers
from tradepulse.sources.simulator.market import KIND_TRADE

START = 1_767_000_000_000  # fixed simulated start, so runs are comparable


def run(cfg: MarketConfig, seconds: float) -> tuple[MarketModel, list[dict]]:
    model = MarketModel(cfg)
    records = [r for block in model.generate(seconds) for r in block.records()]
    model.close()
    return model, records


def test_same_seed_same_stream_and_ground_truth(tmp_path: Path) -> None:
    def cfg(seed: int, name: str) -> MarketConfig:
        return MarketConfig(
            seed=seed,
            start_ms=START,
            rate=1500,
            news_interval_s=2,
            spike_interval_s=3,
            jump_interval_s=5,
            backfill_news=2,
            ground_truth_path=tmp_path / name,
        )

    a, rec_a = run(cfg(11, "a.jsonl"), 10)
    b, rec_b = run(cfg(11, "b.jsonl"), 10)
    c, rec_c = run(cfg(12, "c.jsonl"), 10)
    assert len(rec_a) > 10_000
    assert orjson.dumps(rec_a) == orjson.dumps(rec_b)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert a.backfill == b.backfill
    assert len(a.ground_truth) > 5
    assert orjson.dumps(rec_a[:1000]) != orjson.dumps(rec_c[:1000])
    assert a.ground_truth != c.ground_truth


def test_events_are_time_ordered_with_increasing_sequences() -> None:
    _, records = run(MarketConfig(seed=1, start_ms=START, rate=3000, tickers=make_tickers(40)), 5)
    times = [r["t"] for r in records]
    assert times == sorted(times) and times[0] >= START and times[-1] < START + 5000
    last: dict[tuple[str, str], int] = {}
    for r in records:
        key = (r["ev"], r["sym"])
        assert r["q"] == last.get(key, 0) + 1, "per-ticker sequences are contiguous per event type"
        last[key] = r["q"]
    trades = [r for r in records if r["ev"] == "T"]
    sizes = np.array([r["s"] for r in trades])
    assert 0.3 < np.mean(sizes < 100) < 0.6, "odd lots are common"
    assert np.percentile(sizes, 99.9) > 20 * np.median(sizes), "sizes are heavy-tailed"
    assert {c for r in trades for c in r.get("c", [])} >= {14, 37, 41}
    assert all(r["trfi"] in (201, 202, 203) for r in trades if r["x"] == 4)
    quotes = [r for r in records if r["ev"] == "Q"]
    assert all(r["ap"] > r["bp"] for r in quotes)
    assert len(make_tickers(3000)) == len(set(make_tickers(3000))) == 3000


def test_market_open_ramps_eight_to_ten_times_within_a_minute() -> None:
    model = MarketModel(
        MarketConfig(
            seed=5,
            start_ms=START,
            rate=400,
            profile="market_open",
            tick_ms=100,
            news_interval_s=0,
            spike_interval_s=0,
            jump_interval_s=0,
        )
    )
    t = np.concatenate([b.t for b in model.generate(90)])
    elapsed = (t - START) / 1000.0
    opening = np.count_nonzero(elapsed < 5) / 5.0
    peak = np.count_nonzero((elapsed >= 35) & (elapsed < 60)) / 25.0
    later = np.count_nonzero((elapsed >= 80) & (elapsed < 90)) / 10.0
    assert 8.0 <= peak / opening <= 10.0
    assert later < peak, "the opening burst decays"


def test_injected_events_move_the_market_and_are_labelled(tmp_path: Path) -> None:
    path = tmp_path / "truth.jsonl"
    model = MarketModel(
        MarketConfig(
            seed=9,
            start_ms=START,
            rate=1000,
            news_interval_s=4,
            spike_interval_s=10,
            jump_interval_s=10,
            news_reaction_fraction=0.5,
            ground_truth_path=path,
        )
    )
    blocks = list(model.generate(180))
    model.close()
    truth = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert truth == model.ground_truth
    for rec in truth:
        assert {"type", "ticker", "start_ms", "end_ms"} <= set(rec) and rec["end_ms"] >= rec["start_ms"]

    tr = {k: np.concatenate([b.trades[k] for b in blocks]) for k in ("sym", "t", "s", "p")}
    sym_of = {s: i for i, s in enumerate(model.symbols)}

    def volume(sym: int, a: int, b: int) -> float:
        sel = (tr["sym"] == sym) & (tr["t"] >= a) & (tr["t"] < b)
        return float(tr["s"][sel].sum()) / max(b - a, 1)

    spikes = [r for r in truth if r["type"] == "volume_spike" and r["end_ms"] < START + 180_000]
    assert len(spikes) >= 10
    ratios = [
        volume(sym_of[r["ticker"]], r["start_ms"], r["end_ms"])
        / max(volume(sym_of[r["ticker"]], r["start_ms"] - 60_000, r["start_ms"]), 1e-9)
        for r in spikes
    ]
    assert np.median(ratios) > 5, "a volume spike multiplies traded volume"

    moving = [r for r in truth if r["type"] in ("price_jump", "price_move")]
    isolated = [
        j
        for j in moving
        if j["type"] == "price_jump"
        and START + 5000 < j["start_ms"] < START + 175_000
        and not any(
            o is not j
            and o["ticker"] == j["ticker"]
            and o["start_ms"] - 3000 < j["start_ms"] < o["end_ms"] + 3000
            for o in moving
        )
    ]
    assert len(isolated) >= 8
    for jump in isolated:
        sel = tr["sym"] == sym_of[jump["ticker"]]
        before = tr["p"][sel & (tr["t"] < jump["start_ms"] - 100)][-20:].mean()
        after = tr["p"][sel & (tr["t"] > jump["start_ms"] + 100)][:20].mean()
        assert np.sign(after - before) == jump["direction"]
        assert abs(after / before - 1) > 0.5 * jump["magnitude"]

    news = [r for r in truth if r["type"] == "news"]
    reacted = [r for r in news if r["reaction"]]
    assert len(news) >= 20 and 0 < len(reacted) < len(news)
    caused = {r["cause"]: r for r in truth if r["type"] == "volume_spike" and r["cause"] is not None}
    assert set(caused) == {r["article_id"] for r in reacted}
    for r in reacted:
        lag = (caused[r["article_id"]]["start_ms"] - r["start_ms"]) / 1000
        assert 0 < lag <= 60 and lag == pytest.approx(r["reaction_lag_s"], abs=0.001)
    moves = {r["cause"]: r for r in truth if r["type"] == "price_move"}
    assert all(
        moves[r["article_id"]]["direction"] == (1 if r["sentiment"] == "positive" else -1) for r in reacted
    )

    articles = [a for b in blocks for a in b.news]
    assert [a["id"] for a in articles] == [r["article_id"] for r in news]
    for a in articles:
        assert set(a) == {
            "category",
            "datetime",
            "headline",
            "id",
            "image",
            "related",
            "source",
            "summary",
            "url",
        }
        assert isinstance(a["id"], int) and isinstance(a["datetime"], int)
        NewsArticle(
            event_id="x",
            article_id=a["id"],
            ticker=a["related"],
            headline=a["headline"],
            published_at="2026-01-01T00:00:00Z",
            published_ts_ms=a["datetime"] * 1000,
            received_ts_us=0,
        )


def test_trade_counts_match_block_columns() -> None:
    model = MarketModel(MarketConfig(seed=2, start_ms=START, rate=5000, tickers=make_tickers(30)))
    for block in model.generate(1):
        records = block.records()
        assert [r["ev"] == "T" for r in records] == (block.kind == KIND_TRADE).tolist()
        assert [r["q"] for r in records] == block.q.tolist()
        assert [r["sym"] for r in records] == [model.symbols[i] for i in block.sym]
        # The server's fast text path must produce exactly what serialising the records would.
        assert block.fragments() == [orjson.dumps(r).decode() for r in records]


def test_trade_condition_mix_is_seeded_and_realistic() -> None:
    """The documented mix (`market.CONDITION_SETS`): every condition class of the consolidated rules
    occurs at its rate, and the off-market classes (2, 12, 13) are priced away from the other trades."""
    from tradepulse.core.conditions import ConditionRules
    from tradepulse.sources.simulator.market import CONDITION_SETS

    def trades(seed: int) -> dict[str, np.ndarray]:
        model = MarketModel(MarketConfig(seed=seed, tickers=["AAPL"], rate=4000, start_ms=1_767_000_000_000))
        blocks = [b.trades for b in model.generate(60) if b.trades is not None]
        return {k: np.concatenate([b[k] for b in blocks]) for k in ("c", "s", "p")}

    tr = trades(9)
    again = trades(9)
    assert all(np.array_equal(tr[k], again[k]) for k in tr)
    conds = [list(CONDITION_SETS[c]) for c in tr["c"].tolist()]
    share = {
        k: float(np.mean([tuple(c) == CONDITION_SETS[k] for c in conds])) for k in range(len(CONDITION_SETS))
    }
    round_lots, odd = tr["s"] >= 100, tr["s"] < 100
    assert len(conds) > 50_000 and 0.35 < odd.mean() < 0.55
    for k, rate in (
        (2, 0.10),
        (4, 0.05),
        (5, 0.01),
        (6, 0.015),
        (7, 0.005),
        (8, 0.002),
        (9, 0.002),
        (10, 0.003),
    ):
        got = share[k] / round_lots.mean()
        assert abs(got - rate) < 0.25 * rate + 0.0005, (CONDITION_SETS[k], got, rate)
    assert abs(share[11] / odd.mean() - 0.01) < 0.003 and abs(share[3] / odd.mean() - 0.15) < 0.01
    masks = ConditionRules.bundled().masks(conds)
    assert 0.001 < 1 - masks.volume.mean() < 0.01  # 15 / 16 only
    assert 0.3 < 1 - masks.last_price.mean() < 0.6  # odd lots above all
    # Off-market prints: ~0.3 % from the regular trades around them.
    regular = tr["c"] == 0
    off = np.isin(tr["c"], [5, 6, 7])
    ref = np.interp(np.flatnonzero(off), np.flatnonzero(regular), tr["p"][regular])
    gap = np.abs(tr["p"][off] / ref - 1)
    assert np.median(gap) > 0.002


def _reference_am_events(
    ticks: list[dict[str, np.ndarray]], table: np.ndarray, symbols: list[str]
) -> list[dict[str, object]]:
    """The `AM` events of every minute that ended, aggregated at once with a pandas group-by over all
    the trades (how the simulator computed them until its per-tick accumulators): the reference."""
    import pandas as pd

    from tradepulse.sources.simulator.aggregates import BAD_IMPOSSIBLE, BAR_MS

    d = {k: np.concatenate([tick[k] for tick in ticks]) for k in ("sym", "t", "q", "p", "s", "c", "bad")}
    keep = d["bad"] != BAD_IMPOSSIBLE
    rules = table[d["c"][keep].astype(np.int64)]
    frame = pd.DataFrame(
        {
            "sym": d["sym"][keep], "t": d["t"][keep], "q": d["q"][keep], "p": d["p"][keep].astype(float),
            "s": d["s"][keep].astype(np.int64), "vol": rules[:, 0], "hl": rules[:, 1], "oc": rules[:, 2],
            "m": d["t"][keep] // BAR_MS,
        }
    ).sort_values(["sym", "m", "t", "q"], kind="stable")  # fmt: skip
    vol_s = np.where(frame["vol"], frame["s"], 0)
    frame = frame.assign(
        vs=vol_s, vn=vol_s * frame["p"].to_numpy(), n=frame["vol"].astype(np.int64),
        hlp=frame["p"].where(frame["hl"]), ocp=frame["p"].where(frame["oc"]),
    )  # fmt: skip
    agg = (
        frame.groupby(["sym", "m"], sort=True)
        .agg(v=("vs", "sum"), notional=("vn", "sum"), n=("n", "sum"), h=("hlp", "max"), l=("hlp", "min"),
             o=("ocp", "first"), c=("ocp", "last"))
        .reset_index()
        .sort_values(["m", "sym"], kind="stable")
    )  # fmt: skip
    day_volume: dict[int, int] = {}
    day_notional: dict[int, float] = {}
    official_open: dict[int, float] = {}
    events: list[dict[str, object]] = []
    for row in agg.itertuples(index=False):
        sym, v, n = int(row.sym), int(row.v), int(row.n)
        if n == 0 and np.isnan(row.h) and np.isnan(row.o):
            continue
        day_volume[sym] = day_volume.get(sym, 0) + v
        day_notional[sym] = day_notional.get(sym, 0.0) + float(row.notional)
        if sym not in official_open and not np.isnan(row.o):
            official_open[sym] = float(row.o)
        event: dict[str, object] = {"ev": "AM", "sym": symbols[sym], "v": v, "av": day_volume[sym]}
        if sym in official_open:
            event["op"] = official_open[sym]
        if v > 0:
            event["vw"] = round(float(row.notional) / v, 4)
        for name in ("o", "c", "h", "l"):
            if not np.isnan(getattr(row, name)):
                event[name] = float(getattr(row, name))
        if day_volume[sym] > 0:
            event["a"] = round(day_notional[sym] / day_volume[sym], 4)
        event["z"] = round(v / n) if n else 0
        event["s"] = int(row.m) * BAR_MS
        event["e"] = int(row.m) * BAR_MS + BAR_MS
        events.append(event)
    return events


def test_am_aggregates_folded_per_tick_equal_a_group_by_of_the_whole_minute() -> None:
    """The simulator's `AM` events, accumulated tick by tick, equal a pandas group-by over all the
    minute's trades (bad ticks in: fat fingers count, impossible prints do not), over several minute
    boundaries, and each is sent with the tick that ends its minute."""
    start = 1_767_000_000_000 - 5_000
    model = MarketModel(
        MarketConfig(seed=4, rate=3000, start_ms=start, tickers=make_tickers(40), bad_tick_rate=0.002)
    )
    assert model.aggregates is not None
    ticks, sent = [], []
    for block in model.generate(130):
        assert block.trades is not None
        ticks.append(block.trades)
        for event in block.aggregates:
            assert event["e"] <= block.end_ms < event["e"] + model.tick_ms  # type: ignore[operator]
        sent += block.aggregates
    # The minutes that ended: at 5, 65 and 125 s after the start.
    ended = [tick for tick in ticks if int(tick["t"].max(initial=start)) < start + 125_000]
    want = _reference_am_events(ended, model.aggregates.table, model.aggregates.symbols)
    assert {e["s"] for e in want} == {start + 5_000 - 60_000, start + 5_000, start + 65_000}
    assert any(t["bad"].any() for t in ticks)
    assert sent == want
