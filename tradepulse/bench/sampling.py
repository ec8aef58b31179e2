"""Samplers of the bench: per-process CPU/RSS (psutil) and broker-side throughput and lag.

Both are polled from the bench's sampling loop (once a second), so their time series share one clock.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import psutil
from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition


@dataclass
class ProcessSampler:
    """CPU (% of one core) and RSS (MiB) of named processes, each with its children (the Kafka broker
    is a JVM under a launcher; the processor fits its anomaly models in a worker process started by
    its first fit). The children are looked up again at every sample, so a child started or replaced
    later is counted from then on."""

    pids: dict[str, int]
    leaf: set[str] = field(default_factory=set)
    """Names sampled without their children (the bench itself: its children are the services)."""
    series: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    _procs: dict[str, list[psutil.Process]] = field(default_factory=dict)

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
        for name in self._procs:
            if name not in self.leaf:
                self._refresh(name)
            cpu = rss = 0.0
            for proc in self._procs[name]:
                with contextlib.suppress(psutil.Error):
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss / 2**20
            self.series[name].append({"t": t, "cpu_pct": cpu, "rss_mib": rss})

    def summary(self, since: float | None = None) -> dict[str, dict[str, float]]:
        """Mean/max CPU and first/last/max RSS per process (samples at or after `since`)."""
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
