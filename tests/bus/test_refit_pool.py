"""The runner fits its anomaly models in a worker process (`RefitPool`): the same models as a fit in
the runner's own process, at a lower priority, a dead worker replaced, and no worker left behind by a
runner killed with SIGKILL."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import psutil
import pytest

from tests.core.test_anomaly import FAST, identity, market_rows, positions, run, split
from tests.processes import wait_ended
from tradepulse.bus.refit_pool import IDLE_EXIT_S, NICE, RefitPool
from tradepulse.core.anomaly import AnomalyDetector


@pytest.fixture
def pool() -> RefitPool:
    """A pool whose worker stays until the test ends (these tests follow one worker across tasks;
    the idle worker's exit has tests of its own)."""
    pool = RefitPool(idle_exit_s=None)
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
    # The dead worker's two threads end (and its pipes are closed with them); the replacement's run.
    deadline = time.monotonic() + 10
    while threads_of(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not threads_of(worker)
    assert threads_of(replacement) == [f"refit-outcomes-{replacement}", f"refit-tasks-{replacement}"]


def test_an_idle_worker_exits_and_the_next_task_starts_another() -> None:
    """With the runner's setting: the worker's memory is given back between the minutes' refits."""
    pool = RefitPool()
    try:
        first = psutil.Process(pool.submit(os.getpid).result(timeout=60))
        started = time.monotonic()
        assert not wait_ended([first], within_s=IDLE_EXIT_S + 30)
        assert time.monotonic() - started >= IDLE_EXIT_S - 0.5  # not at once: fits due together share it
        assert pool.submit(os.getpid).result(timeout=60) not in (first.pid, os.getpid())
        deadline = time.monotonic() + 10
        while threads_of(first.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not threads_of(first.pid)
    finally:
        pool.shutdown(cancel_futures=True)


def test_a_worker_with_a_task_running_or_queued_is_not_idle() -> None:
    """A task longer than the idle time, and one queued behind it, run on the worker that had just
    been idle: the timer its first task's end started finds it busy."""
    pool = RefitPool(idle_exit_s=2.0)  # the submits below follow the first result well within that
    try:
        worker = pool.submit(os.getpid).result(timeout=60)
        slow = pool.submit(time.sleep, 3.0)
        queued = pool.submit(os.getpid)
        assert slow.result(timeout=60) is None and queued.result(timeout=60) == worker
    finally:
        pool.shutdown(cancel_futures=True)


def test_submits_racing_the_idle_timers_each_get_a_live_worker() -> None:
    """A submit just before, at or just after a worker's idle end: every task runs (none is handed to a
    worker that is ending), and the idle ends happened (more than one worker served them)."""
    pool = RefitPool(idle_exit_s=0.2)
    try:
        pids: set[int] = set()
        for pause_s in (0.15 + 0.1 * i / 29 for i in range(30)):
            time.sleep(pause_s)
            pids.add(pool.submit(os.getpid).result(timeout=60))
        assert len(pids) > 1 and os.getpid() not in pids
    finally:
        pool.shutdown(cancel_futures=True)


def threads_of(worker: int) -> list[str]:
    """The names of the pool's threads that serve the worker process `worker`."""
    names = (f"refit-outcomes-{worker}", f"refit-tasks-{worker}")
    return sorted(t.name for t in threading.enumerate() if t.name in names)


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
    """The worker imports what unpickling the fit needs, and not its runner's main module: with the
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


def test_a_runner_that_has_fitted_has_one_child_process_the_worker() -> None:
    """No helper process beside the worker (a `multiprocessing` worker brought a resource tracker,
    13 MiB). In a fresh process: the test process has children of its own (the broker)."""
    code = textwrap.dedent(
        """
        import os, psutil
        from tradepulse.bus.refit_pool import RefitPool
        pool = RefitPool()
        worker = pool.submit(os.getpid).result(timeout=60)
        print(worker, sorted(child.pid for child in psutil.Process().children(recursive=True)))
        pool.shutdown()
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    worker, children = out.stdout.split(" ", 1)
    assert children.strip() == f"[{worker}]"


def test_a_tasks_exception_and_an_unpicklable_result_fail_that_task_only(pool: RefitPool) -> None:
    with pytest.raises(ZeroDivisionError):
        pool.submit(divmod, 1, 0).result(timeout=60)
    with pytest.raises(RuntimeError, match="could not send its outcome back"):
        pool.submit(eval, "lambda: 0").result(timeout=60)  # a lambda does not pickle
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a local function does not pickle
        pool.submit(len, lambda: 0).result(timeout=60)
    # A print in the worker goes to its stderr, not into the outcomes' pipe.
    assert pool.submit(print, "from the worker").result(timeout=60) is None
    assert pool.submit(sum, [1, 2, 3]).result(timeout=60) == 6


def test_a_shutdown_that_cancels_ends_the_worker_and_cancels_its_tasks(pool: RefitPool) -> None:
    worker = psutil.Process(pool.submit(os.getpid).result(timeout=60))
    running = pool.submit(time.sleep, 60)
    queued = pool.submit(time.sleep, 60)
    pool.shutdown(wait=False, cancel_futures=True)
    assert running.cancelled() and queued.cancelled()
    assert not wait_ended([worker], within_s=10)
    assert pool.submit(os.getpid).result(timeout=60) != worker.pid  # a later task gets a new worker


def test_a_shutdown_that_waits_lets_the_worker_finish_what_it_was_sent(pool: RefitPool) -> None:
    worker = psutil.Process(pool.submit(os.getpid).result(timeout=60))
    sent = [pool.submit(pow, 2, n) for n in range(5)]
    pool.shutdown(wait=True)
    assert [future.result(timeout=0) for future in sent] == [1, 2, 4, 8, 16]
    assert not wait_ended([worker], within_s=10)


def test_a_submit_does_not_wait_for_a_busy_worker(pool: RefitPool, tmp_path: Path) -> None:
    """The runner's thread submits fits with megabytes of training rows (more than a pipe holds): the
    submit returns while the worker is still busy with an earlier task, not when the worker reads it."""
    go = tmp_path / "go"
    busy = pool.submit(subprocess.run, ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done"])
    rows = bytes(8 * 2**20)
    submitted: list[Future[int]] = []
    submitter = threading.Thread(target=lambda: submitted.append(pool.submit(len, rows)))
    submitter.start()
    submitter.join(timeout=30)
    still_busy = not busy.done()
    go.touch()
    assert still_busy and submitted, "the submit waited for the worker"
    assert submitted[0].result(timeout=60) == len(rows)
    assert busy.result(timeout=60).returncode == 0


def test_the_worker_ignores_a_ctrl_c_that_its_runner_handles(pool: RefitPool) -> None:
    """Ctrl-C in a terminal signals the runner's whole process group: the runner stops in order (and
    ends the worker by closing its stdin); the worker must not die on its own with a traceback."""
    worker = pool.submit(os.getpid).result(timeout=60)
    os.kill(worker, signal.SIGINT)
    assert pool.submit(os.getpid).result(timeout=60) == worker
