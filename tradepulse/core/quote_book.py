"""The quotes of the feature core: what `bid_ask_spread` (defined in `tradepulse.core.features`) is looked
up in. Quotes are kept sorted by (ticker code, ts, arrival); only those a current or future trade or a
snapshot still to close can see are kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tradepulse.core.columns import QuoteColumns
from tradepulse.core.trade_state import KEY_BITS, NO_TS, K, kts, ranges

if TYPE_CHECKING:
    from tradepulse.core.feature_config import FeatureConfig


class QuoteBook:
    """Quotes sorted by their composite key (code · K + ts, as the trade state's: `kts`), arrival order
    among equal keys, and the quote watermark per code. The key is kept, not recomputed per batch from
    the codes and times. It holds the ts clipped to the trade state's range (`TS_MIN`, `TS_MAX`): a
    quote beyond it, which the input rules (`EpochMs`) already refuse, sorts at the nearer end."""

    def __init__(self) -> None:
        self.wm = np.empty(0, dtype=np.int64)  # quote watermark per code
        self.key = np.empty(0, dtype=np.int64)
        self.spread = np.empty(0, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.key)

    def grow(self, n: int) -> None:
        """Room for `n` new codes."""
        self.wm = np.r_[self.wm, np.full(n, NO_TS)]

    def ingest(self, codes: np.ndarray, quotes: QuoteColumns) -> None:
        """Insert a batch of quotes (`codes`: their ticker codes)."""
        ts = quotes.ts_ms.astype(np.int64)
        bid, ask = quotes.bid_price, quotes.ask_price
        ok = np.isfinite(bid) & np.isfinite(ask) & (bid > 0) & (ask > 0)
        spread = np.where(ok, ask - bid, np.nan)
        np.maximum.at(self.wm, codes, ts)
        batch_key = codes * K + kts(ts)
        order = np.argsort(batch_key, kind="stable")
        batch_key = batch_key[order]
        # Where each new quote goes in the merged book: after the held quotes of an equal key, and after
        # the new ones before it (`np.insert`'s placement, without its per-call argument handling).
        new = self.key.searchsorted(batch_key, side="right") + np.arange(len(batch_key))
        held = np.ones(len(self.key) + len(batch_key), dtype=bool)
        held[new] = False
        self.key = _merged(self.key, held, new, batch_key)
        self.spread = _merged(self.spread, held, new, spread[order])

    def spread_at(self, codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Spread of the latest quote with ts <= t of each (code, t); NaN when there is none."""
        out = np.full(len(ts), np.nan)
        if len(self.key) == 0 or len(ts) == 0:
            return out
        idx = self.key.searchsorted(codes * K + kts(ts), side="right") - 1
        found = idx >= 0
        idx_ok = np.where(found, idx, 0)
        found &= self.key[idx_ok] >> KEY_BITS == codes
        out[found] = self.spread[idx_ok[found]]
        return out

    def trim(self, trade_wm: np.ndarray, cfg: FeatureConfig) -> None:
        """Drop the quotes no future trade or open snapshot can see (`trade_wm`: trade watermark per code)."""
        if len(self.key) == 0:
            return
        # Future trades have ts >= wm − grace, and snapshots still to close start at the second
        # containing it: keep the quotes those can see...
        open_from = (trade_wm - cfg.late_grace_ms) // cfg.snapshot_ms * cfg.snapshot_ms
        cutoff = np.where(trade_wm > NO_TS, open_from, self.wm - cfg.horizon_ms)
        codes = np.arange(len(cutoff), dtype=np.int64)
        first = self.key.searchsorted(codes * K + kts(cutoff), side="right")
        # ...plus the last quote at or before the cutoff of each code.
        region = self.key.searchsorted(codes * K, side="left")
        keep_from = np.maximum(first - 1, region)
        if (keep_from == region).all():
            return
        end = np.r_[region[1:], len(self.key)]
        rows, _ = ranges(keep_from, end)
        self.key = self.key[rows]
        self.spread = self.spread[rows]


def _merged(old: np.ndarray, held: np.ndarray, new: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`old` at the positions `held` marks and `values` at the positions `new`, as one array."""
    out = np.empty(len(held), dtype=old.dtype)
    out[held] = old
    out[new] = values
    return out
