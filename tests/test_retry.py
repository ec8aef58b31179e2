"""The one backoff helper (exponential cap, jitter range, floor) and the one in-line retry (`retry_call`)."""

from __future__ import annotations

import random

import pytest

from tradepulse.retry import backoff_delay, retry_call


def test_delay_doubles_up_to_the_cap_and_stays_in_the_jitter_range() -> None:
    rng = random.Random(1)
    for attempt, cap in [(0, 0.1), (1, 0.2), (3, 0.8), (10, 5.0)]:
        full = [backoff_delay(attempt, 0.1, 5.0, rng) for _ in range(500)]
        floored = [backoff_delay(attempt, 0.1, 5.0, rng, min_fraction=0.5) for _ in range(500)]
        assert 0 <= min(full) < cap * 0.1 and cap * 0.9 < max(full) <= cap
        assert cap * 0.5 <= min(floored) < cap * 0.6 and max(floored) <= cap


def test_retry_call_backs_off_exponentially_then_succeeds() -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("sink down")
        return "ok"

    assert retry_call(flaky, attempts=3, base_delay_s=0.1, sleep=sleeps.append, rng=random.Random(1)) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.1 and 0 <= sleeps[1] <= 0.2  # full jitter under 0.1 * 2**attempt


def test_retry_call_reraises_after_the_last_attempt() -> None:
    calls, sleeps = [], []

    def broken() -> None:
        calls.append(1)
        raise TimeoutError(f"attempt {len(calls)}")

    with pytest.raises(TimeoutError, match="attempt 3"):
        retry_call(broken, attempts=3, sleep=sleeps.append)
    assert len(calls) == 3 and len(sleeps) == 2


def test_retry_call_does_not_retry_other_errors() -> None:
    calls = []

    def bug() -> None:
        calls.append(1)
        raise KeyError("x")

    with pytest.raises(KeyError):
        retry_call(bug, retry_on=(ConnectionError,), sleep=lambda s: None)
    assert len(calls) == 1


def test_retry_call_stops_at_its_deadline() -> None:
    """Each attempt takes 4 s (a slow, throttled call); the 10 s deadline allows no attempt to start
    after it, however many attempts are allowed."""
    now = [0.0]
    starts: list[float] = []

    def slow_failure() -> None:
        starts.append(now[0])
        now[0] += 4.0
        raise TimeoutError("throttled")

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(TimeoutError):
        retry_call(
            slow_failure, attempts=50, base_delay_s=1.0, max_delay_s=1.0, deadline_s=10.0,
            sleep=sleep, clock=lambda: now[0], rng=random.Random(3),
        )  # fmt: skip
    assert 2 <= len(starts) <= 3 and all(t < 10.0 for t in starts)
    assert now[0] <= 10.0 + 4.0  # the bound: the deadline plus at most one attempt's own duration
