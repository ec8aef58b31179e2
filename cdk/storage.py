"""Storage: the DynamoDB hot table, the S3 cold bucket, Glue tables over its Parquet, the Athena workgroup.

The key design matches `tradepulse/stores/dynamo_hot.py`: one table, `pk` (e.g. `TRADE#AAPL#3`, a
write-sharded `TICKER#n`; features/anomalies/correlations use their own prefixes), `sk` (zero-padded
timestamp + sequence), TTL on `expires_at`. The cold layout is
`s3://<bucket>/<prefix>/<dataset>/dt=YYYY-MM-DD/hour=HH/*.parquet`; the runner's anomaly model
checkpoints are under `s3://<bucket>/<prefix>/_anomaly-checkpoints/` (no table reads them; a lifecycle
rule expires them).
"""

from __future__ import annotations

import pyarrow as pa
from aws_cdk import Aws, Duration, RemovalPolicy, Stack
from aws_cdk import aws_athena as athena
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_glue as glue
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from tradepulse.stores.parquet_cold import ANOMALY_CHECKPOINTS, ARCHIVE, DATASETS, SCHEMAS

DEAD_LETTERS_PREFIX = ARCHIVE.name  # where the DLQ Lambdas archive letters (the runner writes dead-letters/)
ATHENA_RESULTS_PREFIX = "athena-results"
PROJECTION_START = "2024-01-01"
HOT_READ_ACTIONS = ("dynamodb:Query",)
HOT_WRITE_ACTIONS = ("dynamodb:BatchWriteItem", "dynamodb:PutItem")
# What `tradepulse.stores.cold_history.AthenaColdHistory` calls (the API's history beyond the hot TTL).
HISTORY_QUERY_ACTIONS = ("athena:StartQueryExecution", "athena:GetQueryExecution", "athena:GetQueryResults")
# What Athena does with the caller's credentials to run such a query (AWS docs, "Access to the Glue
# Data Catalog" and "Amazon S3 access" for Athena): read the table definitions, list and read the
# dataset's objects, write and read the query's result object under the workgroup's output location.
HISTORY_GLUE_ACTIONS = ("glue:GetDatabase", "glue:GetTable", "glue:GetPartitions")
HISTORY_DATASETS = ("anomalies", "correlations")


def hive_type(arrow_type: pa.DataType) -> str:
    """Glue/Hive type of an Arrow type (the cold store's Parquet schemas)."""
    if pa.types.is_struct(arrow_type):
        fields = ",".join(f"{f.name}:{hive_type(f.type)}" for f in arrow_type)
        return f"struct<{fields}>"
    if pa.types.is_map(arrow_type):
        return f"map<{hive_type(arrow_type.key_type)},{hive_type(arrow_type.item_type)}>"
    if pa.types.is_list(arrow_type):
        return f"array<{hive_type(arrow_type.value_type)}>"
    simple = {
        pa.string(): "string",
        pa.int64(): "bigint",
        pa.int32(): "int",
        pa.float64(): "double",
        pa.bool_(): "boolean",
    }
    return simple[arrow_type]


def glue_columns(dataset: str) -> list[glue.CfnTable.ColumnProperty]:
    """Columns of a dataset's Glue table: exactly the Parquet schema the cold store writes."""
    return [glue.CfnTable.ColumnProperty(name=f.name, type=hive_type(f.type)) for f in SCHEMAS[dataset]]


def glue_table_name(dataset: str) -> str:
    """Table of a dataset folder (`dead-letters` → `dead_letters`, as the local DuckDB views)."""
    return dataset.replace("-", "_")


class Storage(Construct):
    """Hot table, cold bucket (+ access-log bucket), Glue database/tables, Athena workgroup."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        s3_prefix: str,
        glue_database: str,
        athena_workgroup: str,
        bytes_scanned_cutoff: int,
        retain_data: bool,
        ia_after_days: int,
        glacier_after_days: int,
        checkpoint_expiry_days: int,
    ) -> None:
        super().__init__(scope, id)
        removal = RemovalPolicy.RETAIN if retain_data else RemovalPolicy.DESTROY
        self.s3_prefix = s3_prefix

        self.table = dynamodb.Table(
            self,
            "HotTable",
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="sk", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            time_to_live_attribute="expires_at",
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            removal_policy=removal,
        )

        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(90))],
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.bucket = s3.Bucket(
            self,
            "ColdBucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="cold/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="tier-history",
                    prefix=f"{s3_prefix}/",
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                            transition_after=Duration.days(ia_after_days),
                        ),
                        s3.Transition(
                            storage_class=s3.StorageClass.GLACIER_INSTANT_RETRIEVAL,
                            transition_after=Duration.days(glacier_after_days),
                        ),
                    ],
                ),
                # The runner's anomaly model checkpoints: a restore needs the newest one at or below the
                # committed offset and replays the trades from it, which is possible only while Kafka
                # still holds them; older ones are expired here (the processor never deletes).
                s3.LifecycleRule(
                    id="expire-anomaly-checkpoints",
                    prefix=f"{s3_prefix}/{ANOMALY_CHECKPOINTS}/",
                    expiration=Duration.days(checkpoint_expiry_days),
                ),
                s3.LifecycleRule(
                    id="expire-query-results",
                    prefix=f"{ATHENA_RESULTS_PREFIX}/",
                    expiration=Duration.days(7),
                ),
                s3.LifecycleRule(
                    id="abort-multipart", abort_incomplete_multipart_upload_after=Duration.days(1)
                ),
            ],
            # History is the system of record: never deleted with the stack.
            removal_policy=RemovalPolicy.RETAIN,
        )

        self.database = glue.CfnDatabase(
            self,
            "Database",
            catalog_id=Aws.ACCOUNT_ID,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=glue_database, description="TradePulse cold store (Parquet on S3)"
            ),
        )
        self.glue_database = glue_database
        self.tables: dict[str, glue.CfnTable] = {}
        for topic, dataset in DATASETS.items():
            self.tables[dataset.name] = self._parquet_table(dataset.name, f"topic {topic}")
        self.tables[ARCHIVE.name] = self._parquet_table(ARCHIVE.name, "letters the DLQ archived")

        self.workgroup = athena.CfnWorkGroup(
            self,
            "Workgroup",
            name=athena_workgroup,
            description="TradePulse history queries",
            recursive_delete_option=not retain_data,
            state="ENABLED",
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                bytes_scanned_cutoff_per_query=bytes_scanned_cutoff,
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                engine_version=athena.CfnWorkGroup.EngineVersionProperty(selected_engine_version="AUTO"),
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=f"s3://{self.bucket.bucket_name}/{ATHENA_RESULTS_PREFIX}/",
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_S3"
                    ),
                ),
            ),
        )

    def _parquet_table(self, dataset: str, topic: str) -> glue.CfnTable:
        location = f"s3://{self.bucket.bucket_name}/{self.s3_prefix}/{dataset}/"
        table = glue.CfnTable(
            self,
            f"Table-{dataset}",
            catalog_id=Aws.ACCOUNT_ID,
            database_name=self.glue_database,
            table_input=glue.CfnTable.TableInputProperty(
                name=glue_table_name(dataset),
                description=f"{dataset} history ({topic}), Parquet, partitioned by dt/hour",
                table_type="EXTERNAL_TABLE",
                partition_keys=[
                    glue.CfnTable.ColumnProperty(name="dt", type="string", comment="UTC date YYYY-MM-DD"),
                    glue.CfnTable.ColumnProperty(
                        name="hour", type="int", comment="UTC hour 0-23 (path: 00-23)"
                    ),
                ],
                parameters={
                    "classification": "parquet",
                    "parquet.compression": "SNAPPY",
                    "EXTERNAL": "TRUE",
                    # Partition projection: Athena computes partitions from the path, so no crawler
                    # and no MSCK REPAIR after each new hour.
                    "projection.enabled": "true",
                    "projection.dt.type": "date",
                    "projection.dt.format": "yyyy-MM-dd",
                    "projection.dt.range": f"{PROJECTION_START},NOW",
                    "projection.dt.interval": "1",
                    "projection.dt.interval.unit": "DAYS",
                    "projection.hour.type": "integer",
                    "projection.hour.range": "0,23",
                    "projection.hour.digits": "2",
                    "storage.location.template": location + "dt=${dt}/hour=${hour}/",
                },
                storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                    location=location,
                    columns=glue_columns(dataset),
                    input_format="org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
                    output_format="org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
                    serde_info=glue.CfnTable.SerdeInfoProperty(
                        serialization_library="org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
                    ),
                ),
            ),
        )
        table.node.add_dependency(self.database)
        return table

    # --- grants ---------------------------------------------------------------------------------
    def grant_hot_reads(self, grantee: iam.IGrantable) -> None:
        """What `DynamoHotStore`'s readers (the API) call: Query only (the runner heartbeats included)."""
        iam.Grant.add_to_principal(
            grantee=grantee, actions=list(HOT_READ_ACTIONS), resource_arns=[self.table.table_arn]
        )

    def grant_hot_writes(self, grantee: iam.IGrantable) -> None:
        """What `DynamoHotStore`'s writer calls: BatchWriteItem (trades, snapshots, the ticker set) and
        PutItem (conditional puts, the runner heartbeat). No reads, no deletes (TTL expires items)."""
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=list(HOT_WRITE_ACTIONS),
            resource_arns=[self.table.table_arn],
        )

    def grant_history_queries(self, grantee: iam.IGrantable) -> None:
        """Athena SELECTs over the history datasets the API reads beyond the hot TTL (anomalies,
        correlations) in this workgroup, and nothing else: their Glue tables, their objects under
        the cold prefix, and the workgroup's result objects. The workgroup's scan cutoff bounds each query."""
        stack = Stack.of(self)
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=list(HISTORY_QUERY_ACTIONS),
            resource_arns=[
                stack.format_arn(service="athena", resource="workgroup", resource_name=self.workgroup.name)
            ],
        )
        glue_arn = lambda resource, name=None: stack.format_arn(  # noqa: E731
            service="glue", resource=resource, resource_name=name
        )
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=list(HISTORY_GLUE_ACTIONS),
            resource_arns=[glue_arn("catalog"), glue_arn("database", self.glue_database)]
            + [glue_arn("table", f"{self.glue_database}/{glue_table_name(d)}") for d in HISTORY_DATASETS],
        )
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["s3:GetObject"],
            resource_arns=[self.bucket.arn_for_objects(f"{self.s3_prefix}/{d}/*") for d in HISTORY_DATASETS],
        )
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
            resource_arns=[self.bucket.arn_for_objects(f"{ATHENA_RESULTS_PREFIX}/*")],
        )
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["s3:ListBucket", "s3:GetBucketLocation"],
            resource_arns=[self.bucket.bucket_arn],
        )

    def grant_cold_read_write(self, grantee: iam.IGrantable, prefix: str) -> None:
        """What the Parquet cold store's `S3Target` calls under `prefix/`: GetObject (re-reading a block
        file, the offset checkpoints and the anomaly model checkpoints after a restart), PutObject,
        ListObjectsV2. Never a delete (lifecycle rules expire what must go).

        s3:ListBucket is on the bucket without an `s3:prefix` condition: a GetObject of a missing key is
        answered NoSuchKey (which the store expects for a first checkpoint) only with ListBucket, and a
        GetObject request carries no `s3:prefix`, so a conditioned grant would turn it into AccessDenied."""
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["s3:GetObject", "s3:PutObject"],
            resource_arns=[self.bucket.arn_for_objects(f"{prefix}/*")],
        )
        iam.Grant.add_to_principal(
            grantee=grantee, actions=["s3:ListBucket"], resource_arns=[self.bucket.bucket_arn]
        )
