"""Lambdas: the API (HTTP API + Mangum), the 15-minute DLQ redrive, and the dead-letter archival.

All functions share one code asset (`lambdas/`, handlers are `<name>.handler.handler`) and the
TradePulse layer, and use Powertools for logs, metrics (namespace TradePulse) and traces.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk.layer import ARCHITECTURE, REPO_ROOT, RUNTIME, TradePulseLayers
from cdk.services import METRICS_NAMESPACE
from cdk.storage import DEAD_LETTERS_PREFIX, Storage
from cdk.streaming import Streaming
from tradepulse.topics import ALL_TOPICS

LAMBDAS_DIR = REPO_ROOT / "lambdas"
REDRIVE_SCHEDULE = Duration.minutes(15)
REDRIVE_TIMEOUT = Duration.minutes(5)
DLQ_MAX_REDRIVES = 5
ACCESS_LOG_FORMAT = (
    '{"requestId":"$context.requestId","ip":"$context.identity.sourceIp","time":"$context.requestTime",'
    '"method":"$context.httpMethod","path":"$context.path","status":"$context.status",'
    '"latencyMs":"$context.responseLatency","integrationMs":"$context.integrationLatency",'
    '"bytes":"$context.responseLength"}'
)


def lambdas_code() -> lambda_.Code:
    """The one code asset of every TradePulse function."""
    return lambda_.Code.from_asset(str(LAMBDAS_DIR), exclude=["**/__pycache__", "**/*.pyc"])


class Lambdas(Construct):
    """`api_function`, `http_api` + `api_stage`, `redrive_function` + `redrive_rule`, `archival_function`."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        code: lambda_.Code,
        layers: TradePulseLayers,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        storage: Storage,
        streaming: Streaming,
        dlq: sqs.IQueue,
        parking: sqs.IQueue,
        environment: dict[str, str],
        throttle_rate: int,
        throttle_burst: int,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, id)
        self._log_retention = log_retention

        def function(name: str, *, parquet: bool = False, **kwargs: object) -> lambda_.Function:
            return lambda_.Function(
                self,
                f"{name.capitalize()}Fn",
                runtime=RUNTIME,
                architecture=ARCHITECTURE,
                handler=f"{name}.handler.handler",
                code=code,
                layers=[layers.base, layers.arrow] if parquet else [layers.base],
                tracing=lambda_.Tracing.ACTIVE,
                log_group=logs.LogGroup(
                    self,
                    f"{name.capitalize()}Logs",
                    retention=log_retention,
                    removal_policy=RemovalPolicy.DESTROY,
                ),
                **kwargs,  # type: ignore[arg-type]
            )

        def env(service: str, **extra: str) -> dict[str, str]:
            return (
                environment
                | {"POWERTOOLS_SERVICE_NAME": service, "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE}
                | extra
            )

        # --- API: FastAPI (tradepulse.api.app) behind an HTTP API ---------------------------------
        self.api_function = function(
            "api",
            description="TradePulse REST API (FastAPI via Mangum)",
            memory_size=1024,
            timeout=Duration.seconds(29),  # HTTP API integrations time out at 30 s
            # In the VPC: /health probes the MSK brokers, like the local API probes its broker.
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[streaming.client_security_group],
            environment=env("api"),
        )
        streaming.grant_connect(self.api_function)
        storage.grant_hot_reads(self.api_function)
        # /anomalies and /sentiment windows beyond the hot TTL read the cold store through Athena.
        storage.grant_history_queries(self.api_function)
        dlq.grant(self.api_function, "sqs:GetQueueAttributes")  # /health reports the DLQ depth

        self.http_api = apigwv2.HttpApi(
            self,
            "HttpApi",
            description="TradePulse API",
            create_default_stage=False,
            default_integration=integrations.HttpLambdaIntegration("Api", self.api_function),
        )
        self.api_stage = apigwv2.HttpStage(
            self,
            "DefaultStage",
            http_api=self.http_api,
            stage_name="$default",
            auto_deploy=True,
            throttle=apigwv2.ThrottleSettings(rate_limit=throttle_rate, burst_limit=throttle_burst),
        )
        access_logs = logs.LogGroup(
            self, "ApiAccessLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        cfn_stage: apigwv2.CfnStage = self.api_stage.node.default_child  # type: ignore[assignment]
        cfn_stage.access_log_settings = apigwv2.CfnStage.AccessLogSettingsProperty(
            destination_arn=access_logs.log_group_arn, format=ACCESS_LOG_FORMAT
        )

        # --- DLQ redrive: every 15 min, back to Kafka / DynamoDB; archived to S3 after 5 retries ----
        self.redrive_function = function(
            "dlq_redrive",
            description="Redrives TradePulse dead letters to Kafka or DynamoDB; archives them to S3",
            memory_size=512,
            timeout=REDRIVE_TIMEOUT,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[streaming.client_security_group],
            # One run at a time: overlapping runs would receive the same letters.
            reserved_concurrent_executions=1,
            environment=env("dlq_redrive"),
            parquet=True,
        )
        dlq.grant_consume_messages(self.redrive_function)
        storage.bucket.grant_put(self.redrive_function, f"{storage.s3_prefix}/{DEAD_LETTERS_PREFIX}/*")
        streaming.grant_produce(self.redrive_function, ALL_TOPICS)
        storage.grant_hot_writes(self.redrive_function)  # sink:hot letters are written to the table again
        self.redrive_rule = events.Rule(
            self,
            "RedriveSchedule",
            description="TradePulse DLQ redrive every 15 minutes",
            schedule=events.Schedule.rate(REDRIVE_SCHEDULE),
            targets=[targets.LambdaFunction(self.redrive_function, retry_attempts=0)],
        )

        # --- Archival: letters SQS parked after repeated failed redrives → S3 ---------------------
        self.archival_function = function(
            "archival",
            description="Archives parked TradePulse dead letters to S3",
            memory_size=512,  # pyarrow
            timeout=Duration.seconds(60),
            environment=env("archival"),
            parquet=True,
        )
        storage.bucket.grant_put(self.archival_function, f"{storage.s3_prefix}/{DEAD_LETTERS_PREFIX}/*")
        self.archival_function.add_event_source(
            sources.SqsEventSource(parking, batch_size=10, report_batch_item_failures=True)
        )
