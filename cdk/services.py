"""Services: the ECS Fargate cluster running ingest, news and processor from `services/*/Dockerfile`.

Images are Docker assets: `cdk synth` only stages their build context (no Docker needed); `cdk deploy`
builds and pushes them (see docs/deployment.md). Configuration is the `TRADEPULSE_*` environment of
`tradepulse.config.Settings`; the provider API keys come from Secrets Manager.
"""

from __future__ import annotations

import json
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
from tradepulse.sources import api_keys

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


def provider_secret(scope: Construct, id: str, variable: str, provider: str) -> secretsmanager.Secret:
    """A secret holding one provider key as `{"<variable>": "set-me"}` until the operator puts the real
    one (the ECS container reads it by that JSON key)."""
    return secretsmanager.Secret(
        scope,
        id,
        description=f"TradePulse {provider} API key: {variable}",
        generate_secret_string=secretsmanager.SecretStringGenerator(
            secret_string_template=json.dumps({variable: api_keys.PLACEHOLDER}),
            generate_string_key="unused",
        ),
    )


@dataclass(frozen=True)
class ServiceSizes:
    ingest: ServiceSize
    news: ServiceSize
    processor: ServiceSize


class Services(Construct):
    """`cluster`, `services[name]` (FargateService), `task_definitions[name]`, the provider secrets
    `massive_key` (ingest) and `finnhub_key` (news), `secrets[service]`."""

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
        # One secret per provider, so each service can read only its own key (an ECS secret that names a
        # JSON key still needs GetSecretValue on the whole secret). Placeholders; set the real keys with
        # `aws secretsmanager put-secret-value` (docs/deployment.md). Until then ingest and news wait,
        # re-reading their own secret (tradepulse/sources/api_keys.py).
        self.massive_key = provider_secret(self, "MassiveApiKey", "MASSIVE_API_KEY", "Massive (ingest)")
        self.finnhub_key = provider_secret(self, "FinnhubApiKey", "FINNHUB_API_KEY", "Finnhub (news)")
        #: service → (environment variable, secret); only ingest and news hold a key, each its own.
        self.secrets: dict[str, tuple[str, secretsmanager.Secret]] = {
            "ingest": ("MASSIVE_API_KEY", self.massive_key),
            "news": ("FINNHUB_API_KEY", self.finnhub_key),
        }
        self.task_definitions: dict[str, ecs.FargateTaskDefinition] = {}
        self.services: dict[str, ecs.FargateService] = {}
        for name in SERVICE_NAMES:
            size: ServiceSize = getattr(sizes, name)
            variable, key_secret = self.secrets.get(name, ("", None))
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
                | ({"TRADEPULSE_API_KEYS_SECRET_ID": key_secret.secret_arn} if key_secret else {})
                | {
                    "TRADEPULSE_METRICS": "emf",
                    "POWERTOOLS_SERVICE_NAME": name,
                    "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                    "AWS_REGION": Stack.of(self).region,
                },
                secrets={variable: ecs.Secret.from_secrets_manager(key_secret, variable)}
                if key_secret
                else None,
                stop_timeout=Duration.seconds(60),
            )
            if key_secret:
                key_secret.grant_read(task.task_role)  # its own key only: re-read while a placeholder
            self.task_definitions[name] = task
            self.services[name] = ecs.FargateService(
                self,
                f"{name.capitalize()}Service",
                cluster=self.cluster,
                task_definition=task,
                # The processor's count belongs to its auto scaling: with a DesiredCount in the template
                # every deploy would reset it to the minimum. Left out, CloudFormation creates the service
                # with 1 task and keeps the current count on updates; registering the scalable target
                # then raises it to min_tasks. Ingest and news never scale: pinned to their count.
                desired_count=None if name == "processor" else size.min_tasks,
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
