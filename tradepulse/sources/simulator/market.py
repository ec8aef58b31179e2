"""Deterministic synthetic market: trades, quotes, news and labelled injected events.

The model advances in fixed ticks of simulated exchange time. Each tick is generated as numpy blocks
(one vectorised pass over all tickers), so the same code feeds a live server at 100,000+ events/s and
a batch generator for tests and quality scripts. Everything random comes from `numpy.random.Generator`s
seeded from `seed`: the market stream and the injection schedule use separate generators, so the
schedule of injected events does not shift when the event rate changes, and the same seed (and start
time) always yields the same events, the same news and the same ground truth.

Why one module of this size: the market model is one vectorised generator whose random streams must
be drawn in a fixed order for the output to be deterministic; its wire encoders (`_build_records`,
`_build_fragments`) sit beside it because they are its hot path. The servers that speak the
protocols are separate modules (`ws_server.py`, `trades_api.py`, `news_server.py`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import orjson

from tradepulse.config import DEFAULT_TICKERS
from tradepulse.core.conditions import ConditionRules
from tradepulse.errors import InvalidArgument
from tradepulse.ids import stable_id, trade_event_id
from tradepulse.models import MAX_NOTIONAL, MAX_SIZE
from tradepulse.sources.simulator.aggregates import (
    BAD_FAT_FINGER,
    BAD_IMPOSSIBLE,
    MinuteAggregates,
    rule_table,
)

Profile = Literal["flat", "market_open"]

KIND_TRADE = 0
KIND_QUOTE = 1

# Realistic reference prices and names for the default tickers; others are synthetic.
_KNOWN = {
    "AAPL": ("Apple", 190.0, 0.25),
    "MSFT": ("Microsoft", 420.0, 0.22),
    "AMZN": ("Amazon", 180.0, 0.30),
    "TSLA": ("Tesla", 250.0, 0.60),
    "NVDA": ("Nvidia", 120.0, 0.50),
}

# Massive stock exchange ids and their share of trades / quotes. 4 is the FINRA TRF (off-exchange,
# "dark") which prints many trades but never quotes.
_TRADE_EXCHANGES = np.array([4, 12, 11, 10, 19, 8, 21, 15, 7, 18, 17, 3, 1, 9, 20], dtype=np.int64)
_TRADE_EX_P = np.array([38, 15, 8, 5, 6, 6, 4, 3, 3, 3, 2, 2, 2, 1, 2], dtype=float)
_QUOTE_EXCHANGES = _TRADE_EXCHANGES[1:]
_QUOTE_EX_P = _TRADE_EX_P[1:]
_TRF_IDS = np.array([201, 202, 203], dtype=np.int64)

# Trade condition sets (Massive condition codes): 37 odd lot, 14 intermarket sweep, 41 trade-through
# exempt, 2 average price, 12 Form T, 13 extended hours sold out of sequence, 15 / 16 market center
# official close / open, 53 qualified contingent trade. Index 0 = regular trade, for which the real
# feed omits `c`. Indices 0-4 are the original sets (unchanged, recorded streams keep their meaning).
CONDITION_SETS: tuple[tuple[int, ...], ...] = (
    (),
    (37,),
    (14, 41),
    (14, 37, 41),
    (41,),
    (2,),
    (12,),
    (13,),
    (15,),
    (16,),
    (53,),
    (12, 37),
)
# The condition mix, as a share of each kind of trade (seeded: drawn from the one uniform `c_draw` per
# trade the model always drew, so adding conditions changed no other random stream). Odd lots (s < 100,
# ~45 % of trades): 15 % (14, 37, 41), 1 % (12, 37), the rest (37,). Round lots: 10 % (14, 41), 5 %
# (41,), 1 % (2,), 1.5 % (12,), 0.5 % (13,), 0.2 % (15,), 0.2 % (16,), 0.3 % (53,), the rest regular.
# Of the prints that may not set the last price under the consolidated rules, 2, 12 and 13 sit ±0.3 %
# away from the market (an average of earlier fills, an out-of-hours or late report), so applying the
# rules visibly matters; odd lots, 53 and the official open / close prints (15 / 16: not volume
# either, their size is already counted) are at the market.
_ROUND_MIX = ((0.10, 2), (0.15, 4), (0.16, 5), (0.175, 6), (0.18, 7), (0.182, 8), (0.184, 9), (0.187, 10))
_ODD_MIX = ((0.15, 3), (0.16, 11))
_OFF_MARKET = np.array([c in (5, 6, 7) for c in range(len(CONDITION_SETS))])


def _mix(draw: np.ndarray, cuts: tuple[tuple[float, int], ...], rest: int) -> np.ndarray:
    """Condition-set index per trade: the first cut with draw < bound, else `rest`."""
    out = np.full(len(draw), rest, dtype=np.int64)
    for bound, index in reversed(cuts):
        out[draw < bound] = index
    return out


# Bad ticks (`MarketConfig.bad_tick_rate`): the structurally impossible kinds (tradepulse.models bounds),
# and the ticker's trades that are never replaced (a fat finger needs a market to be off from).
BAD_TICK_DEFECTS = ("huge_price", "zero_price", "negative_price", "zero_size", "huge_size", "notional")
_BAD_TICK_MIN_SEQUENCE = 10

# Seconds per trading year at 6.5 h/day, to turn annualised volatility into per-tick volatility.
_TRADING_SECONDS_PER_YEAR = 252 * 6.5 * 3600

POSITIVE_HEADLINES = (
    "{name} shares jump after strong quarterly earnings beat expectations",
    "{name} raises full-year guidance, citing excellent demand",
    "Analysts upgrade {name} to buy, citing strong growth and improving margins",
    "{name} wins major contract, boosting its outlook",
    "{name} announces $20 billion share buyback as investors cheer",
    "{name} reports record revenue as profits surge",
    "{name} unveils breakthrough product to enthusiastic reviews",
    "Regulators approve {name} deal, a big win for its expansion plans",
)
NEGATIVE_HEADLINES = (
    "{name} shares plunge after disappointing earnings miss",
    "{name} cuts guidance amid weak demand and falling sales",
    "Analysts downgrade {name} to sell, warning of weak sales and serious problems",
    "{name} faces federal lawsuit over alleged fraud",
    "{name} recalls products after dangerous safety failures and injuries",
    "{name} CEO resigns abruptly amid investigation",
    "Regulators block {name} acquisition, dealing a blow to its strategy",
    "{name} warns of heavy losses as costs rise and demand drops",
)
_SUMMARY = "Shares of {name} ({sym}) were in focus as investors reacted to the news. {head}."
_SOURCES = ("Reuters", "Bloomberg", "MarketWatch", "CNBC", "Yahoo", "SeekingAlpha", "Benzinga")


def make_tickers(n: int) -> list[str]:
    """The default tickers followed by deterministic synthetic symbols (SAAA, SAAB, ...) up to n."""
    out = list(DEFAULT_TICKERS[:n])
    i = 0
    while len(out) < n:
        a, b, c = i // 676 % 26, i // 26 % 26, i % 26
        prefix = "S" if i < 17576 else chr(ord("T") + i // 17576)
        out.append(prefix + chr(65 + a) + chr(65 + b) + chr(65 + c))
        i += 1
    return out


@dataclass
class MarketConfig:
    """Parameters of the synthetic market (all rates are events per second of simulated time)."""

    seed: int = 42
    tickers: list[str] = field(default_factory=lambda: list(DEFAULT_TICKERS))
    rate: float = 2000.0
    trade_fraction: float = 0.4
    profile: Profile = "flat"
    peak_multiplier: float = 9.0
    tick_ms: int = 50
    start_ms: int | None = None
    spike_interval_s: float = 90.0
    jump_interval_s: float = 150.0
    news_interval_s: float = 30.0
    news_reaction_fraction: float = 0.6
    backfill_news: int = 0
    ground_truth_path: Path | None = None
    bad_tick_rate: float = 0.0
    """Fraction of trades replaced by a labelled bad tick (`_inject_bad_ticks`); 0 = none."""
    bad_tick_impossible_share: float = 0.5
    """Of those, the share that is structurally impossible; the rest are fat fingers."""
    minute_aggregates: bool = True
    """Compute the per-minute `AM` aggregates of the trades (`Block.aggregates`, `aggregates.py`)."""


#: The market-open profile's ramp: from the baseline at this many seconds after the start to the peak at
#: the second (`profile_multiplier`).
OPEN_RAMP_S = (5.0, 35.0)


def profile_multiplier(profile: Profile, elapsed_s: float | np.ndarray, peak: float = 9.0) -> Any:
    """Rate multiplier at `elapsed_s` seconds after the start.

    `market_open`: the baseline for 5 s (the pre-open), a smooth ramp to `peak`× over the next 30 s,
    a plateau until 60 s, then an exponential decay (time constant 4 min) back towards the baseline.
    """
    e = np.asarray(elapsed_s, dtype=float)
    if profile == "flat":
        return np.ones_like(e) if e.ndim else 1.0
    ramp_start, ramp_end = OPEN_RAMP_S
    x = np.clip((e - ramp_start) / (ramp_end - ramp_start), 0.0, 1.0)
    ramp = x * x * (3 - 2 * x)  # smoothstep
    decay = np.where(e > 60.0, np.exp(-(np.maximum(e, 60.0) - 60.0) / 240.0), 1.0)
    m = 1.0 + (peak - 1.0) * ramp * decay
    return m if e.ndim else float(m)


@dataclass
class Block:
    """The events of one tick, time-ordered, in a columnar form plus lazily built wire records.

    `kind` (0 trade, 1 quote), `sym` (index into the source's symbols), `t` (ms) and `q` (sequence)
    are aligned arrays; `records()` returns the Massive wire dicts in the same order.
    """

    start_ms: int
    end_ms: int
    kind: np.ndarray
    sym: np.ndarray
    t: np.ndarray
    q: np.ndarray
    news: list[dict[str, Any]]
    trades: dict[str, np.ndarray] | None = None
    quotes: dict[str, np.ndarray] | None = None
    _builder: Any = None
    _fragment_builder: Any = None
    _records: list[dict[str, Any]] | None = None
    _fragments: list[str] | None = None
    frame_cache: dict[Any, Any] = field(default_factory=dict)
    aggregates: list[dict[str, Any]] = field(default_factory=list)
    """`AM` events of the minutes that ended with this tick (not counted in `len`)."""

    def __len__(self) -> int:
        return len(self.kind)

    def records(self) -> list[dict[str, Any]]:
        """Wire-format event dicts (`ev`, `sym`, ...), built once and cached."""
        if self._records is None:
            self._records = self._builder(self) if self._builder else []
        return self._records

    def fragments(self) -> list[str]:
        """Each event as its JSON text, in order: what the server joins into frames.

        Formatting text directly is about twice as fast as building dicts and serialising them, and
        strings are not tracked by the garbage collector, which matters at 100,000+ events/s.
        """
        if self._fragments is None:
            if self._fragment_builder is not None:
                self._fragments = self._fragment_builder(self)
            else:
                self._fragments = [orjson.dumps(r).decode() for r in self.records()]
        return self._fragments


class MarketModel:
    """The synthetic market. `next_block()` advances one tick; `generate()` runs in batch."""

    def __init__(self, config: MarketConfig) -> None:
        self.config = config
        self.symbols: list[str] = list(config.tickers)
        self.speed = 1.0
        n = len(self.symbols)
        if n == 0:
            raise InvalidArgument("at least one ticker is required")
        self.tick_ms = int(config.tick_ms)
        self.start_ms = int(config.start_ms if config.start_ms is not None else time.time() * 1000)
        self.now_ms = self.start_ms
        self._tick = 0
        root = np.random.SeedSequence(config.seed)
        # A fourth stream for the bad ticks: the first three are those of spawn(3), so enabling bad
        # ticks changes no other event of a seed.
        setup_ss, market_ss, inject_ss, bad_ss = root.spawn(4)
        self._rng = np.random.default_rng(market_ss)
        self._inj = np.random.default_rng(inject_ss)
        self._bad = np.random.default_rng(bad_ss)
        setup = np.random.default_rng(setup_ss)

        known = [_KNOWN.get(s) for s in self.symbols]
        self.names = [k[0] if k else f"{s} Corp" for s, k in zip(self.symbols, known, strict=True)]
        rand_price = np.exp(setup.normal(np.log(60.0), 0.9, n)).clip(2.0, 2000.0)
        rand_vol = setup.uniform(0.2, 0.8, n)
        self.price = np.array([k[1] if k else p for k, p in zip(known, rand_price, strict=True)])
        vol = np.array([k[2] if k else v for k, v in zip(known, rand_vol, strict=True)])
        self.sigma_tick = vol * math.sqrt(self.tick_ms / 1000.0 / _TRADING_SECONDS_PER_YEAR)
        # Activity follows a Zipf-like law over a random ranking, like real volume concentration.
        ranks = setup.permutation(n) + 1
        w = 1.0 / ranks**0.8
        self.weight = w / w.sum()
        # Spread in basis points of price, at least one cent.
        self.half_spread_bps = setup.uniform(0.5, 4.0, n)
        self.tape = np.array(
            [
                3 if k else t
                for k, t in zip(known, setup.choice([1, 2, 3], n, p=[0.35, 0.15, 0.5]), strict=True)
            ],
            dtype=np.int64,
        )
        self.trade_id_base = setup.integers(10**12, 9 * 10**13, n)
        self._seq_t = np.zeros(n, dtype=np.int64)
        self._seq_q = np.zeros(n, dtype=np.int64)
        self._trade_ex_p = _TRADE_EX_P / _TRADE_EX_P.sum()
        self._quote_ex_p = _QUOTE_EX_P / _QUOTE_EX_P.sum()

        # Active injected effects: (sym, start_ms, end_ms, size_mult, activity_mult, logret_per_ms)
        self._effects: list[tuple[int, int, int, float, float, float]] = []
        self._jumps: list[tuple[int, int, float]] = []  # (time_ms, sym, logret)
        self._pending_news: list[dict[str, Any]] = []
        self.ground_truth: list[dict[str, Any]] = []
        self._news_count = 0
        self._gt_file: IO[bytes] | None = None
        if config.ground_truth_path is not None:
            path = Path(config.ground_truth_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._gt_file = path.open("wb")
        self.backfill: list[dict[str, Any]] = self._make_backfill(config.backfill_news)
        self.aggregates: MinuteAggregates | None = None
        if config.minute_aggregates:
            table = rule_table(CONDITION_SETS, ConditionRules.bundled())
            self.aggregates = MinuteAggregates(self.symbols, table)

    # ------------------------------------------------------------------ ground truth and news
    def _label(self, record: dict[str, Any]) -> None:
        self.ground_truth.append(record)
        if self._gt_file is not None:
            self._gt_file.write(orjson.dumps(record) + b"\n")
            self._gt_file.flush()

    def close(self) -> None:
        """Close the ground-truth file."""
        if self._gt_file is not None:
            self._gt_file.close()
            self._gt_file = None

    def _article(
        self, sym: int, published_s: int, positive: bool, template: int, source: int
    ) -> dict[str, Any]:
        self._news_count += 1
        # Ids depend on the start time too, so a restarted simulator does not reuse ids a poller
        # has already deduplicated; 48 bits stay exact in every JSON reader.
        article_id = int(stable_id("news", self.config.seed, self.start_ms, self._news_count)[:12], 16)
        name, ticker = self.names[sym], self.symbols[sym]
        templates = POSITIVE_HEADLINES if positive else NEGATIVE_HEADLINES
        headline = templates[template % len(templates)].format(name=name)
        return {
            "category": "company",
            "datetime": published_s,
            "headline": headline,
            "id": article_id,
            "image": "",
            "related": ticker,
            "source": _SOURCES[source % len(_SOURCES)],
            "summary": _SUMMARY.format(name=name, sym=ticker, head=headline),
            "url": f"https://news.tradepulse.local/{ticker.lower()}/{article_id}",
        }

    def _make_backfill(self, count: int) -> list[dict[str, Any]]:
        """Articles published in the hour before the start (no market reaction), so a poller has history."""
        out = []
        for _ in range(count):
            sym = int(self._inj.integers(len(self.symbols)))
            positive = bool(self._inj.random() < 0.5)
            published = (self.start_ms // 1000) - int(self._inj.integers(60, 3600))
            art = self._article(
                sym, published, positive, int(self._inj.integers(64)), int(self._inj.integers(64))
            )
            out.append(art)
            self._label(
                {
                    "type": "news",
                    "ticker": self.symbols[sym],
                    "start_ms": published * 1000,
                    "end_ms": published * 1000,
                    "article_id": art["id"],
                    "headline": art["headline"],
                    "sentiment": "positive" if positive else "negative",
                    "reaction": False,
                    "reaction_lag_s": None,
                    "backfill": True,
                }
            )
        out.sort(key=lambda a: a["datetime"])
        return out

    # ------------------------------------------------------------------ injections
    def _schedule(self, t0: int, t1: int) -> None:
        """Draw this tick's injected events from the injection generator (fixed draws per tick)."""
        cfg, inj, n = self.config, self._inj, len(self.symbols)
        dt = (t1 - t0) / 1000.0
        if cfg.spike_interval_s > 0:
            for _ in range(inj.poisson(dt / cfg.spike_interval_s)):
                self._add_spike(
                    int(inj.integers(n)),
                    t0 + int(inj.random() * (t1 - t0)),
                    float(inj.uniform(5, 20)),
                    float(inj.uniform(8, 20)),
                    None,
                )
        if cfg.jump_interval_s > 0:
            for _ in range(inj.poisson(dt / cfg.jump_interval_s)):
                sym, at = int(inj.integers(n)), t0 + int(inj.random() * (t1 - t0))
                pct = float(inj.uniform(0.015, 0.04)) * (1 if inj.random() < 0.5 else -1)
                self._jumps.append((at, sym, math.log1p(pct)))
                self._label(
                    {
                        "type": "price_jump",
                        "ticker": self.symbols[sym],
                        "start_ms": at,
                        "end_ms": at,
                        "magnitude": abs(pct),
                        "direction": 1 if pct > 0 else -1,
                        "cause": None,
                    }
                )
        if cfg.news_interval_s > 0:
            for _ in range(inj.poisson(dt / cfg.news_interval_s)):
                self._add_news(t0 + int(inj.random() * (t1 - t0)))

    def _add_spike(self, sym: int, start: int, dur_s: float, mult: float, cause: int | None) -> None:
        end = start + int(dur_s * 1000)
        # Twice the trades, each mult/2 the size: volume ≈ mult × normal.
        self._effects.append((sym, start, end, mult / 2.0, 2.0, 0.0))
        self._label(
            {
                "type": "volume_spike",
                "ticker": self.symbols[sym],
                "start_ms": start,
                "end_ms": end,
                "magnitude": mult,
                "cause": cause,
            }
        )

    def _add_news(self, at_ms: int) -> None:
        inj, n = self._inj, len(self.symbols)
        sym = int(inj.integers(n))
        positive = bool(inj.random() < 0.5)
        template, source = int(inj.integers(64)), int(inj.integers(64))
        reaction = bool(inj.random() < self.config.news_reaction_fraction)
        lag_s, dur_s, mult = float(inj.uniform(5, 45)), float(inj.uniform(5, 20)), float(inj.uniform(8, 20))
        move = float(inj.uniform(0.01, 0.03))
        published_s = at_ms // 1000
        art = self._article(sym, published_s, positive, template, source)
        self._pending_news.append(art)
        lag_s = round(lag_s, 3)
        self._label(
            {
                "type": "news",
                "ticker": self.symbols[sym],
                "start_ms": published_s * 1000,
                "end_ms": published_s * 1000,
                "article_id": art["id"],
                "headline": art["headline"],
                "sentiment": "positive" if positive else "negative",
                "reaction": reaction,
                "reaction_lag_s": lag_s if reaction else None,
            }
        )
        if reaction:
            start = published_s * 1000 + int(lag_s * 1000)
            self._add_spike(sym, start, dur_s, mult, art["id"])
            end = start + int(dur_s * 1000)
            pct = move if positive else -move
            self._effects.append((sym, start, end, 1.0, 1.0, math.log1p(pct) / (end - start)))
            self._label(
                {
                    "type": "price_move",
                    "ticker": self.symbols[sym],
                    "start_ms": start,
                    "end_ms": end,
                    "magnitude": move,
                    "direction": 1 if positive else -1,
                    "cause": art["id"],
                }
            )

    # ------------------------------------------------------------------ generation
    def next_block(self) -> Block:
        """Generate the next tick of events (trades and quotes interleaved by time)."""
        cfg, rng, n = self.config, self._rng, len(self.symbols)
        t0 = self.start_ms + self._tick * self.tick_ms
        t1 = t0 + self.tick_ms
        elapsed = self._tick * self.tick_ms / 1000.0
        self._tick += 1
        self._schedule(t0, t1)

        size_mult = np.ones(n)
        activity = np.ones(n)
        ret = self.sigma_tick * rng.standard_normal(n)
        live = []
        for eff in self._effects:
            sym, s, e, sm, am, drift = eff
            if e <= t0:
                continue
            live.append(eff)
            if s < t1:
                size_mult[sym] *= sm
                activity[sym] *= am
                ret[sym] += drift * (min(e, t1) - max(s, t0))
        self._effects = live
        if self._jumps:
            keep = []
            for at, sym, lr in self._jumps:
                if at < t1:
                    ret[sym] += lr
                else:
                    keep.append((at, sym, lr))
            self._jumps = keep
        prev = self.price
        self.price = prev * np.exp(ret)

        lam = cfg.rate * profile_multiplier(cfg.profile, elapsed, cfg.peak_multiplier) * self.tick_ms / 1000.0
        lam_k = lam * self.weight * activity
        n_t = rng.poisson(lam_k * cfg.trade_fraction)
        n_q = rng.poisson(lam_k * (1.0 - cfg.trade_fraction))
        trades = self._trades(n_t, prev, size_mult, t0)
        if cfg.bad_tick_rate > 0:
            self._inject_bad_ticks(trades)
        quotes = self._quotes(n_q, prev, t0)
        aggregates = self.aggregates.add(trades, t1) if self.aggregates is not None else []

        kind = np.concatenate([np.zeros(len(trades["t"]), np.uint8), np.ones(len(quotes["t"]), np.uint8)])
        order = np.argsort(np.concatenate([trades["u"], quotes["u"]]), kind="stable")
        news = [a for a in self._pending_news if a["datetime"] * 1000 < t1]
        self._pending_news = [a for a in self._pending_news if a["datetime"] * 1000 >= t1]
        self.now_ms = t1
        return Block(
            start_ms=t0,
            end_ms=t1,
            kind=kind[order],
            sym=np.concatenate([trades["sym"], quotes["sym"]])[order],
            t=np.concatenate([trades["t"], quotes["t"]])[order],
            q=np.concatenate([trades["q"], quotes["q"]])[order],
            news=news,
            trades=trades,
            quotes=quotes,
            _builder=lambda b, order=order: _build_records(b, self.symbols, order),
            _fragment_builder=lambda b, order=order: _build_fragments(b, self.symbols, order),
            aggregates=aggregates,
        )

    def _times_and_seq(self, counts: np.ndarray, t0: int, seq: np.ndarray) -> dict[str, np.ndarray]:
        """Symbols, time-sorted offsets and per-ticker increasing sequence numbers for `counts` events."""
        sym = np.repeat(np.arange(len(counts)), counts)
        u = self._rng.random(len(sym))
        order = np.argsort(u, kind="stable")
        sym, u = sym[order], u[order]
        # Rank of each event within its ticker, in time order.
        by_sym = np.argsort(sym, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.empty(len(sym), dtype=np.int64)
        rank[by_sym] = np.arange(len(sym)) - np.repeat(starts, counts)
        q = seq[sym] + rank + 1
        seq += counts
        t = t0 + (u * self.tick_ms).astype(np.int64)
        return {"sym": sym, "u": u, "t": t, "q": q}

    def _trades(
        self, counts: np.ndarray, prev: np.ndarray, size_mult: np.ndarray, t0: int
    ) -> dict[str, np.ndarray]:
        rng = self._rng
        d = self._times_and_seq(counts, t0, self._seq_t)
        sym, u, m = d["sym"], d["u"], len(d["sym"])
        mid = prev[sym] + (self.price[sym] - prev[sym]) * u
        half = np.maximum(mid * self.half_spread_bps[sym] * 1e-4, 0.005)
        raw = mid + half * rng.uniform(-1.0, 1.0, m)
        x = rng.choice(_TRADE_EXCHANGES, m, p=self._trade_ex_p)
        trf = x == 4
        # Off-exchange prints carry sub-penny prices; lit venues trade on the penny grid.
        p = np.where(trf, np.round(raw, 4), np.round(raw, 2))
        odd = rng.random(m) < 0.45
        odd_size = rng.geometric(0.06, m).clip(1, 99)
        lots = np.ceil(rng.pareto(1.6, m) + 1e-9).astype(np.int64).clip(1, 2000)
        size = np.where(odd, odd_size, 100 * lots).astype(float) * size_mult[sym]
        s = np.maximum(np.round(size), 1).astype(np.int64)
        c_draw = rng.random(m)
        cond = np.where(s < 100, _mix(c_draw, _ODD_MIX, 1), _mix(c_draw, _ROUND_MIX, 0))
        # Off-market prints: ±0.3 %, the side from a digit of the same draw (no new random stream).
        side = np.where((c_draw * 1e6).astype(np.int64) % 2 == 0, 1.0, -1.0)
        off = _OFF_MARKET[cond]
        p = np.where(off, np.round(p * (1.0 + 0.003 * side), 2), p)
        d.update(
            p=p,
            s=s,
            x=x,
            z=self.tape[sym],
            c=cond.astype(np.int8),
            i=self.trade_id_base[sym] + d["q"],
            trfi=np.where(trf, rng.choice(_TRF_IDS, m), 0),
            trft=np.where(trf, d["t"] - rng.integers(0, 5, m), 0),
            bad=np.zeros(m, dtype=np.int8),  # set by `_inject_bad_ticks`
        )
        return d

    def _inject_bad_ticks(self, d: dict[str, np.ndarray]) -> None:
        """Replace a `bad_tick_rate` fraction of this tick's trades (never among a ticker's first
        `_BAD_TICK_MIN_SEQUENCE` trades: a fat finger is relative to a market that has printed) by bad
        ticks, each labelled in the ground truth (`type: bad_tick`) with its event id:

        - `impossible` (`bad_tick_impossible_share` of them): a value no US-equity print can have, one of
          `BAD_TICK_DEFECTS`; ingest must dead-letter it;
        - `fat_finger`: the price 30–60 % above or below the market; the runner must flag it outlier.

        Fixed draws per trade from their own generator: the same seed gives the same bad ticks."""
        bad, m = self._bad, len(d["t"])
        u = bad.random(m)
        chosen = np.flatnonzero((u < self.config.bad_tick_rate) & (d["q"] > _BAD_TICK_MIN_SEQUENCE))
        k = len(chosen)
        if not k:
            return
        impossible = bad.random(k) < self.config.bad_tick_impossible_share
        defect = bad.integers(len(BAD_TICK_DEFECTS), size=k)
        move = bad.uniform(0.3, 0.6, k) * np.where(bad.random(k) < 0.5, 1.0, -1.0)
        p, s = d["p"].astype(float), d["s"].copy()
        d["bad"][chosen] = np.where(impossible, BAD_IMPOSSIBLE, BAD_FAT_FINGER)
        for j, i in enumerate(chosen.tolist()):
            if impossible[j]:
                name = BAD_TICK_DEFECTS[int(defect[j])]
                if name == "huge_price":
                    p[i] = 1e308
                elif name == "zero_price":
                    p[i] = 0.0
                elif name == "negative_price":
                    p[i] = -p[i]
                elif name == "zero_size":
                    s[i] = 0
                elif name == "huge_size":
                    s[i] = 10 * int(MAX_SIZE)
                else:  # notional: each field within its bound, the product not
                    s[i] = min(int(2 * MAX_NOTIONAL / p[i]) + 1, int(MAX_SIZE))
                    p[i] = max(p[i], 2 * MAX_NOTIONAL / s[i])
            else:
                name = "fat_finger"
                p[i] = round(p[i] * (1 + move[j]), 2)
            sym, x, t, q = int(d["sym"][i]), int(d["x"][i]), int(d["t"][i]), int(d["q"][i])
            ticker, trade_id = self.symbols[sym], str(int(d["i"][i]))
            self._label(
                {
                    "type": "bad_tick",
                    "kind": "impossible" if impossible[j] else "fat_finger",
                    "defect": name,
                    "ticker": ticker,
                    "start_ms": t,
                    "end_ms": t,
                    "trade_id": trade_id,
                    "sequence": q,
                    "event_id": trade_event_id(ticker, x, trade_id, t, q),
                    "price": float(p[i]),
                    "size": int(s[i]),
                }
            )
        d["p"], d["s"] = p, s

    def _quotes(self, counts: np.ndarray, prev: np.ndarray, t0: int) -> dict[str, np.ndarray]:
        rng = self._rng
        d = self._times_and_seq(counts, t0, self._seq_q)
        sym, u, m = d["sym"], d["u"], len(d["sym"])
        mid = prev[sym] + (self.price[sym] - prev[sym]) * u
        half = np.maximum(mid * self.half_spread_bps[sym] * 1e-4 * rng.uniform(0.5, 1.5, m), 0.005)
        bp = np.floor((mid - half) * 100) / 100
        ap = np.maximum(np.ceil((mid + half) * 100) / 100, bp + 0.01)
        lots = rng.geometric(0.35, (2, m))
        odd = rng.random((2, m)) < 0.1
        sizes = np.where(odd, rng.integers(1, 100, (2, m)), 100 * lots)
        d.update(
            bp=np.round(bp, 2),
            ap=np.round(ap, 2),
            bs=sizes[0],
            as_=sizes[1],
            bx=rng.choice(_QUOTE_EXCHANGES, m, p=self._quote_ex_p),
            ax=rng.choice(_QUOTE_EXCHANGES, m, p=self._quote_ex_p),
            ind=(rng.random(m) < 0.03).astype(np.int8),
            z=self.tape[sym],
        )
        return d

    def generate(self, duration_s: float) -> Iterator[Block]:
        """Generate `duration_s` of simulated time as fast as possible (batch mode for tests/quality)."""
        ticks = math.ceil(duration_s * 1000 / self.tick_ms)
        for _ in range(ticks):
            yield self.next_block()


def _build_records(block: Block, symbols: list[str], order: np.ndarray) -> list[dict[str, Any]]:
    """Massive wire dicts for a generated block, field order as the real feed sends them."""
    tr, qu = block.trades, block.quotes
    assert tr is not None and qu is not None
    out: list[dict[str, Any]] = []
    conds = [list(c) for c in CONDITION_SETS]
    for sym, x, i, z, p, s, c, t, q, trfi, trft in zip(
        tr["sym"].tolist(),
        tr["x"].tolist(),
        tr["i"].tolist(),
        tr["z"].tolist(),
        tr["p"].tolist(),
        tr["s"].tolist(),
        tr["c"].tolist(),
        tr["t"].tolist(),
        tr["q"].tolist(),
        tr["trfi"].tolist(),
        tr["trft"].tolist(),
        strict=True,
    ):
        rec: dict[str, Any] = {"ev": "T", "sym": symbols[sym], "x": x, "i": str(i), "z": z, "p": p, "s": s}
        if c:
            rec["c"] = conds[c]
        rec["t"] = t
        rec["q"] = q
        if trfi:
            rec["trfi"] = trfi
            rec["trft"] = trft
        out.append(rec)
    for sym, bx, bp, bs, ax, ap, as_, ind, t, q, z in zip(
        qu["sym"].tolist(),
        qu["bx"].tolist(),
        qu["bp"].tolist(),
        qu["bs"].tolist(),
        qu["ax"].tolist(),
        qu["ap"].tolist(),
        qu["as_"].tolist(),
        qu["ind"].tolist(),
        qu["t"].tolist(),
        qu["q"].tolist(),
        qu["z"].tolist(),
        strict=True,
    ):
        rec = {
            "ev": "Q",
            "sym": symbols[sym],
            "bx": bx,
            "bp": bp,
            "bs": bs,
            "ax": ax,
            "ap": ap,
            "as": as_,
            "c": 0,
        }
        if ind:
            rec["i"] = [604]
        rec["t"] = t
        rec["q"] = q
        rec["z"] = z
        out.append(rec)
    return [out[k] for k in order.tolist()]


_TRADE_FMT = '{"ev":"T","sym":"%s","x":%d,"i":"%d","z":%d,"p":%r,"s":%d%s,"t":%d,"q":%d%s}'
_QUOTE_FMT = (
    '{"ev":"Q","sym":"%s","bx":%d,"bp":%r,"bs":%d,"ax":%d,"ap":%r,"as":%d,"c":0%s,"t":%d,"q":%d,"z":%d}'
)
_COND_TEXT = [f',"c":[{",".join(map(str, c))}]' if c else "" for c in CONDITION_SETS]
_IND_TEXT = ("", ',"i":[604]')


def _build_fragments(block: Block, symbols: list[str], order: np.ndarray) -> list[str]:
    """The same events as `_build_records`, formatted straight to JSON text (symbols need no escaping)."""
    tr, qu = block.trades, block.quotes
    assert tr is not None and qu is not None
    trf = [""] * len(tr["t"])
    for k, trfi, trft in zip(
        np.flatnonzero(tr["trfi"]).tolist(),
        tr["trfi"][tr["trfi"] != 0].tolist(),
        tr["trft"][tr["trfi"] != 0].tolist(),
        strict=True,
    ):
        trf[k] = f',"trfi":{trfi},"trft":{trft}'
    conds = [_COND_TEXT[c] for c in tr["c"].tolist()]
    out = [
        _TRADE_FMT % (symbols[sym], x, i, z, p, s, c, t, q, f)
        for sym, x, i, z, p, s, c, t, q, f in zip(
            tr["sym"].tolist(),
            tr["x"].tolist(),
            tr["i"].tolist(),
            tr["z"].tolist(),
            tr["p"].tolist(),
            tr["s"].tolist(),
            conds,
            tr["t"].tolist(),
            tr["q"].tolist(),
            trf,
            strict=True,
        )
    ]
    out += [
        _QUOTE_FMT % (symbols[sym], bx, bp, bs, ax, ap, as_, _IND_TEXT[ind], t, q, z)
        for sym, bx, bp, bs, ax, ap, as_, ind, t, q, z in zip(
            qu["sym"].tolist(),
            qu["bx"].tolist(),
            qu["bp"].tolist(),
            qu["bs"].tolist(),
            qu["ax"].tolist(),
            qu["ap"].tolist(),
            qu["as_"].tolist(),
            qu["ind"].tolist(),
            qu["t"].tolist(),
            qu["q"].tolist(),
            qu["z"].tolist(),
            strict=True,
        )
    ]
    return [out[k] for k in order.tolist()]
