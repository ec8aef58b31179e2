"""CloudWatch: alarms at the runbook thresholds → SNS (warn / page), and the operations dashboard.

Application metrics are EMF in namespace `TradePulse` with the `service` dimension, named and emitted by
`tradepulse.metrics_emf`: ConsumerLag, HotWriteLatencyP99Ms, HotWriteThrottles (processor),
ProducerErrors, EventsPublished (ingest, news). DLQ depth and age are SQS's
ApproximateNumberOfMessagesVisible / ApproximateAgeOfOldestMessage; API p99 and 5xx are API Gateway's
Latency / 5xx; running tasks are Container Insights' RunningTaskCount (ECS/ContainerInsights).

Missing data: an alarm on a signal that a live process always sends (a heartbeat, the running task count)
treats missing data as breaching, because silence there means the process is dead. Alarms on signals that
are legitimately absent when all is well (no dead letters, no Lambda invocations, no API traffic) treat it
as not breaching.

Paging: the `page` and `warn` topics always exist; `-c alarmEmail=…` subscribes an address to both and
`-c alarmHttpsEndpoint=https://…` (a PagerDuty/Opsgenie-style webhook) to `page`. Every alarm's
description ends with the link to its section of docs/runbook.md (`-c runbookUrl=…` sets the base).
"""

from __future__ import annotations

import re
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
# The redrive Lambda runs every 15 minutes and SQS parks a letter after 5 receives, so a letter that keeps
# failing leaves the DLQ after ~75-90 minutes; one older than 2 hours means the redrive is not running.
DLQ_OLDEST_AGE_S = 2 * 3600
API_5XX_PER_5MIN = 5
LAMBDA_ERRORS_PER_5MIN = 1
LAMBDA_THROTTLES_PER_5MIN = 1
# Heartbeats: the processor publishes its status (and EMF line) every 10 s, also while idle, but a new
# task rebuilds its windows before its first status, so silence pages after 10 minutes; ingest and news
# write their progress line (EventsPublished) every 30 s.
PROCESSOR_SILENT = Duration.minutes(10)
SOURCE_SILENT = Duration.minutes(5)
# Fewer running tasks than the minimum for this long: crash loop, failed deployment, or no capacity.
TASKS_BELOW_MIN = Duration.minutes(5)
CONTAINER_INSIGHTS = "ECS/ContainerInsights"
# The processor is not here: its outputs are transactional, so a failed delivery fails the commit, which
# is aborted and replayed (or raises); counting aborts would page on every rebalance fence.
PRODUCING_SERVICES = ("ingest", "news")
DEFAULT_RUNBOOK_URL = "docs/runbook.md"


def runbook_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces → hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


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
        min_tasks: dict[str, int],
        functions: dict[str, lambda_.IFunction],
        alarm_email: str | None,
        alarm_https_endpoint: str | None = None,
        runbook_url: str | None = None,
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
        if alarm_https_endpoint:
            if not alarm_https_endpoint.startswith("https://"):
                raise ValueError("alarmHttpsEndpoint must be an https:// URL")
            # Paging services (PagerDuty, Opsgenie, …) confirm the subscription themselves; only pages.
            self.page_topic.add_subscription(
                subscriptions.UrlSubscription(alarm_https_endpoint, protocol=sns.SubscriptionProtocol.HTTPS)
            )
        page = cw_actions.SnsAction(self.page_topic)
        warn = cw_actions.SnsAction(self.warn_topic)
        runbook = (runbook_url or DEFAULT_RUNBOOK_URL).rstrip("#")
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        #: alarm id → the runbook heading its description links to (tests check the heading exists)
        self.runbook_sections: dict[str, str] = {}

        def alarm(
            alarm_id: str,
            source: cloudwatch.IMetric,
            threshold: float,
            action: cw_actions.SnsAction,
            *,
            periods: int = 3,
            description: str,
            section: str,
            below: bool = False,
            missing_is_death: bool = False,
        ) -> None:
            created = cloudwatch.Alarm(
                self,
                alarm_id,
                alarm_description=f"{description}. Runbook: {runbook}#{runbook_anchor(section)}",
                metric=source,
                threshold=threshold,
                evaluation_periods=periods,
                datapoints_to_alarm=periods,
                comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD
                if below
                else cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.BREACHING
                if missing_is_death
                else cloudwatch.TreatMissingData.NOT_BREACHING,
            )
            created.add_alarm_action(action)
            created.add_ok_action(action)
            self.alarms[alarm_id] = created
            self.runbook_sections[alarm_id] = section

        # --- processes alive -----------------------------------------------------------------------
        heartbeat_section = "ProcessorHeartbeat / IngestHeartbeat / NewsHeartbeat"
        # Each service's periodic EMF line is its heartbeat: no sample in the period = dead or hung.
        heartbeats = (
            ("Processor", "processor", emf.CONSUMER_LAG, PROCESSOR_SILENT, page,
             "No processor status (EMF ConsumerLag) for 10 minutes: every runner is dead or hung"),
            ("Ingest", "ingest", emf.EVENTS_PUBLISHED, SOURCE_SILENT, page,
             "No ingest progress line (EMF EventsPublished) for 5 minutes: ingest is dead or hung"),
            ("News", "news", emf.EVENTS_PUBLISHED, SOURCE_SILENT, warn,
             "No news progress line (EMF EventsPublished) for 5 minutes: news is dead or hung"),
        )  # fmt: skip
        for prefix, service, metric_name, silent, topic, description in heartbeats:
            alarm(
                f"{prefix}Heartbeat",
                metric(metric_name, service, statistic="SampleCount", period=silent),
                1,
                topic,
                periods=1,
                below=True,
                missing_is_death=True,
                description=description,
                section=heartbeat_section,
            )
        running_tasks: list[cloudwatch.IMetric] = []
        for service_name, service in services.items():
            running = cloudwatch.Metric(
                namespace=CONTAINER_INSIGHTS,
                metric_name="RunningTaskCount",
                dimensions_map={
                    "ClusterName": service.cluster.cluster_name,
                    "ServiceName": service.service_name,
                },
                statistic="Minimum",
                period=Duration.minutes(1),
            )
            running_tasks.append(running.with_(label=service_name))
            minimum = min_tasks.get(service_name, 1)
            alarm(
                f"{service_name.capitalize()}TasksRunning",
                running,
                minimum,
                warn if service_name == "news" else page,
                periods=int(TASKS_BELOW_MIN.to_minutes()),
                below=True,
                missing_is_death=True,
                description=f"Fewer than {minimum} {service_name} task(s) running for 5 minutes",
                section="IngestTasksRunning / NewsTasksRunning / ProcessorTasksRunning",
            )

        # --- processor ---------------------------------------------------------------------------
        lag = metric(emf.CONSUMER_LAG, "processor")
        alarm(
            "ConsumerLagWarn",
            lag,
            CONSUMER_LAG.warn,
            warn,
            description="Processor is falling behind: ConsumerLag ≥ 5,000 for 3 minutes",
            section="ConsumerLagWarn / ConsumerLagPage",
        )
        alarm(
            "ConsumerLagPage",
            lag,
            CONSUMER_LAG.page,
            page,
            periods=5,
            description="Processor lag past 10,000 messages for 5 minutes",
            section="ConsumerLagWarn / ConsumerLagPage",
        )

        write_p99 = metric(emf.HOT_WRITE_P99_MS, "processor")
        alarm(
            "HotWriteP99Warn",
            write_p99,
            HOT_WRITE_P99_MS.warn,
            warn,
            description="Hot-store write p99 ≥ 50 ms",
            section="HotWriteP99Warn / HotWriteP99Page",
        )
        alarm(
            "HotWriteP99Page",
            write_p99,
            HOT_WRITE_P99_MS.page,
            page,
            periods=5,
            description="Hot-store write p99 ≥ 100 ms (backpressure engages)",
            section="HotWriteP99Warn / HotWriteP99Page",
        )

        throttles = metric(emf.HOT_WRITE_THROTTLES, "processor", statistic="Sum")
        alarm(
            "HotWriteThrottles",
            throttles,
            HOT_WRITE_THROTTLES_PER_MIN,
            page,
            description="DynamoDB throttled hot-store writes for 3 minutes",
            section="HotWriteThrottles",
        )

        # --- dead letters ------------------------------------------------------------------------
        depth = dlq.metric_approximate_number_of_messages_visible(
            statistic="Maximum", period=Duration.minutes(1)
        )
        alarm(
            "DlqDepthWarn",
            depth,
            DLQ_DEPTH.warn,
            warn,
            periods=1,
            description="Dead letters piling up (≥ 50)",
            section="DlqDepthWarn / DlqDepthPage",
        )
        alarm(
            "DlqDepthPage",
            depth,
            DLQ_DEPTH.page,
            page,
            periods=1,
            description="≥ 100 dead letters waiting",
            section="DlqDepthWarn / DlqDepthPage",
        )
        oldest = dlq.metric_approximate_age_of_oldest_message(statistic="Maximum", period=Duration.minutes(5))
        alarm(
            "DlqAge",
            oldest,
            DLQ_OLDEST_AGE_S,
            page,
            periods=1,
            description="A dead letter has waited 2 hours: the 15-minute redrive is not running",
            section="DlqAge",
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
            section="DlqParked",
        )

        # --- producers ---------------------------------------------------------------------------
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
            description="Kafka delivery failures in ingest or news",
            section="ProducerErrors",
        )

        # --- API and Lambdas ---------------------------------------------------------------------
        api_p99 = http_api.metric_latency(statistic="p99", period=Duration.minutes(5))
        alarm(
            "ApiP99",
            api_p99,
            api_p99_ms,
            page,
            description=f"API p99 ≥ {api_p99_ms} ms for 15 minutes",
            section="ApiP99",
        )
        api_5xx = http_api.metric_server_error(statistic="Sum", period=Duration.minutes(5))
        alarm(
            "Api5xx",
            api_5xx,
            API_5XX_PER_5MIN,
            page,
            periods=2,
            description=f"API answered ≥ {API_5XX_PER_5MIN} 5xx in each of 2 consecutive 5-minute periods",
            section="Api5xx",
        )

        def summed(kind: str, label: str) -> cloudwatch.MathExpression:
            ids = {f"{kind}{i}": fn for i, fn in enumerate(functions.values())}
            return cloudwatch.MathExpression(
                expression=" + ".join(f"FILL({i}, 0)" for i in ids),
                using_metrics={
                    i: fn.metric(
                        "Errors" if kind == "errors" else "Throttles",
                        statistic="Sum",
                        period=Duration.minutes(5),
                    )
                    for i, fn in ids.items()
                },
                label=label,
                period=Duration.minutes(5),
            )

        lambda_errors = summed("errors", f"Lambda errors ({', '.join(functions)})")
        alarm(
            "LambdaErrors",
            lambda_errors,
            LAMBDA_ERRORS_PER_5MIN,
            warn,
            periods=1,
            description=f"A TradePulse Lambda ({', '.join(functions)}) failed in the last 5 minutes",
            section="LambdaErrors / LambdaThrottles",
        )
        lambda_throttles = summed("throttles", "Lambda throttles")
        alarm(
            "LambdaThrottles",
            lambda_throttles,
            LAMBDA_THROTTLES_PER_5MIN,
            page,
            periods=1,
            description=f"A TradePulse Lambda ({', '.join(functions)}) was throttled in the last 5 minutes",
            section="LambdaErrors / LambdaThrottles",
        )

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
            cloudwatch.GraphWidget(title="Running tasks", left=running_tasks),
            cloudwatch.GraphWidget(
                title="Service CPU %",
                left=[service.metric_cpu_utilization(label=name) for name, service in services.items()],
            ),
            cloudwatch.GraphWidget(
                title="Lambda errors",
                left=[fn.metric_errors(label=name) for name, fn in functions.items()],
                right=[fn.metric_throttles(label=f"{name} throttles") for name, fn in functions.items()],
            ),
            cloudwatch.GraphWidget(title="API 5xx / DLQ oldest (s)", left=[api_5xx], right=[oldest]),
        )
