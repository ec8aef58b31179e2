"""Suspect prints: a trade far from its ticker's recent market is flagged `outlier`, kept, and left out of
the features (issue 17).

Structurally impossible values (non-finite, ≤ 0, beyond `models.MAX_PRICE` / `MAX_SIZE` /
`MAX_NOTIONAL`) never get here: ingest and the runner's decode dead-letter them. What remains can be a
real price that is still wrong for this ticker now, a fat finger 50 % off the market; on the
consolidated tape such prints are later cancelled or corrected, but every price feature would have
moved by then. So the runner flags them before the feature core, from the trades stream alone:

- **Reference price**: the median price of the ticker's previous `reference_trades` trades (stream
  order) whose event time lies within `reference_window_ms` before the trade's, flagged ones included,
  and only when at least `min_reference_trades` of them are there (else nothing is flagged: there is
  no market to compare with yet). LULD takes the mean of the last 5 minutes' eligible trades; the
  median is used here because one fat finger moves a mean over a thin window (that is what is being
  detected), and a median of N ignores up to half of them. Flagged trades stay in the reference on
  purpose: a reference of non-flagged trades only depends on the whole history (each flag on the flags
  before it) and, after a genuine gap (a halt reopening 15 % away), would stay on the old level and
  flag every later trade for ever; with them, the reference follows the market after N/2 trades, and
  it depends only on the last `reference_window_ms` of input, which the runner's rebuild replays
  exactly (`tradepulse.bus.pipeline.CoreProcessor.state_lookback_s` includes the window), so flags are
  the same across batch splits, restarts and rebalances.
- **Band**: LULD-style percentage parameters by price tier of the reference (`LULD_TIER2_BANDS`, the
  Plan's Tier 2, the wider tier, as we do not know a ticker's tier), times `band_multiplier`. A trade
  further from the reference than the band's half-width is an outlier, `above_band` or `below_band`.

An optional `eligible` mask (trades whose conditions may set the last price: not an average-price or
out-of-sequence print) limits the reference to eligible trades; every trade is still checked.

Pure numpy: no I/O, no clocks, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tradepulse.core.columns import TradeColumns, factorize
from tradepulse.errors import InvalidArgument
from tradepulse.models import OUTLIER_REASONS


@dataclass(frozen=True)
class Band:
    """Percentage parameter of one price tier: a reference price up to `max_price` (inclusive or not)
    that no earlier tier took gets a band of ± `fraction` × reference, at most ± `cap_usd` when set."""

    max_price: float
    max_inclusive: bool
    fraction: float
    cap_usd: float | None = None


LULD_TIER2_BANDS: tuple[Band, ...] = (
    Band(0.75, False, 0.75, cap_usd=0.15),  # less than $0.75: the lesser of $0.15 or 75 %
    Band(3.00, True, 0.20),  # $0.75 up to and including $3.00: 20 %
    Band(float("inf"), False, 0.10),  # more than $3.00: 10 %
)
"""The Limit Up-Limit Down Plan's percentage parameters for Tier 2 NMS Stocks (Plan to Address
Extraordinary Market Volatility, Appendix A — Percentage Parameters; approved by the SEC on 31 May 2012,
Release No. 34-67091, permanent since 11 April 2019; summary at https://www.luldplan.com). Tier 1 (S&P
500, Russell 1000, some ETPs) has 5 % above $3.00 and the Plan doubles the bands in the first 15 and the
last 25 minutes of the session; neither is modelled: Tier 2's wider band over the whole day flags fewer
genuine prints, and `band_multiplier` widens or narrows every tier."""


@dataclass(frozen=True)
class OutlierConfig:
    """Settings of the flag (`TRADEPULSE_OUTLIER_*`, `tradepulse.config.Settings`)."""

    enabled: bool = True
    band_multiplier: float = 1.0
    reference_trades: int = 20
    reference_window_ms: int = 300_000
    min_reference_trades: int = 3
    bands: tuple[Band, ...] = LULD_TIER2_BANDS

    @classmethod
    def from_settings(cls, settings: Any) -> OutlierConfig:
        return cls(
            enabled=settings.outlier_enabled,
            band_multiplier=settings.outlier_band_multiplier,
            reference_trades=settings.outlier_reference_trades,
            reference_window_ms=int(settings.outlier_reference_window_s * 1000),
            min_reference_trades=settings.outlier_min_reference_trades,
        )


def band_half_width(reference: np.ndarray, bands: tuple[Band, ...], multiplier: float = 1.0) -> np.ndarray:
    """± USD around each reference price (NaN where the reference is NaN)."""
    width = np.full(len(reference), np.nan)
    taken = np.isnan(reference)
    for band in bands:
        inside = ~taken & (
            (reference <= band.max_price) if band.max_inclusive else (reference < band.max_price)
        )
        w = band.fraction * reference
        if band.cap_usd is not None:
            w = np.minimum(w, band.cap_usd)
        width = np.where(inside, w, width)
        taken |= inside
    return width * multiplier


class ReferenceHistory:
    """Per ticker, its last `reference_trades` trades (stream order): event times, prices, eligibility.
    One row per ticker in `keep`-wide arrays, right-aligned: the last `count[row]` entries are its trades
    (so a batch reads and writes every ticker's history with a few array operations, not a loop)."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.ts_ms = np.zeros((0, 0), dtype=np.int64)
        self.price = np.zeros((0, 0), dtype=np.float64)
        self.eligible = np.zeros((0, 0), dtype=bool)
        self.count = np.zeros(0, dtype=np.int64)

    def rows_of(self, names: list[Any], keep: int) -> np.ndarray:
        """The rows of `names` (new tickers get empty ones); the width is `keep` from the first call."""
        if self.price.shape[1] != keep:
            if self.rows:
                raise InvalidArgument("reference_trades changed for an existing history")
            self.ts_ms, self.price, self.eligible = (np.zeros((0, keep), dtype=a.dtype) for a in self._arrays)
        rows = np.fromiter(
            (self.rows.setdefault(name, len(self.rows)) for name in names), np.int64, len(names)
        )
        grow = len(self.rows) - len(self.count)
        if grow > 0:
            grow = max(grow, len(self.count) // 2)  # amortised: new tickers arrive a few per batch
            self.ts_ms, self.price, self.eligible = (
                np.concatenate([a, np.zeros((grow, keep), dtype=a.dtype)]) for a in self._arrays
            )
            self.count = np.concatenate([self.count, np.zeros(grow, dtype=np.int64)])
        return rows

    @property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.ts_ms, self.price, self.eligible


@dataclass
class OutlierResult:
    """Per input trade: flagged, why (None if not), the reference price and the band's half-width (NaN
    without a reference)."""

    outlier: np.ndarray
    reason: np.ndarray
    reference: np.ndarray
    half_width: np.ndarray

    def counts(self) -> dict[str, int]:
        """Flagged trades per reason."""
        return {r: int(np.count_nonzero(self.reason == r)) for r in OUTLIER_REASONS}


def flag_outliers(
    ticker: np.ndarray,
    price: np.ndarray,
    ts_ms: np.ndarray,
    history: ReferenceHistory,
    config: OutlierConfig,
    eligible: np.ndarray | None = None,
) -> OutlierResult:
    """Flag the trades (in stream order) against their tickers' references, and roll `history` forward
    to the end of the batch. Each trade's reference is built from the trades before it only, this
    batch's included, so any split of a stream into batches gives the same flags."""
    n = len(price)
    price = np.asarray(price, dtype=np.float64)
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    elig = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    reference = np.full(n, np.nan)
    if n == 0:
        return OutlierResult(np.zeros(0, bool), np.empty(0, object), reference, reference.copy())
    keep = config.reference_trades
    # A hash factorisation (first-seen order), not a sort of the strings: each ticker's segment is
    # computed on its own, so the order of the tickers does not matter.
    local, names = factorize(ticker)
    rows = history.rows_of(names.tolist(), keep)
    order = np.argsort(local, kind="stable")  # grouped by ticker, stream order within each
    counts = np.bincount(local, minlength=len(names))
    # Per ticker one contiguous segment: its `keep` history slots (the last `count` of them hold its
    # trades), then its trades of this batch.
    seg_len = keep + counts
    seg_start = np.cumsum(seg_len) - seg_len
    total = int(seg_len.sum())
    all_p = np.empty(total, dtype=np.float64)
    all_t = np.empty(total, dtype=np.int64)
    all_e = np.empty(total, dtype=bool)
    history_pos = (seg_start[:, None] + np.arange(keep)).ravel()
    all_p[history_pos] = history.price[rows].ravel()
    all_t[history_pos] = history.ts_ms[rows].ravel()
    all_e[history_pos] = history.eligible[rows].ravel()
    group = local[order]
    rank = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)  # within its ticker
    batch_pos = seg_start[group] + keep + rank  # of each (grouped) batch trade in the concatenation
    all_p[batch_pos] = price[order]
    all_t[batch_pos] = ts_ms[order]
    all_e[batch_pos] = elig[order]
    # The first position of a segment that holds a trade (its oldest remembered one).
    starts = np.repeat(seg_start + keep - history.count[rows], counts)
    # The previous `keep` positions of each batch trade, within its ticker's segment and time window.
    idx = batch_pos[:, None] - keep + np.arange(keep)[None, :]
    valid = idx >= starts[:, None]
    idx = np.where(valid, idx, 0)
    t_now = all_t[batch_pos]
    valid &= all_t[idx] >= (t_now - config.reference_window_ms)[:, None]
    if not all_e.all():  # (the usual case without condition masks: every trade is eligible)
        valid &= all_e[idx]
    # Median of the valid prices of each row: invalid ones sort last as +inf (np.nanmedian's masked
    # arrays cost ~10× more), then the middle one or two of the `count` valid ones.
    window = np.sort(np.where(valid, all_p[idx], np.inf), axis=1)
    count = valid.sum(axis=1)
    enough = count >= max(config.min_reference_trades, 1)
    lo = np.take_along_axis(window, np.maximum(count - 1, 0)[:, None] // 2, axis=1)[:, 0]
    hi = np.take_along_axis(window, np.minimum(count // 2, keep - 1)[:, None], axis=1)[:, 0]
    reference[order] = np.where(enough, (lo + hi) / 2, np.nan)
    half_width = band_half_width(reference, config.bands, config.band_multiplier)
    with np.errstate(invalid="ignore"):
        above = price > reference + half_width
        below = price < reference - half_width
    if not config.enabled:
        above[:] = below[:] = False
    reason = np.full(n, None, dtype=object)
    reason[above] = "above_band"
    reason[below] = "below_band"
    # History: each ticker's last `keep` slots of (history + batch), of which the last count are trades.
    last = (seg_start + seg_len)[:, None] - keep + np.arange(keep)
    history.price[rows] = all_p[last]
    history.ts_ms[rows] = all_t[last]
    history.eligible[rows] = all_e[last]
    history.count[rows] = np.minimum(history.count[rows] + counts, keep)
    return OutlierResult(above | below, reason, reference, half_width)


class OutlierFlagger:
    """The reference state of the tickers the runner owns, and the flagging of each batch's trades."""

    def __init__(self, config: OutlierConfig) -> None:
        self.config = config
        self.history = ReferenceHistory()

    def flag(self, trades: TradeColumns, eligible: np.ndarray | None = None) -> OutlierResult:
        return flag_outliers(trades.ticker, trades.price, trades.ts_ms, self.history, self.config, eligible)

    def reset(self) -> None:
        self.history = ReferenceHistory()
