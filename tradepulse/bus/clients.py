"""Kafka client configuration shared by every producer and consumer.

One place decides the bootstrap servers (configured, or the local broker from `broker.json`), the
security settings (PLAINTEXT locally, SASL/OAUTHBEARER with IAM on MSK) and the delivery guarantees.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tradepulse.config import Settings
from tradepulse.errors import BusError

#: A transactional producer's first retry backoff (librdkafka's `retry.backoff.ms`, default 100 ms;
#: still doubled per retry up to `retry.backoff.max.ms`). A transaction begun right after the previous
#: commit returned reaches the coordinator while it still writes that commit's markers: its
#: AddOffsetsToTxn gets CONCURRENT_TRANSACTIONS, which librdkafka retries after this backoff (its
#: AddPartitionsToTxn retry is fixed at 20 ms; Java's client uses 20 ms for both, KAFKA-5477). At 100 ms
#: most back-to-back commits took 100 ms; at 10 ms 8 ms p50 (`scripts/bench_txn_commit.py`). The price:
#: fewer batches wait behind a commit, so there are more transactions and the broker works more
#: (docs/benchmarks.md, session 13).
TRANSACTION_RETRY_BACKOFF_MS = 10


class NoBrokerError(BusError):
    """No bootstrap servers are configured and no local broker is running."""


def bootstrap_servers(settings: Settings) -> str:
    """Configured bootstrap servers, or those of the local broker started from `settings.data_dir`."""
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    info_path = settings.kafka_dir / "broker.json"
    if info_path.exists():
        return json.loads(info_path.read_text())["bootstrap"]
    raise NoBrokerError(
        "no Kafka broker: set TRADEPULSE_KAFKA_BOOTSTRAP or start the local one with `tradepulse kafka start`"
    )


def base_config(settings: Settings) -> dict[str, Any]:
    """Bootstrap and security settings common to producers, consumers and admin clients."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers(settings),
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_msk_iam:
        config.update(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanisms": "OAUTHBEARER",
                "oauth_cb": _msk_iam_token_callback(settings.aws_region),
            }
        )
    elif settings.kafka_sasl_mechanism:
        config["sasl.mechanisms"] = settings.kafka_sasl_mechanism
        if settings.kafka_sasl_username:
            config["sasl.username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password:
            config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    return config


def producer_config(
    settings: Settings, *, transactional_id: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """An idempotent, batching, compressing producer (acks=all). Transactional if an id is given, then
    with a short first retry backoff (`TRANSACTION_RETRY_BACKOFF_MS`)."""
    config = base_config(settings) | {
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 512 * 1024,
    }
    if transactional_id:
        config["transactional.id"] = transactional_id
        config["retry.backoff.ms"] = TRANSACTION_RETRY_BACKOFF_MS
    return config | overrides


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A read_committed consumer with manual commits (offsets are committed inside transactions)."""
    config = base_config(settings) | {
        "group.id": group_id,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.min.bytes": 1,
        "fetch.wait.max.ms": 10,
        "queued.max.messages.kbytes": 65536,
        # Range assigns partition p of every co-partitioned input topic to the same member,
        # which the in-process news join relies on.
        "partition.assignment.strategy": "range",
    }
    return config | overrides


def _msk_iam_token_callback(region: str) -> Callable[[str], tuple[str, float]]:
    """OAUTHBEARER token callback for MSK IAM auth (aws-msk-iam-sasl-signer-python)."""

    def callback(_config: str) -> tuple[str, float]:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

        token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
        return token, expiry_ms / 1000

    return callback
