"""Services: the ECS Fargate cluster running ingest, news and processor from `services/*/Dockerfile`.

Images are Docker assets: `cdk synth` only stages their build context (no Docker needed); `cdk deploy`
builds and pushes them (see docs/deployment.md). Configuration is the `TRADEPULSE_*` environment of
`tradepulse.config.Settings`; the provider API keys come from Secrets Manager.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration, IgnoreMode, RemovalPolicy, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from cdk.config import ServiceSize
from cdk.layer import REPO_ROOT
from tradepulse import metrics_emf

METRICS_NAMESPACE = metrics_emf.NAMESPACE
SERVICE_NAMES = ("ingest", "news", "processor")
# Docker build context = the repository, reduced to what the images install (docker ignore syntax).
IMAGE_CONTEXT_EXCLUDE = [
    "*",
    "!requirements.txt",
    "!pyproject.toml",
    "!README.md",
    "!tradepulse",
    "!services",
    "**/__pycache__",
]
CONSUMER_LAG_SCALE_OUT = 5_000
CONSUMER_LAG_SCALE_OUT_FAST = 10_000
CONSUMER_LAG_SCALE_IN = 500


def metric(
    name: str, service: str, statistic: str = "Maximum", period: Duration | None = None
) -> cloudwatch.Metric:
    """A TradePulse EMF metric (names in `tradepulse.metrics_emf`). The emitter adds the `service`
    dimension from POWERTOOLS_SERVICE_NAME, which every task sets (as Powertools does in the Lambdas)."""
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name=name,
        dimensions_map={metrics_emf.DIMENSION: service},
        statistic=statistic,
        period=period or Duration.minutes(1),
    )


@dataclass(frozen=True)
class ServiceSizes:
    ingest: ServiceSize
    news: ServiceSize
    processor: ServiceSize


class Services(Construct):
    """`cluster`, `services[name]` (FargateService), `task_definitions[name]`, `api_keys` secret."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        sizes: ServiceSizes,
        environment: dict[str, str],
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, id)
        self.cluster = ecs.Cluster(
            self, "Cluster", vpc=vpc, container_insights_v2=ecs.ContainerInsights.ENABLED
        )
        # Placeholders; set the real keys with `aws secretsmanager put-secret-value` (docs/deployment.md).
        self.api_keys = secretsmanager.Secret(
            self,
            "ApiKeys",
            description="TradePulse provider API keys: MASSIVE_API_KEY, FINNHUB_API_KEY",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template='{"MASSIVE_API_KEY": "set-me", "FINNHUB_API_KEY": "set-me"}',
                generate_string_key="unused",
            ),
        )
        secrets = {
            "MASSIVE_API_KEY": ecs.Secret.from_secrets_manager(self.api_keys, "MASSIVE_API_KEY"),
            "FINNHUB_API_KEY": ecs.Secret.from_secrets_manager(self.api_keys, "FINNHUB_API_KEY"),
        }
        self.task_definitions: dict[str, ecs.FargateTaskDefinition] = {}
        self.services: dict[str, ecs.FargateService] = {}
        for name in SERVICE_NAMES:
            size: ServiceSize = getattr(sizes, name)
            task = ecs.FargateTaskDefinition(
                self,
                f"{name.capitalize()}Task",
                cpu=size.cpu,
                memory_limit_mib=size.memory_mib,
                runtime_platform=ecs.RuntimePlatform(
                    cpu_architecture=ecs.CpuArchitecture.X86_64,
                    operating_system_family=ecs.OperatingSystemFamily.LINUX,
                ),
            )
            log_group = logs.LogGroup(
                self,
                f"{name.capitalize()}Logs",
                retention=log_retention,
                removal_policy=RemovalPolicy.DESTROY,
            )
            task.add_container(
                name,
                image=ecs.ContainerImage.from_asset(
                    str(REPO_ROOT),
                    file=f"services/{name}/Dockerfile",
                    exclude=IMAGE_CONTEXT_EXCLUDE,
                    ignore_mode=IgnoreMode.DOCKER,
                    platform=ecr_assets.Platform.LINUX_AMD64,
                ),
                # EMF lines on stdout become CloudWatch metrics through the awslogs driver
                # (PutLogEvents; no agent sidecar needed: see tradepulse/metrics_emf.py).
                logging=ecs.LogDriver.aws_logs(stream_prefix=name, log_group=log_group),
                environment=environment
                | {
                    "TRADEPULSE_METRICS": "emf",
                    "POWERTOOLS_SERVICE_NAME": name,
                    "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                    "AWS_REGION": Stack.of(self).region,
                },
                secrets=secrets if name in ("ingest", "news") else None,
                stop_timeout=Duration.seconds(60),
            )
            self.task_definitions[name] = task
            self.services[name] = ecs.FargateService(
                self,
                f"{name.capitalize()}Service",
                cluster=self.cluster,
                task_definition=task,
                desired_count=size.min_tasks,
                vpc_subnets=subnets,
                security_groups=[security_group],
                circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
                # One websocket connection per key: never run two ingest tasks side by side.
                min_healthy_percent=0 if name == "ingest" else 100,
                max_healthy_percent=100 if name == "ingest" else 200,
            )

        processor = sizes.processor
        self.processor_scaling = self.services["processor"].auto_scale_task_count(
            min_capacity=processor.min_tasks, max_capacity=processor.max_tasks
        )
        self.processor_scaling.scale_on_cpu_utilization(
            "Cpu", target_utilization_percent=70, scale_out_cooldown=Duration.minutes(2)
        )
        self.processor_scaling.scale_on_metric(
            "ConsumerLag",
            metric=metric(metrics_emf.CONSUMER_LAG, "processor"),
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            scaling_steps=[
                appscaling.ScalingInterval(upper=CONSUMER_LAG_SCALE_IN, change=-1),
                appscaling.ScalingInterval(lower=CONSUMER_LAG_SCALE_OUT, change=+1),
                appscaling.ScalingInterval(lower=CONSUMER_LAG_SCALE_OUT_FAST, change=+2),
            ],
            cooldown=Duration.minutes(3),
            evaluation_periods=2,
        )

    def role(self, name: str):  # type: ignore[no-untyped-def]
        """Task role of a service (what the application code runs as)."""
        return self.task_definitions[name].task_role
