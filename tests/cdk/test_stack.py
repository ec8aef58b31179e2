"""The synthesized prod stack: every resource and the properties the code depends on, cdk-nag
AwsSolutions (zero unacknowledged findings, every acknowledgement with a reason) and cfn-lint.

The app is synthesized once for the module (with cdk-nag attached, as `app.py` does).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from cdk.schema_registry import load_schema, to_draft07
from tests.cdk.conftest import REPO_ROOT, one, resources
from tradepulse import topics
from tradepulse.sources.api_keys import PLACEHOLDER
from tradepulse.stores.parquet_cold import ALL_DATASETS

STACK = "TradePulse-prod"


@pytest.fixture(scope="module")
def synth(prod_synth: tuple[dict[str, Any], Path]) -> tuple[dict[str, Any], Path]:
    """(template, cloud assembly dir) of the prod stack, synthesized once per session with cdk-nag."""
    return prod_synth


@pytest.fixture(scope="module")
def template(synth: tuple[dict[str, Any], Path]) -> dict[str, Any]:
    return synth[0]


@pytest.fixture(scope="module")
def assertions(template: dict[str, Any]) -> Template:
    return Template.from_json(template)


def env_of(template: dict[str, Any], container: str) -> dict[str, Any]:
    task = next(
        r for r in resources(template, "AWS::ECS::TaskDefinition").values()
        if r["Properties"]["ContainerDefinitions"][0]["Name"] == container
    )  # fmt: skip
    definition = task["Properties"]["ContainerDefinitions"][0]
    return {
        "env": {e["Name"]: e["Value"] for e in definition["Environment"]},
        "secrets": {s["Name"]: s["ValueFrom"] for s in definition.get("Secrets", [])},
        "definition": definition,
        "task": task,
    }


def policy_statements(template: dict[str, Any], role_id_contains: str) -> list[dict[str, Any]]:
    """Statements of the IAM policies attached to the role whose logical id contains the text."""
    (role_id,) = [lid for lid in resources(template, "AWS::IAM::Role") if role_id_contains in lid]
    statements = []
    for policy in resources(template, "AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def actions_of(statements: list[dict[str, Any]]) -> set[str]:
    out: set[str] = set()
    for s in statements:
        out |= {s["Action"]} if isinstance(s["Action"], str) else set(s["Action"])
    return out


def logical_id(template: dict[str, Any], type_: str, contains: str) -> str:
    (lid,) = [lid for lid in resources(template, type_) if contains in lid]
    return lid


# --- storage ------------------------------------------------------------------------------------


def test_hot_table_matches_the_dynamo_store_key_design(
    assertions: Template, template: dict[str, Any]
) -> None:
    assertions.resource_count_is("AWS::DynamoDB::Table", 1)
    assertions.has_resource(
        "AWS::DynamoDB::Table",
        {
            "Properties": {
                "KeySchema": [
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                "AttributeDefinitions": [
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                "BillingMode": "PAY_PER_REQUEST",
                "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                "GlobalSecondaryIndexes": Match.absent(),
            },
            "DeletionPolicy": "Retain",  # prod keeps its data
        },
    )


def test_cold_bucket_is_encrypted_tls_only_private_and_tiered(template: dict[str, Any]) -> None:
    bucket_id = logical_id(template, "AWS::S3::Bucket", "ColdBucket")
    props = template["Resources"][bucket_id]["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"
    ] == {"SSEAlgorithm": "AES256"}
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["LoggingConfiguration"]["DestinationBucketName"]["Ref"].startswith("StorageAccessLogs")
    rules = {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"]}
    tiering = rules["tier-history"]
    assert tiering["Prefix"] == "tradepulse/"
    assert [(t["StorageClass"], t["TransitionInDays"]) for t in tiering["Transitions"]] == [
        ("STANDARD_IA", 30),
        ("GLACIER_IR", 90),
    ]
    assert rules["expire-query-results"]["ExpirationInDays"] == 7
    # The anomaly model checkpoints expire a day after the trades they precede left Kafka (prod: 168 h).
    checkpoints = rules["expire-anomaly-checkpoints"]
    assert (checkpoints["Prefix"], checkpoints["ExpirationInDays"]) == ("tradepulse/_anomaly-checkpoints/", 8)
    policy = next(
        p["Properties"]["PolicyDocument"] for p in resources(template, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": bucket_id}
    )  # fmt: skip
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for s in policy["Statement"]
    )


def test_glue_tables_cover_every_dataset_with_partition_projection(template: dict[str, Any]) -> None:
    database = one(template, "AWS::Glue::Database")["Properties"]["DatabaseInput"]["Name"]
    assert database == "tradepulse_prod"
    tables = {
        t["Properties"]["TableInput"]["Name"]: t["Properties"]
        for t in resources(template, "AWS::Glue::Table").values()
    }
    assert set(tables) == {d.name.replace("-", "_") for d in ALL_DATASETS}
    for dataset in ALL_DATASETS:
        props = tables[dataset.name.replace("-", "_")]
        assert props["DatabaseName"] == database
        table = props["TableInput"]
        params = table["Parameters"]
        assert params["projection.enabled"] == "true"
        assert (params["projection.dt.type"], params["projection.dt.format"]) == ("date", "yyyy-MM-dd")
        assert (
            params["projection.hour.type"],
            params["projection.hour.range"],
            params["projection.hour.digits"],
        ) == (
            "integer",
            "0,23",
            "2",
        )
        location = json.dumps(table["StorageDescriptor"]["Location"])
        assert f"/tradepulse/{dataset.name}/" in location
        assert "dt=${dt}/hour=${hour}/" in json.dumps(params["storage.location.template"])
        assert [(k["Name"], k["Type"]) for k in table["PartitionKeys"]] == [("dt", "string"), ("hour", "int")]
        assert "ParquetHiveSerDe" in table["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"]


def test_glue_columns_are_the_parquet_schema(template: dict[str, Any]) -> None:
    columns = {
        t["Properties"]["TableInput"]["Name"]: {
            c["Name"]: c["Type"] for c in t["Properties"]["TableInput"]["StorageDescriptor"]["Columns"]
        }
        for t in resources(template, "AWS::Glue::Table").values()
    }
    assert columns["trades"]["price"] == "double"
    assert columns["trades"]["exchange_ts_ms"] == "bigint"
    assert columns["trades"]["conditions"] == "array<bigint>"
    assert columns["trades"]["kafka_partition"] == "int"  # lineage columns the cold store adds
    assert columns["trades"]["kafka_offset"] == "bigint"
    assert columns["anomalies"]["feature_vector"] == "map<string,double>"
    assert columns["correlations"]["sentiment"].startswith("struct<compound:double,label:string,")
    assert columns["dead_letters"]["payload"] == "string"


def test_athena_workgroup_limits_scans_and_writes_results_to_the_bucket(assertions: Template) -> None:
    assertions.has_resource_properties(
        "AWS::Athena::WorkGroup",
        {
            "Name": "tradepulse-prod",
            "WorkGroupConfiguration": {
                "BytesScannedCutoffPerQuery": 10737418240,
                "EnforceWorkGroupConfiguration": True,
                "ResultConfiguration": {
                    "OutputLocation": {
                        "Fn::Join": ["", Match.array_with([Match.string_like_regexp("/athena-results/$")])]
                    },
                    "EncryptionConfiguration": {"EncryptionOption": "SSE_S3"},
                },
            },
        },
    )


# --- streaming ----------------------------------------------------------------------------------


def test_msk_serverless_uses_iam_auth_in_two_private_subnets(template: dict[str, Any]) -> None:
    cluster = one(template, "AWS::MSK::ServerlessCluster")["Properties"]
    assert cluster["ClientAuthentication"] == {"Sasl": {"Iam": {"Enabled": True}}}
    assert len(cluster["VpcConfigs"][0]["SubnetIds"]) == 2
    ingress = one(template, "AWS::EC2::SecurityGroupIngress")["Properties"]
    assert (ingress["FromPort"], ingress["ToPort"]) == (9098, 9098)
    assert "StreamingClientSg" in ingress["SourceSecurityGroupId"]["Fn::GetAtt"][0]


def test_topics_custom_resource_creates_every_topic(template: dict[str, Any]) -> None:
    props = one(template, "Custom::KafkaTopics")["Properties"]
    specs = {t["Name"]: (int(t["Partitions"]), int(t["RetentionMs"])) for t in props["Topics"]}
    assert set(specs) == set(topics.ALL_TOPICS)
    assert specs[topics.TRADES] == (12, 168 * 3600 * 1000)
    assert specs[topics.DEAD_LETTERS][0] == 4  # low-volume topics get a third
    function_id = props["ServiceToken"]["Fn::GetAtt"][0]
    function = template["Resources"][function_id]["Properties"]
    assert function["Handler"] == "topics.handler.handler"
    assert "VpcConfig" in function
    statements = policy_statements(template, "StreamingTopicsFnServiceRole")
    assert {
        "kafka:GetBootstrapBrokers",
        "kafka-cluster:Connect",
        "kafka-cluster:CreateTopic",
        # Update applies partition increases and retention changes (tests/cdk/test_msk_acl.py runs it).
        "kafka-cluster:AlterTopic",
        "kafka-cluster:AlterTopicDynamicConfiguration",
    } <= actions_of(statements)


# --- services -----------------------------------------------------------------------------------


def test_services_get_the_settings_the_code_reads(template: dict[str, Any]) -> None:
    table_id = logical_id(template, "AWS::DynamoDB::Table", "HotTable")
    bucket_id = logical_id(template, "AWS::S3::Bucket", "ColdBucket")
    queue_id = logical_id(template, "AWS::SQS::Queue", "DeadLettersQueue")
    topics_id = logical_id(template, "Custom::KafkaTopics", "Topics")
    for name in ("ingest", "news", "processor"):
        env = env_of(template, name)["env"]
        assert env["TRADEPULSE_HOT_STORE"] == "dynamodb"
        assert env["TRADEPULSE_COLD_STORE"] == "s3"
        assert env["TRADEPULSE_DLQ_BACKEND"] == "sqs"
        assert env["TRADEPULSE_DYNAMODB_TABLE"] == {"Ref": table_id}
        assert env["TRADEPULSE_S3_BUCKET"] == {"Ref": bucket_id}
        assert env["TRADEPULSE_S3_PREFIX"] == "tradepulse"
        assert env["TRADEPULSE_SQS_DLQ_URL"] == {"Ref": queue_id}
        assert env["TRADEPULSE_KAFKA_BOOTSTRAP"] == {"Fn::GetAtt": [topics_id, "BootstrapBrokers"]}
        assert env["TRADEPULSE_KAFKA_MSK_IAM"] == "true"
        assert env["TRADEPULSE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["TRADEPULSE_DYNAMODB_SHARDS"] == "8"
        assert env["TRADEPULSE_DYNAMODB_TRADES"] == "latest"  # every trade goes to S3, not DynamoDB
        assert env["TRADEPULSE_HOT_TTL_HOURS"] == "48"
        assert env["TRADEPULSE_TOPIC_PARTITIONS"] == "12"
        assert json.loads(env["TRADEPULSE_TICKERS"])[0] == "AAPL"
        assert env["POWERTOOLS_SERVICE_NAME"] == name
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "TradePulse"
        assert env["TRADEPULSE_METRICS"] == "emf"  # tradepulse.metrics_emf writes the alarmed metrics


def test_settings_names_exist_in_tradepulse_config(template: dict[str, Any]) -> None:
    """Every TRADEPULSE_* variable the stack sets is a field of Settings (a typo would be ignored)."""
    from tradepulse.config import Settings

    fields = {f"TRADEPULSE_{name.upper()}" for name in Settings.model_fields}
    env = env_of(template, "processor")["env"]
    assert {k for k in env if k.startswith("TRADEPULSE_")} <= fields


def test_api_keys_come_from_secrets_manager(template: dict[str, Any]) -> None:
    """One secret per provider: ingest gets the Massive key, news the Finnhub key (least privilege in
    tests/cdk/test_least_privilege.py)."""
    for name, variable, secret in (("ingest", "MASSIVE_API_KEY", "MassiveApiKey"),
                                   ("news", "FINNHUB_API_KEY", "FinnhubApiKey")):  # fmt: skip
        secret_id = logical_id(template, "AWS::SecretsManager::Secret", secret)
        service = env_of(template, name)
        assert set(service["secrets"]) == {variable}
        assert variable not in service["env"]
        value_from = json.dumps(service["secrets"][variable])
        assert secret_id in value_from and f":{variable}::" in value_from
        # While the secret holds the placeholder the service re-reads it itself (first deploy): its own.
        assert service["env"]["TRADEPULSE_API_KEYS_SECRET_ID"] == {"Ref": secret_id}
        role = policy_statements(template, f"{name.capitalize()}TaskTaskRole")
        readable = [s["Resource"] for s in role if "secretsmanager:GetSecretValue" in s["Action"]]
        assert readable == [{"Ref": secret_id}]
    assert env_of(template, "processor")["secrets"] == {}
    assert "TRADEPULSE_API_KEYS_SECRET_ID" not in env_of(template, "processor")["env"]
    for variable, secret in (("MASSIVE_API_KEY", "MassiveApiKey"), ("FINNHUB_API_KEY", "FinnhubApiKey")):
        generated = one(template, "AWS::SecretsManager::Secret", secret)["Properties"]["GenerateSecretString"]
        assert json.loads(generated["SecretStringTemplate"]) == {variable: PLACEHOLDER}


def test_service_images_are_staged_from_the_service_dockerfiles(synth: tuple[dict[str, Any], Path]) -> None:
    _, outdir = synth
    assets = json.loads((outdir / f"{STACK}.assets.json").read_text())["dockerImages"]
    files = sorted(a["source"]["dockerFile"] for a in assets.values())
    assert files == [f"services/{s}/Dockerfile" for s in ("ingest", "news", "processor")]
    for asset in assets.values():
        context = outdir / asset["source"]["directory"]
        staged = {p.name for p in context.iterdir()}
        assert staged == {
            "requirements.txt",  # the lock the images install
            "pyproject.toml",
            "README.md",
            "tradepulse",
            "services",
        }  # no .venv, no node_modules
        assert (context / asset["source"]["dockerFile"]).is_file()


def test_processor_scales_on_consumer_lag_and_cpu(template: dict[str, Any]) -> None:
    target = one(template, "AWS::ApplicationAutoScaling::ScalableTarget")["Properties"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 6)
    policies = resources(template, "AWS::ApplicationAutoScaling::ScalingPolicy").values()
    cpu = [p for p in policies if p["Properties"]["PolicyType"] == "TargetTrackingScaling"]
    assert cpu[0]["Properties"]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 70
    lag_alarms = [
        a["Properties"] for a in resources(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == "ConsumerLag"
        and any("ScalingPolicy" in json.dumps(x) or "ConsumerLag" in json.dumps(x) for x in a["Properties"].get("AlarmActions", []))
    ]  # fmt: skip
    thresholds = sorted(a["Threshold"] for a in lag_alarms if a["Namespace"] == "TradePulse")
    assert 5000 in thresholds and 500 in thresholds  # scale out at 5,000, in below 500


def test_least_privilege_grants(template: dict[str, Any]) -> None:
    processor = policy_statements(template, "ProcessorTaskTaskRole")
    ingest = policy_statements(template, "IngestTaskTaskRole")
    api = policy_statements(template, "LambdasApiFnServiceRole")
    assert {
        "dynamodb:BatchWriteItem",
        "kafka-cluster:ReadData",
        "kafka-cluster:WriteData",
        "sqs:SendMessage",
    } <= actions_of(processor)
    assert {"kafka-cluster:AlterTransactionalId", "kafka-cluster:AlterGroup"} <= actions_of(processor)
    assert "kafka-cluster:WriteData" in actions_of(ingest)
    assert "dynamodb:BatchWriteItem" not in actions_of(ingest)
    # Ingest reads the tail of what it publishes (its dedupe seed) and nothing else.
    assert reads(ingest) == {topics.TRADES, topics.QUOTES}
    # Its inputs, and its outputs read back for the cold archive.
    assert reads(processor) == {*topics.INPUT_TOPICS, *topics.OUTPUT_TOPICS}
    assert "dynamodb:Query" in actions_of(api)
    # History beyond the hot TTL through Athena: queries, reads; it writes only Athena's result objects.
    assert {a for a in actions_of(api) if a.startswith("athena:")} == {
        "athena:StartQueryExecution", "athena:GetQueryExecution", "athena:GetQueryResults"
    }  # fmt: skip
    writes = [s for s in api if "s3:PutObject" in s["Action"]]
    assert len(writes) == 1 and "/athena-results/*" in json.dumps(writes[0]["Resource"])
    assert not {"dynamodb:PutItem", "dynamodb:BatchWriteItem"} & actions_of(api)

    assert writes_to(ingest, topics.TRADES) and not writes_to(ingest, topics.FEATURES)
    assert writes_to(processor, topics.FEATURES) and not writes_to(processor, topics.TRADES)


def reads(statements: list[dict[str, Any]]) -> set[str]:
    """Topics a role has kafka-cluster:ReadData on."""
    return {
        topic
        for s in statements
        if "kafka-cluster:ReadData" in s["Action"]
        for topic in topics.ALL_TOPICS
        if f"/{topic}" in json.dumps(s["Resource"])
    }


def writes_to(statements: list[dict[str, Any]], topic: str) -> bool:
    return any(
        "kafka-cluster:WriteData" in s["Action"] and f"/{topic}" in json.dumps(s["Resource"])
        for s in statements
    )


# --- lambdas, API, DLQ --------------------------------------------------------------------------


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        r["Properties"]["Handler"]: r["Properties"]
        for r in resources(template, "AWS::Lambda::Function").values()
    }


def test_lambda_functions_runtime_handlers_layers(template: dict[str, Any]) -> None:
    fns = functions(template)
    assert set(fns) == {
        "api.handler.handler",
        "dlq_redrive.handler.handler",
        "archival.handler.handler",
        "topics.handler.handler",
    }
    assert {f["Runtime"] for f in fns.values()} == {"python3.14"}
    assert len(fns["api.handler.handler"]["Layers"]) == 1
    assert len(fns["dlq_redrive.handler.handler"]["Layers"]) == 2  # + pyarrow, to write Parquet archives
    assert fns["api.handler.handler"]["TracingConfig"] == {"Mode": "Active"}
    redrive = fns["dlq_redrive.handler.handler"]
    assert redrive["ReservedConcurrentExecutions"] == 1 and "VpcConfig" in redrive
    env = redrive["Environment"]["Variables"]
    assert env["TRADEPULSE_DLQ_MAX_REDRIVES"] == "5"
    assert env["TRADEPULSE_SQS_DLQ_URL"] == {
        "Ref": logical_id(template, "AWS::SQS::Queue", "DeadLettersQueue")
    }


def test_layer_assets_hold_the_package_and_platform_wheels(synth: tuple[dict[str, Any], Path]) -> None:
    """The two layers were bundled locally (no Docker) for the Lambda platform."""
    _, outdir = synth
    assets = json.loads((outdir / f"{STACK}.assets.json").read_text())["files"].values()
    layers = [
        outdir / a["source"]["path"] / "python"
        for a in assets
        if (outdir / a["source"]["path"] / "python").is_dir()
    ]
    assert len(layers) == 2
    contents = {path: {p.name for p in path.iterdir()} for path in layers}
    base = next(path for path, names in contents.items() if "tradepulse" in names)
    arrow = next(path for path, names in contents.items() if "pyarrow" in names)
    assert {
        "mangum",
        "aws_lambda_powertools",
        "confluent_kafka",
        "aws_msk_iam_sasl_signer",
        "pydantic_core",
    } <= contents[base]
    assert "boto3" not in contents[base]  # the runtime provides it
    assert "tradepulse" not in contents[arrow]
    assert (base / "tradepulse" / "config.py").read_text() == (
        REPO_ROOT / "tradepulse" / "config.py"
    ).read_text()
    assert list(
        (base / "pydantic_core").glob("*cpython-314-x86_64-linux-gnu.so")
    )  # Lambda's Python, not ours
    assert list((arrow / "pyarrow").glob("lib.cpython-314-x86_64-linux-gnu.so"))


def test_http_api_is_throttled_and_logged(assertions: Template) -> None:
    assertions.has_resource_properties(
        "AWS::ApiGatewayV2::Stage",
        {
            "StageName": "$default",
            "AutoDeploy": True,
            "DefaultRouteSettings": {"ThrottlingRateLimit": 200, "ThrottlingBurstLimit": 400},
            "AccessLogSettings": {
                "DestinationArn": Match.any_value(),
                "Format": Match.string_like_regexp("requestId"),
            },
        },
    )
    assertions.has_resource_properties("AWS::ApiGatewayV2::Integration", {"IntegrationType": "AWS_PROXY"})


def test_redrive_runs_every_15_minutes(template: dict[str, Any]) -> None:
    rule = one(template, "AWS::Events::Rule")["Properties"]
    assert rule["ScheduleExpression"] == "rate(15 minutes)"
    target = rule["Targets"][0]["Arn"]["Fn::GetAtt"][0]
    assert template["Resources"][target]["Properties"]["Handler"] == "dlq_redrive.handler.handler"
    assert {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "s3:PutObject",
        "kafka-cluster:WriteData",
    } <= actions_of(policy_statements(template, "DlqredriveFnServiceRole"))


def test_dlq_has_a_redrive_policy_to_the_parking_queue_archived_by_lambda(template: dict[str, Any]) -> None:
    queue = one(template, "AWS::SQS::Queue", "DeadLettersQueue")["Properties"]
    parking_id = logical_id(template, "AWS::SQS::Queue", "DeadLettersParking")
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [parking_id, "Arn"]},
        "maxReceiveCount": 5,
    }
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["VisibilityTimeout"] >= 300  # longer than the redrive function's timeout
    mapping = one(template, "AWS::Lambda::EventSourceMapping")["Properties"]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": [parking_id, "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


# --- schema registry ----------------------------------------------------------------------------


def test_schema_registry_holds_every_topic_contract(template: dict[str, Any]) -> None:
    schemas = {
        s["Properties"]["Name"]: s["Properties"] for s in resources(template, "AWS::Glue::Schema").values()
    }
    assert set(schemas) == set(topics.ALL_TOPICS)
    # The schema resource holds the first definition; each later one is a version resource (v2, v3, ...).
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    for logical_id, version in resources(template, "AWS::Glue::SchemaVersion").items():
        for topic in topics.ALL_TOPICS:
            # `v<number><definition hash: 12 hex><CDK's 8-character suffix>`: anchored, or a hash that begins
            # with digits would be read as part of the number (v2 + "99…" taken for v299).
            found = re.search(
                f"SchemaVersion{re.sub('[^A-Za-z0-9]', '', topic)}v(\\d+)[0-9a-f]{{12}}[0-9A-F]{{8}}$",
                logical_id,
            )
            if found and int(found.group(1)) > latest.get(topic, (1, {}))[0]:
                latest[topic] = (int(found.group(1)), json.loads(version["Properties"]["SchemaDefinition"]))
    for topic, props in schemas.items():
        assert (props["DataFormat"], props["Compatibility"]) == ("JSON", "BACKWARD")
        current = latest.get(topic, (1, json.loads(props["SchemaDefinition"])))[1]
        assert current == to_draft07(load_schema(topic)), topic


def test_draft07_conversion_still_validates_payloads() -> None:
    """Glue takes draft-07; the converted schema must accept what the models produce and reject bad input."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = to_draft07(load_schema(topics.CORRELATIONS))
    validator = jsonschema.Draft7Validator(schema)
    good = {
        "correlation_id": "c1", "article_id": 1, "ticker": "AAPL", "headline": "h", "source": "s", "url": "u",
        "published_at": "2026-01-02T14:30:00Z", "published_ts_ms": 1, "volume_zscore_at_publish": None,
        "matched_zscore": 3.2, "peak_zscore": 3.5, "lag_seconds": 12.0, "correlation_strength": "strong",
        "sentiment": {"compound": 0.5, "label": "positive", "pos": 0.5, "neg": 0.0, "neu": 0.5},
    }  # fmt: skip
    assert list(validator.iter_errors(good)) == []
    bad = dict(good, sentiment=dict(good["sentiment"], label="bullish"))
    assert list(validator.iter_errors(bad))  # the $ref into definitions is followed


# --- monitoring ---------------------------------------------------------------------------------


def alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        lid: r["Properties"]
        for lid, r in resources(template, "AWS::CloudWatch::Alarm").items()
        if lid.startswith("Monitoring")
    }


def sns_target(template: dict[str, Any], alarm: dict[str, Any]) -> str:
    (action,) = alarm["AlarmActions"]
    return "page" if "PageTopic" in action["Ref"] else "warn"


@pytest.mark.parametrize(
    ("alarm", "metric", "threshold", "topic"),
    [
        ("ConsumerLagWarn", "ConsumerLag", 5000, "warn"),
        ("ConsumerLagPage", "ConsumerLag", 10000, "page"),
        ("HotWriteP99Warn", "HotWriteLatencyP99Ms", 50, "warn"),
        ("HotWriteP99Page", "HotWriteLatencyP99Ms", 100, "page"),
        ("HotWriteThrottles", "HotWriteThrottles", 1, "page"),
        ("DlqDepthWarn", "ApproximateNumberOfMessagesVisible", 50, "warn"),
        ("DlqDepthPage", "ApproximateNumberOfMessagesVisible", 100, "page"),
        ("ApiP99", "Latency", 500, "page"),
    ],
)
def test_alarm_thresholds(
    template: dict[str, Any], alarm: str, metric: str, threshold: int, topic: str
) -> None:
    (props,) = [p for lid, p in alarms(template).items() if lid.startswith(f"Monitoring{alarm}")]
    assert props["MetricName"] == metric
    assert props["Threshold"] == threshold
    assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert sns_target(template, props) == topic
    if metric == "ApproximateNumberOfMessagesVisible":
        assert props["Namespace"] == "AWS/SQS"
        assert props["Dimensions"][0]["Value"]["Fn::GetAtt"][0].startswith("DeadLettersQueue")
    elif metric == "Latency":
        assert (props["Namespace"], props["ExtendedStatistic"]) == ("AWS/ApiGateway", "p99")
    else:
        assert props["Namespace"] == "TradePulse"
        assert props["Dimensions"] == [{"Name": "service", "Value": "processor"}]


def test_producer_errors_alarm_sums_every_producing_service(template: dict[str, Any]) -> None:
    (props,) = [p for lid, p in alarms(template).items() if lid.startswith("MonitoringProducerErrors")]
    services = {
        m["MetricStat"]["Metric"]["Dimensions"][0]["Value"] for m in props["Metrics"] if "MetricStat" in m
    }
    assert services == {"ingest", "news"}
    assert props["Threshold"] == 1 and sns_target(template, props) == "page"


def test_alarm_topics_are_encrypted_and_a_dashboard_exists(template: dict[str, Any]) -> None:
    for topic in resources(template, "AWS::SNS::Topic").values():
        assert "KmsMasterKeyId" in topic["Properties"]
    dashboard = one(template, "AWS::CloudWatch::Dashboard")["Properties"]
    assert dashboard["DashboardName"] == "TradePulse-prod"
    body = json.dumps(dashboard["DashboardBody"])
    assert "ConsumerLag" in body and "HotWriteLatencyP99Ms" in body


# --- network ------------------------------------------------------------------------------------


def test_vpc_spans_two_azs_with_flow_logs_and_gateway_endpoints(template: dict[str, Any]) -> None:
    subnets = resources(template, "AWS::EC2::Subnet").values()
    assert len(subnets) == 4  # public + private in each of 2 AZs
    assert len({json.dumps(s["Properties"]["AvailabilityZone"]) for s in subnets}) == 2
    assert len(resources(template, "AWS::EC2::NatGateway")) == 2
    assert len(resources(template, "AWS::EC2::FlowLog")) == 1
    endpoints = {
        json.dumps(e["Properties"]["ServiceName"])
        for e in resources(template, "AWS::EC2::VPCEndpoint").values()
    }
    assert any("dynamodb" in e for e in endpoints) and any(".s3" in e for e in endpoints)


def test_outputs(template: dict[str, Any]) -> None:
    assert {
        "ApiUrl",
        "HotTableName",
        "ColdBucketName",
        "DlqUrl",
        "KafkaBootstrap",
        "MassiveApiKeySecretArn",
        "FinnhubApiKeySecretArn",
    } <= set(template["Outputs"])


# --- cdk-nag and cfn-lint -----------------------------------------------------------------------


def test_cdk_nag_has_no_unacknowledged_findings(synth: tuple[dict[str, Any], Path]) -> None:
    """The synth above ran with AwsSolutionsChecks attached and would have raised on any finding;
    the report confirms it, and every acknowledgement carries a reason."""
    template, outdir = synth
    report = json.loads((outdir / "validation-report.json").read_text())
    violations = [v for plugin in report["pluginReports"] for v in plugin.get("violations", [])]
    assert violations == []
    acknowledged = [
        rule
        for r in template["Resources"].values()
        for rule in r.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
        if rule["id"].startswith("AwsSolutions-")
    ]
    assert acknowledged, "acknowledgements should be written to the template metadata"
    assert all(len(rule["reason"]) >= 20 for rule in acknowledged), [
        r for r in acknowledged if len(r["reason"]) < 20
    ]


def test_cdk_nag_is_wired_to_fail_synth() -> None:
    """Without acknowledgements, the same checks fail a non-compliant stack (the gate is real)."""
    from aws_cdk import App, Stack, Validations
    from aws_cdk import aws_sqs as sqs
    from cdk_nag import AwsSolutionsChecks

    app = App()
    stack = Stack(app, "Bad")
    sqs.Queue(stack, "NoTls", encryption=sqs.QueueEncryption.UNENCRYPTED)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(Exception, match=r"[Vv]alidation"):
        app.synth()


def test_cfn_lint_reports_no_errors(synth: tuple[dict[str, Any], Path]) -> None:
    from cfnlint.api import lint_file

    _, outdir = synth
    matches = lint_file(outdir / f"{STACK}.template.json")
    errors = [f"{m.rule.id} {m.message}" for m in matches if m.rule.severity == "error"]
    assert errors == []


def test_every_custom_metric_alarmed_or_scaled_on_is_one_the_code_emits(template: dict[str, Any]) -> None:
    """(namespace, service, metric name) of every TradePulse metric in any alarm (monitoring and the
    processor's lag step scaling) is among what `tradepulse.metrics_emf` really writes, so a rename or a
    dimension change on either side fails here."""
    import io

    import orjson

    from tradepulse import metrics_emf
    from tradepulse.bus.status import RunnerMetrics

    emitted: set[tuple[str, str, str]] = set()
    for service in ("processor", "ingest", "news"):
        out = io.StringIO()
        emitter = metrics_emf.EmfEmitter(service, stream=out)
        if service == "processor":
            emitter.emit_runner(RunnerMetrics().snapshot())
        else:
            emitter.emit_producer(published=1, failed=1)
        doc = orjson.loads(out.getvalue())
        (directive,) = doc["_aws"]["CloudWatchMetrics"]
        assert directive["Dimensions"] == [["service"]]
        emitted |= {(directive["Namespace"], doc["service"], m["Name"]) for m in directive["Metrics"]}

    used: set[tuple[str, str, str]] = set()
    for alarm in resources(template, "AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        stats = [props] + [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
        for metric in stats:
            if metric.get("Namespace") == "TradePulse":
                (dimension,) = metric["Dimensions"]
                assert dimension["Name"] == "service"
                used.add((metric["Namespace"], dimension["Value"], metric["MetricName"]))
    assert {
        ("TradePulse", "processor", "ConsumerLag"),
        ("TradePulse", "processor", "HotWriteLatencyP99Ms"),
        ("TradePulse", "processor", "HotWriteThrottles"),
        ("TradePulse", "ingest", "ProducerErrors"),
        ("TradePulse", "news", "ProducerErrors"),
    } <= used
    assert used <= emitted, f"alarmed but never emitted: {used - emitted}"
