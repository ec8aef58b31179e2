"""Test doubles shared by several test packages (never shipped: the product does not import tests/)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class SlowHotStore:
    """A hot store whose writes take `delay_s` longer (the slow sink of the backpressure and reliability
    tests); everything else is delegated."""

    def __init__(
        self, inner: Any, delay_s: float = 0.3, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.sleep = sleep
        self.writes = 0

    def write_batch(self, **rows: Any) -> None:
        self.sleep(self.delay_s)
        self.inner.write_batch(**rows)
        self.writes += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
