"""A small thread-safe TTL cache for API responses.

The API answers the same few keys (endpoint × ticker) many times a second from dashboards; a short
server-side TTL (1–5 s, the same as the `Cache-Control: max-age` we send) turns that into one store
read per key per TTL. The clock is injectable so tests can expire entries without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

Clock = Callable[[], float]


class TTLCache:
    """Key → value with a per-entry time-to-live; bounded, oldest-inserted entries evicted first."""

    def __init__(self, *, max_entries: int = 4096, clock: Clock = time.monotonic) -> None:
        self._entries: dict[Hashable, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._clock = clock
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> tuple[bool, Any]:
        """(True, value) while the entry is fresh, else (False, None)."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                self.hits += 1
                return True, entry[1]
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return False, None

    def put(self, key: Hashable, value: Any, ttl_s: float) -> None:
        """Store value for ttl_s seconds."""
        expires = self._clock() + ttl_s
        with self._lock:
            self._entries.pop(key, None)
            if len(self._entries) >= self._max_entries:
                # dicts keep insertion order: the first key is the oldest entry
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (expires, value)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
