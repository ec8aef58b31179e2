"""Exponential backoff with jitter, shared by every retry loop (feed reconnects, news polling, sinks)."""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int,
    base_s: float,
    max_s: float,
    rng: random.Random | None = None,
    *,
    min_fraction: float = 0.0,
) -> float:
    """Delay before retry `attempt` (0-based): uniform in [min_fraction × cap, cap], where
    cap = min(max_s, base_s × 2**attempt). min_fraction 0 is "full jitter" (spreads a thundering herd
    best); 0.5 keeps a floor so a reconnect never hammers a server that just refused us."""
    cap = min(max_s, base_s * (2**attempt))
    return (rng or random).uniform(cap * min_fraction, cap)
