"""`tradepulse bench --py-spy`: the profile of the runner is written when the bench stops py-spy, and a
run without one says why."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tradepulse.bench.harness import (
    PY_SPY_RATE_HZ,
    _py_spy_results,
    _start_py_spy,
    _stop_py_spy,
    profile_summary,
)
from tradepulse.bench.report import profile_lines


def test_a_py_spy_that_cannot_profile_its_target_is_reported_with_its_reason(tmp_path: Path) -> None:
    # The real py-spy, pointed at a process that is not Python: it records nothing and says why, as it
    # does wherever it cannot attach to the runner (e.g. without ptrace).
    target = subprocess.Popen(["sleep", "30"])
    try:
        spy = _start_py_spy(target.pid, tmp_path / "runner-profile.txt", 5, tmp_path / "py-spy.log")
        assert spy.wait(60) != 0
    finally:
        target.kill()
        target.wait()
    logged: list[str] = []
    profile, reason = _py_spy_results(tmp_path, logged.append)
    assert profile is None and reason is not None
    assert reason.startswith("py-spy recorded no samples of the runner (Error:")
    assert str(tmp_path / "py-spy.log") in reason and logged == [reason]
    assert profile_lines({"runner_profile": None, "runner_profile_error": reason}) == [
        "",
        f"#### Runner profile: none. {reason}",
    ]


def test_a_recorded_profile_is_not_reported_as_missing(tmp_path: Path) -> None:
    (tmp_path / "runner-profile.txt").write_text("MainThread;run (runner.py:1);_process (runner.py:2) 40\n")
    logged: list[str] = []
    profile, reason = _py_spy_results(tmp_path, logged.append)
    assert profile is not None and profile["samples"] == 40 and reason is None and logged == []


def test_no_profile_section_when_none_was_asked_for() -> None:
    assert profile_lines({"runner_profile": None, "runner_profile_error": None}) == []


def test_a_recording_stopped_by_the_bench_keeps_what_py_spy_sampled(tmp_path: Path) -> None:
    # The bench stops py-spy when the run ends, long before its duration: what it sampled until then
    # must be written (SIGTERM, as the bench used to stop it, left no file).
    # The target lets any process of this user trace it (PR_SET_PTRACER_ANY): where Yama limits ptrace to
    # ancestors, py-spy (its sibling here, as it is the runner's in the bench) could not attach, and this
    # test is about the stop, not the attach. There the bench says why it has no profile (test above).
    busy = (
        "import ctypes\n"
        "ctypes.CDLL(None).prctl(0x59616D61, ctypes.c_ulong(-1 & 0xFFFFFFFFFFFFFFFF), 0, 0, 0)\n"
        "while True: pass"
    )
    target = subprocess.Popen([sys.executable, "-c", busy])
    try:
        spy = _start_py_spy(target.pid, tmp_path / "runner-profile.txt", 600, tmp_path / "py-spy.log")
        time.sleep(4)
        _stop_py_spy(spy)
    finally:
        target.kill()
        target.wait()
    profile = profile_summary(tmp_path / "runner-profile.txt", PY_SPY_RATE_HZ)
    log = (tmp_path / "py-spy.log").read_text()
    assert profile is not None and profile["samples"] >= 20, log
