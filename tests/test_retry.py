"""The one backoff helper: exponential cap, jitter range, floor."""

from __future__ import annotations

import random

from tradepulse.retry import backoff_delay


def test_delay_doubles_up_to_the_cap_and_stays_in_the_jitter_range() -> None:
    rng = random.Random(1)
    for attempt, cap in [(0, 0.1), (1, 0.2), (3, 0.8), (10, 5.0)]:
        full = [backoff_delay(attempt, 0.1, 5.0, rng) for _ in range(500)]
        floored = [backoff_delay(attempt, 0.1, 5.0, rng, min_fraction=0.5) for _ in range(500)]
        assert 0 <= min(full) < cap * 0.1 and cap * 0.9 < max(full) <= cap
        assert cap * 0.5 <= min(floored) < cap * 0.6 and max(floored) <= cap
