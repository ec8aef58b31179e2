"""Kafka topic names and their configuration. Every topic is keyed by ticker."""

from __future__ import annotations

from dataclasses import dataclass

TRADES = "market.trades"
QUOTES = "market.quotes"
NEWS = "market.news"
FEATURES = "market.features"
ANOMALIES = "market.anomalies"
CORRELATIONS = "market.correlations"
DEAD_LETTERS = "market.dead-letters"
BARS = "market.bars"
#: The vendor's per-minute aggregates (Massive `AM`), the reference our bars are reconciled against.
VENDOR_BARS = "market.vendor_bars"

INPUT_TOPICS = (TRADES, QUOTES, NEWS, VENDOR_BARS)
OUTPUT_TOPICS = (FEATURES, ANOMALIES, CORRELATIONS, DEAD_LETTERS, BARS)
ALL_TOPICS = INPUT_TOPICS + OUTPUT_TOPICS
#: The topics each service uses; it checks at start that they exist (services never create topics).
INGEST_TOPICS = (TRADES, QUOTES, VENDOR_BARS)
#: What ingest reads back at start (its dedupe seed): the trades and quotes, not the vendor's bars.
INGEST_SEED_TOPICS = (TRADES, QUOTES)
NEWS_TOPICS = (NEWS,)
PROCESSOR_TOPICS = ALL_TOPICS


@dataclass(frozen=True)
class TopicSpec:
    """How a topic is created: partitions and retention (replication comes from the cluster size)."""

    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"

    def config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


def topic_specs(partitions: int, retention_ms: int) -> list[TopicSpec]:
    """Specs for every topic.

    Trades, quotes and news are co-partitioned (same count, keyed by ticker, same partitioner), so the
    consumer that owns partition p of trades also owns partition p of news and can join them locally.
    Low-volume outputs get fewer partitions.
    """
    low_volume = {DEAD_LETTERS, CORRELATIONS, BARS}
    return [
        TopicSpec(name, max(1, partitions // 3) if name in low_volume else partitions, retention_ms)
        for name in ALL_TOPICS
    ]
