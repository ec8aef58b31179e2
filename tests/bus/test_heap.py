"""Returning freed C-heap memory to the OS (`tradepulse.bus.heap`), and the runner doing it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tradepulse.bus import heap
from tradepulse.bus.heap import HeapTrimmer
from tradepulse.bus.pipeline import build_runner
from tradepulse.config import Settings

# A process whose heap holds ~200 MiB freed below a block still in use (so glibc cannot give it back
# from the top of the arena), with its RSS before and after one `HeapTrimmer` trim.
FRAGMENTED_HEAP = """
import numpy as np
from tradepulse.bus.heap import HeapTrimmer

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

blocks = [np.ones(4096) for _ in range(6400)]  # 32 KiB each: under glibc's mmap threshold
kept = blocks[::100]
del blocks
clock = iter([0.0, 1.0])
trimmer = HeapTrimmer(0.5, clock=lambda: next(clock))
before = rss_mib()
assert trimmer.maybe_trim()
print(before, rss_mib(), len(kept))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (Linux)")
def test_a_trim_gives_freed_heap_pages_back_to_the_os() -> None:
    out = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True)
    before, after, _kept = (float(x) for x in out.stdout.split())
    assert before - after > 150, out.stdout  # of the ~198 MiB freed


# A process that frees a 4 MiB block (glibc's dynamic threshold then serves blocks up to 4 MiB from its
# arenas) and allocates 256 KiB: prints whether that block got pages of its own (mmap). `tune_malloc`
# first if asked to.
MMAP_THRESHOLD = """
import ctypes, sys
from tradepulse.bus.heap import tune_malloc

if sys.argv[1] == "tuned":
    assert tune_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc.mallinfo2.restype = Mallinfo2
libc.free(libc.malloc(4 << 20))
mapped = libc.mallinfo2().hblks
block = libc.malloc(256 << 10)
print(libc.mallinfo2().hblks == mapped + 1)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_tuned_malloc_gives_a_large_block_pages_of_its_own_after_a_larger_one_was_freed() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_")}

    def own_pages(mode: str) -> str:
        run = subprocess.run(
            [sys.executable, "-c", MMAP_THRESHOLD, mode], capture_output=True, text=True, env=env
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    assert own_pages("default") == "False"  # glibc's own behaviour: what the setting changes
    assert own_pages("tuned") == "True"


def test_tune_malloc_leaves_it_to_glibcs_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert heap.tune_malloc() is False


def test_trims_are_spaced_by_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: calls.append)
    now = [100.0]
    trimmer = HeapTrimmer(10.0, clock=lambda: now[0])
    assert not trimmer.maybe_trim()  # the interval counts from the start
    now[0] = 110.0
    assert trimmer.maybe_trim() and calls == [0]
    now[0] = 115.0
    assert not trimmer.maybe_trim()
    now[0] = 120.5
    assert trimmer.maybe_trim() and calls == [0, 0]


def test_no_trim_at_interval_zero_or_without_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: calls.append)
    assert not HeapTrimmer(0).maybe_trim()
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)  # e.g. macOS or musl
    assert not HeapTrimmer(10.0, clock=iter([0.0, 50.0]).__next__).maybe_trim()
    assert calls == []


@pytest.mark.parametrize("interval_s", [1e-9, 0.0])
def test_the_runner_trims_after_publishing_its_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval_s: float
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: calls.append)
    settings = Settings(
        kafka_bootstrap="127.0.0.1:9092", data_dir=tmp_path / "state", memory_trim_interval_s=interval_s
    )
    runner = build_runner(settings, instance="heap")  # a configuration: nothing connects to the broker
    runner._publish_status([None])
    runner._publish_status([None])
    assert runner.status_file.exists()
    assert calls == ([0, 0] if interval_s else [])
