"""The worker process that fits the runner's anomaly models (`tradepulse.core.anomaly_model.timed_fit`).

Why a process: a fit (one Isolation Forest over a partition's training rows, then scoring those rows
for the threshold) takes 0.1–0.5 s of CPU, and on a thread of the runner it holds the GIL for much of
that, so every batch that runs meanwhile waits behind it; a 15k ev/s run showed e2e stalls of seconds
once the models were in use (docs/benchmarks.md). In a process the fit competes only for a core, and
at a lower priority (`nice`), since a model is due 10 s of market time after its refit point.

The worker is started with `spawn` (the runner has librdkafka threads, which `fork` would copy in an
undefined state) by the first fit, so a runner that never fits (most short runs: a model needs minutes
of training events) never starts it. It imports its runner's main module (the `tradepulse` command
group, which loads no subcommand) and what the fit needs (`tradepulse.core.anomaly_model`: numpy and the
forest): ~0.1 s and ~50 MiB, well within the 10 s of market time before a model is due. A worker that
dies (killed, out of memory) breaks the pool: its pending fits fail, which crashes the runner into its
ordinary recovery (restore from the checkpoints, refit), and the next `submit` starts a new worker. The
worker exits with the runner, however the runner ends (it watches its parent).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

NICE = 10  # below the runner: a fit is needed seconds later, a batch now
PARENT_POLL_S = 1.0


def _init_worker(increment: int, parent: int) -> None:
    """Lower the worker's priority, and end it when the runner is gone: a runner killed with
    SIGKILL cannot stop it, and its task queue (which the worker also holds open) never closes."""
    os.nice(increment)

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=exit_with_parent, name="exit-with-runner", daemon=True).start()


class RefitPool(Executor):
    """One spawned worker process at lower priority; replaced when it has died."""

    def __init__(self, nice: int = NICE) -> None:
        self._nice = nice
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._nice, os.getpid()),
        )

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:
            if self._pool is None:
                self._pool = self._start()
            try:
                return self._pool.submit(fn, *args, **kwargs)
            except BrokenProcessPool:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()
                return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
                self._pool = None
