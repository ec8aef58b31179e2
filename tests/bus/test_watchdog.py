"""The commit watchdog: fires only for a guarded block that outlives its bound, and its default action
really restarts the process with the same command line."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from tradepulse.bus.watchdog import Watchdog


def wait_for_checks(dog: Watchdog, n: int, timeout_s: float = 5.0) -> None:
    """Wait until the watchdog's checker has looked `n` more times: "it did not fire" means something
    only once it has looked."""
    target, deadline = dog.checks + n, time.monotonic() + timeout_s
    while dog.checks < target:
        assert time.monotonic() < deadline, f"the checker ran {dog.checks} times, not {target}"
        time.sleep(0.005)


def test_fires_once_for_a_guarded_block_that_outlives_the_bound() -> None:
    now = [0.0]
    fired = threading.Event()
    dog = Watchdog(10.0, on_expire=fired.set, check_every_s=0.01, clock=lambda: now[0])
    try:
        with dog.guard("quick commit"):
            now[0] = 9.0
            wait_for_checks(dog, 5)  # armed, within its bound: looked at 5 times, never fired
        now[0] = 100.0  # unguarded time never fires
        wait_for_checks(dog, 5)
        assert not fired.is_set() and dog.expired == 0

        with dog.guard("stuck commit"):
            now[0] = 111.0
            assert fired.wait(5), "watchdog did not fire for a block past its bound"
        assert dog.expired == 1
    finally:
        dog.close()


def test_a_block_with_its_own_bound_fires_at_the_shorter_of_the_two() -> None:
    now = [0.0]
    fired = threading.Event()
    dog = Watchdog(100.0, on_expire=fired.set, check_every_s=0.01, clock=lambda: now[0])
    try:
        with dog.guard("send offsets", 5.0):
            now[0] = 4.0
            wait_for_checks(dog, 5)  # within its own bound
            assert not fired.is_set()
            now[0] = 6.0
            assert fired.wait(5), "watchdog did not fire for a block past its own bound"
        fired.clear()
        with dog.guard("slow close", 500.0):  # the watchdog's bound is the most any block gets
            now[0] = 105.0
            wait_for_checks(dog, 5)
            assert not fired.is_set()
            now[0] = 107.0
            assert fired.wait(5), "watchdog did not fire at its own bound"
        assert dog.expired == 2
    finally:
        dog.close()


def test_restart_in_place_reruns_the_same_command_line(tmp_path: Path) -> None:
    marker = tmp_path / "runs.txt"
    script = tmp_path / "victim.py"
    script.write_text(
        "import os, sys\n"
        "from tradepulse.bus.watchdog import restart_in_place\n"
        f"marker = {str(marker)!r}\n"
        "with open(marker, 'a') as f:\n"
        "    f.write(f'{os.getpid()} {sys.argv[1:]}\\n')\n"
        "if sum(1 for _ in open(marker)) < 2:\n"
        "    restart_in_place()\n"
    )
    result = subprocess.run(
        [sys.executable, str(script), "--flag", "x"], timeout=60, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    runs = marker.read_text().splitlines()
    assert len(runs) == 2
    first_pid, second_pid = (line.split()[0] for line in runs)
    assert first_pid == second_pid  # the same process, restarted in place
    assert all(line.endswith("['--flag', 'x']") for line in runs)
