"""tradepulse.bus.msk_acl: IAM kafka-cluster grants → Kafka ACL bindings, as the MSK guide defines them."""

from __future__ import annotations

import pytest

from tradepulse.bus.msk_acl import (
    IamGrant,
    KafkaAcl,
    UnsupportedGrant,
    expand_action,
    missing_required,
    principal_acls,
    statement_grants,
)

CLUSTER = "arn:aws:kafka:us-east-1:123456789012:cluster/tp/uuid-1"
BASE = "arn:aws:kafka:us-east-1:123456789012"


def acls(*grants: tuple[str, str]) -> set[tuple[str, str, str, str, str]]:
    out = principal_acls("svc", [IamGrant(a, r) for a, r in grants], CLUSTER)
    return {(a.resource_type, a.pattern_type, a.name, a.operation, a.permission) for a in out.acls}


def test_actions_map_to_the_documented_operations() -> None:
    topic = f"{BASE}:topic/tp/uuid-1/market.trades"
    assert acls(("kafka-cluster:ReadData", topic), ("kafka-cluster:DescribeTopic", topic)) == {
        ("TOPIC", "LITERAL", "market.trades", "READ", "ALLOW"),
        ("TOPIC", "LITERAL", "market.trades", "DESCRIBE", "ALLOW"),
    }
    assert acls(("kafka-cluster:AlterGroup", f"{BASE}:group/tp/uuid-1/g")) >= {
        ("GROUP", "LITERAL", "g", "READ", "ALLOW")
    }
    assert acls(("kafka-cluster:WriteDataIdempotently", CLUSTER)) == {
        ("CLUSTER", "LITERAL", "kafka-cluster", "IDEMPOTENT_WRITE", "ALLOW")
    }
    assert principal_acls("svc", [IamGrant("kafka-cluster:Connect", CLUSTER)], CLUSTER).connect
    assert not principal_acls(
        "svc", [IamGrant("kafka-cluster:Connect", f"{BASE}:cluster/other/u")], CLUSTER
    ).connect


def test_kafka_implied_operations_are_denied_when_iam_does_not_grant_them() -> None:
    """Kafka lets WRITE imply DESCRIBE; MSK requires DescribeTopic explicitly."""
    topic = f"{BASE}:topic/tp/uuid-1/t"
    assert acls(("kafka-cluster:WriteData", topic)) == {
        ("TOPIC", "LITERAL", "t", "WRITE", "ALLOW"),
        ("TOPIC", "LITERAL", "t", "DESCRIBE", "DENY"),
    }
    assert ("TOPIC", "LITERAL", "t", "DESCRIBE_CONFIGS", "DENY") in acls(
        ("kafka-cluster:AlterTopicDynamicConfiguration", topic)
    )
    # DESCRIBE granted on a covering prefix: no DENY.
    assert acls(
        ("kafka-cluster:WriteData", topic), ("kafka-cluster:DescribeTopic", f"{BASE}:topic/tp/*/*")
    ) == {
        ("TOPIC", "LITERAL", "t", "WRITE", "ALLOW"),
        ("TOPIC", "LITERAL", "*", "DESCRIBE", "ALLOW"),
    }


def test_arn_wildcards_become_literal_prefixed_or_all() -> None:
    txn = f"{BASE}:transactional-id/tp/*/tradepulse-*"
    assert ("TRANSACTIONAL_ID", "PREFIXED", "tradepulse-", "WRITE", "ALLOW") in acls(
        ("kafka-cluster:AlterTransactionalId", txn), ("kafka-cluster:DescribeTransactionalId", txn)
    )
    assert acls(("kafka-cluster:DescribeTopic", f"{BASE}:topic/tp/*")) == {
        ("TOPIC", "LITERAL", "*", "DESCRIBE", "ALLOW")
    }
    assert acls(("kafka-cluster:DescribeGroup", "*")) == {("GROUP", "LITERAL", "*", "DESCRIBE", "ALLOW")}
    assert acls(("kafka-cluster:DescribeTopic", f"{BASE}:topic/other-cluster/*/t")) == set()
    with pytest.raises(UnsupportedGrant, match="name, `\\*` or `prefix\\*` only"):
        acls(("kafka-cluster:DescribeTopic", f"{BASE}:topic/tp/uuid-1/*_test"))


def test_action_wildcards_follow_the_guide() -> None:
    assert set(expand_action("kafka-cluster:*Topic")) == {
        "kafka-cluster:CreateTopic",
        "kafka-cluster:DescribeTopic",
        "kafka-cluster:AlterTopic",
        "kafka-cluster:DeleteTopic",
    }
    assert len(expand_action("kafka-cluster:*")) == 19
    assert expand_action("s3:GetObject") == []


def test_statements_and_required_actions() -> None:
    topic = f"{BASE}:topic/tp/uuid-1/t"
    statements = [
        {"Effect": "Allow", "Action": "kafka-cluster:Connect", "Resource": CLUSTER},
        {"Effect": "Allow", "Action": ["kafka-cluster:WriteData"], "Resource": [topic]},
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::b/*"},
    ]
    grants = statement_grants(statements)
    assert grants == [IamGrant("kafka-cluster:Connect", CLUSTER), IamGrant("kafka-cluster:WriteData", topic)]
    assert missing_required(grants, CLUSTER) == [
        f"kafka-cluster:WriteData on {topic} requires kafka-cluster:DescribeTopic"
    ]
    with pytest.raises(UnsupportedGrant):
        statement_grants([{"Effect": "Deny", "Action": "kafka-cluster:*", "Resource": "*"}])


def test_bindings_convert_for_the_admin_client() -> None:
    from confluent_kafka.admin import ResourceType

    from tradepulse.bus.msk_acl import acl_bindings

    (binding,) = acl_bindings(
        [KafkaAcl("User:svc", "CLUSTER", "LITERAL", "kafka-cluster", "IDEMPOTENT_WRITE")]
    )
    assert binding.restype == ResourceType.BROKER and binding.name == "kafka-cluster"
