"""cdk-nag AwsSolutions acknowledgements. Each names one finding, on the narrowest construct it
applies to, and says why it is accepted."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Stack, Validations
from aws_cdk import aws_lambda as lambda_
from constructs import IConstruct

from cdk.stack import TradePulseStack
from cdk.storage import ATHENA_RESULTS_PREFIX, DEAD_LETTERS_PREFIX, HISTORY_DATASETS
from cdk.streaming import TRANSACTIONAL_ID_PREFIX

LAMBDA_BASIC = (
    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]"
)
LAMBDA_VPC = "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]"


def ack(scope: IConstruct, rule: str, reason: str) -> None:
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))


def acknowledge_findings(stack: TradePulseStack) -> None:
    """Acknowledge the accepted findings of the TradePulse stack."""
    bucket_arn = f"<{Stack.of(stack).get_logical_id(stack.storage.bucket.node.default_child)}.Arn>"  # type: ignore[arg-type]
    prefix = "tradepulse"

    # --- Lambda functions -------------------------------------------------------------------------
    functions = [c for c in stack.node.find_all() if isinstance(c, lambda_.Function)]
    for fn in functions:
        ack(fn, LAMBDA_BASIC, "AWS-managed policy that only lets the function write its own CloudWatch Logs.")
        if fn.is_bound_to_vpc:
            ack(fn, LAMBDA_VPC, "AWS-managed policy for the ENIs a VPC function needs to reach MSK.")
    for fn in (stack.lambdas.api_function, stack.lambdas.redrive_function, stack.lambdas.archival_function):
        ack(
            fn,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray PutTraceSegments/PutTelemetryRecords (active tracing) do not support resource-level permissions.",
        )

    # --- S3 grants: object-level actions on our own prefixes --------------------------------------
    s3_reason = (
        "CDK grant helper: object-level actions only, limited to TradePulse prefixes of the cold bucket."
    )
    for fn in (stack.lambdas.redrive_function, stack.lambdas.archival_function):
        ack(fn, "AwsSolutions-IAM5[Action::s3:Abort*]", s3_reason)
        ack(fn, f"AwsSolutions-IAM5[Resource::{bucket_arn}/{prefix}/{DEAD_LETTERS_PREFIX}/*]",
            "Writes one archive object per dead letter under the dead-letters prefix (keys known only at run time).")  # fmt: skip
    for dataset in HISTORY_DATASETS:
        ack(stack.lambdas.api_function, f"AwsSolutions-IAM5[Resource::{bucket_arn}/{prefix}/{dataset}/*]",
            "Athena reads the dataset's Parquet files for the API's history beyond the hot TTL (keys known at run time).")  # fmt: skip
    ack(stack.lambdas.api_function, f"AwsSolutions-IAM5[Resource::{bucket_arn}/{ATHENA_RESULTS_PREFIX}/*]",
        "Athena writes each query's result object under the workgroup's output prefix (query ids known at run time).")  # fmt: skip
    ack(stack.services.task_definitions["processor"], f"AwsSolutions-IAM5[Resource::{bucket_arn}/{prefix}/*]",
        "The processor writes Parquet files of every dataset under the cold-store prefix (keys known at run time).")  # fmt: skip

    # --- ECS --------------------------------------------------------------------------------------
    for name, task in stack.services.task_definitions.items():
        ack(task, "AwsSolutions-ECS2",
            f"The {name} task's environment is non-secret configuration (resource names, Kafka bootstrap); API keys come from Secrets Manager.")  # fmt: skip
        ack(task.execution_role or task, "AwsSolutions-IAM5[Resource::*]",  # type: ignore[arg-type]
            "ecr:GetAuthorizationToken (image pull) does not support resource-level permissions.")  # fmt: skip
    ack(stack.services.task_definitions["processor"],
        f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:kafka:<AWS::Region>:<AWS::AccountId>:transactional-id/{stack.streaming.cluster_name}/*/{TRANSACTIONAL_ID_PREFIX}*]",
        "Each processor instance has its own transactional.id (prefix + instance), created at run time.")  # fmt: skip
    for secret in (stack.services.massive_key, stack.services.finnhub_key):
        ack(secret, "AwsSolutions-SMG4",
            "Third-party API key (Massive or Finnhub): rotated in the vendor's console, then put into the secret; no rotation Lambda can do it.")  # fmt: skip

    # --- API --------------------------------------------------------------------------------------
    ack(stack.lambdas.http_api, "AwsSolutions-APIG4",
        "Public, read-only market-data API for the dashboard (like the local one); stage throttling caps abuse.")  # fmt: skip
