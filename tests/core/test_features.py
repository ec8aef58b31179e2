"""The feature core against an independent, deliberately naive recomputation.

The reference below walks the stream event by event in arrival order and recomputes every feature of
every trade from scratch with plain numpy over the accepted trades it may see (no prefix sums, no
searchsorted), following the definitions in `tradepulse.core.features`. That includes the volume
z-score's fixed point (sizes and bucket values rounded as defined there, `quantised`/`bucket_value`):
the rounding is part of the definition, so the reference applies it too; its sums and statistics
are still plain float numpy. Trade conditions: the reference has its own table of the consolidated
rules of the codes the stream uses (`RULES`, written out from the CTA/UTP matrices, not read from the
engine's snapshot) and combines a trade's codes one by one.
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import pytest

from tests.core.zscore_fixed_point import bucket_value, quantised
from tradepulse.core import trade_state
from tradepulse.core.columns import QuoteColumns, TradeColumns
from tradepulse.core.conditions import ConditionRules
from tradepulse.core.features import FEATURE_COLUMNS, FeatureConfig, FeatureEngine, vector_dicts
from tradepulse.core.trade_state import TradeState
from tradepulse.errors import InvalidArgument
from tradepulse.models import FeatureVector

CFG = FeatureConfig()
Event = tuple[str, dict]  # ("T" | "Q", record)

# Consolidated rules of the codes in the test stream: (updates volume, may set the last price).
RULES = {
    14: (True, True),  # intermarket sweep
    41: (True, True),  # trade-through exempt
    37: (True, False),  # odd lot: volume only
    2: (True, False),  # average price: volume only
    12: (True, False),  # Form T: volume only
    15: (False, False),  # official close: neither
    16: (False, False),  # official open: neither
    38: (False, True),  # corrected consolidated close: price only
    22: (True, False),  # prior reference price: high/low but not last, so not price-eligible
}
# Condition mixes of the stream, by class, with their weights. 999 is unknown: a regular sale.
CONDITION_MIX = (
    ((), 0.50),
    ((14, 41), 0.10),  # both
    ((37,), 0.12),  # volume only
    ((2,), 0.03),
    ((12,), 0.03),
    ((14, 37, 41), 0.04),
    ((22,), 0.02),
    ((15,), 0.03),  # neither
    ((16,), 0.02),
    ((38,), 0.04),  # price only
    ((999,), 0.03),  # unknown
    ((999, 37), 0.04),
)


def eligibility(codes: tuple[int, ...]) -> tuple[bool, bool]:
    """(volume-eligible, price-eligible): every code must allow it; unknown codes allow everything."""
    volume = price = True
    for code in codes:
        v, p = RULES.get(code, (True, True))
        volume, price = volume and v, price and p
    return volume, price


# --- stream generation ---------------------------------------------------------------------------
def make_stream(
    seed: int, tickers: tuple[str, ...] = ("AAA", "BBB", "CCC"), seconds: int = 800
) -> list[Event]:
    """Trades and quotes in arrival order: bursty volume, a quiet spell, ties, and delayed trades.

    Delayed trades arrive up to 3.5 s after their exchange time (some within the 2 s grace, some
    beyond it); quotes are never delayed, so every quote at or before a trade arrives before it.
    """
    rng = np.random.default_rng(seed)
    mix_p = np.array([w for _, w in CONDITION_MIX]) / sum(w for _, w in CONDITION_MIX)
    t0 = 1_700_000_000_000
    keyed: list[tuple[float, int, Event]] = []
    seq = 0
    for k, ticker in enumerate(tickers):
        price = 100.0 * (k + 1)
        rate = 1.2 + 0.4 * k
        ts_all = np.sort(rng.uniform(0, seconds * 1000, rng.poisson(rate * seconds))).astype(np.int64)
        if k == 2:  # a quiet spell longer than the z-score window
            ts_all = ts_all[(ts_all < 150_000) | (ts_all > 480_000)]
        burst_at = rng.uniform(60_000, seconds * 1000, 4).astype(np.int64)
        bursts = np.concatenate([b + rng.integers(0, 900, 15) for b in burst_at])
        ts_all = np.sort(np.concatenate([ts_all, bursts]))
        dup = rng.random(len(ts_all)) < 0.05  # equal timestamps
        ts_all[1:][dup[1:]] = ts_all[:-1][dup[1:]]
        ts_all = np.sort(ts_all)
        for ts in ts_all:
            price *= math.exp(rng.normal(0, 0.002))
            seq += 1
            size = float(rng.choice([1, 10, 100, 250])) * (50.0 if ts in bursts else 1.0)
            codes = CONDITION_MIX[rng.choice(len(CONDITION_MIX), p=mix_p)][0]
            # Ineligible prints sit away from the market, so using them would show in every feature.
            off = 1.0 if eligibility(codes)[1] else 1.0 + rng.choice([-1, 1]) * rng.uniform(0.01, 0.03)
            record = {
                "ticker": ticker,
                "price": round(price * off, 4),
                "size": size,
                "exchange_ts_ms": int(t0 + ts),
                "sequence": seq,
                "event_id": f"{ticker}-{seq}",
                "conditions": list(codes),
            }
            delay = rng.uniform(0, 3500) if rng.random() < 0.08 else 0.0
            keyed.append((ts + delay, 1, ("T", record)))
        for ts in np.sort(rng.uniform(-2000, seconds * 1000, int(seconds * 0.7))).astype(np.int64):
            seq += 1
            bid = round(price * (1 - rng.uniform(0.0001, 0.001)), 4)
            ask = round(price * (1 + rng.uniform(0.0001, 0.001)), 4)
            if rng.random() < 0.05:
                bid = 0.0  # one-sided quote: spread undefined
            quote = {"ticker": ticker, "bid_price": bid, "ask_price": ask, "exchange_ts_ms": int(t0 + ts)}
            keyed.append((float(ts), 0, ("Q", quote | {"sequence": seq})))
    keyed.sort(key=lambda x: (x[0], x[1]))
    return [event for _, _, event in keyed]


def split(events: list[Event], sizes: list[int]) -> list[tuple[list[dict], list[dict]]]:
    """Cut the arrival sequence into batches of the given sizes (the last takes the rest)."""
    batches, start = [], 0
    for size in [*sizes, len(events)]:
        chunk = events[start : start + size]
        start += size
        if chunk:
            batches.append(([r for k, r in chunk if k == "T"], [r for k, r in chunk if k == "Q"]))
        if start >= len(events):
            break
    return batches


def random_sizes(seed: int, n: int, hi: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return list(rng.integers(1, hi, n))


# --- the naive reference ----------------------------------------------------------------------
@dataclass
class Row:
    ts: int
    arrival: int
    price: float
    size: float
    late: int
    capped: float = math.nan  # the size counted by the volume z-score (see `capped_size`)
    vol: float = 1.0  # 1: volume-eligible
    ok: float = 1.0  # 1: price-eligible


class Seen:
    """The accepted trades (or quotes) of one ticker so far, as growing numpy columns."""

    def __init__(self) -> None:
        self.n = 0
        self._cols = {"ts": np.empty(64, np.int64), "arrival": np.empty(64, np.int64)}
        self._cols |= {"price": np.empty(64), "size": np.empty(64), "capped": np.empty(64)}
        self._cols |= {"vol": np.empty(64), "ok": np.empty(64)}

    def add(self, row: Row) -> None:
        if self.n == len(self._cols["ts"]):
            self._cols = {k: np.resize(v, 2 * self.n) for k, v in self._cols.items()}
        for key in self._cols:
            self._cols[key][self.n] = getattr(row, key)
        self.n += 1

    def __getattr__(self, key: str) -> np.ndarray:
        return self.__dict__["_cols"][key][: self.n]


def capped_size(seen: Seen, ts: int, size: float, watermark: int, cfg: FeatureConfig) -> float:
    """The z-score size of a trade accepted with `watermark` (including itself), over the trades
    accepted before it: at most cap × the mean size of their volume-eligible trades in the closed
    buckets of the cap window (in the fixed point: a multiple of 2^-16). `size` is the trade's
    effective size (0 if not volume-eligible)."""
    bucket_ms = cfg.zscore_bucket_ms
    own = ts // bucket_ms * bucket_ms
    closed_end = (watermark - cfg.late_grace_ms) // bucket_ms * bucket_ms
    inside = (seen.ts >= own - cfg.zscore_cap_window_buckets * bucket_ms) & (seen.ts < min(closed_end, own))
    inside &= seen.vol > 0
    q = int(quantised(size))
    if cfg.zscore_size_cap > 0 and inside.any():
        total = int(quantised(seen.size[inside]).sum())
        q = min(q, math.floor(cfg.zscore_size_cap * float(total) / int(inside.sum())))
    return q / 2**16


def naive_vector(seen: Seen, me: Row, quotes: Seen, cfg: FeatureConfig) -> dict:
    """Features of the vector ending at `me`, over the trades in `seen` whose key is <= its key."""
    all_ts, all_arrival = seen.ts, seen.arrival
    mine = (all_ts < me.ts) | ((all_ts == me.ts) & (all_arrival <= me.arrival))
    ts, arrival = all_ts[mine], all_arrival[mine]
    price, size, capped = seen.price[mine], seen.size[mine], seen.capped[mine]
    vol, ok = seen.vol[mine] > 0, seen.ok[mine] > 0
    t = me.ts

    def latest(index: np.ndarray) -> int:
        return int(index[np.lexsort((arrival[index], ts[index]))[-1]])  # latest by (ts, arrival)

    # Last price: the latest price-eligible trade within the look-back, else the trade's own price.
    eligible = np.flatnonzero(ok & (ts > t - cfg.momentum_lookback_ms))
    last = float(price[latest(eligible)]) if len(eligible) else me.price

    def in_window(ms: int) -> np.ndarray:
        return ts > t - ms

    def vwap(w: np.ndarray) -> float:
        w = w & vol
        return float((price[w] * size[w]).sum() / size[w].sum()) if w.any() else last

    w1, w5, wf = in_window(cfg.vwap_short_ms), in_window(cfg.vwap_long_ms), in_window(cfg.frequency_ms)
    vwap1, vwap5 = vwap(w1), vwap(w5)
    avg5 = float(price[w5 & ok].mean()) if (w5 & ok).any() else last
    bucket = t // cfg.zscore_bucket_ms
    buckets = ts // cfg.zscore_bucket_ms
    volume = float(size[(buckets == bucket) & vol].sum())
    in_hist = (buckets >= bucket - cfg.zscore_window_buckets) & (buckets < bucket)
    z = 0.0
    if in_hist.any():
        first = int(buckets[in_hist].min())
        hist = np.zeros(bucket - first)  # every bucket from the first traded one, empty ones as 0
        np.add.at(hist, buckets[in_hist] - first, capped[in_hist])
        hist = bucket_value(hist, cfg)
        mean, var = hist.mean(), hist.var()
        if len(hist) >= cfg.zscore_min_history_buckets and var > 1e-12 * (hist**2).mean():
            z = float((bucket_value(capped[buckets == bucket].sum(), cfg) - mean) / math.sqrt(var))
    momentum = 0.0
    ref = np.flatnonzero(ok & (ts > t - cfg.momentum_lookback_ms) & (ts <= t - cfg.momentum_ms))
    if len(ref):
        ref_price = price[latest(ref)]
        momentum = (last - ref_price) / ref_price * 100
    spread = None
    q_ts, q_arrival = quotes.ts, quotes.arrival
    visible = np.flatnonzero(q_ts <= t)
    if len(visible):  # the latest by (ts, arrival) at or before t
        q = visible[np.lexsort((q_arrival[visible], q_ts[visible]))[-1]]
        spread = None if math.isnan(quotes.price[q]) else quotes.price[q]
    return {
        "price": last,
        "vwap_1min": vwap1,
        "vwap_5min": vwap5,
        "rolling_avg_5min": avg5,
        "volume": volume,
        "volume_zscore": z,
        "price_momentum": momentum,
        "trade_frequency": int((wf & vol).sum()),
        "vwap_deviation_bps": (last - vwap5) / vwap5 * 1e4,
        "bid_ask_spread": spread,
    }


def reference(
    batches: list[tuple[list[dict], list[dict]]], cfg: FeatureConfig = CFG, rules: bool = True
) -> list[dict]:
    """Per batch: per-trade vectors (arrival order), snapshots and late ids, recomputed naively
    (`rules=False`: every trade counts as a regular sale)."""
    accepted: dict[str, Seen] = defaultdict(Seen)
    rows_by_second: dict[tuple[str, int], list[Row]] = defaultdict(list)  # snapshots not yet emitted
    quotes: dict[str, Seen] = defaultdict(Seen)  # spread in the price column
    watermark: dict[str, int] = {}
    pending: dict[str, int] = defaultdict(int)
    arrival = 0
    out = []
    for trades, batch_quotes in batches:
        for q in batch_quotes:  # quotes of a batch are applied first
            ok = q["bid_price"] > 0 and q["ask_price"] > 0
            spread = q["ask_price"] - q["bid_price"] if ok else float("nan")
            quotes[q["ticker"]].add(Row(q["exchange_ts_ms"], arrival, spread, 0.0, 0))
            arrival += 1
        per_trade, late = [], []
        for tr in trades:
            tk, ts = tr["ticker"], tr["exchange_ts_ms"]
            if tk in watermark and ts < watermark[tk] - cfg.late_grace_ms:
                late.append(tr["event_id"])
                pending[tk] += 1
                continue
            watermark[tk] = max(watermark.get(tk, ts), ts)
            vol, ok = eligibility(tuple(tr.get("conditions", ()))) if rules else (True, True)
            capped = capped_size(accepted[tk], ts, tr["size"] if vol else 0.0, watermark[tk], cfg)
            row = Row(ts, arrival, tr["price"], tr["size"], pending[tk], capped, float(vol), float(ok))
            pending[tk] = 0
            arrival += 1
            accepted[tk].add(row)
            rows_by_second[tk, ts // cfg.snapshot_ms].append(row)
            vec = naive_vector(accepted[tk], row, quotes[tk], cfg)
            per_trade.append(
                vec
                | {"ticker": tk, "ts_ms": ts, "event_id": tr["event_id"], "late_events": row.late}
                | {"size": row.size, "capped": row.capped}
            )

        def revision_vector(tk: str, second: int, final: bool) -> dict:
            """The vector of (tk, second) as of its latest trade so far, with its revision: the count
            of the ticker's accepted trades with ts in [start − grace, end) (+ 1 when final)."""
            mine = rows_by_second[tk, second]
            last = max(mine, key=lambda r: (r.ts, r.arrival))
            start = second * cfg.snapshot_ms
            seen_ts = accepted[tk].ts
            count = int(((seen_ts >= start - cfg.late_grace_ms) & (seen_ts < start + cfg.snapshot_ms)).sum())
            vec = naive_vector(accepted[tk], last, quotes[tk], cfg)
            return vec | {
                "ticker": tk,
                "ts_ms": last.ts,
                "late_events": sum(r.late for r in mine),
                "snapshot_start_ms": start,
                "revision": count + 1 if final else count,
                "final": final,
            }

        snapshots = []
        for tk, second in list(rows_by_second):
            if (second + 1) * cfg.snapshot_ms > watermark[tk] - cfg.late_grace_ms:
                continue  # not closed yet
            snapshots.append(revision_vector(tk, second, final=True))
            del rows_by_second[tk, second]
        snapshots.sort(key=lambda v: (v["ts_ms"], v["ticker"]))
        # One provisional revision per ticker with accepted trades in the batch: its newest second
        # (the one holding its watermark, never closed yet), as of every trade accepted so far.
        provisional = [
            revision_vector(tk, watermark[tk] // cfg.snapshot_ms, final=False)
            for tk in sorted({v["ticker"] for v in per_trade})
        ]
        provisional.sort(key=lambda v: (v["ts_ms"], v["ticker"]))
        out.append({"per_trade": per_trade, "snapshots": snapshots, "provisional": provisional, "late": late})
    return out


# --- running the engine -----------------------------------------------------------------------
def run_engine(
    batches: list[tuple[list[dict], list[dict]]],
    cfg: FeatureConfig = CFG,
    rules: ConditionRules | None = None,
) -> list[dict]:
    engine = FeatureEngine(cfg, rules)
    out = []
    for trades, quotes in batches:
        result = engine.process(TradeColumns.from_records(trades), QuoteColumns.from_records(quotes))
        out.append(
            {
                "per_trade": result.vectors(),
                "arrays": result.per_trade,
                "snapshots": result.snapshots,
                "provisional": result.provisional,
                "late": list(result.late_event_ids),
                "latest": result.latest,
                "zscores": result.zscores,
            }
        )
    return out


FLOAT_KEYS = [k for k in FEATURE_COLUMNS if k != "trade_frequency"] + ["price"]


REVISION_KEYS = ("snapshot_start_ms", "revision", "final")


def assert_vector_equal(got: dict, want: dict, where: str) -> None:
    for key in ("ticker", "ts_ms", "trade_frequency", "late_events"):
        assert got[key] == want[key], f"{where}: {key} {got[key]} != {want[key]}"
    for key in REVISION_KEYS:  # snapshots and provisional revisions (per-trade vectors have none)
        if key in want:
            assert got[key] == want[key], f"{where}: {key} {got[key]} != {want[key]}"
    for key in FLOAT_KEYS:
        g, w = got[key], want[key]
        if w is None:
            assert g is None, f"{where}: {key} {g} != None"
            continue
        assert g is not None and math.isfinite(g), f"{where}: {key} = {g}"
        # rtol 1e-9 on the value; the absolute floor covers quantities that are differences of
        # nearly equal numbers (deviation, momentum) where 1e-9 of ~0 is below float resolution.
        assert math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-9), f"{where}: {key} {g!r} != {w!r}"


def flat(results: list[dict], part: str) -> list[dict]:
    return [v for r in results for v in r[part]]


def compare(got: list[dict], want: list[dict], same_split: bool = True) -> None:
    """Every per-trade vector, snapshot and late id equal. With the same split, snapshots must also
    be emitted in the same batches; across splits only the set of snapshots must agree."""
    g_trades, w_trades = flat(got, "per_trade"), flat(want, "per_trade")
    assert len(g_trades) == len(w_trades)
    ids = [e for r in got for e in r["arrays"]["event_id"]]
    assert ids == [v["event_id"] for v in w_trades]
    for i, (g, w) in enumerate(zip(g_trades, w_trades, strict=True)):
        assert_vector_equal(g, w, f"trade {i} ({w['event_id']})")
    g_snaps, w_snaps = flat(got, "snapshots"), flat(want, "snapshots")
    if same_split:
        assert [len(r["snapshots"]) for r in got] == [len(r["snapshots"]) for r in want]
    else:
        g_snaps = sorted(g_snaps, key=lambda v: (v["ticker"], v["ts_ms"]))
        w_snaps = sorted(w_snaps, key=lambda v: (v["ticker"], v["ts_ms"]))
    assert [(s["ticker"], s["ts_ms"]) for s in g_snaps] == [(s["ticker"], s["ts_ms"]) for s in w_snaps]
    for i, (g, w) in enumerate(zip(g_snaps, w_snaps, strict=True)):
        assert_vector_equal(g, w, f"snapshot {i}")
    assert flat(got, "late") == flat(want, "late")
    if same_split:  # provisional revisions depend on the batch boundaries (see test_features_revisions)
        assert [len(r["provisional"]) for r in got] == [len(r["provisional"]) for r in want]
        for i, (g, w) in enumerate(zip(flat(got, "provisional"), flat(want, "provisional"), strict=True)):
            assert_vector_equal(g, w, f"provisional {i}")


@pytest.fixture(scope="module")
def stream() -> list[Event]:
    return make_stream(seed=7)


@pytest.fixture(scope="module")
def whole_reference(stream: list[Event]) -> list[dict]:
    return reference(split(stream, []))


def test_stream_exercises_the_edge_cases(stream: list[Event], whole_reference: list[dict]) -> None:
    """Guard against a generator change that would make the comparison vacuous."""
    trades = flat(whole_reference, "per_trade")
    late = flat(whole_reference, "late")
    assert len(trades) > 3000 and 10 < len(late) < 200
    assert sum(abs(v["volume_zscore"]) > 2.5 for v in trades) >= 10
    assert sum(v["capped"] < v["size"] for v in trades) >= 10  # block trades hit the size cap
    assert sum(v["volume_zscore"] == 0.0 for v in trades) > 100  # warm-up and after the quiet spell
    assert any(v["bid_ask_spread"] is None for v in trades)
    assert any(v["late_events"] > 0 for v in trades)
    arrival_ts = [v["ts_ms"] for v in trades]
    assert any(b < a for a, b in itertools.pairwise(arrival_ts))  # folded-in disorder
    # Every condition class occurs, and the rules change the vectors.
    records = [r for kind, r in stream if kind == "T"]
    classes = {eligibility(tuple(r["conditions"])) for r in records}
    assert classes == {(True, True), (True, False), (False, True), (False, False)}
    assert sum(999 in r["conditions"] for r in records) > 50  # unknown code
    own = {r["event_id"]: r["price"] for r in records}
    assert sum(v["price"] != own[v["event_id"]] for v in trades) > 300  # ineligible: last price kept
    no_rules = flat(reference(split(stream, []), rules=False), "per_trade")
    for key in ("vwap_5min", "volume", "trade_frequency", "price_momentum", "rolling_avg_5min"):
        assert sum(a[key] != b[key] for a, b in zip(trades, no_rules, strict=True)) > 300, key


def test_rules_off_matches_the_reference_without_rules(stream: list[Event]) -> None:
    batches = split(stream, random_sizes(4, 80, 300))
    compare(run_engine(batches, rules=ConditionRules.permissive()), reference(batches, rules=False))


def test_unknown_codes_are_counted_by_the_engine(stream: list[Event]) -> None:
    engine = FeatureEngine()
    trades = [r for kind, r in stream if kind == "T"]
    out = engine.process(TradeColumns.from_records(trades), QuoteColumns.empty())
    unknown = sum(999 in r["conditions"] for r in trades)
    assert engine.rules.unknown_counts == {999: unknown} and out.unknown_conditions == unknown
    # Counted per valid trade of a batch, whether it is then accepted or late.
    again = engine.process(TradeColumns.from_records(trades[:40]), QuoteColumns.empty())
    assert len(again.late_event_ids) == 40
    assert again.unknown_conditions == sum(999 in r["conditions"] for r in trades[:40])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_batches_match_naive_reference(
    stream: list[Event], whole_reference: list[dict], seed: int
) -> None:
    batches = split(stream, random_sizes(seed, 400, hi=[3, 60, 900][seed - 1]))
    want = reference(batches)
    compare(run_engine(batches), want)
    # The split does not matter: same vectors and snapshots as one single batch.
    compare(run_engine(batches), whole_reference, same_split=False)


def test_single_batch_and_one_event_batches(stream: list[Event], whole_reference: list[dict]) -> None:
    compare(run_engine(split(stream, [])), whole_reference)
    head = stream[:1500]
    compare(run_engine(split(head, [1] * len(head))), reference(split(head, [])), same_split=False)


def test_raw_volume_zscore_config_matches_the_reference(stream: list[Event]) -> None:
    """No size cap, no log: the plain raw-volume z-score, same engine paths otherwise."""
    raw = FeatureConfig(zscore_size_cap=0.0, zscore_log_volume=False)
    batches = split(stream, random_sizes(5, 60, 400))
    want = reference(batches, raw)
    compare(run_engine(batches, raw), want)
    default = flat(reference(batches), "per_trade")
    differ = sum(
        w["volume_zscore"] != d["volume_zscore"]
        for w, d in zip(flat(want, "per_trade"), default, strict=True)
    )
    assert differ > 100  # the two definitions really differ on this stream


def test_out_of_order_within_grace_equals_sorted() -> None:
    """A trade arriving 1.5 s late gets the vector it would have had in a sorted stream, and the
    trades after it (and the snapshot of its second) include it."""
    t0 = 1_700_000_000_000
    mk = lambda i, ts, size: {  # noqa: E731
        "ticker": "X", "price": 10.0 + i, "size": size, "exchange_ts_ms": t0 + ts, "sequence": i, "event_id": f"e{i}"
    }  # fmt: skip
    sorted_trades = [mk(0, 0, 1), mk(1, 500, 2), mk(2, 1500, 3), mk(3, 2000, 4), mk(4, 4000, 5)]
    disordered = [sorted_trades[i] for i in (0, 2, 3, 1, 4)]  # e1 (t=500) arrives after t=2000
    got = run_engine([(disordered, [])])[0]
    want = run_engine([(sorted_trades, [])])[0]
    vecs = {eid: vec for eid, vec in zip(got["arrays"]["event_id"], got["per_trade"], strict=True)}
    ref = {eid: vec for eid, vec in zip(want["arrays"]["event_id"], want["per_trade"], strict=True)}
    assert got["late"] == []
    for eid in ("e0", "e1", "e4"):  # the late one itself and everything that arrives after it
        assert vecs[eid] == ref[eid]
    assert vecs["e2"]["vwap_5min"] != ref["e2"]["vwap_5min"]  # emitted before e1 arrived
    assert vecs["e4"]["trade_frequency"] == 5
    assert got["snapshots"] == want["snapshots"]
    # Watermark 4000 − grace 2000 closes seconds 0 and 1 (ends 1000 and 2000), not second 2 or 4.
    assert [s["ts_ms"] for s in got["snapshots"]] == [t0 + 500, t0 + 1500]
    assert got["snapshots"][0]["volume"] == 3.0 and got["snapshots"][0]["trade_frequency"] == 2


def test_late_beyond_grace_is_excluded_and_counted() -> None:
    t0 = 1_700_000_000_000
    trades = [
        {
            "ticker": "X",
            "price": 10.0,
            "size": 1.0,
            "exchange_ts_ms": t0 + 10_000,
            "sequence": 1,
            "event_id": "a",
        },
        {
            "ticker": "X",
            "price": 99.0,
            "size": 9.0,
            "exchange_ts_ms": t0 + 7_999,
            "sequence": 2,
            "event_id": "late",
        },
        {
            "ticker": "X",
            "price": 11.0,
            "size": 1.0,
            "exchange_ts_ms": t0 + 8_000,
            "sequence": 3,
            "event_id": "ok",
        },
        {
            "ticker": "X",
            "price": 12.0,
            "size": 1.0,
            "exchange_ts_ms": t0 + 10_001,
            "sequence": 4,
            "event_id": "b",
        },
    ]
    engine = FeatureEngine()
    first = engine.process(TradeColumns.from_records(trades[:1]), QuoteColumns.empty())
    out = engine.process(TradeColumns.from_records(trades[1:]), QuoteColumns.empty())
    assert list(out.late_event_ids) == ["late"]
    assert list(out.per_trade["event_id"]) == ["ok", "b"]  # exactly the grace edge is still accepted
    assert list(out.per_trade["late_events"]) == [1, 0]  # attached to the next accepted trade
    b = out.vectors()[1]
    assert b["trade_frequency"] == 3 and b["vwap_1min"] == pytest.approx((10 + 11 + 12) / 3, rel=1e-12)
    assert first.latest["X"]["price"] == 10.0 and out.latest["X"]["price"] == 12.0
    assert int(engine.late_total[0]) == 1


def test_single_trade_one_ticker() -> None:
    t0 = 1_700_000_000_000
    trade = {"ticker": "ONE", "price": 5.0, "size": 3.0, "exchange_ts_ms": t0, "sequence": 1, "event_id": "x"}
    out = FeatureEngine().process(TradeColumns.from_records([trade]), QuoteColumns.empty())
    (vec,) = out.vectors()
    assert vec == {
        "ticker": "ONE", "ts_ms": t0, "price": 5.0, "volume": 3.0, "vwap_1min": 5.0, "vwap_5min": 5.0,
        "rolling_avg_5min": 5.0, "volume_zscore": 0.0, "price_momentum": 0.0, "trade_frequency": 1,
        "vwap_deviation_bps": 0.0, "bid_ask_spread": None, "window_start_ms": t0 - 300_000,
        "window_end_ms": t0, "late_events": 0,
    }  # fmt: skip
    FeatureVector.model_validate(vec)
    assert out.snapshots == [] and list(out.zscores["volume_zscore"]) == [0.0]
    assert out.latest == {"ONE": vec}


def test_zero_volume_buckets_count_in_history() -> None:
    """One trade every 10 s: nine empty buckets between trades enter the mean and std as zeros."""
    t0 = 1_700_000_000_000
    trades = [
        {
            "ticker": "Z",
            "price": 1.0,
            "size": 10.0,
            "exchange_ts_ms": t0 + 10_000 * i,
            "sequence": i,
            "event_id": str(i),
        }
        for i in range(40)
    ]
    out = FeatureEngine().process(TradeColumns.from_records(trades), QuoteColumns.empty())
    z = out.per_trade["volume_zscore"]
    assert (z[:3] == 0).all()  # < 30 history buckets
    x = round(math.log1p(10.0) * 2**32) / 2**32  # a bucket's value, in the z-score's fixed point
    hist = np.zeros(300)
    hist[::10] = x  # the 30 trades in the previous 300 s, one per 10 buckets
    expected = (x - hist.mean()) / hist.std()
    assert z[-1] == pytest.approx(expected, rel=1e-12)
    assert len(out.snapshots) == 39  # every second with a trade, except the still-open last one


def test_invalid_trades_rejected_and_outputs_finite() -> None:
    t0 = 1_700_000_000_000
    trades = [
        {
            "ticker": "Q",
            "price": float("nan"),
            "size": 1.0,
            "exchange_ts_ms": t0,
            "sequence": 1,
            "event_id": "nan",
        },
        {"ticker": "Q", "price": 1.0, "size": 0.0, "exchange_ts_ms": t0, "sequence": 2, "event_id": "zero"},
        {"ticker": "Q", "price": 2.0, "size": 1.0, "exchange_ts_ms": t0, "sequence": 3, "event_id": "good"},
    ]
    quotes = [
        {"ticker": "Q", "bid_price": 2.0, "ask_price": float("inf"), "exchange_ts_ms": t0, "sequence": 1}
    ]
    out = FeatureEngine().process(TradeColumns.from_records(trades), QuoteColumns.from_records(quotes))
    assert sorted(out.rejected_event_ids) == ["nan", "zero"]
    (vec,) = out.vectors()
    assert vec["bid_ask_spread"] is None


def test_a_trade_beyond_the_timestamps_the_state_keeps_is_rejected() -> None:
    """The trade state keeps each row's ts only in its composite key (`TradeState.ts_of`), which holds
    [TS_MIN, TS_MAX] unclipped: a trade outside it is rejected, one at either end is folded in."""
    ends = (trade_state.TS_MIN, trade_state.TS_MAX)
    trades = [
        {"ticker": "E", "price": 2.0, "size": 1.0, "exchange_ts_ms": ts, "sequence": i, "event_id": f"t{i}"}
        for i, ts in enumerate((ends[0] - 1, ends[0], ends[1], ends[1] + 1))
    ]
    out = FeatureEngine().process(TradeColumns.from_records(trades), QuoteColumns.empty())
    assert sorted(out.rejected_event_ids) == ["t0", "t3"]
    assert [v["ts_ms"] for v in out.vectors()] == list(ends)


def test_dict_outputs_are_finite_and_valid_models(stream: list[Event]) -> None:
    results = run_engine(split(stream, random_sizes(5, 100, hi=300)))
    dicts = flat(results, "per_trade") + flat(results, "snapshots")
    dicts += [v for r in results for v in r["latest"].values()]
    for vec in dicts:
        for value in vec.values():
            assert not (isinstance(value, float) and not math.isfinite(value))
    for vec in dicts[:: max(1, len(dicts) // 300)]:
        FeatureVector.model_validate(vec)
    # The z-score stream (input of the news join) is the per-trade column.
    for r in results:
        assert np.array_equal(r["zscores"]["volume_zscore"], r["arrays"]["volume_zscore"])
        assert np.isfinite(r["zscores"]["volume_zscore"]).all()


def test_state_is_bounded(stream: list[Event]) -> None:
    engine = FeatureEngine()
    peak = 0
    for trades, quotes in split(stream, [200] * 100):
        engine.process(TradeColumns.from_records(trades), QuoteColumns.from_records(quotes))
        peak = max(peak, engine.state_rows)
    # ~5 trades/s and ~2 quotes/s over 3 tickers: the 301 s horizon holds well under 3,000 rows,
    # while the stream has several times that.
    assert peak < 3000 < len(stream)


def test_the_bucket_table_is_sized_by_its_buckets() -> None:
    # 2 tickers, ~100 trades per second each for 400 s: one z-score bucket (a second) holds ~100 trades,
    # so a bucket table sized like the rows would be ~99 % empty slots (it once was: 64 of the ~250
    # bytes per row, docs/benchmarks.md).
    rng = np.random.default_rng(3)
    engine = FeatureEngine()
    t0 = 1_700_000_000_000
    for second in range(400):
        n = 200
        ts = np.sort(t0 + second * 1000 + rng.integers(0, 1000, n))
        ticker = np.where(rng.random(n) < 0.5, "AAA", "BBB").astype(object)
        seq = np.arange(second * n, (second + 1) * n)
        engine.process(
            TradeColumns(
                ticker, 10 + rng.random(n), np.full(n, 100.0), ts, seq, seq.astype(str).astype(object)
            ),
            QuoteColumns.empty(),
        )
    state = engine._trades
    assert len(state.key) > 60_000  # the rows of the 5-minute windows (and the slack of their regions)
    assert len(state.b_key) * 20 < len(state.key)


def test_row_codes_are_read_from_their_keys(stream: list[Event], monkeypatch: pytest.MonkeyPatch) -> None:
    # The state stores no code per row (8 bytes of every slot): a slot's code is its key's high bits,
    # the owner of its region for rows and gap slots alike, through compactions and re-layouts.
    monkeypatch.setattr(trade_state, "FILL_PROJECTION", 1.0)  # compactions as well as re-layouts
    engine = FeatureEngine()
    for trades, quotes in split(stream, random_sizes(5, 600, hi=12)):
        engine.process(TradeColumns.from_records(trades), QuoteColumns.from_records(quotes))
    state = engine._trades
    assert not hasattr(state, "code")
    owner = np.repeat(np.arange(len(state.cap)), state.cap)
    assert np.array_equal(state.code_of(np.arange(len(state.key))), owner)


@pytest.mark.skipif(
    np.finfo(np.longdouble).nmant != 63, reason="the byte count is x86-64's (80-bit extended)"
)
def test_a_row_slot_takes_88_bytes(stream: list[Event]) -> None:
    # The row arrays' bytes per slot, what the 5-minute windows' memory is made of (docs/benchmarks.md:
    # 114 while each of the three float prefix sums took a whole 16-byte long double, 6 bytes of it
    # padding, now packed into 30 bytes; 96 while the capped size was stored beside its prefix sums, of
    # which it is now the difference).
    engine = FeatureEngine()
    for trades, quotes in split(stream, [500] * 10):
        engine.process(TradeColumns.from_records(trades), QuoteColumns.from_records(quotes))
    state = engine._trades
    slots = len(state.key)
    row_arrays = {
        name: value for name, value in vars(state).items()
        if isinstance(value, np.ndarray) and value.ndim == 1 and len(value) == slots
    }  # fmt: skip
    assert "key" in row_arrays and "ok_row" in row_arrays and slots > len(state.tail)
    assert sum(array.itemsize for array in row_arrays.values()) == 88


def test_more_row_slots_than_int32_row_indices_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # `ok_row` holds row indices (plus one) as int32: a layout with more slots would wrap them silently.
    monkeypatch.setattr(trade_state, "ROW_INDEX_LIMIT", 500)
    n = 400
    ts = 1_700_000_000_000 + np.arange(n, dtype=np.int64)
    seq = np.arange(n)
    trades = TradeColumns(
        np.full(n, "AAA", dtype=object),
        np.full(n, 10.0),
        np.full(n, 100.0),
        ts,
        seq,
        seq.astype(str).astype(object),
    )
    with pytest.raises(InvalidArgument, match="int32 row indices"):
        FeatureEngine().process(trades, QuoteColumns.empty())


def test_a_bucket_table_relaid_out_alone_changes_no_vector(
    stream: list[Event], whole_reference: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bucket table is re-laid out on its own when only its regions are full (the rows' float sums
    # keep their base). Count both kinds of re-layout on a split that has bucket-only ones.
    layouts: Counter[str] = Counter()
    for name in ("_alloc_rows", "_alloc_buckets"):
        original = getattr(TradeState, name)

        def counting(self: TradeState, *args: np.ndarray, _name: str = name, _original=original) -> None:
            layouts[_name] += 1
            _original(self, *args)

        monkeypatch.setattr(TradeState, name, counting)
    batches = split(stream, random_sizes(2, 400, hi=60))
    got = run_engine(batches)
    assert layouts["_alloc_buckets"] > layouts["_alloc_rows"] > 1
    compare(got, reference(batches))
    compare(got, whole_reference, same_split=False)


def test_a_full_region_compacted_in_place_changes_no_vector(
    stream: list[Event], whole_reference: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full region whose live rows fit in half of it drops its dead rows in place (only that ticker's
    # rows move and are re-based); a re-layout of every ticker is left for regions that outgrew theirs.
    # Both happen on this split, and every vector is still the naive recomputation's. (Without the
    # projection of filling windows: this stream is shorter than a window, and projected regions
    # would leave nothing to compact.)
    monkeypatch.setattr(trade_state, "FILL_PROJECTION", 1.0)
    layouts: Counter[str] = Counter()
    alloc_rows, compact = TradeState._alloc_rows, TradeState._compact

    def relayout(self: TradeState, *args: np.ndarray) -> None:
        layouts["relayout"] += 1
        alloc_rows(self, *args)

    def compaction(self: TradeState, *args: np.ndarray) -> bool:
        done = compact(self, *args)
        layouts["compaction"] += done
        return done

    monkeypatch.setattr(TradeState, "_alloc_rows", relayout)
    monkeypatch.setattr(TradeState, "_compact", compaction)
    batches = split(stream, random_sizes(5, 600, hi=12))
    got = run_engine(batches)
    assert layouts["compaction"] > 0 and layouts["relayout"] > 1
    compare(got, reference(batches))
    compare(got, whole_reference, same_split=False)


needs_pagemap = pytest.mark.skipif(
    not (trade_state.RELEASABLE and os.path.exists("/proc/self/pagemap")),
    reason="page release is for systems with madvise; residency is read from Linux's pagemap",
)


def one_ticker(ts: np.ndarray) -> TradeColumns:
    """Trades of one ticker at `ts` (ascending): prices on a slow sine around 10, 100 shares each."""
    seq = np.arange(len(ts))
    return TradeColumns(
        np.full(len(ts), "AAA", dtype=object), 10.0 + np.sin(seq / 100), np.full(len(ts), 100.0), ts, seq,
        seq.astype(str).astype(object),
    )  # fmt: skip


def _resident_pages(array: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Whether each whole page inside slots [lo, hi) of `array` is resident (Linux's pagemap)."""
    page = mmap.PAGESIZE
    start = -(-(array.ctypes.data + lo * array.itemsize) // page)
    end = (array.ctypes.data + hi * array.itemsize) // page
    if end <= start:
        return np.zeros(0, dtype=bool)
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(start * 8)
        entries = np.frombuffer(pagemap.read(8 * (end - start)), dtype=np.uint64)
    return (entries >> np.uint64(63)).astype(bool)


@needs_pagemap
def test_a_compaction_gives_the_freed_slots_pages_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # A steady ticker's region is half dead rows when it fills and is compacted: the freed slots' pages
    # go back to the operating system (they would stay resident, zeroed, for ever), and are taken again
    # only as new rows reach them.
    monkeypatch.setattr(trade_state, "FILL_PROJECTION", 1.0)
    compact = TradeState._compact
    checked: list[int] = []

    def compaction(self: TradeState, *args: np.ndarray) -> bool:
        done = compact(self, *args)
        if done:
            for code in range(len(self.tail)):
                tail, end = int(self.tail[code]), int(self.reg0[code] + self.cap[code])
                for array in (*self._zeroed(), self.ok_row):
                    assert not _resident_pages(array, tail, end).any(), "a freed page is resident"
                assert _resident_pages(self.t_sums, int(self.reg0[code]), tail).all()  # the live rows'
                checked.append(end - tail)
        return done

    monkeypatch.setattr(TradeState, "_compact", compaction)
    n = 60_000  # one ticker, 50 trades a second for 20 minutes: four windows
    trades = one_ticker(1_700_000_000_000 + np.arange(n, dtype=np.int64) * 20)
    engine = FeatureEngine()
    for start in range(0, n, 500):
        engine.process(trades.take(slice(start, start + 500)), QuoteColumns.empty())
    assert len(checked) >= 2 and min(checked) > 5_000  # compacted, each time with many slots freed


@needs_pagemap
def test_a_regions_slots_past_its_rows_take_no_memory_but_their_keys() -> None:
    # A re-layout sizes each region at twice its rows (the slack that keeps compactions rare): the slack
    # takes pages only in `key` (its gap sentinel, which the searches read). `ok_row` filled its slack
    # with -1 (a row index of none) before issue 19's session 40: ~5.5 MiB at 15k ev/s.
    n = 20_000  # one ticker, 50 trades a second
    trades = one_ticker(1_700_000_000_000 + np.arange(n, dtype=np.int64) * 20)
    engine = FeatureEngine()
    checked = 0
    for start in range(0, n, 500):
        key = engine._trades.key
        engine.process(trades.take(slice(start, start + 500)), QuoteColumns.empty())
        state = engine._trades
        tail, end = int(state.tail[0]), int(state.reg0[0] + state.cap[0])
        if state.key is key or end - tail < 2 * 4096:  # no re-layout, or a slack of a page or two
            continue
        checked += 1
        for name, array in vars(state).items():
            if isinstance(array, np.ndarray) and len(array) == len(state.key) and name != "key":
                assert not _resident_pages(array, tail, end).any(), f"{name}: the slack's pages are resident"
    assert checked >= 1


@needs_pagemap
def test_dead_rows_give_their_pages_back_before_the_region_fills(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rows that fell out of every window stay in their region until it fills (then a compaction drops
    # them): up to the region's slack, which for a ticker that slowed down is many windows' worth.
    # Their pages go back to the operating system as they gather, all but the keys' (searched) and
    # `ok_row`'s.
    monkeypatch.setattr(trade_state, "RELEASE_DEAD_ROWS", 512)
    # One ticker: 100 trades a second for 400 s (its region is sized for that), then 25 a second for
    # 800 s; 500 trades a batch.
    gaps = np.r_[np.full(40_000, 10), np.full(20_000, 40)]
    n, batch = len(gaps), 500
    trades = one_ticker(1_700_000_000_000 + np.cumsum(gaps))
    engine = FeatureEngine()
    cfg = engine.config
    checked = 0
    for start in range(0, n, batch):
        # The rows are released at a batch's start, up to the cutoff before it (less the threshold).
        cutoff = engine._wm[:1] - cfg.late_grace_ms - cfg.horizon_ms
        engine.process(trades.take(slice(start, start + batch)), QuoteColumns.empty())
        state = engine._trades
        if start == 0:
            continue
        first_live = int(min(state.first_after(np.array([0]), cutoff)[0], state.tail[0]))
        released_to = first_live - 1 - trade_state.RELEASE_DEAD_ROWS
        reg0 = int(state.reg0[0])
        if released_to - reg0 < 2 * 4096:
            continue
        for array in state._zeroed():
            assert not _resident_pages(array, reg0, released_to).any(), "a dead row's page is resident"
        assert _resident_pages(state.key, reg0, released_to).all()  # the searches read the keys
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("projection", [2.0, 1.0])
def test_dead_rows_given_back_change_no_bit_of_any_output(
    projection: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A released dead row reads as zeros: nothing may read one (the prefix sums of a batch continue from
    # the row before the first live one, which stays). Released after every dead row (and with
    # compactions too, at projection 1.0) against never released, every output compared bit for bit,
    # over 40 minutes of the test stream (thousands of dead rows a ticker) in small batches.
    monkeypatch.setattr(trade_state, "FILL_PROJECTION", projection)
    long_stream = make_stream(seed=7, seconds=2400)
    batches = split(long_stream, random_sizes(9, len(long_stream) // 8, hi=20))
    assert sum(len(t) + len(q) for t, q in batches[:-1]) > len(long_stream) * 0.9  # not one last batch
    monkeypatch.setattr(trade_state, "RELEASE_DEAD_ROWS", 2**62)
    kept = run_engine(batches)
    released: list[int] = []
    release_dead = TradeState._release_dead

    def counting(self: TradeState, cutoff: np.ndarray) -> None:
        before = self.released.copy()
        release_dead(self, cutoff)
        released.append(int((self.released - before).sum()))

    monkeypatch.setattr(TradeState, "_release_dead", counting)
    monkeypatch.setattr(trade_state, "RELEASE_DEAD_ROWS", 1)
    got = run_engine(batches)
    assert sum(released) > 5_000  # dead rows given back (their whole pages among them)
    for g, k in zip(got, kept, strict=True):
        for part in ("per_trade", "snapshots", "provisional", "late", "latest"):
            assert g[part] == k[part], part
        for part in ("arrays", "zscores"):
            assert g[part].keys() == k[part].keys()
            for name, values in g[part].items():
                assert np.array_equal(values, k[part][name], equal_nan=values.dtype.kind == "f"), name


def count_relayouts_by_projection(monkeypatch: pytest.MonkeyPatch) -> Counter[float]:
    """Counts every re-layout of the rows by the `FILL_PROJECTION` in force when it happens."""
    relayouts: Counter[float] = Counter()
    alloc_rows = TradeState._alloc_rows

    def relayout(self: TradeState, *args: np.ndarray) -> None:
        relayouts[trade_state.FILL_PROJECTION] += 1
        alloc_rows(self, *args)

    monkeypatch.setattr(TradeState, "_alloc_rows", relayout)
    return relayouts


@pytest.mark.parametrize("slice_move_rows", [0, 10**9], ids=["slices", "gather"])
def test_a_relayout_of_the_rows_changes_no_bit_of_any_output(
    stream: list[Event], monkeypatch: pytest.MonkeyPatch, slice_move_rows: int
) -> None:
    # A re-layout moves every ticker's rows with their prefix sums and price centre as they are, so
    # whether and when one happens changes no bit of any vector (only a compaction re-bases a ticker's
    # sums). Compactions off; two region sizings give re-layouts at different times. Both ways of
    # moving the rows (a slice per ticker, one gather) are run.
    monkeypatch.setattr(TradeState, "_compact", lambda self, *args: False)
    monkeypatch.setattr(trade_state, "SLICE_MOVE_ROWS", slice_move_rows)
    batches = split(stream, random_sizes(5, 600, hi=12))
    relayouts = count_relayouts_by_projection(monkeypatch)

    def bits(results: list[dict]) -> list[str]:
        return [
            repr(([(k, v.tobytes() if v.dtype != object else v.tolist()) for k, v in r["arrays"].items()],
                  r["snapshots"], r["provisional"], r["latest"], r["zscores"]))
            for r in results
        ]  # fmt: skip

    outputs = {}
    for projection in (1.0, 4.0):
        monkeypatch.setattr(trade_state, "FILL_PROJECTION", projection)
        outputs[projection] = bits(run_engine(batches))
    assert relayouts[4.0] < relayouts[1.0]
    assert outputs[4.0] == outputs[1.0]


def test_filling_windows_are_sized_for_their_projected_rows(
    stream: list[Event], whole_reference: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    # While a ticker's rows span less than its window, a re-layout sizes its region for the rows the
    # full window will hold (at most FILL_PROJECTION × its live rows): fewer re-layouts of every
    # ticker than regions sized at twice the live rows, and the same vectors. At 4× here: this short
    # stream's re-layouts are mostly its tickers' first rows, which the default 2× (chosen from the
    # flat and market-open benchmarks, docs/benchmarks.md) leaves as they are.
    monkeypatch.setattr(trade_state, "FILL_PROJECTION", 4.0)
    batches = split(stream, random_sizes(5, 600, hi=12))
    relayouts = count_relayouts_by_projection(monkeypatch)
    got = run_engine(batches)
    monkeypatch.setattr(trade_state, "FILL_PROJECTION", 1.0)
    run_engine(batches)
    assert 1 <= relayouts[4.0] < relayouts[1.0]
    compare(got, reference(batches))
    compare(got, whole_reference, same_split=False)


def test_long_stream_prefix_sums_do_not_drift() -> None:
    """15 simulated minutes at ~2,000 trades/s in small batches (so the per-ticker state is compacted
    and its prefix sums re-based many times), with wide price and size ranges and some in-grace
    disorder: sampled vectors still equal the naive recomputation."""
    rng = np.random.default_rng(11)
    t0, seconds, tickers = 1_700_000_000_000, 900, ("HI", "LO", "MID", "RARE")
    rates, base_price = (1000.0, 500.0, 300.0, 2.0), (4000.0, 0.5, 60.0, 900.0)
    cols: dict[str, list[np.ndarray]] = defaultdict(list)
    for k, ticker in enumerate(tickers):
        n = rng.poisson(rates[k] * seconds)
        ts = np.sort(rng.integers(0, seconds * 1000, n))
        price = np.round(base_price[k] * np.exp(np.cumsum(rng.normal(0, 0.0005, n))), 4)
        size = rng.choice([1.0, 7.0, 100.0, 2500.0], n) * rng.choice([1, 1, 1, 40], n)
        delay = np.where(rng.random(n) < 0.02, rng.integers(0, 1900, n), 0)  # all within the grace
        for key, values in (("ts", ts), ("price", price), ("size", size), ("arrive", ts + delay)):
            cols[key].append(values)
        cols["ticker"].append(np.full(n, ticker, dtype=object))
    arrive = np.concatenate(cols["arrive"])
    order = np.argsort(arrive, kind="stable")
    ticker = np.concatenate(cols["ticker"])[order]
    ts = np.concatenate(cols["ts"])[order] + t0
    price, size = np.concatenate(cols["price"])[order], np.concatenate(cols["size"])[order]
    n = len(ts)
    assert n > 1_500_000
    event_id = np.arange(n).astype(str).astype(object)
    engine = FeatureEngine()
    sample = set(rng.choice(n, 400, replace=False).tolist()) | set(range(n - 50, n))
    got: dict[int, dict] = {}
    start = 0
    for size_ in itertools.cycle([300, 17, 900, 1500]):
        stop = min(start + size_, n)
        part = slice(start, stop)
        seq = np.arange(start, stop)
        batch = TradeColumns(ticker[part], price[part], size[part], ts[part], seq, event_id[part])
        out = engine.process(batch, QuoteColumns.empty())
        assert len(out.late_event_ids) == 0
        for i in range(start, stop):
            if i in sample:
                got[i] = vector_dicts(out.per_trade, np.array([i - start]))[0]
        start = stop
        if start == n:
            break
    assert engine.state_rows < 1_000_000  # ~301 s of ~2,000 trades/s, not the whole stream

    no_quotes = Seen()
    by_ticker = {tk: np.flatnonzero(ticker == tk) for tk in tickers}  # arrival order
    # Capped sizes (`capped_size`, vectorised): nothing is late here, so every trade in a bucket closed
    # by a trade's watermark arrived before it, and the cap window is a plain ts range.
    capped = quantised(size)
    bucket_ms = CFG.zscore_bucket_ms
    for rows in by_ticker.values():
        watermark = np.maximum.accumulate(ts[rows])
        own = ts[rows] // bucket_ms * bucket_ms
        closed_end = np.minimum((watermark - CFG.late_grace_ms) // bucket_ms * bucket_ms, own)
        by_ts = np.sort(ts[rows])
        sums = np.r_[0, np.cumsum(quantised(size[rows])[np.argsort(ts[rows], kind="stable")])]
        lo = np.searchsorted(by_ts, own - CFG.zscore_cap_window_buckets * bucket_ms, side="left")
        hi = np.maximum(np.searchsorted(by_ts, closed_end, side="left"), lo)
        has = hi > lo
        cap = np.floor(CFG.zscore_size_cap * (sums[hi[has]] - sums[lo[has]]).astype(float) / (hi - lo)[has])
        capped[rows[has]] = np.minimum(quantised(size[rows][has]), cap)
    capped = capped / 2**16
    assert (capped < size).sum() > 1000  # the 40x block trades get capped
    for i in sorted(got):
        rows = by_ticker[ticker[i]]
        rows = rows[: np.searchsorted(rows, i, side="right")]
        # Rows that arrived before t − horizon are older than every window (arrival >= ts).
        rows = rows[np.searchsorted(arrive[order][rows], ts[i] - t0 - CFG.horizon_ms) :]
        rows = rows[ts[rows] > ts[i] - CFG.horizon_ms]
        seen = Seen()
        seen.n = len(rows)
        seen._cols = {
            "ts": ts[rows],
            "arrival": rows,
            "price": price[rows],
            "size": size[rows],
            "capped": capped[rows],
            "vol": np.ones(len(rows)),  # no conditions: every trade is a regular sale
            "ok": np.ones(len(rows)),
        }
        me = Row(int(ts[i]), i, float(price[i]), float(size[i]), 0)
        want = naive_vector(seen, me, no_quotes, CFG)
        want |= {"ticker": ticker[i], "ts_ms": int(ts[i]), "late_events": 0}
        assert_vector_equal(got[i], want, f"trade {i}")
