"""The bench's process sampler counts a process's children, also those started after it began (the
processor starts its anomaly-fit worker at its first fit, minutes into a run), and the time their
threads waited for a CPU."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from tradepulse.bench.sampling import ProcessSampler

PARENT = textwrap.dedent(
    """
    import subprocess, sys
    sys.stdin.readline()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; x = bytearray(300 * 2**20); print(flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    child.stdout.readline()
    print("child ready", flush=True)
    sys.stdin.readline()
    child.kill()
    """
)


def test_a_child_started_after_the_sampler_began_is_counted() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdin is not None and parent.stdout is not None
    try:
        sampler = ProcessSampler({"parent": parent.pid})
        sampler.sample(0.0)
        parent.stdin.write("spawn\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "child ready"
        sampler.sample(1.0)
        before, after = (s["rss_mib"] for s in sampler.series["parent"])
        assert after - before > 250
    finally:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(parent.pid).children(recursive=True):
                child.kill()
        parent.kill()
        parent.wait(10)


BUSY = "import sys\nprint(flush=True)\nwhile True:\n    pass"
IDLE = "import sys, time\nprint(flush=True)\ntime.sleep(60)"


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread scheduler statistics are Linux's")
def test_two_busy_processes_on_one_cpu_each_wait_for_it_and_a_sleeping_one_does_not() -> None:
    cpu = min(os.sched_getaffinity(0))
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{cpu}}})\n{code}"],
            stdout=subprocess.PIPE,
        )
        for name, code in (("busy1", BUSY), ("busy2", BUSY), ("idle", IDLE))
    }
    try:
        for proc in procs.values():
            assert proc.stdout is not None
            proc.stdout.readline()
        sampler = ProcessSampler({name: proc.pid for name, proc in procs.items()})
        for _ in range(3):
            sampler.sample(time.monotonic())
            time.sleep(1.0)
        summary = sampler.summary()
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(10)
    for name in ("busy1", "busy2"):
        busy = summary[name]
        # A thread that never sleeps is always on the CPU or waiting for it; sharing one CPU with the
        # other busy process, it waits about half the time (more if others run on that CPU too).
        assert 85 < busy["main_cpu_mean_pct"] + busy["main_runq_mean_pct"] < 110, busy
        assert busy["main_runq_mean_pct"] > 20, busy
        assert busy["runq_mean_pct"] >= busy["main_runq_mean_pct"] - 1e-9, busy
    idle = summary["idle"]
    assert idle["main_cpu_mean_pct"] + idle["main_runq_mean_pct"] < 5, idle
