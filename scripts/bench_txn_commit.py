"""Commit latency of back-to-back Kafka transactions, as the runner's commit thread makes them.

Starts a throw-away local broker (or uses `--bootstrap`), then per round and per first retry backoff
(`--backoffs`, librdkafka's `retry.backoff.ms`) runs `--transactions` transactions with the runner's
producer configuration (`tradepulse.bus.clients.producer_config` with a transactional id), one every
`--interval-ms` (a batch's pace) as its commit thread groups them: a transaction begins when a batch
arrives, or at once, with every batch that arrived meanwhile, when its predecessor commits late: begin,
`--records` outputs over four topics, `send_offsets_to_transaction`, `commit_transaction`. Prints the
commit time (offsets sent + commit, the runner's `commit` stage) per variant: p50 / p90 / p99 / max by
nearest rank, and the share over 50 ms. Rounds alternate the variants, so a noisy box shows as spread.

    .venv/bin/python scripts/bench_txn_commit.py                     # 100 (librdkafka's default) vs 10
    .venv/bin/python scripts/bench_txn_commit.py --backoffs 100,50,20,10,5 --rounds 2
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import click
from confluent_kafka import Consumer, Producer, TopicPartition

from tradepulse.bus.admin import ensure_topics
from tradepulse.bus.clients import producer_config
from tradepulse.bus.local_kafka import LocalKafka
from tradepulse.config import Settings, get_settings
from tradepulse.percentiles import nearest_rank
from tradepulse.topics import TopicSpec

INPUT = "bench-txn.in"
OUTPUTS = [f"bench-txn.out{i}" for i in range(4)]
WARM_UP = 20  # transactions left out of the percentiles (producer id, coordinator lookups)


def commit_times(
    settings: Settings, backoff_ms: int, name: str, transactions: int, records: int, interval_s: float
) -> list[float]:
    """Commit times (ms) of `transactions` back-to-back transactions after the warm-up."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{name}-group"})
    consumer.assign([TopicPartition(INPUT, p, 0) for p in range(settings.topic_partitions)])
    consumer.poll(0.5)
    group = consumer.consumer_group_metadata()
    producer = Producer(producer_config(settings, transactional_id=name, **{"retry.backoff.ms": backoff_ms}))
    producer.init_transactions(30)
    partitions = settings.topic_partitions
    payload = b"x" * 200
    times: list[float] = []
    arrival = time.perf_counter()  # of the next batch
    for n in range(WARM_UP + transactions):
        # Idle until a batch arrives; a batch that arrived during the last commit starts the next
        # transaction at once, with every other batch that arrived meanwhile (a group commit).
        time.sleep(max(0.0, arrival - time.perf_counter()))
        started = time.perf_counter()
        arrival += interval_s * (math.floor((started - arrival) / interval_s) + 1)
        producer.begin_transaction()
        for i in range(records):
            producer.produce(
                OUTPUTS[i % len(OUTPUTS)], payload, key=str(i).encode(), partition=i % partitions
            )
        produced = time.perf_counter()
        offsets = [TopicPartition(INPUT, p, n + 1) for p in range(partitions)]
        producer.send_offsets_to_transaction(offsets, group, 30)
        producer.commit_transaction(60)
        if n >= WARM_UP:
            times.append((time.perf_counter() - produced) * 1000)
    producer.flush(10)
    consumer.close()
    return times


def describe(times: list[float]) -> str:
    over = sum(t > 50 for t in times) / len(times) * 100
    p50, p90, p99 = (nearest_rank(times, q) for q in (50, 90, 99))
    return f"commit p50 {p50:.1f} / p90 {p90:.1f} / p99 {p99:.1f} / max {max(times):.1f} ms; > 50 ms: {over:.1f} %"


@click.command(help=__doc__)
@click.option("--backoffs", default="100,10", show_default=True, help="retry.backoff.ms values, in ms.")
@click.option("--transactions", type=int, default=300, show_default=True)
@click.option("--records", type=int, default=120, show_default=True, help="Outputs per transaction.")
@click.option("--interval-ms", type=float, default=19.0, show_default=True, help="~52 batches/s at 15k.")
@click.option("--rounds", type=int, default=2, show_default=True)
@click.option("--partitions", type=int, default=6, show_default=True)
@click.option("--bootstrap", help="An existing broker (default: start a throw-away one).")
def main(
    backoffs: str,
    transactions: int,
    records: int,
    interval_ms: float,
    rounds: int,
    partitions: int,
    bootstrap: str | None,
) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-txn-") as tmp:
        broker = None
        if not bootstrap:
            broker = LocalKafka(Path(tmp) / "kafka", heap="512m", libs_root=get_settings().kafka_libs_root)
            bootstrap = broker.start(quiet=True).bootstrap
        try:
            settings = Settings(kafka_bootstrap=bootstrap, data_dir=Path(tmp), topic_partitions=partitions)
            names = [INPUT, *OUTPUTS]
            ensure_topics(settings, [TopicSpec(n, partitions, settings.topic_retention_ms) for n in names])
            for round_ in range(1, rounds + 1):
                for backoff in (int(b) for b in backoffs.split(",")):
                    load = os.getloadavg()[0]
                    name = f"bench-txn-{backoff}-{round_}-{os.getpid()}"
                    times = commit_times(settings, backoff, name, transactions, records, interval_ms / 1000)
                    print(f"round {round_}, retry.backoff.ms {backoff} (load {load:.2f}): {describe(times)}")
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    main()
