"""The runner fits its anomaly models in a worker process (`RefitPool`): the same models as a fit in
the runner's own process, at a lower priority, a dead worker replaced, and no worker left behind by a
runner killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures.process import BrokenProcessPool

import psutil
import pytest

from tests.core.test_anomaly import FAST, identity, market_rows, positions, run, split
from tests.processes import wait_ended
from tradepulse.bus.refit_pool import NICE, RefitPool
from tradepulse.core.anomaly import AnomalyDetector


@pytest.fixture
def pool() -> RefitPool:
    pool = RefitPool()
    yield pool
    pool.shutdown(cancel_futures=True)


def test_models_fitted_in_the_worker_score_like_models_fitted_in_process(pool: RefitPool) -> None:
    """Same anomalies, scores, thresholds and versions, with checkpoints on (rows carry offsets)."""
    rows = market_rows(240, seed=13, spike_at=200)
    where = positions(rows)
    local = AnomalyDetector(FAST)
    expected = identity(run(local, split(rows), where=where))
    local.close()
    remote = AnomalyDetector(FAST, pool)
    got = identity(run(remote, split(rows), where=where))
    assert expected and got == expected
    assert remote.refits >= 3 and remote.refit_seconds > 0
    assert remote.take_checkpoints()
    remote.close()


def test_the_worker_runs_at_lower_priority_and_is_replaced_when_it_dies(pool: RefitPool) -> None:
    worker = pool.submit(os.getpid).result(timeout=60)
    assert worker != os.getpid()
    assert pool.submit(os.nice, 0).result(timeout=60) == min(os.nice(0) + NICE, 19)  # 19: the lowest
    running = pool.submit(time.sleep, 60)
    os.kill(worker, signal.SIGKILL)
    with pytest.raises(BrokenProcessPool):
        running.result(timeout=60)
    replacement = pool.submit(os.getpid).result(timeout=60)
    assert replacement not in (worker, os.getpid())


def test_the_worker_exits_when_the_runner_is_killed() -> None:
    """A runner killed with SIGKILL runs no cleanup; its worker must notice on its own."""
    code = textwrap.dedent(
        """
        import os, time
        from tradepulse.bus.refit_pool import RefitPool
        pool = RefitPool()
        print(pool.submit(os.getpid).result(timeout=60), flush=True)
        time.sleep(120)
        """
    )
    runner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        worker = psutil.Process(int(runner.stdout.readline()))
        assert worker.ppid() == runner.pid
        runner.kill()
        runner.wait(10)
        assert not wait_ended([worker], within_s=10)
    finally:
        runner.kill()
