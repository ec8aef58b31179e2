"""Runtime configuration, read from the environment (and an optional `.env` file).

Every variable is documented in `.env.example`. Secrets are `SecretStr` so that printing the
settings (or logging them by accident) shows `**********` instead of the key.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TICKERS = ("AAPL", "MSFT", "AMZN", "TSLA", "NVDA")


class Settings(BaseSettings):
    """All TradePulse settings. Environment variables use the `TRADEPULSE_` prefix unless noted."""

    model_config = SettingsConfigDict(
        env_prefix="TRADEPULSE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # --- where local state lives -------------------------------------------------------------
    data_dir: Path = Field(
        default=Path(".tradepulse"), description="Local state: broker data, SQLite, Parquet."
    )

    # --- market data sources ------------------------------------------------------------------
    massive_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("MASSIVE_API_KEY", "POLYGON_API_KEY", "TRADEPULSE_MASSIVE_API_KEY"),
    )
    massive_ws_url: str = Field(
        default="wss://socket.massive.com/stocks",
        description="Real-time feed; delayed feed is wss://delayed.massive.com/stocks.",
    )
    massive_rest_url: str = Field(
        default="https://api.massive.com",
        description="REST API base; ingest backfills trades from its /v3/trades after a (re)connect.",
    )
    finnhub_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("FINNHUB_API_KEY", "TRADEPULSE_FINNHUB_API_KEY")
    )
    finnhub_base_url: str = "https://finnhub.io/api/v1"
    api_keys_secret_id: str | None = Field(
        default=None,
        description="Secrets Manager secret (JSON: MASSIVE_API_KEY, FINNHUB_API_KEY) that ingest/news re-read "
        "while their key is the stack's placeholder (tradepulse/sources/api_keys.py).",
    )
    api_key_wait_initial_s: float = Field(
        default=10.0, description="First re-read delay of a placeholder key."
    )
    api_key_wait_max_s: float = Field(default=60.0, description="Re-read delay cap (the delay doubles).")
    news_poll_interval_s: float = 60.0
    finnhub_calls_per_minute: int = 60
    tickers: list[str] = Field(default_factory=lambda: list(DEFAULT_TICKERS))
    massive_reconnect_initial_s: float = Field(default=0.5, description="First reconnect delay (doubles).")
    massive_reconnect_max_s: float = Field(default=30.0, description="Reconnect delay cap.")
    massive_max_connections_retries: int = Field(
        default=3, description="Consecutive `max_connections` refusals before ingest gives up."
    )
    massive_max_frame_bytes: int = Field(
        default=4 * 1024 * 1024, description="Larger frames are dead-lettered."
    )
    ingest_queue_frames: int = Field(
        default=1000, description="Bounded hand-off between the socket reader and the producer."
    )
    ingest_linger_ms: float = Field(
        default=5,
        ge=0,
        description="The ingest producer's linger.ms: how long a record waits for more to share its produce "
        "request while more frames are queued behind its own. A frame with none queued behind it is sent as "
        "soon as it is produced (a flush of at most this long), so at a feed's normal pace the linger costs "
        "no latency and still batches a backlog's frames; 0 = no linger and no flush (docs/benchmarks.md).",
    )
    ingest_dedupe_window: int = Field(
        default=200_000,
        description="Recent event ids kept to drop the live stream's overlap with a backfill (resends after a "
        "reconnect are recognised by per-ticker marks).",
    )
    ingest_replay_horizon_s: float = Field(
        default=10.0,
        description="How far back (s) the feed may resend events to a new subscription; a starting ingest "
        "reads this much (plus a margin) of the trades/quotes tail to skip what is already in Kafka.",
    )
    ingest_backfill_max_s: float = Field(
        default=600.0,
        description="After every (re)connect ingest fetches each ticker's trades since its last published one "
        "from the REST trades endpoint (the feed does not replay), up to the feed time of the connection's "
        "first events and at most this many seconds (of feed time) back; 0 = off.",
    )
    ingest_backfill_page_limit: int = Field(
        default=50_000, ge=1, le=50_000, description="Trades per REST page (Massive's maximum is 50000)."
    )
    news_lookback_days: int = Field(default=2, description="company-news `from` = today − this.")

    # --- simulator (used when no API keys are set) ----------------------------------------------
    simulator_host: str = "127.0.0.1"
    simulator_ws_port: int = 8765
    simulator_http_port: int = 8766
    simulator_rate: float = Field(default=2000.0, description="Base events/s across all tickers.")
    simulator_seed: int = 42
    simulator_api_key: SecretStr = SecretStr("tradepulse-local")

    # --- Kafka ------------------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None,
        description="Bootstrap servers. Empty = the local broker that `tradepulse kafka start` runs.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["OAUTHBEARER", "SCRAM-SHA-512", "PLAIN"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_msk_iam: bool = Field(default=False, description="Authenticate to MSK with IAM (OAUTHBEARER).")
    aws_region: str = Field(
        default="us-east-1", validation_alias=AliasChoices("AWS_REGION", "TRADEPULSE_AWS_REGION")
    )
    kafka_port: int = Field(default=0, description="Local broker port; 0 = pick a free port.")
    kafka_controller_port: int = 0
    kafka_heap: str = Field(
        default="1g", description="Local broker heap (-Xmx); 1g fits a 2-core/24 GiB laptop."
    )
    kafka_libs_dir: Path | None = Field(
        default=None,
        description="Cache of the local broker's jars (`tradepulse kafka fetch`), one folder per Kafka "
        "version. Empty = <data_dir>/kafka-libs. An installed package run from several folders can share "
        "one download, e.g. ~/.cache/tradepulse/kafka-libs.",
    )
    topic_partitions: int = 6
    topic_retention_ms: int = 7 * 24 * 3600 * 1000

    # --- processing -----------------------------------------------------------------------------
    consumer_group: str = "tradepulse-processor"
    processors: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processor instances `tradepulse up` (and `tradepulse bench`) start locally: one consumer "
        "group sharing the partitions (at most topic_partitions do work), each on its own process and core. "
        "On the 2-core box measured, at 15k ev/s 2 lowered the e2e p50 (54 ms over 10 minutes, against 62–90 "
        "with one) but not the p99 (414 ms), for ~20 points more CPU (docs/benchmarks.md).",
    )
    batch_max_messages: int = 5000
    batch_max_wait_ms: int = 10
    batch_linger_ms: int = Field(
        default=0,
        ge=0,
        description="After a batch's first message, wait this long for more (0 = take what is queued at once: "
        "small batches when caught up, up to batch_max_messages under backlog).",
    )
    batch_backlog_linger_ms: int = Field(
        default=10,
        ge=0,
        description="While the runner is behind by more than batch_max_messages, wait up to this long to fill "
        "a batch (fewer transaction commits when throughput matters; 0 = never).",
    )
    batch_fetch_wait_ms: int = Field(
        default=0,
        ge=0,
        le=500,
        description="> 0: the broker holds a runner's fetch this long to gather records before it answers (the "
        "consumer's fetch.wait.max.ms, with fetch.min.bytes 1 MiB, above what a frame carries, so the wait, not "
        "the first record, ends a caught-up fetch). A frame's records land on the partitions over a few ms: "
        "gathered, they come in fewer batches. Measured at 3 ms on the 2-core box (docs/benchmarks.md): at 2k "
        "ev/s a lower e2e p50 and p99, but a slower catch-up after the market-open burst in 3 of 3 pairs and "
        "more idle CPU, hence off. 0 = the broker answers at the first record.",
    )
    commit_interval_ms: int = Field(
        default=100,
        ge=0,
        description="Shortest time between the starts of two transaction commits of a runner: the batches "
        "processed meanwhile share one transaction (fewer for the broker to coordinate; outputs appear in "
        "Kafka up to this much later, the hot store is not delayed). 0 = commit as soon as the previous "
        "commit returned.",
    )
    memory_trim_interval_s: float = Field(
        default=10.0,
        ge=0,
        description="How often a runner returns the C heap's freed memory to the OS (glibc malloc_trim, on "
        "its status thread; 0 = never).",
    )
    late_grace_ms: int = 2000
    zscore_bucket_ms: int = 1000
    zscore_window_buckets: int = 300
    zscore_size_cap: float = Field(
        default=10.0,
        ge=0,
        description="volume_zscore counts a trade at most this multiple of the recent mean trade size (0 = off).",
    )
    zscore_log_volume: bool = Field(
        default=True, description="volume_zscore compares log(1 + bucket volume) rather than raw volume."
    )
    rebuild_lookback_s: int = 390
    feature_revisions: bool = Field(
        default=True,
        description="Emit each ticker's feature vector as trades arrive (provisional revisions, at most one "
        "per ticker per batch), not only once its second closed after the late grace (the final revision).",
    )
    feature_revision_interval_ms: float = Field(
        default=250.0,
        ge=0,
        description="Least time between two provisional revisions of a ticker (0: one every batch with "
        "its trades). A trade waits at most this long for its first revision; fewer revisions cost less "
        "CPU, Kafka and hot-store writes (DynamoDB's per-item writes in AWS). Below the late grace.",
    )
    # Anomaly model (tradepulse.core.anomaly): refits at event-time points, one model per partition.
    anomaly_warmup_s: float = Field(
        default=300.0, ge=0, description="A ticker is neither scored nor learned from until then."
    )
    anomaly_sample_ms: int = Field(
        default=1000, gt=0, description="One training event per ticker per period."
    )
    anomaly_min_train: int = Field(
        default=300, gt=0, le=1000, description="Training events a ticker needs to be in a model."
    )
    anomaly_refit_interval_s: float = Field(default=60.0, gt=0, description="Refit points in market time.")
    anomaly_refit_delay_s: float = Field(
        default=10.0, ge=0, description="A refit scores from this much market time after its point on."
    )
    commit_watchdog_s: float = Field(
        default=120.0,
        description="Restart the runner in place if a transactional call (init, commit, abort, the "
        "clients' close after a failure) has not returned by then; a call with a Kafka timeout already "
        "10 s after that timeout (send offsets and init 40 s, commit 70 s), if sooner, and at once when "
        "it times out after a connection of the producer to a broker failed or was closed.",
    )
    # Suspect prints (tradepulse.core.outliers): flagged `outlier`, kept, left out of the features.
    outlier_enabled: bool = Field(default=True, description="Flag trades outside the band (false: none).")
    outlier_band_multiplier: float = Field(
        default=1.0, gt=0, description="Scales every tier of the LULD Tier 2 bands (2 = twice as wide)."
    )
    outlier_reference_trades: int = Field(
        default=20, gt=0, le=1000, description="Reference = median price of this many previous trades."
    )
    outlier_reference_window_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="Only previous trades this recent count toward the reference.",
    )
    outlier_min_reference_trades: int = Field(
        default=3, gt=0, description="Fewer previous trades in the window: no reference, no flag."
    )
    # Bar reconciliation (tradepulse.core.reconcile): the vendor's per-minute aggregates (Massive `AM`).
    vendor_bars: Literal["auto", "on", "off"] = Field(
        default="auto",
        description=(
            "Subscribe ingest to AM.<ticker> too (→ market.vendor_bars) and reconcile our bars against "
            "them in the runner; auto = on with the simulator, off with the real feed (a plan entitlement)."
        ),
    )

    # --- storage --------------------------------------------------------------------------------
    hot_store: Literal["sqlite", "dynamodb"] = "sqlite"
    cold_store: Literal["local", "s3"] = "local"
    dlq_backend: Literal["sqlite", "sqs"] = "sqlite"
    dynamodb_table: str = "tradepulse-hot"
    dynamodb_shards: int = 8
    hot_ttl_hours: int = 48
    hot_purge_interval_s: float = Field(
        default=300.0,
        description="SQLite hot store: seconds between purges of rows older than hot_ttl_hours, run by each "
        "`tradepulse process` in a background thread (0 = never). DynamoDB expires items by its own TTL.",
    )
    hot_purge_chunk_rows: int = Field(
        default=5000,
        ge=1,
        description="Rows one purge transaction deletes at most (bounds the write-lock hold).",
    )
    s3_bucket: str | None = None
    s3_prefix: str = "tradepulse"
    sqs_dlq_url: str | None = None
    athena_workgroup: str = "tradepulse"
    glue_database: str = "tradepulse"
    dynamodb_trades: Literal["all", "latest"] = Field(
        default="all",
        description="Trades written to DynamoDB: every trade, or only the newest per ticker per batch (cost).",
    )
    cold_block_offsets: int = Field(
        default=100_000, description="Cold files cover offset blocks [k*N, (k+1)*N) so replays rewrite them."
    )
    cold_flush_rows: int = Field(default=50_000, description="Buffered rows that force a cold flush.")
    cold_flush_interval_s: float = Field(default=60.0, description="Max age of buffered cold rows.")
    dlq_inline_attempts: int = Field(
        default=3, description="Attempts of a failed sink write (hot store, DLQ) before dead-lettering."
    )
    dlq_inline_deadline_s: float = Field(
        default=10.0,
        description="Total time bound of those attempts: no retry starts (or sleeps) past it.",
    )
    dlq_redrive_interval_s: int = 900
    dlq_max_redrives: int = 5

    # --- backpressure ---------------------------------------------------------------------------
    backpressure_latency_ms: float = Field(
        default=100.0,
        description="Pause fetching when the median of the recent hot-store writes (at least 3 since the "
        "last pause, at most the last 20) takes longer than this.",
    )
    backpressure_pause_ms: int = Field(default=500, description="How long each backpressure pause lasts.")

    # --- API ------------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    health_commit_stale_s: float = 30.0
    # A runner whose last heartbeat is older than this is no longer listed as missing (a replaced task).
    health_runner_forget_s: float = 900.0
    health_lag_degraded: int = 10_000
    health_write_p99_degraded_ms: float = 100.0

    log_level: str = "INFO"
    # CloudWatch metrics of the ECS services (tradepulse.metrics_emf): "emf" prints one embedded-metric-
    # format JSON line to stdout at most every metrics_interval_s (the awslogs driver ships it); "off" here.
    metrics: Literal["emf", "off"] = "off"
    metrics_interval_s: float = 10.0

    @field_validator("kafka_libs_dir", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        # `TRADEPULSE_KAFKA_LIBS_DIR=` as in .env.example means the default, not the current directory.
        return None if value == "" else value

    @property
    def use_simulator(self) -> bool:
        """True when no real market-data key is configured, so the local simulator feeds the pipeline."""
        return self.massive_api_key is None

    @property
    def vendor_bars_enabled(self) -> bool:
        """Whether ingest subscribes to the vendor's `AM` aggregates (and the runner reconciles): the
        `vendor_bars` setting, `auto` meaning on with the simulator only."""
        return self.vendor_bars == "on" or (self.vendor_bars == "auto" and self.use_simulator)

    @property
    def kafka_libs_root(self) -> Path:
        """Where the broker jars are cached (`kafka_libs_dir`, else `<data_dir>/kafka-libs`)."""
        return (self.kafka_libs_dir or self.data_dir / "kafka-libs").expanduser()

    @property
    def kafka_dir(self) -> Path:
        return self.data_dir / "kafka"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "hot.sqlite3"

    @property
    def cold_dir(self) -> Path:
        return self.data_dir / "cold"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return Settings()
