"""The feature set of TradePulse, written the way a faust/Quix user would: per-event Python over per-key
state. Shared by both peers so they compute the same thing; only the framework plumbing differs.

State per ticker (plain JSON-able dict, so either framework can persist it): per-second buckets over
the last 300 s (Σ price·size, Σ size, trade count, Σ price, last price). When a trade opens a new
second, the previous second's feature vector is emitted (one snapshot per ticker-second, like
TradePulse's runner):

vwap_1min / vwap_5min, rolling_avg_5min (mean trade price over 5 min), trade_frequency (trades in
1 min), volume (size in the second), volume_zscore (vs the previous 300 one-second buckets, ≥ 30 of
history), price_momentum (% vs the last price ≥ 60 s earlier), vwap_deviation_bps.
"""

from __future__ import annotations

import math
from typing import Any

HORIZON_S = 300
MIN_HISTORY = 30


def new_state() -> dict[str, Any]:
    return {"sec": [], "pv": [], "v": [], "n": [], "ps": [], "last": []}


def _snapshot(ticker: str, st: dict[str, Any]) -> dict[str, Any]:
    sec, pv, v, n, ps, last = st["sec"], st["pv"], st["v"], st["n"], st["ps"], st["last"]
    cur = sec[-1]
    pv1 = v1 = n1 = 0.0
    pv5 = v5 = n5 = p5 = 0.0
    ref = None
    for i in range(len(sec) - 1, -1, -1):
        age = cur - sec[i]
        if age < 60:
            pv1 += pv[i]
            v1 += v[i]
            n1 += n[i]
        elif ref is None:
            ref = last[i]
        pv5 += pv[i]
        v5 += v[i]
        n5 += n[i]
        p5 += ps[i]
    history = [(s, x) for s, x in zip(sec[:-1], v[:-1], strict=True) if cur - s <= HORIZON_S]
    z = 0.0
    if history and cur - history[0][0] >= MIN_HISTORY:
        span = cur - history[0][0]  # buckets from the first with a trade; empty ones count as 0
        mean = sum(x for _, x in history) / span
        var = sum(x * x for _, x in history) / span - mean * mean
        if var > 1e-12:
            z = (v[-1] - mean) / math.sqrt(var)
    price = last[-1]
    vwap5 = pv5 / v5 if v5 else price
    return {
        "ticker": ticker,
        "ts_ms": (cur + 1) * 1000 - 1,
        "price": price,
        "vwap_1min": pv1 / v1 if v1 else price,
        "vwap_5min": vwap5,
        "rolling_avg_5min": p5 / n5 if n5 else price,
        "volume": v[-1],
        "volume_zscore": z,
        "price_momentum": (price - ref) / ref * 100 if ref else 0.0,
        "trade_frequency": int(n1),
        "vwap_deviation_bps": (price - vwap5) / vwap5 * 10_000 if vwap5 else 0.0,
    }


def update(st: dict[str, Any], trade: dict[str, Any]) -> dict[str, Any] | None:
    """Fold one trade into the state; returns the closed second's snapshot when a new second starts."""
    second = trade["exchange_ts_ms"] // 1000
    price, size = trade["price"], trade["size"]
    out = None
    sec = st["sec"]
    if sec and second <= sec[-1]:
        # Same second (or a late trade: folded into the current bucket, as a per-event user would).
        st["pv"][-1] += price * size
        st["v"][-1] += size
        st["n"][-1] += 1
        st["ps"][-1] += price
        st["last"][-1] = price
        return None
    if sec:
        out = _snapshot(trade["ticker"], st)
        cut = 0
        while cut < len(sec) and second - sec[cut] > HORIZON_S:
            cut += 1
        if cut:
            for key in st:
                del st[key][:cut]
    sec.append(second)
    st["pv"].append(price * size)
    st["v"].append(size)
    st["n"].append(1)
    st["ps"].append(price)
    st["last"].append(price)
    return out
