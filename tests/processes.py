"""Waiting for processes to end, for tests that kill or stop them (a zombie, ended but not yet reaped by
its parent, counts as ended)."""

from __future__ import annotations

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
