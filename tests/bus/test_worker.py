"""The runner's serial worker (`tradepulse.bus.worker`): order, group handling, the bounded backlog, and
a failure stopping the line until the owner resets it."""

from __future__ import annotations

import threading
import time

import pytest

from tradepulse.bus.worker import SerialWorker
from tradepulse.errors import InvalidArgument


class Gate:
    """A handler that records each call's items and blocks until released."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on = fail_on
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, items: list[int]) -> None:
        self.calls.append(items)
        self.entered.set()
        assert self.release.wait(10)
        if self.fail_on in items:
            raise KeyError(self.fail_on)


def test_items_queued_while_the_handler_runs_are_handled_together_in_order() -> None:
    gate = Gate()
    worker = SerialWorker[int]("t", gate, capacity=100)
    worker.submit(1)
    assert gate.entered.wait(5)
    for i in (2, 3, 4):
        worker.submit(i)
    gate.release.set()
    worker.wait_idle()
    worker.close()
    assert gate.calls == [[1], [2, 3, 4]]
    assert worker.failure is None


def test_submit_waits_while_the_backlog_is_full() -> None:
    gate = Gate()
    worker = SerialWorker[int]("t", gate, capacity=3)
    worker.submit(1, weight=2)
    assert gate.entered.wait(5)
    worker.submit(2, weight=1)  # 3 of 3: fits
    waited: list[float] = []
    blocked = threading.Thread(target=lambda: waited.append(worker.submit(3, weight=1)))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # 4 > 3: waits for the running call
    gate.release.set()
    blocked.join(5)
    assert waited and waited[0] >= 250
    worker.close()
    assert [i for call in gate.calls for i in call] == [1, 2, 3]


def test_an_item_heavier_than_the_capacity_waits_for_an_idle_worker_only() -> None:
    gate = Gate()
    gate.release.set()
    worker = SerialWorker[int]("t", gate, capacity=2)
    assert worker.submit(1, weight=50) < 1000  # idle: taken at once
    worker.close()
    assert gate.calls == [[1]]


def test_a_failure_drops_what_is_queued_behind_it_and_later_items_until_reset() -> None:
    gate = Gate(fail_on=1)
    worker = SerialWorker[int]("t", gate, capacity=100)
    worker.submit(1)
    assert gate.entered.wait(5)
    worker.submit(2)  # queued behind the failing call
    gate.release.set()
    worker.wait_idle()
    assert isinstance(worker.failure, KeyError)
    worker.submit(3)  # dropped: the line is stopped
    worker.wait_idle()
    assert gate.calls == [[1]]
    failure = worker.reset()
    assert isinstance(failure, KeyError) and worker.failure is None
    worker.submit(4)
    worker.close()
    assert gate.calls == [[1], [4]]


def test_close_handles_what_is_queued_or_drops_it() -> None:
    for drop, expected in ((False, [[1], [2]]), (True, [[1]])):
        gate = Gate()
        worker = SerialWorker[int]("t", gate, capacity=100)
        worker.submit(1)
        assert gate.entered.wait(5)
        worker.submit(2)
        closer = threading.Thread(target=worker.close, kwargs={"drop": drop})
        closer.start()
        time.sleep(0.1)
        gate.release.set()
        closer.join(5)
        assert not closer.is_alive()
        assert gate.calls == expected, drop
        assert worker.handler is None  # no reference to the owner is kept
        worker.submit(3)  # closed: dropped, no thread
        assert gate.calls == expected


def test_a_worker_never_used_starts_no_thread() -> None:
    before = threading.active_count()
    worker = SerialWorker[int]("t", Gate(), capacity=1)
    assert threading.active_count() == before
    worker.close()
    with pytest.raises(InvalidArgument):
        SerialWorker[int]("t", Gate(), capacity=0)


class Recorder:
    """A handler that records each call's items and when it began."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.began: list[float] = []
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> None:
        self.began.append(time.monotonic())
        self.calls.append(items)
        self.entered.set()


def test_with_a_min_interval_the_items_of_one_interval_share_a_call() -> None:
    handler = Recorder()
    worker = SerialWorker[int]("t", handler, capacity=100, min_interval_s=0.4)
    worker.submit(1)  # the first call does not wait: there was no previous one
    assert handler.entered.wait(5)
    for i in (2, 3, 4):
        worker.submit(i)
        time.sleep(0.05)  # each would have had a call of its own without the interval
    deadline = time.monotonic() + 5
    while len(handler.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.close()
    assert handler.calls == [[1], [2, 3, 4]]
    assert handler.began[1] - handler.began[0] >= 0.39


@pytest.mark.parametrize("waiter", ["wait_idle", "reset", "close", "blocked submitter"])
def test_whoever_waits_for_the_worker_ends_its_gathering(waiter: str) -> None:
    handler = Recorder()
    worker = SerialWorker[int]("t", handler, capacity=2, min_interval_s=60)
    worker.submit(1)
    assert handler.entered.wait(5)
    worker.submit(2)
    started = time.monotonic()
    if waiter == "blocked submitter":
        worker.submit(3, weight=2)  # 1 + 2 > 2: waits for the worker, which must not keep gathering
        worker.wait_idle()
    else:
        getattr(worker, waiter)()
    assert time.monotonic() - started < 10  # not the 60-s interval
    worker.close()
    assert handler.calls == ([[1], [2], [3]] if waiter == "blocked submitter" else [[1], [2]])


def test_a_negative_min_interval_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        SerialWorker[int]("t", Recorder(), capacity=1, min_interval_s=-1)


def test_two_waiters_do_not_wake_each_other_while_the_handler_runs() -> None:
    """A waiter wakes a gathering worker; it must not keep waking the other waiters (each would then
    wake the first again, and both spin on the condition until the handler returns)."""
    gate = Gate()
    worker = SerialWorker[int]("t", gate, capacity=100, min_interval_s=60)
    worker.submit(1)
    assert gate.entered.wait(5)
    waiters = [threading.Thread(target=worker.wait_idle) for _ in range(2)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.1)
    cpu = time.process_time()
    time.sleep(0.5)
    spent = time.process_time() - cpu
    gate.release.set()
    for waiter in waiters:
        waiter.join(5)
    worker.close()
    assert spent < 0.1, f"{spent:.2f} s of CPU in 0.5 s of waiting"
