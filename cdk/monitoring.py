"""CloudWatch: alarms at the runbook thresholds → SNS (warn / page), and the operations dashboard.

Application metrics are EMF in namespace `TradePulse` with the `service` dimension, named and emitted by
`tradepulse.metrics_emf`: ConsumerLag, HotWriteLatencyP99Ms, HotWriteThrottles (processor),
ProducerErrors (ingest, news). DLQ depth is SQS's ApproximateNumberOfMessagesVisible; API p99 is API Gateway's Latency.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk.services import metric
from tradepulse import metrics_emf as emf


@dataclass(frozen=True)
class Threshold:
    """Warn and page levels of one signal (same unit as the metric)."""

    warn: float
    page: float


CONSUMER_LAG = Threshold(warn=5_000, page=10_000)
HOT_WRITE_P99_MS = Threshold(warn=50, page=100)
DLQ_DEPTH = Threshold(warn=50, page=100)
HOT_WRITE_THROTTLES_PER_MIN = 1
PRODUCER_ERRORS_PER_5MIN = 1
# The processor is not here: its outputs are transactional, so a failed delivery fails the commit, which
# is aborted and replayed (or raises); counting aborts would page on every rebalance fence.
PRODUCING_SERVICES = ("ingest", "news")


class Monitoring(Construct):
    """`page_topic`, `warn_topic`, `alarms[name]`, `dashboard`."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        name: str,
        table: dynamodb.ITable,
        dlq: sqs.IQueue,
        parking: sqs.IQueue,
        http_api: apigwv2.HttpApi,
        api_p99_ms: int,
        services: dict[str, ecs.FargateService],
        functions: dict[str, lambda_.IFunction],
        alarm_email: str | None,
    ) -> None:
        super().__init__(scope, id)
        key = kms.Key(self, "AlarmsKey", enable_key_rotation=True, description="TradePulse alarm topics")
        # CloudWatch publishes alarm notifications to the encrypted topics.
        key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
            )
        )
        self.page_topic = sns.Topic(
            self, "PageTopic", display_name=f"TradePulse {name} page", master_key=key, enforce_ssl=True
        )
        self.warn_topic = sns.Topic(
            self, "WarnTopic", display_name=f"TradePulse {name} warn", master_key=key, enforce_ssl=True
        )
        if alarm_email:
            for topic in (self.page_topic, self.warn_topic):
                topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        page = cw_actions.SnsAction(self.page_topic)
        warn = cw_actions.SnsAction(self.warn_topic)
        self.alarms: dict[str, cloudwatch.Alarm] = {}

        def alarm(
            alarm_id: str,
            source: cloudwatch.IMetric,
            threshold: float,
            action: cw_actions.SnsAction,
            *,
            periods: int = 3,
            description: str,
        ) -> None:
            created = cloudwatch.Alarm(
                self,
                alarm_id,
                alarm_description=description,
                metric=source,
                threshold=threshold,
                evaluation_periods=periods,
                datapoints_to_alarm=periods,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
            created.add_alarm_action(action)
            created.add_ok_action(action)
            self.alarms[alarm_id] = created

        lag = metric(emf.CONSUMER_LAG, "processor")
        alarm(
            "ConsumerLagWarn",
            lag,
            CONSUMER_LAG.warn,
            warn,
            description="Processor is falling behind (runbook: consumer lag)",
        )
        alarm(
            "ConsumerLagPage",
            lag,
            CONSUMER_LAG.page,
            page,
            periods=5,
            description="Processor lag past 10,000 messages",
        )

        write_p99 = metric(emf.HOT_WRITE_P99_MS, "processor")
        alarm(
            "HotWriteP99Warn",
            write_p99,
            HOT_WRITE_P99_MS.warn,
            warn,
            description="Hot-store write p99 ≥ 50 ms",
        )
        alarm(
            "HotWriteP99Page",
            write_p99,
            HOT_WRITE_P99_MS.page,
            page,
            periods=5,
            description="Hot-store write p99 ≥ 100 ms (backpressure engages)",
        )

        throttles = metric(emf.HOT_WRITE_THROTTLES, "processor", statistic="Sum")
        alarm(
            "HotWriteThrottles",
            throttles,
            HOT_WRITE_THROTTLES_PER_MIN,
            page,
            description="DynamoDB throttled hot-store writes for 3 minutes",
        )

        depth = dlq.metric_approximate_number_of_messages_visible(
            statistic="Maximum", period=Duration.minutes(1)
        )
        alarm("DlqDepthWarn", depth, DLQ_DEPTH.warn, warn, periods=1, description="Dead letters piling up")
        alarm(
            "DlqDepthPage", depth, DLQ_DEPTH.page, page, periods=1, description="≥ 100 dead letters waiting"
        )
        parked = parking.metric_approximate_number_of_messages_visible(
            statistic="Maximum", period=Duration.minutes(5)
        )
        alarm(
            "DlqParked",
            parked,
            1,
            warn,
            periods=1,
            description="Dead letters parked after 5 failed redrives (archival failing?)",
        )

        producer_errors = cloudwatch.MathExpression(
            expression=" + ".join(f"FILL(e{i}, 0)" for i in range(len(PRODUCING_SERVICES))),
            using_metrics={
                f"e{i}": metric(emf.PRODUCER_ERRORS, service, statistic="Sum", period=Duration.minutes(5))
                for i, service in enumerate(PRODUCING_SERVICES)
            },
            label="ProducerErrors (all services)",
            period=Duration.minutes(5),
        )
        alarm(
            "ProducerErrors",
            producer_errors,
            PRODUCER_ERRORS_PER_5MIN,
            page,
            periods=1,
            description="Kafka delivery failures",
        )

        api_p99 = http_api.metric_latency(statistic="p99", period=Duration.minutes(5))
        alarm("ApiP99", api_p99, api_p99_ms, page, description=f"API p99 ≥ {api_p99_ms} ms")

        self.dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=f"TradePulse-{name}")
        self.dashboard.add_widgets(
            cloudwatch.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms.values()), width=24),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Consumer lag (messages)",
                left=[lag],
                left_annotations=[
                    cloudwatch.HorizontalAnnotation(value=CONSUMER_LAG.warn, label="warn"),
                    cloudwatch.HorizontalAnnotation(value=CONSUMER_LAG.page, label="page"),
                ],
            ),
            cloudwatch.GraphWidget(
                title="Hot write p99 (ms) / throttles",
                left=[write_p99],
                right=[throttles],
                left_annotations=[
                    cloudwatch.HorizontalAnnotation(value=HOT_WRITE_P99_MS.warn, label="warn"),
                    cloudwatch.HorizontalAnnotation(value=HOT_WRITE_P99_MS.page, label="page"),
                ],
            ),
            cloudwatch.GraphWidget(title="DLQ depth", left=[depth, parked]),
            cloudwatch.GraphWidget(title="Producer errors", left=[producer_errors]),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="API latency p50/p99 (ms)",
                left=[http_api.metric_latency(statistic="p50"), api_p99],
            ),
            cloudwatch.GraphWidget(
                title="DynamoDB consumed WCU/RCU",
                left=[
                    table.metric_consumed_write_capacity_units(),
                    table.metric_consumed_read_capacity_units(),
                ],
            ),
            cloudwatch.GraphWidget(
                title="Service CPU %",
                left=[service.metric_cpu_utilization(label=name) for name, service in services.items()],
            ),
            cloudwatch.GraphWidget(
                title="Lambda errors",
                left=[fn.metric_errors(label=name) for name, fn in functions.items()],
            ),
        )
