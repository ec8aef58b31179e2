"""A worker thread that hands everything queued, in submission order, to one handler call at a time,
behind a bounded backlog: how the runner takes its transaction commit and its cold-store archiving off
its own thread (`tradepulse.bus.runner`, issue 19).

Everything queued at once: while the handler runs, new items queue up, and its next call takes all of
them. For the runner's commits that is a group commit: the batches processed while one transaction was
committing are committed together in the next, so the number of transactions adapts to how long one
takes, and the runner's thread does not wait for them. With `min_interval_s` the worker also gathers
until that long after its previous call began (one call per interval at most, however short a call
is), except while someone waits for it: a submitter blocked by the backlog, `wait_idle`, `reset` or
`close` end the gathering at once.

Failure stops the line. A handler call that raises is kept as the worker's `failure`; the items queued
behind it are dropped, and so is every later submission until the owner `reset`s the worker. That is
what a chain of transactions needs: batch N+1's must never commit after batch N's failed (its offsets
would skip N's outputs). The owner looks at `failure` when it suits it (the runner: before each batch
and when idle), waits for the worker to be idle and handles the error on its own thread.

Why not a `concurrent.futures.ThreadPoolExecutor(max_workers=1)`: it has no bound on its queue (a stalled
sink would queue every batch in memory), runs the calls queued behind a failed one, and runs them one
by one.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from tradepulse.errors import InvalidArgument

T = TypeVar("T")


class SerialWorker(Generic[T]):
    """One daemon thread calling `handler(items)` with everything queued, in submission order, one call
    at a time; at most `capacity` of weight outstanding (queued or being handled)."""

    def __init__(
        self,
        name: str,
        handler: Callable[[list[T]], object],
        capacity: int,
        *,
        min_interval_s: float = 0.0,
    ) -> None:
        if capacity < 1:
            raise InvalidArgument(f"capacity must be at least 1, got {capacity}")
        if min_interval_s < 0:
            raise InvalidArgument(f"min_interval_s must be >= 0, got {min_interval_s}")
        self.name = name
        self.handler: Callable[[list[T]], object] | None = handler
        self.capacity = capacity
        self.min_interval_s = min_interval_s
        self._last_call = -math.inf  # time.monotonic() when the previous handler call began
        self._waiters = 0  # threads waiting for this worker (blocked submitters, wait_idle, reset)
        self._cond = threading.Condition()
        self._queue: list[tuple[T, int]] = []
        self._outstanding = 0  # weight queued or being handled
        self._failure: BaseException | None = None
        self._closing = False
        # Started by the first submission: an owner that never submits (a runner built but not run)
        # leaves no thread behind.
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    @property
    def failure(self) -> BaseException | None:
        """What the failed handler call raised (None while every call succeeded, or since `reset`)."""
        return self._failure

    @property
    def idle(self) -> bool:
        """Nothing queued or being handled (a snapshot: another thread may submit right after)."""
        with self._cond:
            return self._outstanding == 0

    def submit(self, item: T, weight: int = 1) -> float:
        """Queue `item`, first waiting while the outstanding weight plus `weight` is over the capacity
        (an item heavier than the capacity waits for an idle worker). Returns the milliseconds it
        waited. While the worker has failed, or is closing, the item is dropped."""
        started = time.perf_counter()
        with self._cond:
            while (
                self._failure is None and self._outstanding > 0 and self._outstanding + weight > self.capacity
            ):
                self._wait()
            if self._failure is None and not self._closing:
                if self._thread.ident is None:
                    self._thread.start()
                self._queue.append((item, weight))
                self._outstanding += weight
                self._cond.notify_all()
        return (time.perf_counter() - started) * 1000

    def wait_idle(self) -> None:
        """Until nothing is queued or being handled (after a failure: until the failed call returned)."""
        with self._cond:
            while self._outstanding:
                self._wait()

    def reset(self) -> BaseException | None:
        """Wait until idle, then clear and return the failure: the worker takes items again."""
        with self._cond:
            while self._outstanding:
                self._wait()
            failure, self._failure = self._failure, None
            return failure

    def close(self, *, drop: bool = False) -> None:
        """Handle what is queued (or drop it, with `drop`), wait for the running call, end the thread,
        and let go of the handler (usually a bound method of the owner: no reference cycle is left)."""
        with self._cond:
            if drop:
                self._drop_queue()
            self._closing = True
            self._cond.notify_all()
            started = self._thread.ident is not None
        if started:
            self._thread.join()
        self.handler = None

    def _wait(self) -> None:
        """Wait on the condition (held) as someone the worker must not keep gathering for."""
        self._waiters += 1
        if self._waiters == 1:
            # A worker gathering for its interval stops now; it checks `_waiters` before it gathers,
            # so only the first waiter need wake it (each waiter waking the others would spin).
            self._cond.notify_all()
        try:
            self._cond.wait()
        finally:
            self._waiters -= 1

    def _drop_queue(self) -> None:
        self._outstanding -= sum(weight for _, weight in self._queue)
        self._queue = []

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return  # closing, and nothing left to handle
                while not self._closing and not self._waiters:
                    remaining = self._last_call + self.min_interval_s - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                taken, self._queue = self._queue, []
                self._last_call = time.monotonic()
            weight = sum(w for _, w in taken)
            handler = self.handler
            assert handler is not None  # dropped by close(), after this thread ended
            try:
                handler([item for item, _ in taken])
            except BaseException as exc:  # kept for the owner's thread, which decides what it means
                with self._cond:
                    self._failure = exc
                    self._drop_queue()  # the items behind a failed call must not be handled without it
                    self._outstanding -= weight
                    self._cond.notify_all()
            else:
                with self._cond:
                    self._outstanding -= weight
                    self._cond.notify_all()
