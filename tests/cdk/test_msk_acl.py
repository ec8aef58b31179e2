"""MSK IAM authorization, simulated with the real broker.

The kafka-cluster grants of the synthesized prod template become one SCRAM principal per service and
Kafka ACLs (`tradepulse.bus.msk_acl`, the MSK guide's action → operation table) on a local broker running
the StandardAuthorizer with `allow.everyone.if.no.acl.found=false`. Each service's real code path then
runs under its own principal: the topics custom resource (Create, then an Update that adds partitions
and changes retention), ingest (against the simulator, dedupe seed included), news (against the
simulator's news endpoint) and the processor (transactional producer, consumer group,
send_offsets_to_transaction). Removing any one grant from the template makes its service's path fail,
with the broker logging the denial (or the failed authentication, for Connect).
"""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdk import msk_authz
from tests.cdk.conftest import one
from tests.conftest import JAR_CACHE
from tradepulse.bus import msk_acl

pytestmark = pytest.mark.kafka

#: Every (service, kafka-cluster action) the template grants; `test_removal_cases_are_every_grant`
#: keeps this list equal to the template's.
GRANTS = [
    ("topics", "kafka-cluster:Connect"),
    ("topics", "kafka-cluster:CreateTopic"),
    ("topics", "kafka-cluster:DescribeTopic"),
    ("topics", "kafka-cluster:AlterTopic"),
    ("topics", "kafka-cluster:DescribeTopicDynamicConfiguration"),
    ("topics", "kafka-cluster:AlterTopicDynamicConfiguration"),
    ("ingest", "kafka-cluster:Connect"),
    ("ingest", "kafka-cluster:WriteDataIdempotently"),
    ("ingest", "kafka-cluster:DescribeTopic"),
    ("ingest", "kafka-cluster:WriteData"),
    ("ingest", "kafka-cluster:ReadData"),
    ("ingest", "kafka-cluster:DescribeGroup"),
    ("news", "kafka-cluster:Connect"),
    ("news", "kafka-cluster:WriteDataIdempotently"),
    ("news", "kafka-cluster:DescribeTopic"),
    ("news", "kafka-cluster:WriteData"),
    ("processor", "kafka-cluster:Connect"),
    ("processor", "kafka-cluster:WriteDataIdempotently"),
    ("processor", "kafka-cluster:DescribeTopic"),
    ("processor", "kafka-cluster:WriteData"),
    ("processor", "kafka-cluster:ReadData"),
    ("processor", "kafka-cluster:DescribeGroup"),
    ("processor", "kafka-cluster:AlterGroup"),
    ("processor", "kafka-cluster:DescribeTransactionalId"),
    ("processor", "kafka-cluster:AlterTransactionalId"),
]
#: Grants whose removal the Apache Kafka authorizer cannot show (see tradepulse/bus/msk_acl.py): an
#: idempotent producer's IDEMPOTENT_WRITE is implied by WRITE on any topic there (KIP-679), not on MSK.
#: Their removal is checked against the code's producer configuration instead.
NOT_ON_APACHE_KAFKA = {"kafka-cluster:WriteDataIdempotently"}


@pytest.fixture(scope="module")
def template(prod_synth: tuple[dict[str, Any], Path]) -> dict[str, Any]:
    return prod_synth[0]


@pytest.fixture(scope="module")
def cluster(template: dict[str, Any]) -> str:
    return msk_authz.cluster_arn(template)[1]


@pytest.fixture(scope="module")
def grants(template: dict[str, Any]) -> dict[str, list[msk_acl.IamGrant]]:
    return msk_authz.service_grants(template)


@pytest.fixture(scope="module")
def generated(grants: dict[str, list[msk_acl.IamGrant]], cluster: str) -> dict[str, msk_acl.PrincipalAcls]:
    return {name: msk_acl.principal_acls(name, g, cluster) for name, g in grants.items()}


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, generated: dict[str, msk_acl.PrincipalAcls]
) -> Iterator[msk_authz.AuthzBroker]:
    """The authorizing broker with every service principal and its generated ACLs."""
    broker, stop = msk_authz.start_broker(tmp_path_factory.mktemp("kafka-authz"), JAR_CACHE)
    try:
        for name in msk_authz.SERVICE_ROLES:
            broker.apply(generated[name])
        yield broker
    finally:
        gc.collect()  # clients of the paths (held by failed runs' tracebacks) stop retrying a dead broker
        stop()


def test_acl_matrix_is_generated_from_the_template(
    generated: dict[str, msk_acl.PrincipalAcls], capsys: pytest.CaptureFixture[str]
) -> None:
    matrix = msk_authz.acl_matrix(generated)
    with capsys.disabled():
        print(f"\nACLs generated from the template's kafka-cluster grants:\n{matrix}")

    def ops(principal: str, resource_type: str, name: str, permission: str = "ALLOW") -> set[str]:
        return {
            a.operation
            for a in generated[principal].acls
            if (a.resource_type, a.name, a.permission) == (resource_type, name, permission)
        }

    assert all(generated[name].connect for name in msk_authz.SERVICE_ROLES)
    assert ops("ingest", "TOPIC", "market.trades") == {"DESCRIBE", "WRITE", "READ"}
    assert ops("ingest", "TOPIC", "market.features") == set()
    assert ops("ingest", "GROUP", "tradepulse-ingest-seed") == {"DESCRIBE"}  # assign() only: no READ
    assert ops("processor", "GROUP", "tradepulse-processor") == {"DESCRIBE", "READ"}
    assert ops("processor", "GROUP", "tradepulse-processor-rebuild") == {"DESCRIBE"}
    assert ops("processor", "TOPIC", "market.trades") == {"DESCRIBE", "READ"}
    # Written, and read back for the cold archive (tradepulse/bus/runner.py).
    assert ops("processor", "TOPIC", "market.features") == {"DESCRIBE", "WRITE", "READ"}
    assert {
        (a.pattern_type, a.name) for a in generated["processor"].acls if a.resource_type == "TRANSACTIONAL_ID"
    } == {("PREFIXED", "tradepulse-")}
    assert ops("topics", "TOPIC", "market.news") == {
        "CREATE", "DESCRIBE", "ALTER", "DESCRIBE_CONFIGS", "ALTER_CONFIGS"
    }  # fmt: skip
    assert not any(
        a.operation == "CREATE" for n in ("ingest", "news", "processor") for a in generated[n].acls
    )


def test_every_grant_has_the_actions_msk_requires_with_it(
    grants: dict[str, list[msk_acl.IamGrant]], cluster: str
) -> None:
    assert {name: msk_acl.missing_required(g, cluster) for name, g in grants.items()} == {
        name: [] for name in grants
    }


def test_removal_cases_are_every_grant(grants: dict[str, list[msk_acl.IamGrant]]) -> None:
    granted = {
        (name, action)
        for name in msk_authz.SERVICE_ROLES
        for g in grants[name]
        for action in msk_acl.expand_action(g.action)
    }
    assert granted == set(GRANTS)


def test_topics_custom_resource_creates_and_updates_under_its_grants(
    broker: msk_authz.AuthzBroker, template: dict[str, Any]
) -> None:
    properties = one(template, "Custom::KafkaTopics")["Properties"] | {"ClusterArn": "arn"}
    msk_authz.run_path(broker, "topics", lambda: msk_authz.topics_path(broker, properties))


@pytest.mark.parametrize("service", ["ingest", "news", "processor"])
def test_service_runs_under_its_grants(broker: msk_authz.AuthzBroker, service: str) -> None:
    msk_authz.run_path(broker, service, lambda: msk_authz.SERVICE_PATHS[service](broker))


def test_a_service_names_a_topic_it_cannot_see(
    broker: msk_authz.AuthzBroker, generated: dict[str, msk_acl.PrincipalAcls]
) -> None:
    """Ingest checks its topics instead of creating what it cannot see: a topic it has no DESCRIBE on is
    named in the error (before: ensure_topics asked for CreateTopic and died on the authorizer)."""
    from tradepulse.bus.admin import MissingTopicsError, require_topics

    msk_authz.ensure_topics_as_admin(broker)
    with pytest.raises(MissingTopicsError, match=r"market\.features not visible to this principal"):
        require_topics(broker.settings("ingest"), ["market.trades", "market.features"])
    msk_authz.reset_topics(broker, ("market.quotes",))
    try:
        with pytest.raises(MissingTopicsError, match=r"missing topic\(s\) market\.quotes\."):
            require_topics(broker.settings("ingest"), ["market.trades", "market.quotes"])
    finally:
        msk_authz.ensure_topics_as_admin(broker)


@pytest.mark.parametrize(("service", "action"), GRANTS, ids=[f"{s}-{a.split(':')[1]}" for s, a in GRANTS])
def test_removing_a_grant_breaks_its_service(
    broker: msk_authz.AuthzBroker,
    grants: dict[str, list[msk_acl.IamGrant]],
    generated: dict[str, msk_acl.PrincipalAcls],
    cluster: str,
    template: dict[str, Any],
    service: str,
    action: str,
) -> None:
    remaining = [
        msk_acl.IamGrant(a, g.resource)
        for g in grants[service]
        for a in msk_acl.expand_action(g.action)
        if a != action
    ]
    if action in NOT_ON_APACHE_KAFKA:
        # MSK authorizes an idempotent producer's InitProducerId with WriteDataIdempotently; Apache Kafka
        # accepts WRITE on any topic instead (KIP-679), so the local broker cannot show this removal.
        # What makes the grant necessary is that the service's producer is idempotent:
        from tradepulse.bus.clients import producer_config

        assert producer_config(broker.settings(service))["enable.idempotence"] is True
        assert not any(g.action == action for g in remaining)
        return
    broker.apply(msk_acl.principal_acls(service, remaining, cluster))
    log_offset = broker.security_log_size()
    try:
        with pytest.raises(Exception) as failure:
            if service == "topics":
                props = one(template, "Custom::KafkaTopics")["Properties"] | {"ClusterArn": "arn"}
                msk_authz.run_path(broker, service, lambda: msk_authz.topics_path(broker, props))
            else:
                msk_authz.run_path(broker, service, lambda: msk_authz.SERVICE_PATHS[service](broker))
    finally:
        broker.apply(generated[service])
    # The path fails on the denial itself, not by waiting out a deadline (a missing ReadData kept the
    # processor's state rebuild retrying the denied fetch for 120 s, then it raised a TimeoutError).
    assert not isinstance(failure.value, TimeoutError), failure.value
    time.sleep(0.2)  # the broker's log appender flushes per line; let the last one land
    security = broker.security_log_since(log_offset)
    if action == msk_acl.CONNECT:
        assert "Failed authentication" in security, failure.value
    else:
        assert f"Principal = User:{service} is Denied" in security, failure.value


def cli_env(broker: msk_authz.AuthzBroker, principal: str, data_dir: Path) -> dict[str, str]:
    """The environment of a service container running as `principal` (SCRAM instead of IAM)."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEPULSE_", "MASSIVE_", "FINNHUB_"))}
    return keep | {
        "TRADEPULSE_KAFKA_BOOTSTRAP": broker.bootstrap,
        "TRADEPULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "TRADEPULSE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "TRADEPULSE_KAFKA_SASL_USERNAME": principal,
        "TRADEPULSE_KAFKA_SASL_PASSWORD": broker.passwords[principal],
        "TRADEPULSE_DATA_DIR": str(data_dir),
        "TRADEPULSE_TICKERS": '["AAPL", "MSFT"]',
        "TRADEPULSE_INGEST_BACKFILL_MAX_S": "0",
    }


def test_ingest_command_starts_under_its_principal_and_names_a_missing_topic(
    broker: msk_authz.AuthzBroker, tmp_path: Path
) -> None:
    """`tradepulse ingest` as the ingest principal: it publishes (before: it listed the topics, saw only
    its own, asked for CreateTopic on the others and exited), and a missing topic is named."""
    from tradepulse.sources.simulator import SimulatorConfig, run_simulator_in_thread

    msk_authz.ensure_topics_as_admin(broker)
    env = cli_env(broker, "ingest", tmp_path / "state")
    command = [sys.executable, "-m", "tradepulse.cli.main", "ingest", "--progress-s", "0.3"]
    config = SimulatorConfig(seed=9, tickers=["AAPL", "MSFT"], ws_port=0, http_port=0, rate=300)
    with run_simulator_in_thread(config) as sim:
        command += ["--url", sim.ws_url + "/stocks"]
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        published, lines = 0, []
        try:
            assert process.stderr is not None
            deadline = time.monotonic() + 30
            while published == 0 and time.monotonic() < deadline:
                line = process.stderr.readline()
                if not line:
                    break  # exited
                lines.append(line)
                if match := re.search(r" published=(\d+)", line):
                    published = int(match.group(1))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        assert published > 0, "".join(lines[-20:])

        msk_authz.reset_topics(broker, ("market.quotes",))
        try:
            result = subprocess.run(
                command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
            )
        finally:
            msk_authz.ensure_topics_as_admin(broker)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "missing topic(s) market.quotes" in result.stderr
