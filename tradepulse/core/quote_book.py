"""The quotes of the feature core: what `bid_ask_spread` (defined in `tradepulse.core.features`) is looked
up in. Quotes are kept sorted by (ticker code, ts, arrival); only those a current or future trade or a
snapshot still to close can see are kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tradepulse.core.columns import QuoteColumns
from tradepulse.core.trade_state import NO_TS, composite_span

if TYPE_CHECKING:
    from tradepulse.core.feature_config import FeatureConfig


class QuoteBook:
    """Quotes sorted by (code, ts, arrival) and the quote watermark per code."""

    def __init__(self) -> None:
        self.wm = np.empty(0, dtype=np.int64)  # quote watermark per code
        self.code = np.empty(0, dtype=np.int64)
        self.ts = np.empty(0, dtype=np.int64)
        self.spread = np.empty(0, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.ts)

    def grow(self, n: int) -> None:
        """Room for `n` new codes."""
        self.wm = np.r_[self.wm, np.full(n, NO_TS)]

    def ingest(self, codes: np.ndarray, quotes: QuoteColumns, ncodes: int) -> None:
        """Insert a batch of quotes (`codes`: their ticker codes, of `ncodes` known)."""
        ts = quotes.ts_ms.astype(np.int64)
        bid, ask = quotes.bid_price, quotes.ask_price
        ok = np.isfinite(bid) & np.isfinite(ask) & (bid > 0) & (ask > 0)
        spread = np.where(ok, ask - bid, np.nan)
        np.maximum.at(self.wm, codes, ts)
        base = min(ts.min(), self.ts.min() if len(self.ts) else ts.min()) - 1
        span = max(ts.max(), self.ts.max() if len(self.ts) else ts.max()) - base + 1
        composite_span(ncodes, int(span))
        state_key = self.code * span + (self.ts - base)
        batch_key = codes * span + (ts - base)
        order = np.argsort(batch_key, kind="stable")
        at = np.searchsorted(state_key, batch_key[order], side="right")
        self.code = np.insert(self.code, at, codes[order])
        self.ts = np.insert(self.ts, at, ts[order])
        self.spread = np.insert(self.spread, at, spread[order])

    def spread_at(self, codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Spread of the latest quote with ts <= t of each (code, t); NaN when there is none."""
        out = np.full(len(ts), np.nan)
        if len(self.ts) == 0 or len(ts) == 0:
            return out
        base = min(ts.min(), self.ts.min()) - 1
        span = max(ts.max(), self.ts.max()) - base + 1
        state_key = self.code * span + (self.ts - base)
        idx = np.searchsorted(state_key, codes * span + (ts - base), side="right") - 1
        found = idx >= 0
        idx_ok = np.where(found, idx, 0)
        found &= self.code[idx_ok] == codes
        out[found] = self.spread[idx_ok[found]]
        return out

    def trim(self, trade_wm: np.ndarray, cfg: FeatureConfig) -> None:
        """Drop the quotes no future trade or open snapshot can see (`trade_wm`: trade watermark per code)."""
        if len(self.ts) == 0:
            return
        # Future trades have ts >= wm − grace, and snapshots still to close start at the second
        # containing it: keep the quotes those can see.
        open_from = (trade_wm - cfg.late_grace_ms) // cfg.snapshot_ms * cfg.snapshot_ms
        cutoff = np.where(trade_wm > NO_TS, open_from, self.wm - cfg.horizon_ms)
        row_cut = cutoff[self.code]
        keep = self.ts > row_cut
        # ...plus the last quote at or before the cutoff of each code.
        older = np.flatnonzero(~keep)
        if len(older):
            last_of_code = np.concatenate((self.code[older][1:] != self.code[older][:-1], [True]))
            keep[older[last_of_code]] = True
        if not keep.all():
            self.code = self.code[keep]
            self.ts = self.ts[keep]
            self.spread = self.spread[keep]
