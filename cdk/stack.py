"""The TradePulse stack: composes the constructs and wires the settings the code reads
(`tradepulse.config.Settings`, env prefix TRADEPULSE_) to the resources."""

from __future__ import annotations

import json
import math

from aws_cdk import CfnOutput, Stack, Tags
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk.config import DeployConfig
from cdk.lambdas import DLQ_MAX_REDRIVES, REDRIVE_SCHEDULE, REDRIVE_TIMEOUT, Lambdas, lambdas_code
from cdk.layer import TradePulseLayers
from cdk.monitoring import Monitoring
from cdk.network import Network
from cdk.queues import DeadLetterQueues
from cdk.schema_registry import SchemaRegistry
from cdk.services import Services, ServiceSizes
from cdk.storage import Storage
from cdk.streaming import Streaming
from tradepulse import topics

S3_PREFIX = "tradepulse"
DYNAMODB_SHARDS = 8
HOT_TTL_HOURS = 48
CONSUMER_GROUP = "tradepulse-processor"
#: group.id of ingest's dedupe-seed consumer (`seed_published_sequences` in tradepulse/sources/ingest.py).
INGEST_SEED_GROUP = "tradepulse-ingest-seed"


class TradePulseStack(Stack):
    """Everything TradePulse runs on in one account/region."""

    def __init__(self, scope: Construct, id: str, *, config: DeployConfig, **kwargs: object) -> None:
        super().__init__(
            scope, id, description=f"TradePulse real-time market-data pipeline ({config.name})", **kwargs
        )  # type: ignore[arg-type]
        Tags.of(self).add("project", "tradepulse")
        Tags.of(self).add("environment", config.name)
        retention = log_retention(config.log_retention_days)

        self.network = Network(self, "Network", nat_gateways=config.nat_gateways, log_retention=retention)
        subnets = self.network.private_subnets
        self.layers = TradePulseLayers(self, "Layers")
        code = lambdas_code()

        self.streaming = Streaming(
            self,
            "Streaming",
            vpc=self.network.vpc,
            subnets=subnets,
            cluster_name=f"tradepulse-{config.name}",
            partitions=config.topic_partitions,
            retention_hours=config.topic_retention_hours,
            layer=self.layers.base,
            lambda_code=code,
            log_retention=retention,
        )
        self.schema_registry = SchemaRegistry(
            self, "SchemaRegistry", registry_name=f"tradepulse-{config.name}"
        )
        self.storage = Storage(
            self,
            "Storage",
            s3_prefix=S3_PREFIX,
            glue_database=config.glue_database,
            athena_workgroup=config.athena_workgroup,
            bytes_scanned_cutoff=config.athena_bytes_scanned_cutoff,
            retain_data=config.retain_data,
            ia_after_days=config.ia_after_days,
            glacier_after_days=config.glacier_after_days,
            # A day past the trades' retention: after that no checkpoint's offset can be replayed.
            checkpoint_expiry_days=math.ceil(config.topic_retention_hours / 24) + 1,
        )
        self.queues = DeadLetterQueues(
            self, "DeadLetters", redrive_visibility=REDRIVE_TIMEOUT.plus(REDRIVE_TIMEOUT)
        )

        # The settings every TradePulse process reads (names from tradepulse.config.Settings).
        self.app_environment = {
            "TRADEPULSE_HOT_STORE": "dynamodb",
            "TRADEPULSE_COLD_STORE": "s3",
            "TRADEPULSE_DLQ_BACKEND": "sqs",
            "TRADEPULSE_DYNAMODB_TABLE": self.storage.table.table_name,
            "TRADEPULSE_DYNAMODB_SHARDS": str(DYNAMODB_SHARDS),
            "TRADEPULSE_DYNAMODB_TRADES": config.dynamodb_trades,
            "TRADEPULSE_BATCH_MAX_WAIT_MS": str(config.batch_max_wait_ms),
            "TRADEPULSE_HOT_TTL_HOURS": str(HOT_TTL_HOURS),
            "TRADEPULSE_S3_BUCKET": self.storage.bucket.bucket_name,
            "TRADEPULSE_S3_PREFIX": S3_PREFIX,
            "TRADEPULSE_SQS_DLQ_URL": self.queues.queue.queue_url,
            "TRADEPULSE_ATHENA_WORKGROUP": config.athena_workgroup,
            "TRADEPULSE_GLUE_DATABASE": config.glue_database,
            "TRADEPULSE_KAFKA_BOOTSTRAP": self.streaming.bootstrap_brokers,
            "TRADEPULSE_KAFKA_MSK_IAM": "true",
            "TRADEPULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "TRADEPULSE_TOPIC_PARTITIONS": str(config.topic_partitions),
            "TRADEPULSE_TOPIC_RETENTION_MS": str(config.topic_retention_hours * 3600 * 1000),
            "TRADEPULSE_CONSUMER_GROUP": CONSUMER_GROUP,
            "TRADEPULSE_TICKERS": json.dumps(list(config.tickers)),
            "TRADEPULSE_DATA_DIR": "/tmp/tradepulse",
            "TRADEPULSE_DLQ_MAX_REDRIVES": str(DLQ_MAX_REDRIVES),
            "TRADEPULSE_DLQ_REDRIVE_INTERVAL_S": str(int(REDRIVE_SCHEDULE.to_seconds())),
            "TRADEPULSE_LOG_LEVEL": "INFO",
        }

        self.services = Services(
            self,
            "Services",
            vpc=self.network.vpc,
            subnets=subnets,
            security_group=self.streaming.client_security_group,
            sizes=ServiceSizes(ingest=config.ingest, news=config.news, processor=config.processor),
            environment=self.app_environment,
            log_retention=retention,
        )
        self._grant_services()

        self.lambdas = Lambdas(
            self,
            "Lambdas",
            code=code,
            layers=self.layers,
            vpc=self.network.vpc,
            subnets=subnets,
            storage=self.storage,
            streaming=self.streaming,
            dlq=self.queues.queue,
            parking=self.queues.parking,
            environment=self.app_environment,
            throttle_rate=config.api_throttle_rate,
            throttle_burst=config.api_throttle_burst,
            log_retention=retention,
        )
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            name=config.name,
            table=self.storage.table,
            dlq=self.queues.queue,
            parking=self.queues.parking,
            http_api=self.lambdas.http_api,
            api_p99_ms=config.api_p99_alarm_ms,
            services=self.services.services,
            min_tasks={name: getattr(config, name).min_tasks for name in self.services.services},
            functions={
                "api": self.lambdas.api_function,
                "dlq_redrive": self.lambdas.redrive_function,
                "archival": self.lambdas.archival_function,
            },
            alarm_email=config.alarm_email,
            alarm_https_endpoint=config.alarm_https_endpoint,
            runbook_url=config.runbook_url,
        )
        self._outputs()

    def _grant_services(self) -> None:
        """Least privilege per service: what each one's code reads and writes."""
        streaming, storage, dlq = self.streaming, self.storage, self.queues.queue
        ingest, news, processor = (self.services.role(n) for n in ("ingest", "news", "processor"))
        # Ingest's and news' dead letters go to the DLQ queue, not to market.dead-letters. Ingest reads the
        # tail of trades/quotes at start (its dedupe seed; assign(), no group).
        streaming.grant_produce(ingest, topics.INGEST_TOPICS)
        streaming.grant_read(ingest, topics.INGEST_SEED_TOPICS, INGEST_SEED_GROUP)
        streaming.grant_produce(news, topics.NEWS_TOPICS)
        # The runner consumes its inputs and, to archive them to the cold store, its own outputs
        # (tradepulse/bus/runner.py); the state rebuild after an assignment reads both with its own
        # assign()-only consumer.
        consumed = (*topics.INPUT_TOPICS, *topics.OUTPUT_TOPICS)
        streaming.grant_consume(processor, consumed, CONSUMER_GROUP)
        streaming.grant_read(processor, consumed, f"{CONSUMER_GROUP}-rebuild")
        streaming.grant_produce(processor, topics.OUTPUT_TOPICS, transactional=True)
        for role in (ingest, news, processor):
            dlq.grant_send_messages(role)
        # The processor's stores call exactly these (tradepulse/stores/dynamo_hot.py: BatchWriteItem,
        # conditional PutItem; parquet_cold.py S3Target: GetObject, PutObject, ListObjectsV2); it never
        # reads the table back nor deletes objects. tests/cdk/test_least_privilege.py records the calls.
        storage.grant_hot_writes(processor)
        storage.grant_cold_read_write(processor, S3_PREFIX)

    def _outputs(self) -> None:
        outputs = {
            "ApiUrl": self.lambdas.api_stage.url,
            "HotTableName": self.storage.table.table_name,
            "ColdBucketName": self.storage.bucket.bucket_name,
            "DlqUrl": self.queues.queue.queue_url,
            "MskClusterArn": self.streaming.cluster.attr_arn,
            "KafkaBootstrap": self.streaming.bootstrap_brokers,
            "MassiveApiKeySecretArn": self.services.massive_key.secret_arn,
            "FinnhubApiKeySecretArn": self.services.finnhub_key.secret_arn,
            "PageTopicArn": self.monitoring.page_topic.topic_arn,
            "DashboardName": self.monitoring.dashboard.dashboard_name,
        }
        for name, value in outputs.items():
            CfnOutput(self, name, value=value)


_RETENTION = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
}


def log_retention(days: int) -> logs.RetentionDays:
    """CloudWatch accepts only specific retention periods; take the shortest one of at least `days`."""
    return next((_RETENTION[d] for d in sorted(_RETENTION) if d >= days), logs.RetentionDays.ONE_YEAR)
