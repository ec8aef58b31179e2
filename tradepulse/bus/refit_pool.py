"""The worker process that fits the runner's anomaly models (`tradepulse.core.anomaly_model.timed_fit`).

Why a process: a fit (one Isolation Forest over a partition's training rows, then scoring those rows
for the threshold) takes 0.1–0.5 s of CPU, and on a thread of the runner it holds the GIL for much of
that, so every batch that runs meanwhile waits behind it; a 15k ev/s run showed e2e stalls of seconds
once the models were in use (docs/benchmarks.md). In a process the fit competes only for a core, and
at a lower priority (`nice`), since a model is due 10 s of market time after its refit point.

The worker is a plain child process (`tradepulse.bus.refit_worker`, started by `subprocess`: exec'd at
once, so the runner's librdkafka threads are never copied into it) that reads pickled tasks from a pipe
and writes their outcomes to another. Not `multiprocessing`: its spawned worker imports the runner's
main module, and it starts a resource tracker process beside the worker; after five fits those two held
59 MiB against this worker's 40 (docs/benchmarks.md). The first fit starts the worker, so a runner that
never fits (most short runs: a model needs minutes of training events) never does. The worker loads
what unpickling a fit needs (numpy and the forest): ~0.1 s and ~40 MiB, well within the 10 s of market
time before a model is due.

A worker idle for `IDLE_EXIT_S` exits (the pool closes its stdin; the next `submit` starts another).
Live, the partitions' refits fall due together at each minute of market time and take a few seconds,
so the worker's ~40 MiB were held for seconds a minute and idle the rest; a replay's fits follow one
another within seconds and keep one worker.

A worker that dies (killed, out of memory) breaks the pool: its pending fits fail with
`BrokenProcessPool`, which crashes the runner into its ordinary recovery (restore from the checkpoints,
refit), and the next `submit` starts a new worker. The worker ends when its stdin does, so it exits with
the runner however the runner ends (the kernel closes a killed process's pipes).
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from typing import IO, Any, ParamSpec, TypeVar

from tradepulse.bus.children import python_command
from tradepulse.bus.refit_worker import read_frame, write_frame

P = ParamSpec("P")
T = TypeVar("T")

NICE = 10  # below the runner: a fit is needed seconds later, a batch now
# How long a worker with nothing to do stays: a fraction of the minute between refit points, beyond the
# seconds between fits that fall due together (a start costs the runner's thread 1-7 ms and the worker
# ~0.1 s of CPU at `NICE`).
IDLE_EXIT_S = 5.0
# The worker's command (`tradepulse.bus.children`: the runner's import path, exec'd at once); its
# sys.argv: ["-c", nice].
WORKER_MAIN = "from tradepulse.bus.refit_worker import main; main()"


_Task = tuple[int, Callable[..., Any], tuple[Any, ...], dict[str, Any]]  # id, function, args, kwargs


class _Worker:
    """One worker process, the futures of the tasks it has been sent, and the thread that resolves them
    from its outcomes."""

    def __init__(self, nice: int, on_idle: Callable[[_Worker], None]) -> None:
        """`on_idle` is called (on the outcomes' thread) each time the worker's last pending task is done."""
        self._on_idle = on_idle
        self.process = subprocess.Popen(
            python_command(WORKER_MAIN, str(nice)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._tasks: IO[bytes] = self.process.stdin
        self._outcomes: IO[bytes] = self.process.stdout
        self._ids = itertools.count()
        self._pending: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()  # _pending, _idle_since, broken
        self._idle_since = time.monotonic()
        self.broken = False
        # Tasks are pickled and sent by a thread of their own: a fit's training rows are megabytes, more
        # than the pipe holds, and the write waits for the worker to read them (it may be fitting).
        self._to_send: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=self._send_tasks, name=f"refit-tasks-{self.process.pid}", daemon=True
        )
        self._reader = threading.Thread(
            target=self._read_outcomes, name=f"refit-outcomes-{self.process.pid}", daemon=True
        )
        self._writer.start()
        self._reader.start()

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        """Queue a task for the worker; raises BrokenProcessPool if the worker is gone."""
        future: Future[Any] = Future()
        with self._lock:
            if self.broken:
                raise BrokenProcessPool("the refit worker has exited")
            task_id = next(self._ids)
            self._pending[task_id] = future
            self._to_send.put((task_id, fn, args, kwargs))
        return future

    def _send_tasks(self) -> None:
        """Pickle and send the queued tasks until `close` queues None, then close the worker's stdin. A
        task that does not pickle fails; once a write fails (the worker is gone) nothing more is sent,
        and the reader fails what is pending."""
        while (task := self._to_send.get()) is not None:
            task_id, fn, args, kwargs = task
            try:
                payload = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                with self._lock:
                    future = self._pending.pop(task_id, None)
                if future is not None and future.set_running_or_notify_cancel():
                    future.set_exception(exc)
                continue
            try:
                write_frame(self._tasks, task_id, payload)
            except OSError:  # a closed pipe: the worker died
                with self._lock:
                    self.broken = True
                break
        with contextlib.suppress(OSError):  # bytes left in the buffer of a dead worker's pipe
            self._tasks.close()

    def idle_s(self) -> float:
        """How long the worker has had no pending task (0 while it has one)."""
        with self._lock:
            return 0.0 if self._pending else time.monotonic() - self._idle_since

    def _read_outcomes(self) -> None:
        while (frame := read_frame(self._outcomes)) is not None:
            task_id, payload = frame
            with self._lock:
                future = self._pending.pop(task_id)
                idle = not self._pending
                if idle:
                    self._idle_since = time.monotonic()
            try:
                ok, value = pickle.loads(payload)
            except Exception as exc:  # e.g. an exception class this process cannot import
                ok, value = False, exc
            if future.set_running_or_notify_cancel():  # False: cancelled while the worker ran it
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            if idle:
                self._on_idle(self)
        code = self.process.wait()
        with self._lock:
            self.broken = True
            lost, self._pending = list(self._pending.values()), {}
            self._to_send.put(None)  # the writer's end, if it is still waiting for tasks
        for future in lost:
            if future.set_running_or_notify_cancel():
                future.set_exception(BrokenProcessPool(f"the refit worker exited with code {code}"))

    def close(self, *, wait: bool, kill: bool) -> None:
        """End the worker: at once (`kill`: its pending tasks fail), or once it has run the tasks it was
        sent (the writer sends what is queued, then closes the worker's stdin)."""
        with self._lock:
            self.broken = True  # no more tasks
            self._to_send.put(None)
        if kill:
            self.process.kill()
        if wait:
            self._writer.join()
            self._reader.join()

    def cancel_pending(self) -> None:
        with self._lock:
            pending = list(self._pending.values())
        for future in pending:
            future.cancel()


class RefitPool(Executor):
    """One worker process at lower priority; replaced when it has died, ended when it has been idle for
    `idle_exit_s` (None: kept until `shutdown`)."""

    def __init__(self, nice: int = NICE, idle_exit_s: float | None = IDLE_EXIT_S) -> None:
        self._nice = nice
        self._idle_exit_s = idle_exit_s
        self._lock = threading.Lock()
        self._worker: _Worker | None = None

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:
            if self._worker is None or self._worker.broken:
                self._worker = _Worker(self._nice, self._worker_idle)
            try:
                return self._worker.submit(fn, args, kwargs)
            except BrokenProcessPool:  # it died since the check: once more, with a new one
                self._worker = _Worker(self._nice, self._worker_idle)
                return self._worker.submit(fn, args, kwargs)

    def _worker_idle(self, worker: _Worker) -> None:
        """The worker has run every task it was sent: end it if it is still idle `idle_exit_s` later."""
        if self._idle_exit_s is not None:
            timer = threading.Timer(self._idle_exit_s, self._end_if_idle, (worker, self._idle_exit_s))
            timer.name, timer.daemon = "refit-idle", True
            timer.start()

    def _end_if_idle(self, worker: _Worker, idle_exit_s: float) -> None:
        """End `worker` (it exits once its stdin is closed) if it is the pool's and has been idle for
        `idle_exit_s`; a task submitted since, or still pending, keeps it (its end starts a new timer).
        Under the pool's lock, so no `submit` can hand it a task meanwhile."""
        with self._lock:
            if self._worker is worker and worker.idle_s() >= idle_exit_s:
                self._worker = None
                worker.close(wait=False, kill=False)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """End the worker (a later `submit` starts a new one). `cancel_futures`: cancel every pending task
        and kill the worker at once (a fit has no effect beyond its result); otherwise the worker runs
        what it was sent, then exits."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            if cancel_futures:
                worker.cancel_pending()
            worker.close(wait=wait, kill=cancel_futures)
