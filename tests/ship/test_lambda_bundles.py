"""Ship what you test (defect 3): each Lambda function is assembled from the synthesized cloud assembly
exactly as CDK packages it (its code asset + its layer assets, in the template's order), then imported and
invoked in a clean interpreter (`python -I -S`) that sees only those folders, what the Lambda runtime
provides (boto3 & co., the standard library) and nothing of the development venv. AWS is a moto server.

The Lambda runtime's Python (layers/build.py PYTHON_VERSION) is not this machine's, so the import check
runs the same layer content with its wheels installed from the same locks for the local Python; the size
check measures the real Lambda-platform assets against the 250 MB unzipped limit.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.ship.bundles import (
    LAMBDA_UNZIPPED_LIMIT,
    Bundle,
    invoke_clean,
    lambda_bundles,
    local_opt,
    runtime_packages,
)
from tests.ship.conftest import BUNDLE_SIZES, closed_port, layer_build

REGION = "us-east-1"
HANDLERS = ("api.handler", "archival.handler", "dlq_redrive.handler", "topics.handler")
#: Loaded by a function only if its bundle is wrong: the heavy analytics stack stays in the images.
NEVER_IN_A_LAMBDA = ("numpy", "pandas", "sklearn", "scipy", "duckdb", "hdrh")
#: A processor task's heartbeat key on ECS: `--instance <hostname>` (services/processor/main.py).
ECS_HOSTNAME = "ip-10-0-1-23.ec2.internal"


@pytest.fixture(scope="session")
def bundles(cloud_assembly: tuple[Path, str]) -> dict[str, Bundle]:
    return lambda_bundles(*cloud_assembly)


@pytest.fixture(scope="session")
def runtime_dir() -> Path:
    return runtime_packages(layer_build().BUILD_DIR)


@pytest.fixture(scope="session")
def opt_dirs(bundles: dict[str, Bundle], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """handler module → its /opt/python for the local Python (one per distinct layer list)."""
    by_layers: dict[tuple[Path, ...], Path] = {}
    out: dict[str, Path] = {}
    for module, bundle in bundles.items():
        key = tuple(bundle.layers)
        if key not in by_layers:
            by_layers[key] = local_opt(bundle.layers, tmp_path_factory.mktemp("opt"))
        out[module] = by_layers[key]
    return out


@pytest.fixture(scope="session")
def aws(moto_endpoint: str, cloud_assembly: tuple[Path, str]) -> dict[str, Any]:
    """The stack's table (key schema from the template), cold bucket, DLQ and parking queue, in moto."""
    outdir, stack = cloud_assembly
    template = json.loads((outdir / f"{stack}.template.json").read_text())
    (table_props,) = [
        r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::DynamoDB::Table"
    ]
    kw = {
        "endpoint_url": moto_endpoint,
        "region_name": REGION,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    dynamodb, s3, sqs = (boto3.client(s, **kw) for s in ("dynamodb", "s3", "sqs"))
    dynamodb.create_table(
        TableName="tradepulse-ship-hot",
        KeySchema=table_props["KeySchema"],
        AttributeDefinitions=table_props["AttributeDefinitions"],
        BillingMode="PAY_PER_REQUEST",
    )
    s3.create_bucket(Bucket="tradepulse-ship-cold")
    return {
        "dynamodb": dynamodb,
        "s3": s3,
        "sqs": sqs,
        "table": "tradepulse-ship-hot",
        "bucket": "tradepulse-ship-cold",
        "dlq_url": sqs.create_queue(QueueName="tradepulse-ship-dlq")["QueueUrl"],
        "parking_url": sqs.create_queue(QueueName="tradepulse-ship-parking")["QueueUrl"],
        "endpoint": moto_endpoint,
    }


def lambda_env(bundle: Bundle, aws: dict[str, Any], workdir: Path) -> dict[str, str]:
    """The function's environment from the template (CloudFormation references resolved to the moto
    resources), plus what the Lambda runtime sets. Nothing of this process's environment leaks in."""
    resolved = {
        "TRADEPULSE_DYNAMODB_TABLE": aws["table"],
        "TRADEPULSE_S3_BUCKET": aws["bucket"],
        "TRADEPULSE_SQS_DLQ_URL": aws["dlq_url"],
        "TRADEPULSE_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed_port()}",  # MSK is not reachable here
    }
    env: dict[str, str] = {}
    for name, value in bundle.environment.items():
        if isinstance(value, str):
            env[name] = value
        else:
            assert name in resolved, f"{bundle.handler}: no test value for {name} = {value}"
            env[name] = resolved[name]
    return env | {
        "TRADEPULSE_DATA_DIR": str(workdir / "tmp"),  # /tmp in Lambda
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_ENDPOINT_URL": aws["endpoint"],
        "LAMBDA_TASK_ROOT": str(bundle.code),
        "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon here
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "PATH": "/usr/bin:/bin",
    }


def run(
    bundle: Bundle,
    opt: Path,
    runtime: Path,
    aws: dict[str, Any],
    event: dict[str, Any],
    workdir: Path,
    **kw: Any,
) -> dict[str, Any]:
    """Invoke the handler in the clean interpreter (Lambda's sys.path order: code, /opt/python, runtime);
    checks that every module it loaded came from those folders and that no analytics module did."""
    workdir.mkdir(parents=True, exist_ok=True)
    if bundle.tracing == "Active":  # Powertools' Tracer loads the X-Ray SDK in Lambda (no daemon here)
        kw.setdefault("also_import", ("aws_xray_sdk.core",))
    out = invoke_clean(
        name=bundle.module.split(".")[0],
        module=bundle.module,
        path=[bundle.code, opt, runtime],
        event=event,
        env=lambda_env(bundle, aws, workdir),
        workdir=workdir,
        **kw,
    )
    assert "error" not in out, (
        f"{bundle.handler} failed in its bundle:\n{out['traceback']}\n{out['stderr'][-2000:]}"
    )
    roots = (str(bundle.code), str(opt), str(runtime))
    strays = {name: file for name, file in out["modules"].items() if not file.startswith(roots)}
    assert not strays, f"loaded from outside the bundle: {strays}"
    heavy = sorted({name.split(".")[0] for name in out["modules"]} & set(NEVER_IN_A_LAMBDA))
    assert not heavy, f"{bundle.handler} loads {heavy}: keep them off the Lambda import paths"
    return out


def test_every_python_function_is_checked(bundles: dict[str, Bundle]) -> None:
    assert sorted(bundles) == sorted(HANDLERS)
    assert {b.runtime for b in bundles.values()} == {f"python{layer_build().PYTHON_VERSION}"}


@pytest.mark.parametrize("module", HANDLERS)
def test_bundle_is_under_the_unzipped_limit(bundles: dict[str, Bundle], module: str) -> None:
    bundle = bundles[module]
    size = bundle.unzipped_bytes()
    BUNDLE_SIZES[bundle.module.split(".")[0]] = (size, [p.name[6:18] for p in bundle.layers])
    assert size < LAMBDA_UNZIPPED_LIMIT, f"{bundle.handler}: {size / 2**20:.1f} MiB unzipped (limit 250 MiB)"
    for layer in bundle.layers:
        names = {p.name for p in (layer / "python").iterdir()}
        assert not names & {"boto3", "botocore", "numpy", "pandas"}, f"{layer}: {names}"
        assert not list((layer / "python").rglob("__pycache__")), f"{layer} ships bytecode caches"


def http_event(path: str) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) request, as the stack's HttpLambdaIntegration sends it."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": "api.example.com", "user-agent": "ship-check"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "api.example.com",
            "domainPrefix": "api",
            "http": {
                "method": "GET",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.1",
                "userAgent": "ship-check",
            },
            "requestId": "ship-check",
            "routeKey": "$default",
            "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000",
            "timeEpoch": 1767225600000,
        },
        "isBase64Encoded": False,
    }


def test_api_serves_health_from_its_bundle(
    bundles: dict[str, Bundle],
    opt_dirs: dict[str, Path],
    runtime_dir: Path,
    aws: dict[str, Any],
    tmp_path: Path,
) -> None:
    """GET /health through Mangum: reads the processor's heartbeat from DynamoDB (written by the real
    store under an ECS task's hostname), the DLQ depth from SQS, and probes the (unreachable) broker with
    the MSK IAM signer: 503 because the broker is down, with the runner seen as ok."""
    from tradepulse.stores.dynamo_hot import DynamoHotStore

    store = DynamoHotStore(aws["table"], client=aws["dynamodb"])
    now = time.time()
    store.put_runner_status({"updated_at": now, "last_commit_at": now, "consumer_lag": 0}, ECS_HOSTNAME)
    bundle = bundles["api.handler"]
    out = run(bundle, opt_dirs["api.handler"], runtime_dir, aws, http_event("/health"), tmp_path)
    response = out["result"]
    body = json.loads(response["body"])
    assert response["statusCode"] == 503, body
    assert body["components"]["broker"]["status"] == "down"
    assert body["components"]["runner"]["status"] == "ok", body["components"]["runner"]
    assert body["components"]["dlq"]["metrics"]["dlq_depth"] == 0
    assert "aws_msk_iam_sasl_signer" in {name.split(".")[0] for name in out["modules"]}


def _sqs_letters() -> Any:
    spec = importlib.util.spec_from_file_location(
        "ship_sqs_letters", Path(__file__).parents[2] / "lambdas" / "sqs_letters.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _put_letter(aws: dict[str, Any], queue_url: str, retry_count: int, ticker: str) -> dict[str, Any]:
    from tradepulse.stores.dlq import make_dead_letter
    from tradepulse.stores.dlq_queues import SqsDeadLetterQueue

    letter = make_dead_letter(
        stage="sink:hot", payload=ticker.encode() + b"\xff\x00binary", error_type="ThrottlingError", reason="throttled",
        source_topic="market.features", ticker=ticker, now_s=1_767_000_000,
    )  # fmt: skip
    letter["retry_count"] = retry_count
    SqsDeadLetterQueue(queue_url, client=aws["sqs"]).put([letter])
    return letter


def _archived_keys(aws: dict[str, Any]) -> list[str]:
    listing = aws["s3"].list_objects_v2(Bucket=aws["bucket"], Prefix="tradepulse/dead-letter-archive/")
    return [o["Key"] for o in listing.get("Contents", [])]


def test_archival_writes_parquet_from_its_bundle(
    bundles: dict[str, Bundle],
    opt_dirs: dict[str, Path],
    runtime_dir: Path,
    aws: dict[str, Any],
    tmp_path: Path,
) -> None:
    before = set(_archived_keys(aws))
    _put_letter(aws, aws["parking_url"], 5, "ARCH")
    messages = aws["sqs"].receive_message(
        QueueUrl=aws["parking_url"],
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        AttributeNames=["All"],
    )["Messages"]
    arn = f"arn:aws:sqs:{REGION}:123456789012:tradepulse-ship-parking"
    event = {"Records": [_sqs_letters().to_record(m, arn, REGION) for m in messages]}
    out = run(bundles["archival.handler"], opt_dirs["archival.handler"], runtime_dir, aws, event, tmp_path)
    assert out["result"] == {"batchItemFailures": []}
    assert len(set(_archived_keys(aws)) - before) == 1
    assert "pyarrow" in {name.split(".")[0] for name in out["modules"]}


def test_dlq_redrive_runs_from_its_bundle(
    bundles: dict[str, Bundle],
    opt_dirs: dict[str, Path],
    runtime_dir: Path,
    aws: dict[str, Any],
    tmp_path: Path,
) -> None:
    """A scheduled run: a letter that used its redrives is archived (S3); the Kafka producer (MSK IAM)
    is created from the bundle's confluent-kafka."""
    before = set(_archived_keys(aws))
    _put_letter(aws, aws["dlq_url"], 5, "REDRV")
    out = run(bundles["dlq_redrive.handler"], opt_dirs["dlq_redrive.handler"], runtime_dir, aws, {}, tmp_path)
    assert out["result"]["archived"] == 1, out["result"]
    assert len(set(_archived_keys(aws)) - before) == 1
    assert "confluent_kafka" in {name.split(".")[0] for name in out["modules"]}


def test_topics_custom_resource_answers_cloudformation_from_its_bundle(
    bundles: dict[str, Bundle],
    opt_dirs: dict[str, Path],
    runtime_dir: Path,
    aws: dict[str, Any],
    tmp_path: Path,
) -> None:
    """A Delete request (no broker needed): the handler answers CloudFormation's pre-signed URL."""
    import http.server
    import threading

    answers: list[dict[str, Any]] = []

    class ResponseUrl(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            answers.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), ResponseUrl)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        event = {
            "RequestType": "Delete",
            "ResponseURL": f"http://127.0.0.1:{server.server_address[1]}/response",
            "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/TradePulse-dev/1",
            "RequestId": "req-1",
            "LogicalResourceId": "StreamingTopics",
            "PhysicalResourceId": "arn:aws:kafka:us-east-1:123456789012:cluster/tp/1/topics",
            "ResourceType": "Custom::KafkaTopics",
            "ResourceProperties": {
                "ClusterArn": "arn:aws:kafka:us-east-1:123456789012:cluster/tp/1",
                "Topics": [],
            },
        }
        run(bundles["topics.handler"], opt_dirs["topics.handler"], runtime_dir, aws, event, tmp_path)
    finally:
        server.shutdown()
    assert [a["Status"] for a in answers] == ["SUCCESS"]


def test_the_check_sees_nothing_but_the_bundle(
    bundles: dict[str, Bundle], runtime_dir: Path, aws: dict[str, Any], tmp_path: Path
) -> None:
    """Guard of the guard: the API's code asset without its layer cannot even import (so a passing
    check above means the layers, not the development venv, supplied the dependencies)."""
    bundle = bundles["api.handler"]
    out = invoke_clean(
        name="api-no-layers",
        module=bundle.module,
        path=[bundle.code, runtime_dir],
        event={},
        env=lambda_env(bundle, aws, tmp_path),
        workdir=tmp_path,
    )
    assert "ModuleNotFoundError" in out.get("error", ""), out
