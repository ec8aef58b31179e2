"""The one percentile definition of the pipeline's latency signals: nearest rank.

`nearest_rank(samples, q)` is the smallest sample such that at least q % of the samples are at or below
it (no interpolation, so the value is one that was actually observed). Every percentile the runner and
the stores compute from raw samples uses it:

- backpressure (`tradepulse.bus.backpressure`): the median of the hot-store write latencies since the
  last pause (at least 3, at most the last 20); above `backpressure_latency_ms` consumption pauses;
- the runner status (`tradepulse.bus.status`: `write_p99_ms`, the one /health, /metrics and CloudWatch
  report, over the last 256 writes; batch p50/p99 over the last 2,048 batches);
- a hot store's own `write_latency_p99_ms` (/health's fallback when no runner reports), its last 256
  writes.

The same write latencies feed backpressure and `write_p99_ms` (the runner records each write in both).
With n ≤ 100 samples the p99 is the largest sample, which is why backpressure decides on the median.
Per-record and per-stage latencies (end-to-end included) are the exception in what they keep, not in the
definition: they are counted into log-bucketed histograms (`tradepulse.bus.stages`, buckets 0.1 % wide)
because they are far too many to keep, and the same nearest rank (`nearest_rank_index`) is taken over the
bucketed samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def nearest_rank_index(n: int, q: float) -> int:
    """The 0-based index, in n ordered samples (n ≥ 1), of their q-th percentile by nearest rank."""
    return max(0, math.ceil(q * n / 100) - 1)


def nearest_rank(samples: Iterable[float], q: float) -> float:
    """The q-th percentile (0 < q ≤ 100) by nearest rank; 0.0 when there are no samples."""
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    return float(ordered[nearest_rank_index(len(ordered), q)])
