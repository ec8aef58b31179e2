"""Streaming: MSK Serverless (IAM auth) and the topics, created at deploy by a custom resource.

The custom resource's Lambda (lambdas/topics) brings every topic of `tradepulse.topics` to its spec
with `tradepulse.bus.admin.apply_topic_specs` over IAM auth (creates missing topics, raises partition
counts, sets retention) and returns the SASL/IAM bootstrap brokers, which CloudFormation has no
attribute for on serverless clusters.

Grants are exactly what the code calls: tests/cdk/test_msk_acl.py turns them into Kafka ACLs on a
local authorizing broker, runs every service under its own, and shows that removing any one breaks it.
"""

from __future__ import annotations

from collections.abc import Iterable

from aws_cdk import CustomResource, Duration, Fn, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_msk as msk
from constructs import Construct

from cdk.layer import ARCHITECTURE, RUNTIME
from tradepulse.topics import ALL_TOPICS, topic_specs

MSK_IAM_PORT = 9098
#: Producers' transactional.id values start with this (one id per processor instance).
TRANSACTIONAL_ID_PREFIX = "tradepulse-"


class Streaming(Construct):
    """`cluster`, `client_security_group` (attach to every Kafka client), `bootstrap_brokers` (token)."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        cluster_name: str,
        partitions: int,
        retention_hours: int,
        layer: lambda_.ILayerVersion,
        lambda_code: lambda_.Code,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, id)
        self.cluster_name = cluster_name
        self.client_security_group = ec2.SecurityGroup(
            self, "ClientSg", vpc=vpc, description="Kafka clients of the TradePulse MSK cluster"
        )
        self.cluster_security_group = ec2.SecurityGroup(
            self, "ClusterSg", vpc=vpc, description="TradePulse MSK Serverless", allow_all_outbound=False
        )
        self.cluster_security_group.add_ingress_rule(
            self.client_security_group, ec2.Port.tcp(MSK_IAM_PORT), "Kafka over SASL/IAM from clients"
        )
        self.cluster = msk.CfnServerlessCluster(
            self,
            "Cluster",
            cluster_name=cluster_name,
            client_authentication=msk.CfnServerlessCluster.ClientAuthenticationProperty(
                sasl=msk.CfnServerlessCluster.SaslProperty(
                    iam=msk.CfnServerlessCluster.IamProperty(enabled=True)
                )
            ),
            vpc_configs=[
                msk.CfnServerlessCluster.VpcConfigProperty(
                    subnet_ids=vpc.select_subnets(subnet_type=subnets.subnet_type).subnet_ids,
                    security_groups=[self.cluster_security_group.security_group_id],
                )
            ],
        )

        topic_log_group = logs.LogGroup(
            self, "TopicsFnLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        self.topics_function = lambda_.Function(
            self,
            "TopicsFn",
            description="Creates the TradePulse Kafka topics on MSK Serverless (custom resource)",
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler="topics.handler.handler",
            code=lambda_code,
            layers=[layer],
            timeout=Duration.minutes(5),
            memory_size=512,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[self.client_security_group],
            log_group=topic_log_group,
            environment={"POWERTOOLS_SERVICE_NAME": "topics"},
        )
        self.topics_function.add_to_role_policy(
            iam.PolicyStatement(actions=["kafka:GetBootstrapBrokers"], resources=[self.cluster.attr_arn])
        )
        self.grant_connect(self.topics_function)
        self.topics_function.add_to_role_policy(
            iam.PolicyStatement(
                # Create missing topics; on Update raise partition counts (CreatePartitions = ALTER)
                # and set retention (DescribeConfigs + IncrementalAlterConfigs).
                actions=[
                    "kafka-cluster:CreateTopic",
                    "kafka-cluster:DescribeTopic",
                    "kafka-cluster:AlterTopic",
                    "kafka-cluster:DescribeTopicDynamicConfiguration",
                    "kafka-cluster:AlterTopicDynamicConfiguration",
                ],
                resources=[self.topic_arn(t) for t in ALL_TOPICS],
            )
        )
        specs = topic_specs(partitions, retention_hours * 3600 * 1000)
        self.topics = CustomResource(
            self,
            "Topics",
            service_token=self.topics_function.function_arn,
            resource_type="Custom::KafkaTopics",
            properties={
                "ClusterArn": self.cluster.attr_arn,
                # Changing a count or the retention is applied on Update (a decrease fails it).
                "Topics": [
                    {"Name": s.name, "Partitions": str(s.partitions), "RetentionMs": str(s.retention_ms)}
                    for s in specs
                ],
            },
        )
        self.bootstrap_brokers = self.topics.get_att_string("BootstrapBrokers")

    # --- IAM resources of the cluster -----------------------------------------------------------
    def _arn(self, kind: str, name: str) -> str:
        """ARN of a topic/group/transactional-id: arn:…:kafka:…:<kind>/<cluster name>/<cluster uuid>/<name>."""
        stack = Stack.of(self)
        cluster_uuid = Fn.select(2, Fn.split("/", self.cluster.attr_arn))
        return f"arn:{stack.partition}:kafka:{stack.region}:{stack.account}:{kind}/{self.cluster_name}/{cluster_uuid}/{name}"

    def topic_arn(self, topic: str) -> str:
        return self._arn("topic", topic)

    def grant_connect(self, grantee: iam.IGrantable) -> None:
        """Authenticate. (No DescribeCluster: metadata requests do not need it and no code calls
        the DescribeCluster API.)"""
        iam.Grant.add_to_principal(
            grantee=grantee, actions=["kafka-cluster:Connect"], resource_arns=[self.cluster.attr_arn]
        )

    def grant_produce(
        self, grantee: iam.IGrantable, topics: Iterable[str], *, transactional: bool = False
    ) -> None:
        """Idempotent (optionally transactional) producer on `topics`."""
        self.grant_connect(grantee)
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["kafka-cluster:WriteDataIdempotently"],
            resource_arns=[self.cluster.attr_arn],
        )
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["kafka-cluster:WriteData", "kafka-cluster:DescribeTopic"],
            resource_arns=[self.topic_arn(t) for t in topics],
        )
        if transactional:
            iam.Grant.add_to_principal(
                grantee=grantee,
                actions=["kafka-cluster:DescribeTransactionalId", "kafka-cluster:AlterTransactionalId"],
                # Any cluster generation: the uuid would only make the wildcard harder to read.
                resource_arns=[
                    f"arn:{Stack.of(self).partition}:kafka:{Stack.of(self).region}:{Stack.of(self).account}:"
                    f"transactional-id/{self.cluster_name}/*/{TRANSACTIONAL_ID_PREFIX}*"
                ],
            )

    def grant_read(self, grantee: iam.IGrantable, topics: Iterable[str], group: str) -> None:
        """Read `topics` with assign() (no group membership, no offset commits). librdkafka still looks
        up the coordinator of the client's `group.id` (FindCoordinator = DESCRIBE on the group)."""
        self.grant_connect(grantee)
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["kafka-cluster:ReadData", "kafka-cluster:DescribeTopic"],
            resource_arns=[self.topic_arn(t) for t in topics],
        )
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["kafka-cluster:DescribeGroup"],
            resource_arns=[self._arn("group", group)],
        )

    def grant_consume(self, grantee: iam.IGrantable, topics: Iterable[str], group: str) -> None:
        """Consume `topics` as a member of `group`, committing offsets (join/sync/commit = READ group)."""
        self.grant_read(grantee, topics, group)
        iam.Grant.add_to_principal(
            grantee=grantee, actions=["kafka-cluster:AlterGroup"], resource_arns=[self._arn("group", group)]
        )

    @property
    def all_topics(self) -> tuple[str, ...]:
        return ALL_TOPICS
