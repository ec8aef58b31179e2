"""The refit worker process's loop (`main`; `tradepulse.bus.refit_pool.RefitPool` starts the process,
with the runner's import path, and runs it at the niceness increment of its first argument).

It reads tasks from stdin and writes their outcomes to stdout, each as one frame: a header (the task's
id and the payload's length, `HEADER`) and a pickled payload. A task's payload is `(fn, args, kwargs)`;
an outcome's is `(True, result)` or `(False, exception)`. The tasks run one at a time, in order.

It imports nothing beyond the standard library until a task's payload is unpickled, which imports what
the task's function needs (for a fit, numpy and the forest: `tradepulse.core.anomaly_model`). It ends
when its stdin ends: the runner closed it (`RefitPool.shutdown`) or the runner is gone, however it ended
(the kernel closes a dead process's pipes), so a worker never outlives its runner for longer than the
task it is running.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from typing import IO

HEADER = struct.Struct("<QQ")  # task id, payload length in bytes


def read_frame(stream: IO[bytes]) -> tuple[int, bytes] | None:
    """The next (task id, payload) of `stream`; None at its end (a frame cut short counts as the end)."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    task_id, length = HEADER.unpack(header)
    payload = stream.read(length)
    return None if len(payload) < length else (task_id, payload)


def write_frame(stream: IO[bytes], task_id: int, payload: bytes) -> None:
    stream.write(HEADER.pack(task_id, len(payload)))
    stream.write(payload)
    stream.flush()


def _outcome(payload: bytes) -> bytes:
    """The pickled outcome of one task: its result, or the exception that unpickling or running it
    raised (or that pickling its result raised)."""
    try:
        fn, args, kwargs = pickle.loads(payload)
        outcome: tuple[bool, object] = (True, fn(*args, **kwargs))
    except Exception as exc:
        outcome = (False, exc)
    try:
        return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an unpicklable result or exception: say so instead
        failure = RuntimeError(f"the refit worker could not send its outcome back: {exc!r}")
        return pickle.dumps((False, failure), protocol=pickle.HIGHEST_PROTOCOL)


def main() -> None:
    # Ctrl-C signals the whole process group: the runner stops in order and then closes our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(int(sys.argv[1]))
    tasks = sys.stdin.buffer
    # The outcomes get a descriptor of their own; whatever else writes to stdout (a library's print)
    # goes to stderr instead of into the frames.
    outcomes = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    while (frame := read_frame(tasks)) is not None:
        task_id, payload = frame
        try:
            write_frame(outcomes, task_id, _outcome(payload))
        except BrokenPipeError:  # the runner is gone
            return


if __name__ == "__main__":
    main()
