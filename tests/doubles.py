"""Test doubles shared by several test packages (never shipped: the product does not import tests/)."""

from __future__ import annotations

import threading
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


class HangingDepthDlq:
    """A DLQ whose `depth()` hangs until `release` is set (an SQS call that does not come back);
    `entered` is set when it was called. Everything else is delegated."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def depth(self) -> int:
        self.entered.set()
        self.release.wait(120)
        return int(self.inner.depth())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
