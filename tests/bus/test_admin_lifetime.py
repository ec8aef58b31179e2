"""Kafka clients must be freed by reference counting, on the thread that drops them, never by the cyclic
garbage collector: the collector runs on whichever thread allocates, librdkafka's background thread
included (the admin client completes its futures there), and destroying a client from a librdkafka
thread aborts the process. One `make test` run died that way ("Fatal Python error: Aborted" while
garbage-collecting) when `_Admin` held its client with a bound-method `error_cb`, a reference cycle."""

from __future__ import annotations

import gc
import weakref

from tradepulse.bus.admin import _Admin
from tradepulse.config import Settings


def test_the_admin_wrapper_is_freed_without_the_garbage_collector() -> None:
    # No broker needed: creating the client does not connect until a request is made.
    admin = _Admin(Settings(kafka_bootstrap="127.0.0.1:9"))
    wrapper, client = weakref.ref(admin), weakref.ref(admin.client)
    gc.disable()
    try:
        del admin
        assert wrapper() is None and client() is None  # freed at once: no cycle holds them
    finally:
        gc.enable()
