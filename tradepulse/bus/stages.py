"""Per-stage latency histograms of the runner: where a trade's time goes between the WebSocket and the
hot store, so the tail is explained rather than guessed (issue 19).

The runner calls `StageTimes.record_batch` once per committed batch with the milliseconds of each stage
of that batch, and `StageTimes.record_latencies` with per-record latencies (a strided sample of the
batch's records, each sample weighted by the stride). Stages, in the order a trade meets them:

| stage | what | per |
| --- | --- | --- |
| `ingest` | WebSocket receive (`received_ts_us`) → the ingest's `producer.produce()` (the Kafka record's CreateTime) | trade |
| `kafka` | `produce()` → the runner's `consume()` returned it: the rest of the ingest's frame being produced, the producer's linger (only while more frames are queued at the ingest), broker append, fetch, and the time it waited (in the consumer's queue or the broker) while the runner was busy with earlier batches | trade |
| `batch_wait` | time the runner blocked in `consume()` collecting the batch | batch |
| `decode` | orjson + validation + columns | batch |
| `trade_write` | the batch's trades to the hot store (`write_batch`, with its retries), before the core: a trade's e2e ends here | batch |
| `features` | the feature core (`FeatureEngine.process`) | batch |
| `anomaly` | anomaly scoring (batched Isolation Forest) and its checkpoints | batch |
| `core` | the whole core: features + anomaly + news join | batch |
| `hot_write` | both hot-store writes of the batch (`trade_write`, and the core's outputs after the core), and the DLQ put of the batch's dead letters if any | batch |
| `commit_wait` | the runner's thread waiting to hand the batch to the commit thread (only while the records not yet committed would exceed `COMMIT_BACKLOG_BATCHES` full batches; usually 0) | batch |
| `produce` | producing the outputs into the transaction (commit thread) | transaction (one or more batches) |
| `commit` | `send_offsets_to_transaction` + `commit_transaction` (commit thread) | transaction |
| `cold_append` | cold-store buffering of the committed batches' rows and archived outputs (cold thread) | group of batches |
| `cold_flush` | the cold store's periodic flush after that (cold thread) | group of batches |
| `batch` | the runner's thread's own work on the batch: from `consume()` returning it to handing it over, `commit_wait` excluded | batch |
| `e2e` | WebSocket receive → hot-store commit (of the trade, `trade_write`) | trade |
| `fresh_first` | feature freshness: a trade's event time (exchange ts) → hot-store commit of the first feature revision that contains it (with provisional revisions: its own batch's, or its ticker's next within `feature_revision_interval_ms`; without: its second's final revision) | trade |
| `fresh_final` | a trade's event time → hot-store commit of its second's final revision (the second's end + the late grace, at least) | trade |

The runner's thread does the stages up to `commit_wait`; the commit and the cold-store work run on two
threads of their own, overlapping the next batches (`tradepulse.bus.runner`), so they are not part of
the runner loop's time (`BATCH_PARTS`).

The histograms are log-bucketed numpy arrays of counts (`LatencyHistogram`: 1 µs .. 1 h, buckets 0.1 %
wide), recorded into a buffer that is folded into the buckets 256 recordings at a time (a batch's recording
costs list appends; `tests/bus/test_stages.py` bounds it), never raw samples: at 15k ev/s a run has far too many. Each stage keeps the
whole run and a rolling last minute (six 10-second slots), which the runner's heartbeat reports on
`/health`, `/metrics` and the dashboard. Percentiles are nearest rank (`tradepulse.percentiles`) over the
bucketed samples, reported as the bucket's geometric middle (within 0.05 % of the sample).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from tradepulse.errors import InvalidArgument
from tradepulse.percentiles import nearest_rank_index
from tradepulse.topics import TRADES

#: Stages timed once per batch (ms), in pipeline order.
BATCH_STAGES = (
    "batch_wait",
    "decode",
    "trade_write",
    "features",
    "anomaly",
    "core",
    "hot_write",
    "commit_wait",
    "produce",
    "commit",
    "cold_append",
    "cold_flush",
    "batch",
)
#: Feature freshness, per trade from its event time (`docs/schema.md#featurevector-revisions`).
FRESHNESS_STAGES = ("fresh_first", "fresh_final")
#: Stages timed per record (a strided sample of the batch's records).
RECORD_STAGES = ("ingest", "kafka", "e2e", *FRESHNESS_STAGES)
STAGES = (*RECORD_STAGES[:2], *BATCH_STAGES, "e2e", *FRESHNESS_STAGES)
#: Disjoint parts of one iteration of the runner's loop (gathering a batch, processing it, handing it to
#: the commit thread): their totals share the wall. The commit and cold-store stages run on other threads.
BATCH_PARTS = ("batch_wait", "decode", "core", "hot_write", "commit_wait")
#: The stages a trade's e2e latency is made of, for the stacked chart (the others come after its
#: hot-store commit, or are parts of these).
E2E_PARTS = ("ingest", "kafka", "batch_wait", "decode", "trade_write")

_MAX_US = 3_600_000_000  # 1 h
_GROWTH = 1.001  # bucket width: 0.1 % of the value
_LOG_GROWTH = math.log(_GROWTH)
N_BUCKETS = math.ceil(math.log(_MAX_US) / _LOG_GROWTH) + 1
#: The value a bucket stands for (its geometric middle), µs.
_MIDDLES = np.exp((np.arange(N_BUCKETS) + 0.5) * _LOG_GROWTH)

T = TypeVar("T")

WINDOW_S = 60.0
#: Recordings buffered before they are folded into the buckets.
_FOLD_AT = 256
SLOT_S = 10.0
#: Percentiles each summary reports.
QUANTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}


class LatencyHistogram:
    """Counts of latencies (µs) in log buckets; values below 1 µs count as 1 µs, above 1 h as 1 h.

    Recording only appends to a buffer; the buffer is folded into the buckets with a handful of numpy
    calls for all of it (at 256 recordings, or when read), so a batch's recording costs a few list
    appends, not a few numpy calls per stage."""

    __slots__ = ("_arrays", "_counts", "_max_us", "_sum_us", "_total", "_values")

    def __init__(self) -> None:
        self._counts = np.zeros(N_BUCKETS, dtype=np.int64)
        self._total = 0
        self._sum_us = 0.0
        self._max_us = 0.0
        self._values: list[float] = []
        self._arrays: list[tuple[np.ndarray, int]] = []

    def record(self, us: float, count: int = 1) -> None:
        if count == 1:
            self._values.append(us)
            if len(self._values) >= _FOLD_AT:
                self._fold()
        else:
            self.record_many(np.array([us], dtype=np.float64), count)

    def record_many(self, us: np.ndarray, weight: int = 1) -> None:
        if len(us):
            self._arrays.append((us, weight))
            if len(self._arrays) >= _FOLD_AT:
                self._fold()

    def _fold(self) -> None:
        if self._values:
            self._arrays.append((np.array(self._values, dtype=np.float64), 1))
            self._values = []
        if not self._arrays:
            return
        values = np.concatenate([np.asarray(v, dtype=np.float64) for v, _ in self._arrays])
        weights = np.repeat([w for _, w in self._arrays], [len(v) for v, _ in self._arrays])
        self._arrays = []
        values = np.minimum(np.maximum(values, 1.0), _MAX_US)
        buckets = (np.log(values) / _LOG_GROWTH).astype(np.int64)
        self._counts += np.bincount(buckets, weights=weights, minlength=N_BUCKETS).astype(np.int64)
        self._total += int(weights.sum())
        self._sum_us += float(values @ weights)
        self._max_us = max(self._max_us, float(values.max()))

    @property
    def total(self) -> int:
        self._fold()
        return self._total

    @property
    def max_us(self) -> float:
        self._fold()
        return self._max_us

    def add(self, other: LatencyHistogram) -> None:
        self._fold()
        other._fold()
        self._counts += other._counts
        self._total += other._total
        self._sum_us += other._sum_us
        self._max_us = max(self._max_us, other._max_us)

    def subtract(self, earlier: LatencyHistogram) -> None:
        """Take out the samples of `earlier`, a copy of this histogram taken before: what is left is what
        was recorded since. The max stays this histogram's (it bounds what is left from above)."""
        self._fold()
        earlier._fold()
        counts = self._counts - earlier._counts
        if (counts < 0).any():
            raise InvalidArgument("the histogram subtracted has samples this one does not")
        self._counts = counts
        self._total -= earlier._total
        self._sum_us -= earlier._sum_us

    def to_dict(self) -> dict[str, Any]:
        """The histogram as JSON-able data (the non-empty buckets only), for `from_dict`."""
        self._fold()
        buckets = np.flatnonzero(self._counts)
        return {
            "buckets": buckets.tolist(),
            "counts": self._counts[buckets].tolist(),
            "total": self._total,
            "sum_us": self._sum_us,
            "max_us": self._max_us,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyHistogram:
        """The histogram `to_dict` wrote (raises InvalidArgument, KeyError or IndexError on other data)."""
        hist = cls()
        counts = np.asarray(data["counts"], dtype=np.int64)
        hist._counts[np.asarray(data["buckets"], dtype=np.int64)] = counts
        hist._total = int(data["total"])
        if int(counts.sum()) != hist._total:
            raise InvalidArgument("histogram counts do not add up to its total")
        hist._sum_us = float(data["sum_us"])
        hist._max_us = float(data["max_us"])
        return hist

    @classmethod
    def sum_of(cls, data: Iterable[dict[str, Any]]) -> LatencyHistogram:
        """The histograms `to_dict` wrote (several runner instances', say) added together."""
        total = cls()
        for item in data:
            total.add(cls.from_dict(item))
        return total

    def _at(self, cumulative: np.ndarray, q: float) -> float:
        bucket = int(np.searchsorted(cumulative, nearest_rank_index(self._total, q) + 1))
        return min(float(_MIDDLES[bucket]), self._max_us)

    def percentile_us(self, q: float) -> float:
        """Nearest rank over the recorded samples (the bucket's middle, never above the max); 0 if empty."""
        self._fold()
        return self._at(np.cumsum(self._counts), q) if self._total else 0.0

    def summary_ms(self) -> dict[str, float]:
        """count, p50/p90/p99/p99.9, max and total (ms)."""
        self._fold()
        out: dict[str, float] = {"count": self._total}
        cumulative = np.cumsum(self._counts) if self._total else None
        for name, q in QUANTILES.items():
            out[name] = 0.0 if cumulative is None else round(self._at(cumulative, q) / 1000, 3)
        out["max"] = round(self._max_us / 1000, 3)
        out["total"] = round(self._sum_us / 1000, 3)
        return out


class WindowedHistogram:
    """A whole-run histogram plus the last `WINDOW_S` in `SLOT_S` slots (the window is what the last
    complete and the current slots hold: between 50 and 60 s). Recorded once, into the current slot; a
    slot leaving the window is added to the rest of the run."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.retired = LatencyHistogram()
        """The slots that left the window."""
        self._slots: list[tuple[int, LatencyHistogram]] = []
        self._keep = int(WINDOW_S // SLOT_S)

    def _rotate(self, index: int) -> None:
        while self._slots and self._slots[0][0] <= index - self._keep:
            self.retired.add(self._slots.pop(0)[1])

    def _slot(self) -> LatencyHistogram:
        index = int(self.clock() // SLOT_S)
        if not self._slots or self._slots[-1][0] != index:
            self._rotate(index)
            self._slots.append((index, LatencyHistogram()))
        return self._slots[-1][1]

    def record(self, us: float, count: int = 1) -> None:
        self._slot().record(us, count)

    def record_many(self, us: np.ndarray, weight: int = 1) -> None:
        self._slot().record_many(us, weight)

    def last_minute(self) -> LatencyHistogram:
        self._rotate(int(self.clock() // SLOT_S))
        merged = LatencyHistogram()
        for _, hist in self._slots:
            merged.add(hist)
        return merged

    @property
    def run(self) -> LatencyHistogram:
        """The whole run so far (a copy)."""
        merged = self.last_minute()
        merged.add(self.retired)
        return merged


class StageTimes:
    """The runner's histograms, one per stage (`STAGES`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.hist = {stage: WindowedHistogram(clock) for stage in STAGES}
        # The runner records, while a progress thread (`tradepulse process`) may read a summary.
        self._lock = threading.Lock()

    def record_batch(self, **ms: float) -> None:
        """One batch's time per stage (ms; names from BATCH_STAGES)."""
        with self._lock:
            for stage, value in ms.items():
                self.hist[stage].record(value * 1000)

    def record_latencies(self, stage: str, us: np.ndarray, weight: int = 1) -> None:
        """Per-record latencies (µs) of one batch, each standing for `weight` records."""
        with self._lock:
            self.hist[stage].record_many(us, weight)

    def summary(self, *, last_minute: bool = False) -> dict[str, dict[str, float]]:
        """Per stage: count, p50/p90/p99/p99.9, max and total ms (the run, or the last minute)."""
        run, minute = self.summaries()
        return minute if last_minute else run

    def run_histograms(self) -> dict[str, dict[str, Any]]:
        """Per stage, the whole run's histogram as data (`LatencyHistogram.to_dict`): what several runner
        instances' summaries are merged from (`merge_summaries`)."""
        return histograms_data(self.copies()[0])

    def copies(self) -> tuple[dict[str, LatencyHistogram], dict[str, LatencyHistogram]]:
        """Per stage, copies of (the whole run, the last minute), merging each stage's slots once."""
        run: dict[str, LatencyHistogram] = {}
        minute: dict[str, LatencyHistogram] = {}
        # Copies under the lock, percentiles outside it: the runner's thread records into these
        # histograms and waits for the lock only while they are copied.
        with self._lock:
            for stage, h in self.hist.items():
                minute[stage] = h.last_minute()
                run[stage] = LatencyHistogram()
                run[stage].add(minute[stage])
                run[stage].add(h.retired)
        return run, minute

    def summaries(self) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
        """(the run, the last minute), as `summary`."""
        run, minute = self.copies()
        return summaries_ms(run), summaries_ms(minute)


def summaries_ms(histograms: dict[str, LatencyHistogram]) -> dict[str, dict[str, float]]:
    """Per stage, `LatencyHistogram.summary_ms`."""
    return {stage: hist.summary_ms() for stage, hist in histograms.items()}


def histograms_data(histograms: dict[str, LatencyHistogram]) -> dict[str, dict[str, Any]]:
    """Per stage, `LatencyHistogram.to_dict`: the stage histograms file (`stages_path`)."""
    return {stage: hist.to_dict() for stage, hist in histograms.items()}


def merge_summaries(runs: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per stage, the summary (`LatencyHistogram.summary_ms`) of several runs' histograms
    (`StageTimes.run_histograms`) added together: the percentiles of all their samples, not a mix of
    each run's percentiles."""
    stages = dict.fromkeys(stage for run in runs for stage in run)
    return {
        stage: LatencyHistogram.sum_of(run[stage] for run in runs if stage in run).summary_ms()
        for stage in stages
    }


def strided(values: Sequence[T], samples: int) -> tuple[Sequence[T], int]:
    """At most `samples` evenly spaced items of `values` and the stride (each stands for that many)."""
    stride = max(1, -(-len(values) // samples))
    return values[::stride], stride


#: Records per batch whose `ingest` and `kafka` times are sampled (each weighted by the stride).
ARRIVAL_SAMPLES_PER_BATCH = 64


def record_arrivals(stages: StageTimes, inputs: Sequence[Message], consumed_us: int) -> None:
    """The `kafka` and `ingest` stages of the trades in a strided sample of a batch's input records
    (consume time − the record's Kafka timestamp; the Kafka timestamp − `received_ts_us`, read from the
    sampled records again: cheaper than pairing records with decoded rows). Trades only, as `e2e`, so
    the stages stack up to it (quotes and news travel other partitions, with other lags)."""
    sample, stride = strided(inputs, ARRIVAL_SAMPLES_PER_BATCH)
    pairs: list[tuple[int, int]] = []
    for message in sample:
        kind, ts_ms = message.timestamp()
        if kind == TIMESTAMP_NOT_AVAILABLE or message.topic() != TRADES:
            continue
        try:
            pairs.append((ts_ms * 1000, int(orjson.loads(message.value() or b"")["received_ts_us"])))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a dead letter: no receive time to measure from
    if pairs:
        stamps = np.array(pairs, dtype=np.int64)
        stages.record_latencies("kafka", consumed_us - stamps[:, 0], stride)
        # Kafka timestamps are whole milliseconds: an ingest under 1 ms reads as 0..1 ms.
        stages.record_latencies("ingest", stamps[:, 0] - stamps[:, 1], stride)
