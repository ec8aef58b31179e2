"""The cyclic garbage collector's settings for the pipeline's long-running processes (the runner, the
ingest), applied by their entry points: process-wide, so never by a class that tests run in-process.

Every event allocates a few GC-tracked objects (its record dict and `conditions` list, a Kafka message)
that reference counting frees: they form no cycles. With CPython's default thresholds (700, 10, 10) such
a stream triggers a full collection every second or two, and a full collection walks every tracked object
alive, the imported modules' included: in the ingest at 15k ev/s 44 of them in ~100 s, 35 ms each (up to
59 ms), every one a stall of its event loop; in the runner 0.3–1 s each while the cold store buffered
dicts (docs/benchmarks.md). So what is alive once the process is set up (modules, clients, models) is
frozen out of the collector, young collections run every 50,000 allocations and full ones rarely.
"""

from __future__ import annotations

import gc

#: gc.set_threshold's (young, middle, full) thresholds of the pipeline's processes (see the docstring).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect, freeze what is alive now out of the cyclic collector, and set `GC_THRESHOLDS`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
