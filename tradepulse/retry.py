"""Exponential backoff with jitter, shared by every retry loop (feed reconnects, news polling, sinks),
and the one in-line retry of a call (`retry_call`)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from tradepulse.errors import InvalidArgument

T = TypeVar("T")


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


def retry_call(
    fn: Callable[[], T],
    *,
    attempts: int = 3,
    base_delay_s: float = 0.05,
    max_delay_s: float = 2.0,
    deadline_s: float | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> T:
    """Call `fn` up to `attempts` times with exponential backoff (full jitter) between attempts, and
    never start an attempt, nor sleep, past `deadline_s` after the first one; re-raises the last error
    (the caller then dead-letters the input).

    One layer retries per call path: wrap a call here only when nothing below it retries already (the
    AWS clients retry themselves, botocore's standard mode, see `tradepulse.stores.dynamo_hot`)."""
    if attempts < 1:
        raise InvalidArgument("attempts must be >= 1")
    give_up_at = None if deadline_s is None else clock() + deadline_s
    for attempt in range(attempts):
        try:
            return fn()
        except retry_on:
            if attempt == attempts - 1:
                raise
            delay = backoff_delay(attempt, base_delay_s, max_delay_s, rng)
            if give_up_at is not None and clock() + delay >= give_up_at:
                raise
            sleep(delay)
    raise AssertionError("unreachable")
