"""Giving the C heap's free memory back to the operating system while a runner runs.

glibc's `malloc` returns memory to the kernel only from the top of an arena (and whole allocations
above its mmap threshold); what is freed further down stays resident. A runner frees a lot there: the
feature core's batch temporaries, librdkafka's fetch buffers after a backlog, the arrays a re-layout of
the window state replaced. `malloc_trim(0)` releases every free page of every arena. Measured in a
6-minute 15k ev/s run (docs/benchmarks.md, "Memory: what the runner holds", issue 19): one trim at
100 s returned 131 MiB in 17 ms; trimming every 10 s, the processor ended the run at 1,136 MiB
against 1,269 MiB without, each trim taking 1–30 ms on the status thread (it holds one arena's lock at
a time, so an allocation of the runner's thread waits at most that long).

Only glibc has `malloc_trim`: elsewhere (macOS, musl) `HeapTrimmer` does nothing.

Between two trims, what is freed stays resident; `tune_malloc` (called first by a runner process's entry
point) keeps less of it from accumulating in the first place.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


_M_MMAP_THRESHOLD = -3  # glibc's `mallopt` parameter (malloc.h)
#: Allocations from this size on get pages of their own (`mmap`), given back when freed. Set, it is fixed:
#: glibc otherwise raises its threshold to the largest block freed so far (up to 32 MiB), after which the
#: numpy arrays of every batch come from the arenas, where freed pages stay until the next trim.
MMAP_THRESHOLD_BYTES = 128 * 1024


def tune_malloc() -> bool:
    """Process-wide: glibc's mmap threshold fixed at `MMAP_THRESHOLD_BYTES` (issue 19: the processor at 15k
    ev/s held ~35 MiB less; docs/benchmarks.md), unless the environment sets glibc's own `GLIBC_TUNABLES`
    or `MALLOC_MMAP_THRESHOLD_`, which then decides. True if it set it; False elsewhere (not glibc) or
    when the environment decides."""
    if "GLIBC_TUNABLES" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    mallopt = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def _libc_function(name: str, argtypes: list[type]) -> Callable[..., int] | None:
    """The function `name` (returning an int) of the process's own C library, or None where it has none
    (glibc's `malloc_trim` and `mallopt` are glibc's)."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim` from the process's own C library, or None where it has none."""
    return _libc_function("malloc_trim", [ctypes.c_size_t])


class HeapTrimmer:
    """`malloc_trim(0)` at most once every `interval_s` of `clock` (0: never)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._trim = _malloc_trim() if interval_s > 0 else None
        self._clock = clock
        self._last = clock()
        if interval_s > 0 and self._trim is None:
            log.info("no malloc_trim in this C library (not glibc): freed heap memory is not trimmed")

    def maybe_trim(self) -> bool:
        """Trim if `interval_s` has passed since the last trim (or the start); True if it trimmed."""
        if self._trim is None:
            return False
        now = self._clock()
        if now - self._last < self.interval_s:
            return False
        self._last = now
        self._trim(0)
        return True
