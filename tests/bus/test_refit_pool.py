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
from pathlib import Path

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


def test_the_worker_loads_numpy_and_the_forest_only(tmp_path: Path) -> None:
    """A spawned worker imports its runner's main module, then what unpickling the fit needs. With the
    entry point the processor service runs (a script importing `tradepulse.cli.main`), a worker that has
    fitted a model holds none of the runner's heavy libraries (~100 MiB of them, docs/benchmarks.md)."""
    main = tmp_path / "main.py"
    main.write_text(
        textwrap.dedent(
            """
            from tradepulse.cli.main import cli  # as services/processor/main.py

            if __name__ == "__main__":
                import numpy as np
                from tradepulse.bus.refit_pool import RefitPool
                from tradepulse.core.anomaly import AnomalyConfig
                from tradepulse.core.anomaly_model import timed_fit

                pool = RefitPool()
                rows = {"X": np.random.default_rng(0).standard_normal((400, 6))}
                model, _ = pool.submit(timed_fit, AnomalyConfig().fit_params, 1, rows).result(timeout=60)
                assert model.version == 1 and -1 < model.thresholds["*"] < 0
                heavy = ("pandas", "pyarrow", "confluent_kafka", "sklearn", "scipy", "duckdb", "fastapi")
                names = f"sorted(m for m in __import__('sys').modules if m.split('.')[0] in {heavy!r})"
                print(pool.submit(eval, names).result(timeout=60))
                pool.shutdown()
            """
        )
    )
    # A script's folder, not the working directory, heads sys.path: point it at this checkout.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, str(main)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
