"""Contention for the reliability suite: the machine made busy on purpose, so that exactly-once is proven
for a starved process and not only for an idle box.

Two kinds, both bounded in time and undone on exit (a test that fails leaves nothing running):

- `BusyLoops`: one pure-Python busy loop per core, at normal priority, in its own process (a noisy
  neighbour: every service now gets roughly half a core or less, in bursts decided by the scheduler).
- `Throttle`: the services themselves (and optionally the broker) are stopped and continued with
  SIGSTOP/SIGCONT on a randomised duty cycle, like a CPU quota that is used up (a throttled container)
  or a stalled broker. The processes to throttle are looked up every cycle, so a service restarted after
  a kill is throttled too.

`contention(kind, ...)` is what the tests use: `"idle"` (nothing), `"busy"` or `"throttle"`.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import psutil

KINDS = ("idle", "busy", "throttle")

# Each busy loop checks the clock every ~million iterations and exits at its deadline by itself, so a
# process left behind by a crashed test still ends.
_BUSY_LOOP = (
    "import time\n"
    "deadline = time.monotonic() + float({max_s})\n"
    "while time.monotonic() < deadline:\n"
    "    for _ in range(1_000_000):\n"
    "        pass\n"
)


class BusyLoops:
    """`count` busy-loop processes (default: one per core) that end after `max_s` or on exit."""

    def __init__(self, count: int | None = None, max_s: float = 3600.0) -> None:
        self.count = count or os.cpu_count() or 2
        self.max_s = max_s
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> BusyLoops:
        code = _BUSY_LOOP.format(max_s=self.max_s)
        self.procs = [
            subprocess.Popen([sys.executable, "-c", code], start_new_session=True) for _ in range(self.count)
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

    def cpu_seconds(self) -> float:
        """CPU time the loops have used so far (proof that they really competed)."""
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(proc.pid).cpu_times()
                total += times.user + times.system
        return total


@dataclass
class Throttle:
    """SIGSTOP/SIGCONT the processes `pids()` returns: in each period (uniform in `period_s`) they run
    for `run_fraction` of it and are stopped for the rest. Counts the stops it made."""

    pids: Callable[[], Iterable[int]]
    run_fraction: float = 0.4
    period_s: tuple[float, float] = (0.05, 0.4)
    seed: int = 7
    stops: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Throttle:
        self._thread = threading.Thread(target=self._run, name="throttle", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        rng = random.Random(self.seed)
        while not self._stop.is_set():
            period = rng.uniform(*self.period_s)
            stopped = [pid for pid in self.pids() if _signal(pid, signal.SIGSTOP)]
            self.stops += len(stopped)
            # Continue even when asked to end mid-period: nothing is left stopped.
            self._stop.wait(period * (1 - self.run_fraction))
            for pid in stopped:
                _signal(pid, signal.SIGCONT)
            self._stop.wait(period * self.run_fraction)


def _signal(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@contextlib.contextmanager
def contention(kind: str, pids: Callable[[], Iterable[int]]) -> Iterator[dict[str, float]]:
    """Run the body under contention `kind`; yields a dict that is filled, on exit, with what the
    contention did (CPU seconds burnt by the busy loops, or the number of SIGSTOPs sent)."""
    if kind not in KINDS:
        raise ValueError(f"contention kind must be one of {KINDS}, got {kind!r}")
    stats: dict[str, float] = {}
    if kind == "idle":
        yield stats
    elif kind == "busy":
        with BusyLoops() as loops:
            yield stats
            stats["busy_loops"] = loops.count
            stats["busy_cpu_s"] = round(loops.cpu_seconds(), 1)
    else:
        with Throttle(pids) as throttle:
            yield stats
        stats["sigstops"] = throttle.stops
        stats["run_fraction"] = throttle.run_fraction


def listener_pid(bootstrap: str) -> int:
    """PID of the process listening on the port of `host:port` (the local broker)."""
    port = int(bootstrap.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return conn.pid
    raise LookupError(f"no process listens on port {port}")
