"""Per-environment deployment settings, read from the `tradepulse:environments` context in cdk.json.

Select one with `-c env=prod` (default `dev`); override a single value with `-c key=value`, e.g.
`-c alarmEmail=oncall@example.com`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

ENVIRONMENTS_KEY = "tradepulse:environments"
ENV_KEY = "env"
DEFAULT_ENV = "dev"


@dataclass(frozen=True)
class ServiceSize:
    """Fargate task size (cpu units, MiB) and task count."""

    cpu: int
    memory_mib: int
    min_tasks: int = 1
    max_tasks: int = 1


@dataclass(frozen=True)
class DeployConfig:
    """Everything that differs between `dev` and `prod`."""

    name: str
    nat_gateways: int
    topic_partitions: int
    topic_retention_hours: int
    tickers: tuple[str, ...]
    ingest: ServiceSize
    news: ServiceSize
    processor: ServiceSize
    api_throttle_rate: int
    api_throttle_burst: int
    api_p99_alarm_ms: int
    athena_bytes_scanned_cutoff: int
    log_retention_days: int
    retain_data: bool
    ia_after_days: int
    glacier_after_days: int
    alarm_email: str | None = None
    #: HTTPS endpoint (PagerDuty/Opsgenie-style) subscribed to the page topic.
    alarm_https_endpoint: str | None = None
    #: Base URL of docs/runbook.md that alarm descriptions link to (e.g. the repository's web view).
    runbook_url: str | None = None
    #: "latest" = only the newest trade per ticker per micro-batch goes to DynamoDB (every trade is in
    #: S3 Parquet anyway); "all" = every trade (the seed design, ≈ $34/h at 15,000 trades/s).
    dynamodb_trades: str = "latest"
    #: Micro-batch wait: hot-store writes scale with batches/s × tickers (the main DynamoDB cost knob).
    batch_max_wait_ms: int = 10

    @property
    def glue_database(self) -> str:
        """Glue/Athena database name (underscores: Athena dislikes hyphens)."""
        return f"tradepulse_{self.name}"

    @property
    def athena_workgroup(self) -> str:
        return f"tradepulse-{self.name}"

    @property
    def stack_name(self) -> str:
        return f"TradePulse-{self.name}"


_CAMEL = {
    "nat_gateways": "natGateways",
    "topic_partitions": "topicPartitions",
    "topic_retention_hours": "topicRetentionHours",
    "api_throttle_rate": "apiThrottleRate",
    "api_throttle_burst": "apiThrottleBurst",
    "api_p99_alarm_ms": "apiP99AlarmMs",
    "athena_bytes_scanned_cutoff": "athenaBytesScannedCutoff",
    "log_retention_days": "logRetentionDays",
    "retain_data": "retainData",
    "ia_after_days": "infrequentAccessAfterDays",
    "glacier_after_days": "glacierAfterDays",
    "alarm_email": "alarmEmail",
    "alarm_https_endpoint": "alarmHttpsEndpoint",
    "runbook_url": "runbookUrl",
    "dynamodb_trades": "dynamodbTrades",
    "batch_max_wait_ms": "batchMaxWaitMs",
}


def _size(raw: dict[str, Any]) -> ServiceSize:
    return ServiceSize(
        cpu=int(raw["cpu"]),
        memory_mib=int(raw["memoryMiB"]),
        min_tasks=int(raw.get("minTasks", 1)),
        max_tasks=int(raw.get("maxTasks", raw.get("minTasks", 1))),
    )


def load_config(get_context: Any) -> DeployConfig:
    """Build the config of the selected environment; `get_context(key)` is `node.try_get_context`."""
    name = get_context(ENV_KEY) or DEFAULT_ENV
    environments = get_context(ENVIRONMENTS_KEY) or {}
    if name not in environments:
        raise ValueError(f"unknown environment {name!r}: cdk.json defines {sorted(environments)}")
    raw: dict[str, Any] = dict(environments[name])
    # Single values can be overridden on the command line: -c natGateways=2
    for camel in [*_CAMEL.values(), "tickers"]:
        override = get_context(camel)
        if override is not None:
            raw[camel] = override
    values: dict[str, Any] = {"name": name}
    for field in fields(DeployConfig):
        camel = _CAMEL.get(field.name)
        if camel and camel in raw:
            values[field.name] = raw[camel]
    values["tickers"] = tuple(
        raw["tickers"].split(",") if isinstance(raw["tickers"], str) else raw["tickers"]
    )
    for service in ("ingest", "news", "processor"):
        values[service] = _size(raw[service])
    values.setdefault("batch_max_wait_ms", 10)
    for key in ("nat_gateways", "topic_partitions", "topic_retention_hours", "api_throttle_rate",
                "api_throttle_burst", "api_p99_alarm_ms", "athena_bytes_scanned_cutoff",
                "log_retention_days", "ia_after_days", "glacier_after_days", "batch_max_wait_ms"):  # fmt: skip
        values[key] = int(values[key])
    values["retain_data"] = str(values["retain_data"]).lower() in ("true", "1")
    if values.setdefault("dynamodb_trades", "latest") not in ("all", "latest"):
        raise ValueError("dynamodbTrades must be 'all' or 'latest'")
    config = DeployConfig(**values)
    if config.processor.max_tasks > config.topic_partitions:
        raise ValueError("processor maxTasks must not exceed topicPartitions (idle consumers)")
    return config
