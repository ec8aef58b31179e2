"""The bench's process sampler counts a process's children, also those started after it began (the
processor starts its anomaly-fit worker at its first fit, minutes into a run)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap

import psutil

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
