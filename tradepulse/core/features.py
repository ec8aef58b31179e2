"""Vectorised per-ticker windowed features over micro-batches of trades and quotes.

Definitions (all per ticker; event time = exchange timestamp `ts`; windows are half-open (t − W, t]):

* Order. Trades are ordered by the key (ts, arrival): equal timestamps keep their arrival order. A
  trade's vector is computed over S_i = the accepted trades of its ticker that arrived at or before it
  and whose key is ≤ its own key. For an in-order stream that is simply "every trade up to this one".
* Late events. The ticker watermark is the highest ts accepted so far. A trade with
  ts < watermark − grace (`late_grace_ms`, default 2 s) is *late*: it is excluded from every window and
  reported in `late_event_ids` (the caller stores and counts it). A trade within the grace is *folded
  in*: it is inserted into the windows at its event-time position, so it counts for every vector
  computed after it arrives (including its own, which then equals what a time-sorted stream would give)
  and for every snapshot not yet closed. Vectors already emitted for later-keyed trades are not revised.
  Because S_i only depends on the arrival sequence, per-trade vectors and snapshots do not depend on how
  the stream is split into batches.
* Trade conditions (`tradepulse.core.conditions`: Massive's consolidated update rules, a trade's codes
  combined with AND, unknown codes counted and treated as a regular sale). A trade is *volume-eligible*
  when it updates volume (not 15/16 official open/close, 38 corrected close...) and *price-eligible*
  when it updates both high/low and the last sale (not 2 average price, 7 cash, 12 Form T, 13 out of
  sequence, 20 next day, 21 price variation, 22 prior reference, 37 odd lot, 52/53 contingent...).
  Volume, VWAP, the z-score and the trade count use the volume-eligible trades (the others count with
  size 0); last price, momentum, rolling average and VWAP deviation use the price-eligible ones. Every
  accepted trade still produces its vector and its snapshot second (with the rules off,
  `ConditionRules.permissive()`, every trade is both).
* `price`: the *last price*: price of the latest (by key) price-eligible trade of S_i with
  ts > t − `momentum_lookback_ms` (300 s); the trade's own price when there is none (e.g. a ticker
  whose only recent prints are odd lots or Form T).
* `vwap_1min` / `vwap_5min`: Σ price·size / Σ size over the volume-eligible trades of the last 60 s /
  300 s of S_i; the last price when there is none.
* `rolling_avg_5min`: mean price of the price-eligible trades of the last 300 s of S_i; the last
  price when there is none.
* `trade_frequency`: number of volume-eligible trades of S_i in the last 60 s.
* `volume`: size traded in the current z-score bucket (floor(ts / 1000 ms)) by the volume-eligible
  trades of S_i.
* `volume_zscore`: how unusual the volume of the current z-score bucket is, robust to single block
  trades. Each accepted trade j gets a *capped size* c_j = min(s_j, `zscore_size_cap` (10) × the
  mean size of the volume-eligible trades of its ticker over the *closed* buckets among the previous
  `zscore_cap_window_buckets` (60): buckets b_j−60 … whose end is ≤ (watermark after j) − grace, so
  no trade can still enter them; c_j = s_j when there are none or the cap is 0), s_j = size_j if j is
  volume-eligible, else 0. c_j is fixed when j is accepted. A bucket's value is x = log(1 + Σc) over its trades (`zscore_log_volume`; plain Σc when off). Then
  z = (x_now − mean) / std, x_now over the trades of S_i in the current bucket, mean and std over the
  history buckets: the previous `zscore_window_buckets` (300) buckets b−300 … b−1 of S_i, *starting at
  the first of them that has a trade* (any accepted trade; empty buckets after that count as x = 0).
  With n history
  buckets, mean = Σx/n and std is the population std (ddof 0). z = 0 while n <
  `zscore_min_history_buckets` (30, warm-up and after a quiet spell of ≥ 270 s), and 0 when the
  variance is ≤ 1e-12 × mean(x²) (a flat history has no scale).
  Why not raw volume: trade sizes are power-law distributed (tail exponent ~1.5 in real markets, 1.6
  in the simulator), so one block print makes a 1-s bucket "extreme" on raw mean/std many times a
  minute per ticker, and a few such prints inflate the std so that a real sustained surge scores
  low. With `zscore_size_cap=0` and `zscore_log_volume=false` z is the raw-volume z-score.
  Exactness: the z-score is computed in fixed point, so that it is a function of the accepted trades
  (and their arrival order) to the bit, whatever the batch split, the state's re-layouts or a restart
  (a correlation or anomaly replayed after a crash must be the same output). Sizes are rounded to
  multiples of 2^-16 and clamped at 2^24 for the z-score (q = min(round(size·2^16), 2^40)); the cap
  is floor(`zscore_size_cap` × Σq / n) in those units; a bucket's value x is log(1 + Σc) rounded to a
  multiple of 2^-32 (raw mode: Σc itself in the 2^-16 units, clamped at 2^48 units). All sums are
  exact int64 sums; mean and std are then computed in float64 from those integers. The z-score path
  stays exact while the sizes in a window sum below 2^47 (e.g. 2^23 trades of the clamp size).
* `price_momentum`: (price − ref) / ref × 100, ref = price of the last price-eligible trade with
  ts ≤ t − 60 s, looked up no further back than `momentum_lookback_ms` (300 s); 0 when there is none.
* `vwap_deviation_bps`: (price − vwap_5min) / vwap_5min × 10,000 (price: the last price).
* `bid_ask_spread`: ask − bid of the latest quote (by (ts, arrival)) with ts ≤ t among the quotes
  received up to and including the current batch (quotes of a batch are applied before its trades);
  undefined (NaN in arrays, None in dicts) when there is none or it has a zero side. This is the one
  feature that depends on how the quote and trade topics interleave, not only on event time.
* `late_events`: late trades of the ticker that arrived since its previous accepted trade (attached to
  the next accepted trade); for a snapshot, the sum over the trades of that second, so that summed over
  snapshots every late trade is counted once.
* Snapshots: for every second with trades, the vector as of the last trade (by key) of that second,
  computed once the ticker watermark passes the end of the second + grace. From then on no trade of
  that second can be accepted, so the snapshot is final: it is a function of the accepted trades alone.
* Revisions (fresh features; `provisional`, on by default). A second's vector is also emitted before it
  closes: a *provisional* revision of the ticker's newest second (the one holding its watermark), as of
  the latest trade of that second so far, over every trade accepted so far. Without a clock (or with
  `revision_interval_ms` 0) every batch with accepted trades of a ticker emits one, so each accepted
  trade is in a vector emitted by its own batch. With the caller's clock (`process(..., clock_ms)`) a
  ticker's revisions are at least `revision_interval_ms` apart: its trades accepted in between wait,
  and the first batch after the interval (one without trades too) emits the revision that holds them.
  The final snapshot above is the last revision (`final`). (ticker, `snapshot_start_ms`) is the natural
  key; `revision` = the number of the ticker's accepted trades with ts in [start − grace, end) so far,
  +1 for the final one. While a second is the newest, each accepted trade has ts ≥ watermark − grace ≥
  start − grace, so every provisional revision counts more than the one before; after the close no
  trade of that range can be accepted, so the final revision is the highest and, like the vector, a
  function of the accepted trades. Which provisional revisions exist depends on the batch split; a
  given (ticker, second, revision) is one vector whatever the split (its trades are the accepted
  trades of the ticker before that range plus the first `revision` ones in it, in arrival order; the
  spread, as always, depends on how the quote and trade topics interleave). A trade within the grace
  that lands in an older, still open second is in the next provisional revision of the newest second
  at once, and in the final revision of its own second.

Vectorisation: accepted trades live in per-ticker regions of one set of arrays, sorted by a
composite (ticker code, ts) key, with persistent per-ticker prefix sums (`TradeState`, in
`tradepulse.core.trade_state`; the window sums in `tradepulse.core.feature_windows`). A batch rewrites only each ticker's suffix from its earliest trade (bounded by the grace) and the z-score
buckets from that trade's bucket on; windowed sums are differences of prefix sums at `searchsorted`
positions, so the cost per batch follows the batch, not the 5-minute state. Trades that arrive after a
later-keyed trade of the same batch (within-grace disorder) are corrected for by subtracting their
contributions from the earlier arrivals' sums (cost proportional to the number of such pairs; zero for
in-order feeds). State is bounded: per ticker only trades with ts > watermark − grace − horizon
(300 s + one bucket) can be reached; older rows are dropped when a ticker's region fills (amortised:
in place for that ticker alone once its live rows have stopped growing, its float prefix sums re-based;
the z-score's are exact integers), and only the quotes a future trade can still use are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tradepulse.core.columns import QuoteColumns, TradeColumns, factorize
from tradepulse.core.conditions import ConditionRules
from tradepulse.core.feature_config import FeatureConfig
from tradepulse.core.feature_windows import (
    Corrections,
    closing_snapshots,
    disorder_corrections,
    open_snapshots,
    revision_numbers,
    window_features,
)
from tradepulse.core.quote_book import QuoteBook
from tradepulse.core.trade_state import (
    NO_TS,
    TS_MAX,
    TS_MIN,
    K,
    TradeState,
    composite_span,
    group_sizes,
    group_starts,
    kts,
)
from tradepulse.models import FeatureVector

_NO_ROWS = np.empty(0, dtype=np.int64)

FEATURE_COLUMNS = (
    "vwap_1min",
    "vwap_5min",
    "rolling_avg_5min",
    "volume",
    "volume_zscore",
    "price_momentum",
    "trade_frequency",
    "vwap_deviation_bps",
    "bid_ask_spread",
)


@dataclass
class FeatureOutput:
    """Result of one batch. Arrays may hold NaN (spread only); dicts hold finite floats or None."""

    per_trade: dict[str, np.ndarray]
    snapshots: list[dict] = field(default_factory=list)
    latest: dict[str, dict] = field(default_factory=dict)
    late_event_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    zscores: dict[str, np.ndarray] = field(default_factory=dict)
    rejected_event_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    """Trades with a non-finite or non-positive price or size, or a ts beyond ±2^42 ms (year 2109; the
    input rules stop at 2100): never folded in (dead-letter them)."""
    unknown_conditions: int = 0
    """Valid trades of the batch with a condition code the rules do not know (see `conditions`)."""
    provisional: list[dict] = field(default_factory=list)
    """Provisional revisions: per ticker with accepted trades not yet in one (this batch's, or earlier
    ones that waited for `revision_interval_ms`), its newest second so far."""
    provisional_trade_ts_ms: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    """Event time of every accepted trade whose first revision is in `provisional`."""
    final_trade_ticker: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    final_trade_ts_ms: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    """Ticker and event time of every trade of the seconds whose final revision is in `snapshots`."""

    def vectors(self) -> list[dict]:
        """Every per-trade row as a FeatureVector dict (processing order)."""
        return vector_dicts(self.per_trade, np.arange(len(self.per_trade["ts_ms"])))


_PER_TRADE_KEYS = (
    "ticker",
    "ts_ms",
    "event_id",
    "price",
    "size",
    *FEATURE_COLUMNS,
    "late_events",
    "window_start_ms",
    "window_end_ms",
)


def _empty_per_trade() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key in _PER_TRADE_KEYS:
        if key in ("ticker", "event_id"):
            out[key] = np.empty(0, dtype=object)
        elif key in ("ts_ms", "trade_frequency", "late_events", "window_start_ms", "window_end_ms"):
            out[key] = np.empty(0, dtype=np.int64)
        else:
            out[key] = np.empty(0, dtype=np.float64)
    return out


# The FeatureVector fields the core computes, in the model's order (the dicts' key order): the runner
# adds `session`, the revisions `snapshot_start_ms`, `revision` and `final`.
_VECTOR_KEYS = tuple(
    name
    for name in FeatureVector.model_fields
    if name not in ("session", "snapshot_start_ms", "revision", "final")
)
_VECTOR_INTS = ("trade_frequency", "window_start_ms", "window_end_ms", "late_events")
_VECTOR_NUMBERS = tuple(
    k for k in _VECTOR_KEYS if k not in {"ticker", "ts_ms", "bid_ask_spread", *_VECTOR_INTS}
)


def vector_dicts(cols: dict[str, np.ndarray], rows: np.ndarray) -> list[dict]:
    """Rows `rows` of per-trade (or snapshot) columns as `tradepulse.models.FeatureVector` dicts: non-finite
    numbers are 0.0, a non-finite spread None. Converted a column at a time (a batch emits hundreds)."""
    values: dict[str, list] = {
        "ticker": [str(t) for t in cols["ticker"][rows].tolist()],
        "ts_ms": cols["ts_ms"][rows].astype(np.int64).tolist(),
    }
    for key in _VECTOR_NUMBERS:
        column = np.asarray(cols[key][rows], dtype=np.float64)
        values[key] = np.where(np.isfinite(column), column, 0.0).tolist()
    for key in _VECTOR_INTS:
        values[key] = cols[key][rows].astype(np.int64).tolist()
    spread = np.asarray(cols["bid_ask_spread"][rows], dtype=np.float64)
    values["bid_ask_spread"] = [v if math.isfinite(v) else None for v in spread.tolist()]
    columns = [values[key] for key in _VECTOR_KEYS]
    return [dict(zip(_VECTOR_KEYS, row, strict=True)) for row in zip(*columns, strict=True)]


class FeatureEngine:
    """Stateful per-ticker feature computation over micro-batches (see the module docstring)."""

    def __init__(self, config: FeatureConfig = FeatureConfig(), rules: ConditionRules | None = None) -> None:
        self.config = config
        self.rules = rules if rules is not None else ConditionRules.bundled()
        """Trade-condition rules (`ConditionRules.permissive()`: off); counts unknown codes."""
        self._codes: dict[str, int] = {}
        self._names: list[str] = []
        self._wm = np.empty(0, dtype=np.int64)  # trade watermark per code
        self._pending_late = np.empty(0, dtype=np.int64)  # late trades waiting for the next accepted one
        # Provisional revisions: the clock at each code's last one, and the accepted trades (code, ts)
        # not in one yet, waiting for their code's `revision_interval_ms` to pass.
        self._last_revision = np.empty(0, dtype=np.float64)
        self._waiting_code = _NO_ROWS
        self._waiting_ts = _NO_ROWS
        self.late_total = np.empty(0, dtype=np.int64)  # late trades per code, since start
        self._trades = TradeState(config)  # accepted trades, per-code prefix sums
        self._quotes = QuoteBook()  # the quotes a trade can still use

    # --- bookkeeping ----------------------------------------------------------------------------
    @property
    def state_rows(self) -> int:
        """Trades plus quotes in the window state (bounded by the horizon; trades below the cutoff
        that wait for their region's next compaction are not counted, see `state_capacity`)."""
        cutoff = self._wm - self.config.late_grace_ms - self.config.horizon_ms
        return self._trades.live_rows(cutoff) + len(self._quotes)

    @property
    def state_capacity(self) -> int:
        """Slots allocated for trades (live, awaiting compaction, and free) plus quotes held."""
        return len(self._trades.key) + len(self._quotes)

    def watermark(self, ticker: str) -> int | None:
        """Highest accepted exchange ts of `ticker`, or None before its first trade."""
        code = self._codes.get(ticker)
        if code is None or self._wm[code] == NO_TS:
            return None
        return int(self._wm[code])

    def _codes_for(self, tickers: np.ndarray) -> np.ndarray:
        local, uniques = factorize(tickers)
        mapping = np.empty(len(uniques), dtype=np.int64)
        for j, name in enumerate(uniques):
            code = self._codes.get(name)
            if code is None:
                code = len(self._names)
                self._codes[name] = code
                self._names.append(str(name))
            mapping[j] = code
        grow = len(self._names) - len(self._wm)
        if grow > 0:
            self._wm = np.r_[self._wm, np.full(grow, NO_TS)]
            self._quotes.grow(grow)
            self._pending_late = np.r_[self._pending_late, np.zeros(grow, dtype=np.int64)]
            self._last_revision = np.r_[self._last_revision, np.full(grow, -np.inf)]
            self.late_total = np.r_[self.late_total, np.zeros(grow, dtype=np.int64)]
        return mapping[local]

    # --- quotes ---------------------------------------------------------------------------------
    def _ingest_quotes(self, quotes: QuoteColumns) -> None:
        if len(quotes) == 0:
            return
        self._quotes.ingest(self._codes_for(quotes.ticker), quotes)

    def _spread_at(self, codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return self._quotes.spread_at(codes, ts)

    def _trim_quotes(self) -> None:
        self._quotes.trim(self._wm, self.config)

    # --- trades ---------------------------------------------------------------------------------
    def process(
        self, trades: TradeColumns, quotes: QuoteColumns, clock_ms: float | None = None
    ) -> FeatureOutput:
        """Fold a batch in (quotes first, then trades in arrival order) and return its outputs.
        `clock_ms` (any monotonic clock, in ms) paces the provisional revisions: a ticker's next one
        comes `revision_interval_ms` after its last at the earliest, in this batch or a later one (an
        empty batch too). Without it every batch emits one per ticker with accepted trades."""
        self._ingest_quotes(quotes)
        valid = np.isfinite(trades.price) & (trades.price > 0) & np.isfinite(trades.size) & (trades.size > 0)
        valid &= (trades.ts_ms >= TS_MIN) & (trades.ts_ms <= TS_MAX)  # the state keeps ts in its keys
        rejected = trades.event_id[~valid]
        if not valid.all():
            trades = trades.take(valid)
        if len(trades) == 0:
            return self._empty_output(rejected, clock_ms=clock_ms)
        unknown_before = self.rules.unknown_trades
        eligible = self._eligibility(trades)
        unknown = self.rules.unknown_trades - unknown_before
        # 1. Lateness, per code in arrival order: watermark before each trade vs its ts.
        arrivals = self._lateness(self._codes_for(trades.ticker), trades.ts_ms.astype(np.int64))
        # 2. Late trades attach to the next accepted trade of their code (arrival order).
        accepted, attached = self._attach_late(arrivals)
        late_ids = trades.event_id[np.sort(arrivals.by_code[arrivals.late])]  # arrival order
        if len(accepted) == 0:
            return self._empty_output(rejected, late_ids, unknown, clock_ms)
        # 3. Merge accepted trades into the state, key order (code, ts, arrival).
        batch = self._merge(trades, arrivals, accepted, attached, eligible)
        # 4. The rows of the final revisions of the seconds that close in this batch, and of a
        # provisional revision of the newest second of each ticker that is due one.
        cfg, state = self.config, self._trades
        final, final_late, final_rows = closing_snapshots(
            cfg, state, batch.codes, arrivals.wm_before, self._wm
        )
        due, fresh_ts = self._due_revisions(batch.code, batch.ts, clock_ms)
        fresh, fresh_late = open_snapshots(cfg, state, due, self._wm) if len(due) else (_NO_ROWS, _NO_ROWS)
        # 5. Per-trade vectors (arrival view, corrected for within-batch disorder) and the revisions'
        # (final view, no correction).
        corr = disorder_corrections(batch.pos, arrivals.gidx[accepted], state)
        feats, final_cols, fresh_cols = self._window_columns(batch, corr, final, fresh)
        batch.last_price = feats.pop("price")
        snapshots = self._revisions(final, final_late, final_cols, final=True)
        provisional = self._revisions(fresh, fresh_late, fresh_cols, final=False)
        # 6. Output in processing (arrival) order.
        per_trade, latest = self._outputs(trades, batch, feats)
        self._trim_quotes()
        return FeatureOutput(
            per_trade=per_trade,
            snapshots=snapshots,
            latest=latest,
            late_event_ids=late_ids,
            zscores=_zscores(per_trade),
            rejected_event_ids=rejected,
            unknown_conditions=unknown,
            provisional=provisional,
            provisional_trade_ts_ms=fresh_ts,
            final_trade_ticker=np.asarray(self._names, dtype=object)[self._trades.code_of(final_rows)],
            final_trade_ts_ms=self._trades.ts_of(final_rows),
        )

    def _empty_output(
        self,
        rejected: np.ndarray,
        late_ids: np.ndarray | None = None,
        unknown: int = 0,
        clock_ms: float | None = None,
    ) -> FeatureOutput:
        """The output of a batch without accepted trades (the quotes are still applied), with the
        provisional revisions that came due while waiting."""
        due, fresh_ts = self._due_revisions(_NO_ROWS, _NO_ROWS, clock_ms)
        provisional: list[dict] = []
        if len(due):
            fresh, fresh_late = open_snapshots(self.config, self._trades, due, self._wm)
            _, fresh_cols = self._window_columns(None, None, fresh)
            provisional = self._revisions(fresh, fresh_late, fresh_cols, final=False)
        self._trim_quotes()
        return FeatureOutput(
            per_trade=_empty_per_trade(),
            late_event_ids=late_ids if late_ids is not None else np.empty(0, dtype=object),
            zscores=_zscores(_empty_per_trade()),
            rejected_event_ids=rejected,
            unknown_conditions=unknown,
            provisional=provisional,
            provisional_trade_ts_ms=fresh_ts,
        )

    def revisions_waiting(self) -> bool:
        """Accepted trades are waiting for a provisional revision (an empty batch may emit it)."""
        return len(self._waiting_code) > 0

    def revisions_due(self, clock_ms: float) -> bool:
        """Some waiting trade's revision is due at `clock_ms`: an empty batch now would emit it."""
        if not len(self._waiting_code):
            return False
        since = clock_ms - self._last_revision[self._waiting_code]
        return bool((since >= self.config.revision_interval_ms).any())

    def _due_revisions(
        self, codes: np.ndarray, ts: np.ndarray, clock_ms: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(The codes due a provisional revision now, ascending; the event times of the trades that
        are first in one of them.) `codes` / `ts`: the batch's accepted trades, which wait with those
        of earlier batches until their code's last revision is `revision_interval_ms` old on
        `clock_ms` (without a clock, or with no interval, at once)."""
        cfg = self.config
        if not cfg.provisional:
            return _NO_ROWS, _NO_ROWS
        if len(self._waiting_code):
            codes = np.concatenate((self._waiting_code, codes))
            ts = np.concatenate((self._waiting_ts, ts))
        if len(codes) == 0:
            return _NO_ROWS, _NO_ROWS
        due = np.zeros(len(self._names), dtype=bool)
        due[codes] = True
        if clock_ms is not None and cfg.revision_interval_ms > 0:
            due &= clock_ms - self._last_revision >= cfg.revision_interval_ms
            self._last_revision[due] = clock_ms
        first = due[codes]
        self._waiting_code, self._waiting_ts = codes[~first], ts[~first]
        return np.flatnonzero(due), ts[first]

    def _lateness(self, codes: np.ndarray, ts: np.ndarray) -> _Arrivals:
        """Step 1: group the batch by code (arrival order kept), find the late trades (ts below the
        watermark before them − grace) and advance the watermarks over the accepted ones."""
        n = len(ts)
        by_code = np.argsort(codes, kind="stable")
        c_s, t_s = codes[by_code], ts[by_code]
        gstart = group_starts(c_s)
        gsize = group_sizes(gstart, n)
        gidx = np.repeat(np.arange(len(gstart)), gsize)
        lo = int(t_s.min()) - 1
        span = int(t_s.max()) - lo + 1
        composite_span(len(gstart), span)
        running = np.maximum.accumulate(gidx * span + (t_s - lo))  # groups never leak: offsets grow
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = running[:-1] - gidx[1:] * span + lo
        prev[gstart] = NO_TS
        wm_before_trade = np.maximum(prev, self._wm[c_s])
        late = t_s < wm_before_trade - self.config.late_grace_ms
        wm_before = self._wm.copy()
        np.maximum.at(self._wm, c_s[~late], t_s[~late])
        return _Arrivals(
            by_code, c_s, t_s, gstart, gsize, c_s[gstart], gidx, wm_before_trade, late, wm_before
        )

    def _attach_late(self, a: _Arrivals) -> tuple[np.ndarray, np.ndarray]:
        """Step 2: (positions of the accepted trades in `a`, late trades attached to each). Lates after
        a code's last accepted trade wait in `_pending_late` for its next one."""
        cum_late = np.cumsum(a.late)
        acc_s = np.flatnonzero(~a.late)  # code-sorted arrival-order positions of accepted trades
        late_per_group = np.add.reduceat(a.late.astype(np.int64), a.gstart)
        np.add.at(self.late_total, a.gcode, late_per_group)
        attached = np.zeros(len(acc_s), dtype=np.int64)
        if len(acc_s):
            acc_g = a.gidx[acc_s]
            first = np.concatenate(([True], acc_g[1:] != acc_g[:-1]))
            before = np.empty(len(acc_s), dtype=np.int64)
            before[1:] = cum_late[acc_s[:-1]]
            group_base = np.where(a.gstart > 0, cum_late[a.gstart - 1], 0)
            before[first] = group_base[acc_g[first]] - self._pending_late[a.gcode[acc_g[first]]]
            attached = cum_late[acc_s] - before
            # Pending after the batch: lates after the group's last accepted trade.
            last = np.concatenate((acc_g[1:] != acc_g[:-1], [True]))
            group_end = a.gstart + a.gsize - 1
            self._pending_late[a.gcode[acc_g[last]]] = (
                cum_late[group_end[acc_g[last]]] - cum_late[acc_s[last]]
            )
        no_accept = np.flatnonzero(np.bincount(a.gidx[acc_s], minlength=len(a.gstart)) == 0)
        self._pending_late[a.gcode[no_accept]] += late_per_group[no_accept]
        return acc_s, attached

    def _eligibility(self, trades: TradeColumns) -> tuple[np.ndarray, np.ndarray]:
        """Per trade of the batch: (volume-eligible, price-eligible) as 0/1 floats, from its conditions."""
        if trades.conditions is None:  # no conditions known: every trade is a regular sale
            ones = np.ones(len(trades))
            return ones, ones
        masks = self.rules.masks(trades.conditions)
        return masks.volume.astype(np.float64), masks.last_price.astype(np.float64)

    def _merge(
        self,
        trades: TradeColumns,
        a: _Arrivals,
        acc_s: np.ndarray,
        attached: np.ndarray,
        eligible: tuple[np.ndarray, np.ndarray],
    ) -> _Accepted:
        """Step 3: insert the accepted trades into the state (room reserved first)."""
        cfg = self.config
        arrival = a.by_code[acc_s]  # batch index of each accepted trade, code-grouped arrival order
        a_code, a_ts = a.code[acc_s], a.ts[acc_s]
        a_price, a_size = trades.price[arrival], trades.size[arrival]
        vol_ok, price_ok = eligible[0][arrival], eligible[1][arrival]
        wm_at = np.maximum(a.wm_before_trade[acc_s], a_ts)  # the watermark once each trade is accepted
        bucket_ms = cfg.zscore_bucket_ms
        closed_end = (wm_at - cfg.late_grace_ms) // bucket_ms * bucket_ms
        key_order = np.argsort(a_code * K + kts(a_ts), kind="stable")  # equal ts keep arrival order
        k_code = a_code[key_order]
        ustart = group_starts(k_code)
        state = self._trades
        # Rows with ts <= wm − grace − horizon are out of reach of this batch and every later one.
        state.reserve(
            len(self._names),
            k_code[ustart],
            group_sizes(ustart, len(k_code)),
            a.wm_before - cfg.late_grace_ms - cfg.horizon_ms,
        )
        pos = np.empty(len(acc_s), dtype=np.int64)  # state row of each accepted trade
        pos[key_order] = state.merge(
            k_code,
            a_ts[key_order],
            a_price[key_order],
            a_size[key_order] * vol_ok[key_order],  # effective size: 0 when not volume-eligible
            attached[key_order],
            closed_end[key_order],
            vol_ok[key_order],
            price_ok[key_order],
        )
        return _Accepted(
            arrival, a_code, a_ts, a_price, a_size, attached, key_order, k_code[ustart], pos, a_price.copy()
        )

    def _window_columns(
        self, b: _Accepted | None, corr: Corrections | None, *row_sets: np.ndarray
    ) -> tuple[dict[str, np.ndarray], ...]:
        """The window features and spreads of the batch's trades (arrival view, `corr` subtracted; none
        without `b`) and of each of `row_sets` (state rows, final view), from one `window_features`
        call: its columns are elementwise, so each row gets the bits a call of its own would give, and
        a batch pays the call's numpy operations, a fixed cost per call that small batches feel most,
        once rather than once per set."""
        state = self._trades
        extra = np.concatenate(row_sets)
        rows, code, ts, price = extra, state.code_of(extra), state.ts_of(extra), state.price[extra]
        if b is not None:  # None: revisions alone (a batch without accepted trades)
            rows = np.concatenate((b.pos, rows))
            code = np.concatenate((b.code, code))
            ts = np.concatenate((b.ts, ts))
            price = np.concatenate((b.price, price))
        if corr is not None:
            corr = corr.extended(state.last_ok(extra))
        cols = window_features(self.config, state, rows, code, ts, price, corr)
        cols["bid_ask_spread"] = self._spread_at(code, ts)
        bounds = np.cumsum([0 if b is None else len(b.pos), *map(len, row_sets)]).tolist()
        parts = zip([0, *bounds[:-1]], bounds, strict=True)
        return tuple({name: column[lo:hi] for name, column in cols.items()} for lo, hi in parts)

    def _revisions(
        self, rows: np.ndarray, late: np.ndarray, cols: dict[str, np.ndarray], *, final: bool
    ) -> list[dict]:
        """The vectors as of state `rows` (each the latest row of its second so far; `cols`: their window
        features and spreads, `_window_columns`), with their revision numbers, by (ts, ticker)."""
        if len(rows) == 0:
            return []
        cfg, state = self.config, self._trades
        s_code, s_ts = state.code_of(rows), state.ts_of(rows)
        cols = cols | {
            "ticker": np.asarray(self._names, dtype=object)[s_code],
            "ts_ms": s_ts,
            "late_events": late,
            "window_start_ms": s_ts - cfg.vwap_long_ms,
            "window_end_ms": s_ts,
        }
        starts = (s_ts // cfg.snapshot_ms * cfg.snapshot_ms).tolist()
        revisions = revision_numbers(cfg, state, rows, final).tolist()
        vectors = vector_dicts(cols, np.arange(len(rows)))
        for vector, start, revision in zip(vectors, starts, revisions, strict=True):
            vector |= {"snapshot_start_ms": start, "revision": revision, "final": final}
        vectors.sort(key=lambda v: (v["ts_ms"], v["ticker"]))
        return vectors

    def _outputs(
        self, trades: TradeColumns, b: _Accepted, feats: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        """Step 6: per-trade columns in processing (arrival) order, and the latest vector per ticker."""
        cfg = self.config
        out_order = np.argsort(b.arrival, kind="stable")
        names = np.asarray(self._names, dtype=object)
        per_trade: dict[str, np.ndarray] = {
            "ticker": names[b.code][out_order],
            "ts_ms": b.ts[out_order],
            "event_id": trades.event_id[b.arrival][out_order],
            "price": b.last_price[out_order],
            "size": b.size[out_order],
        }
        for key in FEATURE_COLUMNS:
            per_trade[key] = feats[key][out_order]
        per_trade["late_events"] = b.attached[out_order]
        per_trade["window_start_ms"] = per_trade["ts_ms"] - cfg.vwap_long_ms
        per_trade["window_end_ms"] = per_trade["ts_ms"].copy()

        # Latest: per ticker, the batch's accepted trade with the highest key.
        key_order = b.key_order
        last_in_code = key_order[np.concatenate((b.code[key_order][1:] != b.code[key_order][:-1], [True]))]
        row_of = np.empty(len(b.arrival), dtype=np.int64)
        row_of[out_order] = np.arange(len(b.arrival))
        vectors = vector_dicts(per_trade, row_of[last_in_code])
        latest = {vector["ticker"]: vector for vector in vectors}
        return per_trade, latest


@dataclass
class _Arrivals:
    """A batch's trades grouped by code, arrival order kept within each code (step 1)."""

    by_code: np.ndarray  # batch index of each position
    code: np.ndarray
    ts: np.ndarray
    gstart: np.ndarray  # start position of each code group
    gsize: np.ndarray
    gcode: np.ndarray  # code of each group
    gidx: np.ndarray  # group of each position
    wm_before_trade: np.ndarray  # the code's watermark just before each trade
    late: np.ndarray  # bool per position
    wm_before: np.ndarray  # per code, before the batch


@dataclass
class _Accepted:
    """The accepted trades of a batch in code-grouped arrival order, and their state rows (step 3)."""

    arrival: np.ndarray  # batch index
    code: np.ndarray
    ts: np.ndarray
    price: np.ndarray
    size: np.ndarray
    attached: np.ndarray  # late trades attached to each
    key_order: np.ndarray  # order by (code, ts, arrival)
    codes: np.ndarray  # the distinct codes, ascending
    pos: np.ndarray  # state row of each
    last_price: np.ndarray  # the vector's last price (set from the window features)


def _zscores(per_trade: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "ticker": per_trade["ticker"],
        "ts_ms": per_trade["ts_ms"],
        "volume_zscore": per_trade["volume_zscore"],
    }
