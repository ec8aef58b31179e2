"""Waiting for processes to end, for tests that kill or stop them (a zombie, ended but not yet reaped by
its parent, counts as ended); what a fresh interpreter loads."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from collections.abc import Iterable

import psutil


def alive(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The processes still running: neither ended nor zombies."""
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
        except psutil.NoSuchProcess:
            pass
    return left


def wait_ended(processes: Iterable[psutil.Process], within_s: float) -> list[psutil.Process]:
    """Waits up to `within_s` for the processes to end; returns those still alive then."""
    left = alive(processes)
    deadline = time.monotonic() + within_s
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = alive(left)
    return left


def modules_loaded_by(code: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules named `prefix` or `prefix.…` that `code` leaves loaded in a fresh interpreter (this
    checkout's `tradepulse`: the working directory heads `sys.path` of `python -c`)."""
    report = (
        "\nimport sys\n"
        f"prefixes = {prefixes!r}\n"
        "print(sorted(m for m in sys.modules if m in prefixes or m.startswith(tuple(p + '.' for p in prefixes))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True, check=True)
    loaded: list[str] = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    return loaded
