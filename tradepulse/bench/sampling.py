"""Samplers of the bench: per-process CPU/RSS (psutil), the time threads waited for a CPU (Linux
schedstat), and broker-side throughput and lag.

Both are polled from the bench's sampling loop (once a second), so their time series share one clock.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import psutil
from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition


def thread_schedstat(pid: int) -> dict[int, tuple[int, int]] | None:
    """(ns on a CPU, ns runnable but waiting for a CPU) of each thread of process `pid`, from Linux's
    `/proc/<pid>/task/<tid>/schedstat`; None where the kernel has no such file (not Linux, or no
    scheduler statistics). A thread that ends while it is read is left out."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    out = {}
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                on_cpu, waiting, _ = f.read().split()
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended
            return None
        except (OSError, ValueError):
            continue
        out[int(tid)] = (int(on_cpu), int(waiting))
    return out


@dataclass
class ProcessSampler:
    """CPU (% of one core) and RSS (MiB) of named processes, each with its children (the Kafka broker
    is a JVM under a launcher; the processor fits its anomaly models in a worker process started by
    its first fit). The children are looked up again at every sample, so a child started or replaced
    later is counted from then on.

    Where Linux reports it, each sample also has how long the process's threads were runnable but
    waited for a CPU (`runq_pct`, % of one core, Σ over the threads), and the main thread's (the
    process's first, e.g. the runner's loop) time on a CPU and waiting for one (`main_cpu_pct`,
    `main_runq_pct`): on a busy box, the part of a stage's wall time that was the box, not the code."""

    pids: dict[str, int]
    leaf: set[str] = field(default_factory=set)
    """Names sampled without their children (the bench itself: its children are the services)."""
    series: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    _procs: dict[str, list[psutil.Process]] = field(default_factory=dict)
    _sched: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)  # (pid, tid) → last
    _last_t: float | None = None

    def __post_init__(self) -> None:
        for name in self.pids:
            self._procs[name] = []
            self._refresh(name)
            self.series[name] = []

    def _refresh(self, name: str) -> None:
        """The process `name` and (unless a leaf) its children now; a process seen before keeps its
        psutil object, whose CPU counter is primed (a new one's first reading is 0)."""
        known = {proc.pid: proc for proc in self._procs[name]}
        try:
            root = known.get(self.pids[name]) or psutil.Process(self.pids[name])
            found = [root, *root.children(recursive=True)] if name not in self.leaf else [root]
        except psutil.Error:
            found = []
        procs = []
        for proc in found:
            proc = known.get(proc.pid, proc)
            if proc.pid not in known:
                with contextlib.suppress(psutil.Error):
                    proc.cpu_percent(None)  # prime: the first call always returns 0
            procs.append(proc)
        self._procs[name] = procs

    def sample(self, t: float) -> None:
        elapsed_ns = None if self._last_t is None else (t - self._last_t) * 1e9
        self._last_t = t
        seen: dict[tuple[int, int], tuple[int, int]] = {}
        for name in self._procs:
            if name not in self.leaf:
                self._refresh(name)
            cpu = rss = 0.0
            for proc in self._procs[name]:
                with contextlib.suppress(psutil.Error):
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss / 2**20
            row: dict[str, float] = {"t": t, "cpu_pct": cpu, "rss_mib": rss}
            self.series[name].append(row | self._waits(name, elapsed_ns, seen))
        self._sched = seen

    def _waits(
        self, name: str, elapsed_ns: float | None, seen: dict[tuple[int, int], tuple[int, int]]
    ) -> dict[str, float]:
        """`runq_pct`, `main_cpu_pct` and `main_runq_pct` of process `name` over the `elapsed_ns` since
        the last sample (none at the first sample, or without schedstat for its main process); records
        each thread's counters in `seen`. A thread first seen now counts from the next sample on: its
        counters so far are not this interval's."""
        root = self.pids[name]
        runq = main_cpu = main_runq = 0
        known = False
        for proc in self._procs[name]:
            threads = thread_schedstat(proc.pid)
            if threads is None:
                continue
            known |= proc.pid == root
            for tid, now in threads.items():
                seen[(proc.pid, tid)] = now
                before = self._sched.get((proc.pid, tid))
                if before is None:
                    continue
                runq += now[1] - before[1]
                if tid == root:
                    main_cpu, main_runq = now[0] - before[0], now[1] - before[1]
        if not known or not elapsed_ns:
            return {}
        return {
            "runq_pct": 100 * runq / elapsed_ns,
            "main_cpu_pct": 100 * main_cpu / elapsed_ns,
            "main_runq_pct": 100 * main_runq / elapsed_ns,
        }

    def summary(self, since: float | None = None) -> dict[str, dict[str, float]]:
        """Mean/max CPU, first/last/max RSS and, where sampled, the mean of each wait (`runq_mean_pct`,
        `main_cpu_mean_pct`, `main_runq_mean_pct`) per process (samples at or after `since`)."""
        out = {}
        for name, samples in self.series.items():
            samples = [s for s in samples if since is None or s["t"] >= since]
            if not samples:
                continue
            cpu = [s["cpu_pct"] for s in samples]
            rss = [s["rss_mib"] for s in samples]
            out[name] = {
                "cpu_mean_pct": sum(cpu) / len(cpu),
                "cpu_max_pct": max(cpu),
                "rss_first_mib": rss[0],
                "rss_last_mib": rss[-1],
                "rss_max_mib": max(rss),
            }
            for key in ("runq_pct", "main_cpu_pct", "main_runq_pct"):
                values = [s[key] for s in samples if key in s]
                if values:
                    out[name][key.replace("_pct", "_mean_pct")] = sum(values) / len(values)
        return out


class BrokerSampler:
    """High watermarks of input topics and the runner group's committed offsets, straight from the broker:
    ingest throughput is the growth of the former, runner throughput that of the latter, and consumer
    lag their difference (a runner-independent view of what its status file reports)."""

    def __init__(self, bootstrap: str, group_id: str, topics: tuple[str, ...]) -> None:
        self.group_id = group_id
        self.topics = topics
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self.partitions: list[KafkaTopicPartition] = []
        metadata = self.consumer.list_topics(timeout=10)
        for topic in topics:
            for p in sorted(metadata.topics[topic].partitions):
                self.partitions.append(KafkaTopicPartition(topic, p))

    def high_watermarks(self) -> dict[str, int]:
        """Σ high watermark per topic (messages ever appended, for non-transactional producers)."""
        out = dict.fromkeys(self.topics, 0)
        for tp in self.partitions:
            _, high = self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            out[tp.topic] += max(high, 0)
        return out

    def committed(self) -> dict[str, int]:
        """Σ committed offset per topic for the runner's group."""
        out = dict.fromkeys(self.topics, 0)
        with contextlib.suppress(KafkaException):
            for tp in self.consumer.committed(self.partitions, timeout=10):
                out[tp.topic] += max(tp.offset, 0)
        return out

    def sample(self) -> dict[str, Any]:
        """One consistent sample: the committed offsets first, then the high watermarks. The runner
        commits every few milliseconds and each read takes a round trip per partition, so the two reads
        are apart in time; read the other way round, offsets committed between them (of records appended
        after the watermark read) made the lag negative. In this order it cannot be: a committed offset
        never passes its partition's high watermark, which only grows (lag here is ≥ the true lag, by
        what was appended during the read)."""
        committed = self.committed()
        high = self.high_watermarks()
        return {
            "high": sum(high.values()),
            "committed": sum(committed.values()),
            "high_by_topic": high,
            "committed_by_topic": committed,
        }

    def close(self) -> None:
        self.consumer.close()
