"""MSK IAM authorization simulated with the real broker: the synthesized template's kafka-cluster grants
become SCRAM principals and Kafka ACLs (`tradepulse.bus.msk_acl`) on a local broker that runs the
StandardAuthorizer with `allow.everyone.if.no.acl.found=false`.

This module resolves the template's IAM policies (CloudFormation intrinsics included), provisions the
principals and runs each service's real code path under its own principal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from pydantic import SecretStr

from tests.cdk.conftest import REPO_ROOT, resources
from tradepulse.bus import msk_acl
from tradepulse.bus.local_kafka import SCRAM_MECHANISM, LocalKafka, SecureListener
from tradepulse.config import Settings
from tradepulse.topics import ALL_TOPICS, QUOTES, TRADES

ACCOUNT, REGION, PARTITION = "123456789012", "us-east-1", "aws"
CLUSTER_UUID = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d-s1"
#: Task/function role (logical id contains) → principal name of the service that runs as it.
SERVICE_ROLES = {
    "topics": "StreamingTopicsFnServiceRole",
    "ingest": "IngestTaskTaskRole",
    "news": "NewsTaskTaskRole",
    "processor": "ProcessorTaskTaskRole",
}


# --- the template -----------------------------------------------------------------------------------


def cluster_arn(template: dict[str, Any]) -> tuple[str, str]:
    """(logical id, the ARN it stands for here) of the template's MSK Serverless cluster."""
    (lid,) = resources(template, "AWS::MSK::ServerlessCluster")
    name = template["Resources"][lid]["Properties"]["ClusterName"]
    return lid, f"arn:{PARTITION}:kafka:{REGION}:{ACCOUNT}:cluster/{name}/{CLUSTER_UUID}"


def resolve(value: Any, template: dict[str, Any]) -> Any:
    """Evaluate the intrinsics IAM resources use (Ref, Fn::GetAtt of the cluster, Join/Select/Split)."""
    lid, arn = cluster_arn(template)
    refs = {"AWS::Partition": PARTITION, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, lid: arn}

    def ev(v: Any) -> Any:
        if isinstance(v, list):
            return [ev(x) for x in v]
        if not isinstance(v, dict):
            return v
        if len(v) != 1 or not next(iter(v)).startswith(("Ref", "Fn::")):
            return {k: ev(x) for k, x in v.items()}
        ((fn, arg),) = v.items()
        if fn == "Ref":
            return refs.get(arg, f"<{arg}>")
        if fn == "Fn::GetAtt":
            if arg[0] == lid and arg[1] == "Arn":
                return arn
            return f"<{arg[0]}.{arg[1]}>"  # another resource's ARN: never a Kafka resource
        if fn == "Fn::Join":
            return arg[0].join(str(ev(x)) for x in arg[1])
        if fn == "Fn::Select":
            return ev(arg[1])[int(arg[0])]
        if fn == "Fn::Split":
            return str(ev(arg[1])).split(arg[0])
        raise ValueError(f"unsupported intrinsic {fn}")

    return ev(value)


def role_statements(template: dict[str, Any], role_contains: str) -> list[dict[str, Any]]:
    (role_id,) = [lid for lid in resources(template, "AWS::IAM::Role") if role_contains in lid]
    out = []
    for policy in resources(template, "AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            out += policy["Properties"]["PolicyDocument"]["Statement"]

    def actions(statement: dict[str, Any]) -> list[Any]:
        return statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]

    kafka = [s for s in out if any(str(a).startswith("kafka-cluster:") for a in actions(s))]
    return [resolve(s, template) for s in kafka]


def kafka_roles(template: dict[str, Any]) -> dict[str, str]:
    """Every role with kafka-cluster grants → a principal name (the services' own names where known)."""
    known = {role: name for name, role in SERVICE_ROLES.items()}
    out = {}
    for role_id in resources(template, "AWS::IAM::Role"):
        if msk_acl.statement_grants(role_statements(template, role_id)):
            name = next((n for r, n in known.items() if r in role_id), None)
            out[role_id] = name or role_id.split("ServiceRole")[0].split("TaskRole")[0].lower()
    return out


def service_grants(template: dict[str, Any]) -> dict[str, list[msk_acl.IamGrant]]:
    """principal → its kafka-cluster grants, for every role that has some."""
    return {
        name: msk_acl.statement_grants(role_statements(template, role_id))
        for role_id, name in kafka_roles(template).items()
    }


def acl_matrix(acls: dict[str, msk_acl.PrincipalAcls]) -> str:
    """principal × resource × operations, one line per resource (DENY lines emulate MSK's strictness)."""
    lines = []
    for name, p in sorted(acls.items()):
        lines.append(f"{name}: {'Connect' if p.connect else 'no Connect'}")
        by_resource: dict[tuple[str, str, str, str], list[str]] = {}
        for acl in p.acls:
            key = (acl.resource_type, acl.pattern_type, acl.name, acl.permission)
            by_resource.setdefault(key, []).append(acl.operation)
        for (rtype, ptype, rname, perm), ops in sorted(by_resource.items()):
            shown = f"{rname}*" if ptype == "PREFIXED" else rname
            lines.append(f"  {perm:5} {rtype.lower():16} {shown:32} {','.join(sorted(ops))}")
    return "\n".join(lines)


# --- the broker ---------------------------------------------------------------------------------------


@dataclass
class AuthzBroker:
    """The authorizing broker, its super-user admin client and the principals' passwords."""

    kafka: LocalKafka
    bootstrap: str
    data_dir: Path
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def admin(self) -> AdminClient:
        return AdminClient(self.kafka.admin_config(self.bootstrap))

    @property
    def security_log(self) -> Path:
        return self.kafka.home / "security.log"

    def security_log_size(self) -> int:
        return self.security_log.stat().st_size if self.security_log.exists() else 0

    def security_log_since(self, offset: int) -> str:
        with open(self.security_log, errors="replace") as f:
            f.seek(offset)
            return f.read()

    def settings(self, principal: str, **update: Any) -> Settings:
        """What a service running as `principal` is configured with (SCRAM over SASL_PLAINTEXT)."""
        values: dict[str, Any] = {
            "kafka_bootstrap": self.bootstrap,
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": SCRAM_MECHANISM,
            "kafka_sasl_username": principal,
            "kafka_sasl_password": SecretStr(self.passwords.setdefault(principal, f"{principal}-pw")),
            "data_dir": self.data_dir / principal,
        }
        return Settings(**(values | update))

    def apply(self, acls: msk_acl.PrincipalAcls) -> None:
        """Make the broker hold exactly `acls` for the principal (credentials only with Connect)."""
        admin, user = self.admin, acls.principal
        password = self.passwords.setdefault(user, f"{user}-pw")
        if acls.connect:
            info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
            change: Any = UserScramCredentialUpsertion(user, info, password.encode())
        else:
            change = UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512)
        with contextlib.suppress(Exception):  # deleting a credential that is not there
            for future in admin.alter_user_scram_credentials([change]).values():
                future.result()
        everything = AclBindingFilter(
            ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{user}", None,
            AclOperation.ANY, AclPermissionType.ANY,
        )  # fmt: skip
        for future in admin.delete_acls([everything]).values():
            future.result()
        if acls.acls:
            for future in admin.create_acls(msk_acl.acl_bindings(acls.acls)).values():
                future.result()
        # ACLs and credentials reach the broker's authorizer through the metadata log: wait for them.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            bound = admin.describe_acls(everything).result()
            if len(bound) == len(acls.acls):
                return
            time.sleep(0.05)
        raise TimeoutError(f"ACLs of {user} not applied")


def start_broker(data_dir: Path, libs_root: Path) -> tuple[AuthzBroker, Callable[[], None]]:
    kafka = LocalKafka(data_dir, heap="512m", libs_root=libs_root, secure=SecureListener())
    info = kafka.start(quiet=True)
    return AuthzBroker(kafka, info.bootstrap, data_dir / "state"), kafka.stop


def reset_topics(broker: AuthzBroker, names: tuple[str, ...] = ALL_TOPICS) -> None:
    """Delete the project topics (as the super user) so the custom resource creates them anew."""
    admin = broker.admin
    present = [t for t in admin.list_topics(timeout=10).topics if t in names]
    if present:
        for future in admin.delete_topics(present, operation_timeout=30).values():
            future.result()
    deadline = time.monotonic() + 30
    while any(t in admin.list_topics(timeout=10).topics for t in names):
        if time.monotonic() > deadline:
            raise TimeoutError("topics not deleted")
        time.sleep(0.1)


def produce_as_admin(broker: AuthzBroker, records: list[tuple[str, str, dict[str, Any]]]) -> None:
    producer = Producer(broker.kafka.admin_config(broker.bootstrap))
    for topic, key, value in records:
        producer.produce(topic, key=key.encode(), value=orjson.dumps(value))
    assert producer.flush(30) == 0


# --- service paths --------------------------------------------------------------------------------------


class PathFailed(AssertionError):
    """A service path did not do its job; the message has its exception and warnings."""


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """WARNING+ log lines of the application while a path runs (they name Kafka errors)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    handler = Collect(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lines
    finally:
        root.removeHandler(handler)


def lambdas_on_path() -> None:
    path = str(REPO_ROOT / "lambdas")
    if path not in sys.path:
        sys.path.insert(0, path)


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise PathFailed(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def ensure_topics_as_admin(broker: AuthzBroker, partitions: int = 2) -> None:
    """The topics exist (as the custom resource would have made them) before a service path runs."""
    from tradepulse.bus.admin import ensure_topics
    from tradepulse.topics import topic_specs

    admin_settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=SCRAM_MECHANISM,
        kafka_sasl_username=broker.kafka.secure.admin_user,  # type: ignore[union-attr]
        kafka_sasl_password=SecretStr(broker.kafka.secure.admin_password),  # type: ignore[union-attr]
    )
    ensure_topics(admin_settings, topic_specs(partitions, 3_600_000))


def topics_path(broker: AuthzBroker, properties: dict[str, Any]) -> None:
    """The custom resource's Create on an empty cluster, then an Update that adds a partition to every
    topic and changes the retention: `topics.handler.handle` with the function's principal."""
    lambdas_on_path()
    import topics.handler as handler

    reset_topics(broker)
    answers: list[dict[str, Any]] = []

    def respond(
        event: Any, context: Any, status: str, physical_id: str, data: Any = None, reason: Any = None
    ) -> None:
        answers.append({"Status": status, "Reason": reason, "Data": data or {}})

    def event(kind: str, props: dict[str, Any]) -> dict[str, Any]:
        return {
            "RequestType": kind, "ResponseURL": "http://unused", "StackId": "stack", "RequestId": kind,
            "LogicalResourceId": "StreamingTopics", "ResourceProperties": props,
            "PhysicalResourceId": f"{props['ClusterArn']}/topics",
        }  # fmt: skip

    def small(partitions: int, retention_ms: int) -> dict[str, Any]:
        topics = [
            t | {"Partitions": str(partitions), "RetentionMs": str(retention_ms)}
            for t in properties["Topics"]
        ]
        return properties | {"Topics": topics}

    original, handler.send_response = handler.send_response, respond
    try:
        for kind, props in (("Create", small(2, 3_600_000)), ("Update", small(3, 7_200_000))):
            handler.handle(
                event(kind, props),
                None,
                lookup_bootstrap=lambda _arn: broker.bootstrap,
                client_settings=lambda _bootstrap: broker.settings("topics"),
            )
            if answers[-1]["Status"] != "SUCCESS":
                raise PathFailed(f"custom resource {kind}: {answers[-1]['Reason']}")
    finally:
        handler.send_response = original
    metadata = broker.admin.list_topics(timeout=10).topics
    names = [t["Name"] for t in properties["Topics"]]
    assert all(len(metadata[n].partitions) == 3 for n in names), "partitions not raised"


SIM_KEY = "authz-sim-key"
SIM_TICKERS = ["AAPL", "MSFT"]


def ingest_path(broker: AuthzBroker) -> None:
    """`tradepulse ingest`'s steps against the simulator: the topic check, then the service, whose start
    reads the tail of trades/quotes (the dedupe seed), publishing until 100 events are acknowledged."""
    from tests.stores.conftest import make_trade
    from tradepulse.bus.admin import require_topics
    from tradepulse.sources.ingest import IngestService, client_from_settings
    from tradepulse.sources.simulator import SimulatorConfig, run_simulator_in_thread
    from tradepulse.stores.factory import open_dlq
    from tradepulse.topics import INGEST_TOPICS

    ensure_topics_as_admin(broker)
    now = int(time.time() * 1000)
    # A record already in Kafka: the seed must read it (a ticker the feed does not send).
    produce_as_admin(
        broker, [(TRADES, "ZZZZ", make_trade("ZZZZ", 1, now)), (QUOTES, "ZZZZ", {"sequence": 1})]
    )
    settings = broker.settings("ingest", tickers=SIM_TICKERS, ingest_backfill_max_s=0.0)
    seed_log: list[str] = []

    class Seed(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seed_log.append(record.getMessage())

    ingest_log = logging.getLogger("tradepulse.sources.ingest")
    handler, level = Seed(logging.INFO), ingest_log.level
    ingest_log.addHandler(handler)
    ingest_log.setLevel(logging.INFO)
    config = SimulatorConfig(seed=3, tickers=SIM_TICKERS, api_key=SIM_KEY, ws_port=0, http_port=0, rate=500)
    try:
        with captured_warnings() as warnings, run_simulator_in_thread(config) as sim:
            require_topics(settings, INGEST_TOPICS)
            dlq = open_dlq(settings)
            service = IngestService(
                settings, dlq=dlq, client=client_from_settings(settings, sim.ws_url + "/stocks", SIM_KEY)
            )

            async def scenario() -> None:
                task = asyncio.create_task(service.run())
                try:
                    await until(
                        lambda: service.metrics.published >= 100 or service.metrics.failed > 0 or task.done(),
                        20,
                        "100 published",
                    )
                finally:
                    await service.stop()
                    await asyncio.wait_for(task, 30)

            try:
                asyncio.run(scenario())
            finally:
                dlq.close()
            m = service.metrics
            if m.failed or m.published < 100:
                raise PathFailed(f"ingest published {m.published}, failed {m.failed}: {warnings[:3]}")
    finally:
        ingest_log.removeHandler(handler)
        ingest_log.setLevel(level)
    if not any("already in Kafka" in line for line in seed_log):
        raise PathFailed(f"the dedupe seed read nothing: {seed_log}")


def news_path(broker: AuthzBroker) -> None:
    """`tradepulse news --once`'s steps against the simulator's Finnhub-compatible endpoint."""
    from tradepulse.bus.admin import require_topics
    from tradepulse.sources.news import NewsPoller
    from tradepulse.sources.simulator import SimulatorConfig, run_simulator_in_thread
    from tradepulse.stores.factory import open_dlq
    from tradepulse.topics import NEWS_TOPICS

    ensure_topics_as_admin(broker)
    # A fresh state dir per run: the poller remembers what it published and would publish nothing again.
    settings = broker.settings(
        "news",
        tickers=SIM_TICKERS,
        finnhub_calls_per_minute=60_000,
        data_dir=broker.data_dir / f"news-{uuid.uuid4().hex[:8]}",
    )
    config = SimulatorConfig(
        seed=5, tickers=SIM_TICKERS, api_key=SIM_KEY, ws_port=0, http_port=0, rate=10, backfill_news=6
    )
    with captured_warnings() as warnings, run_simulator_in_thread(config) as sim:
        require_topics(settings, NEWS_TOPICS)
        dlq = open_dlq(settings)
        poller = NewsPoller(settings, dlq=dlq, base_url=sim.news_base_url, token=SIM_KEY, max_retries=0)

        async def once() -> int:
            try:
                return await poller.poll_once()
            finally:
                poller.close()

        try:
            published = asyncio.run(once())
        finally:
            dlq.close()
    if poller.metrics.failed or published == 0:
        raise PathFailed(f"news published {published}, failed {poller.metrics.failed}: {warnings[:3]}")


def processor_path(broker: AuthzBroker, events: int = 60) -> None:
    """`tradepulse process`'s steps: the topic check, then the runner (transactional producer, consumer
    group, offsets sent to the transaction) until it has committed `events` new trades (one invalid
    record among them goes to market.dead-letters)."""
    from tests.stores.conftest import make_trade
    from tradepulse.bus.admin import require_topics
    from tradepulse.bus.pipeline import build_runner
    from tradepulse.topics import PROCESSOR_TOPICS

    ensure_topics_as_admin(broker)
    settings = broker.settings("processor")
    now = int(time.time() * 1000)
    seq0 = now % 1_000_000_000
    records = [
        (TRADES, "AAPL", make_trade("AAPL", seq0 + i, now - 10_000 + i * 100)) for i in range(events - 1)
    ]
    produce_as_admin(broker, [*records, (TRADES, "AAPL", {"ticker": "AAPL", "not": "a trade"})])
    with captured_warnings() as warnings:
        require_topics(settings, PROCESSOR_TOPICS)
        runner = build_runner(settings, instance="authz")
        deadline = time.monotonic() + 25
        metrics = runner.run(
            stop_when=lambda m: m.events_processed + m.dead_letters >= events or time.monotonic() > deadline
        )
    if metrics.events_processed + metrics.dead_letters < events:
        raise PathFailed(
            f"processor committed {metrics.events_processed} events (+{metrics.dead_letters} dead letters) of {events}: {warnings[:3]}"
        )


def run_path(broker: AuthzBroker, principal: str, path: Callable[[], None]) -> None:
    """Run a service path; it fails if it raises or if the broker denied its principal anything (a
    denial the client shrugs off - e.g. a coordinator lookup - is still a request MSK would refuse)."""
    offset = broker.security_log_size()
    path()
    time.sleep(0.2)  # the broker's log appender writes each line as it comes; let the last one land
    denied = [
        line
        for line in broker.security_log_since(offset).splitlines()
        if f"User:{principal} is Denied" in line
    ]
    if denied:
        raise PathFailed(f"the broker denied {principal}: {denied[:3]}")


SERVICE_PATHS: dict[str, Callable[..., None]] = {
    "ingest": ingest_path,
    "news": news_path,
    "processor": processor_path,
}
