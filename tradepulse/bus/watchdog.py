"""A watchdog for Kafka calls that can block forever.

librdkafka ignores the timeout of `send_offsets_to_transaction()` when the group coordinator goes away
during the call (confluentinc/librdkafka#5456), and `abort_transaction()` can wait past its own for a
transaction coordinator that restarted (#3779): a broker restart leaves the runner blocked inside C
code, alive, healthy-looking and committing nothing (docs/postmortem.md, incident 2). The runner
guards every transactional call with it: init, commit, abort, and the clients' close after a failure
(the producer's close aborts the open transaction). The commonest case, the first transaction after a
broker restart waiting for a retired group-coordinator handle (#5511), no longer reaches it: the runner
replaces a producer whose connection to a broker failed or was closed before its next transaction
(`Runner._producer_for_commit`). A transaction in flight during the outage still can. A call with a
timeout of its own is watched until shortly after it (`Runner._bounded`): past its own timeout it is
hung, so the restart need not wait for the watchdog's overall bound. A call that returns a timeout
after its producer lost a broker connection is as hung (its requests wait behind the retired broker's
handle, and each retry times out the same way): the runner calls `expire` at once (`Runner._transactional`).
A Python timeout cannot interrupt that call, so the watchdog restarts the whole process in place
(`execv`, same pid and command line). That is exactly a crash followed by a restart — which the runner
is built for and the chaos suite proves: uncommitted outputs are aborted by the restarted producer's
`init_transactions()`, the batch is replayed from the committed offsets, and the keyed sinks overwrite.
Restarting in place means the service recovers by itself under any supervisor (or none).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


def restart_in_place() -> None:
    """Replace this process with a fresh run of the same command line."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


class Watchdog:
    """Calls `on_expire` (default: restart the process) when a guarded block outlives its bound: its
    own (`guard(what, bound_s)`), at most `timeout_s`."""

    def __init__(
        self,
        timeout_s: float,
        on_expire: Callable[[], None] = restart_in_place,
        *,
        check_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.on_expire = on_expire
        self.check_every_s = check_every_s
        self.clock = clock
        self.expired = 0
        # Checks made so far: shows the checker is alive (a watchdog that never looks never fires).
        self.checks = 0
        self._deadline: float | None = None
        self._what = ""
        self._bound_s = timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="commit-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def guard(self, what: str, bound_s: float | None = None) -> Iterator[None]:
        """Arm the watchdog for the duration of the block: it fires once the block has run `bound_s`
        (the call's own bound), or `timeout_s` if that is shorter or no bound is given."""
        self._what = what
        self._bound_s = self.timeout_s if bound_s is None else min(bound_s, self.timeout_s)
        self._deadline = self.clock() + self._bound_s
        try:
            yield
        finally:
            self._deadline = None

    def _watch(self) -> None:
        while not self._stop.wait(self.check_every_s):
            deadline = self._deadline
            if deadline is not None and self.clock() > deadline:
                self._deadline = None
                self.expire(
                    f"{self._what} did not return within {self._bound_s:.0f}s (librdkafka can block "
                    "forever when the group coordinator restarts)"
                )
            self.checks += 1

    def expire(self, reason: str) -> None:
        """Act now, as for a guarded call past its bound: for a call known to be hung without waiting
        for the bound (`reason` says why). `on_expire` restarts the process, so this does not return
        in production."""
        self.expired += 1
        log.critical("%s; restarting the process in place", reason)
        self.on_expire()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.check_every_s * 2)
