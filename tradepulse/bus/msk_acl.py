"""MSK IAM access control expressed as Apache Kafka ACLs, so a local broker can enforce what a role may do.

MSK clusters with IAM auth authorize each Kafka request against the caller's IAM policy: the
`kafka-cluster:*` actions on cluster / topic / group / transactional-id ARNs. The MSK developer guide
("Semantics of IAM authorization policy actions and resources") defines each action as the equivalent
of one Kafka ACL operation on one resource type; `ACTIONS` is that table. (aws-msk-iam-auth is only the
client-side SASL signer: the mapping is enforced by MSK's brokers and documented in the guide.)

`principal_acls` turns one principal's IAM grants into Kafka ACL bindings for a given cluster ARN:

- Resource ARNs may use `*` anywhere after `:topic/` etc. The part naming the cluster
  (`<cluster-name>/<cluster-uuid>/`) must match the cluster, or the grant is for another cluster and
  ignored. The resource-name part must be one Kafka can express: a name (LITERAL), `*` (LITERAL `*`,
  every name) or `prefix*` (PREFIXED); anything else raises `UnsupportedGrant`. `Resource: "*"` is
  every resource of the action's type.
- `kafka-cluster:Connect` has no ACL operation: it decides whether the principal may authenticate at
  all (`PrincipalAcls.connect`; a simulation gives a principal without it no credentials).
- Kafka's authorizer lets READ/WRITE/DELETE/ALTER imply DESCRIBE and ALTER_CONFIGS imply
  DESCRIBE_CONFIGS; MSK does not (its table lists e.g. DescribeTopic as a *required* action of
  WriteData). Where a principal gets an implying operation without the implied one, a DENY binding for
  the implied operation on the same pattern keeps the local broker as strict as MSK.
- Not emulated: Kafka (KIP-679) also accepts WRITE on any topic in place of IDEMPOTENT_WRITE on the
  cluster for an idempotent producer's InitProducerId, so a missing `WriteDataIdempotently` is only
  caught by `missing_required` (which also checks the other "Required actions" of the guide's table;
  ReadData's AlterGroup is taken to mean a group grant of the reader: DescribeGroup suffices for one
  that only assign()s, see `missing_required`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tradepulse.errors import BusError, InvalidArgument

CLUSTER, TOPIC, GROUP, TRANSACTIONAL_ID = "CLUSTER", "TOPIC", "GROUP", "TRANSACTIONAL_ID"
#: ARN resource-type segment (`arn:…:kafka:<region>:<account>:<segment>/…`) of each Kafka resource type.
ARN_KINDS = {CLUSTER: "cluster", TOPIC: "topic", GROUP: "group", TRANSACTIONAL_ID: "transactional-id"}
#: The single cluster resource's name in Kafka ACLs.
KAFKA_CLUSTER_NAME = "kafka-cluster"
CONNECT = "kafka-cluster:Connect"


@dataclass(frozen=True)
class Action:
    """One row of the MSK table: the Kafka operation on a resource type, and the required actions."""

    resource_type: str
    operation: str | None  # None: Connect (authentication, no ACL)
    required: tuple[str, ...]


_C = CONNECT
#: kafka-cluster action → (resource type, Kafka ACL operation, MSK's "Required actions").
ACTIONS: dict[str, Action] = {
    "kafka-cluster:Connect": Action(CLUSTER, None, ()),
    "kafka-cluster:DescribeCluster": Action(CLUSTER, "DESCRIBE", (_C,)),
    "kafka-cluster:AlterCluster": Action(CLUSTER, "ALTER", (_C, "kafka-cluster:DescribeCluster")),
    "kafka-cluster:DescribeClusterDynamicConfiguration": Action(CLUSTER, "DESCRIBE_CONFIGS", (_C,)),
    "kafka-cluster:AlterClusterDynamicConfiguration": Action(
        CLUSTER, "ALTER_CONFIGS", (_C, "kafka-cluster:DescribeClusterDynamicConfiguration")
    ),
    "kafka-cluster:WriteDataIdempotently": Action(
        CLUSTER, "IDEMPOTENT_WRITE", (_C, "kafka-cluster:WriteData")
    ),
    "kafka-cluster:CreateTopic": Action(TOPIC, "CREATE", (_C,)),
    "kafka-cluster:DescribeTopic": Action(TOPIC, "DESCRIBE", (_C,)),
    "kafka-cluster:AlterTopic": Action(TOPIC, "ALTER", (_C, "kafka-cluster:DescribeTopic")),
    "kafka-cluster:DeleteTopic": Action(TOPIC, "DELETE", (_C, "kafka-cluster:DescribeTopic")),
    "kafka-cluster:DescribeTopicDynamicConfiguration": Action(TOPIC, "DESCRIBE_CONFIGS", (_C,)),
    "kafka-cluster:AlterTopicDynamicConfiguration": Action(
        TOPIC, "ALTER_CONFIGS", (_C, "kafka-cluster:DescribeTopicDynamicConfiguration")
    ),
    "kafka-cluster:ReadData": Action(
        TOPIC, "READ", (_C, "kafka-cluster:DescribeTopic", "kafka-cluster:AlterGroup")
    ),
    "kafka-cluster:WriteData": Action(TOPIC, "WRITE", (_C, "kafka-cluster:DescribeTopic")),
    "kafka-cluster:DescribeGroup": Action(GROUP, "DESCRIBE", (_C,)),
    "kafka-cluster:AlterGroup": Action(GROUP, "READ", (_C, "kafka-cluster:DescribeGroup")),
    "kafka-cluster:DeleteGroup": Action(GROUP, "DELETE", (_C, "kafka-cluster:DescribeGroup")),
    "kafka-cluster:DescribeTransactionalId": Action(TRANSACTIONAL_ID, "DESCRIBE", (_C,)),
    "kafka-cluster:AlterTransactionalId": Action(
        TRANSACTIONAL_ID,
        "WRITE",
        (_C, "kafka-cluster:DescribeTransactionalId", "kafka-cluster:WriteData"),
    ),
}
#: Operations Kafka's authorizer grants implicitly with others (AclOperation's implication rules).
KAFKA_IMPLIED = {"DESCRIBE": ("READ", "WRITE", "DELETE", "ALTER"), "DESCRIBE_CONFIGS": ("ALTER_CONFIGS",)}


class UnsupportedGrant(BusError, ValueError):
    """An IAM grant that Kafka ACLs cannot express (or a policy feature this module does not model)."""


@dataclass(frozen=True)
class IamGrant:
    """One (action, resource ARN) pair of an Allow statement; both may hold IAM wildcards."""

    action: str
    resource: str


@dataclass(frozen=True, order=True)
class KafkaAcl:
    """One Kafka ACL binding (host `*`), with the IAM action it comes from."""

    principal: str  # "User:<name>"
    resource_type: str
    pattern_type: str  # LITERAL | PREFIXED
    name: str
    operation: str
    permission: str = "ALLOW"
    action: str = ""

    def covers(self, name: str) -> bool:
        if self.pattern_type == "PREFIXED":
            return name.startswith(self.name)
        return self.name in ("*", name)


@dataclass(frozen=True)
class PrincipalAcls:
    principal: str
    connect: bool
    acls: tuple[KafkaAcl, ...]


@dataclass(frozen=True)
class ClusterArn:
    """`arn:<partition>:kafka:<region>:<account>:cluster/<name>/<uuid>`."""

    prefix: str  # "arn:<partition>:kafka:<region>:<account>:"
    name: str
    uuid: str

    @classmethod
    def parse(cls, arn: str) -> ClusterArn:
        match = re.fullmatch(r"(arn:[^:]+:kafka:[^:]*:[^:]*:)cluster/([^/]+)/([^/]+)", arn)
        if not match:
            raise InvalidArgument(f"not an MSK cluster ARN: {arn}")
        return cls(*match.groups())


def statement_grants(statements: Iterable[dict[str, Any]]) -> list[IamGrant]:
    """The kafka-cluster (action, resource) pairs of IAM statements with plain-string ARNs."""
    grants: list[IamGrant] = []
    for statement in statements:
        unsupported = {"NotAction", "NotResource", "Condition"} & set(statement)
        if unsupported:
            raise UnsupportedGrant(f"statement uses {sorted(unsupported)}: {statement}")
        if statement.get("Effect", "Allow") != "Allow":
            raise UnsupportedGrant(f"only Allow statements are modelled: {statement}")
        actions = _as_list(statement["Action"])
        if not any(a.lower().startswith("kafka-cluster:") for a in actions):
            continue
        for action in actions:
            for resource in _as_list(statement["Resource"]):
                if not isinstance(resource, str):
                    raise UnsupportedGrant(f"unresolved resource {resource!r}")
                grants.append(IamGrant(action, resource))
    return grants


def expand_action(action_glob: str) -> list[str]:
    """The known kafka-cluster actions an action (with `*`/`?` wildcards, case-insensitive) stands for."""
    pattern = _glob_regex(action_glob.lower())
    return [name for name in ACTIONS if pattern.fullmatch(name.lower())]


def _granted_on_cluster(
    grants: Sequence[IamGrant], cluster: ClusterArn
) -> Iterator[tuple[IamGrant, str, Action, tuple[str, str]]]:
    """(grant, action, its spec, Kafka resource pattern) of every action a grant gives on `cluster`
    (wildcard actions expanded; resources of other clusters or types skipped)."""
    for grant in grants:
        for action in expand_action(grant.action):
            spec = ACTIONS[action]
            pattern = _resource_pattern(grant.resource, spec.resource_type, cluster)
            if pattern is not None:
                yield grant, action, spec, pattern


def principal_acls(principal: str, grants: Sequence[IamGrant], cluster_arn: str) -> PrincipalAcls:
    """Kafka ACLs that allow `principal` what `grants` allow on the cluster `cluster_arn` (see module)."""
    user = f"User:{principal}"
    connect = False
    allows: set[KafkaAcl] = set()
    for _, action, spec, (pattern_type, name) in _granted_on_cluster(grants, ClusterArn.parse(cluster_arn)):
        if spec.operation is None:
            connect = True
            continue
        allows.add(KafkaAcl(user, spec.resource_type, pattern_type, name, spec.operation, "ALLOW", action))
    denies = _strict_denies(allows)
    return PrincipalAcls(principal, connect, tuple(sorted(allows | denies)))


def missing_required(grants: Sequence[IamGrant], cluster_arn: str) -> list[str]:
    """Grants whose MSK "Required actions" are not granted too (same resource for same-type actions,
    any resource of its type otherwise); one line per gap, empty when the policy is complete."""
    acls = principal_acls("p", grants, cluster_arn)
    granted = {
        (a.action, a.resource_type, a.pattern_type, a.name) for a in acls.acls if a.permission == "ALLOW"
    }
    problems = []
    for grant, action, spec, pattern in _granted_on_cluster(grants, ClusterArn.parse(cluster_arn)):
        for required in spec.required:
            needed = ACTIONS[required]
            if required == CONNECT:
                ok = acls.connect
            elif (action, required) == ("kafka-cluster:ReadData", "kafka-cluster:AlterGroup"):
                # A Fetch names no group: AlterGroup (join, commit) concerns group members. A reader
                # that only assign()s still needs DescribeGroup on its group.id (FindCoordinator).
                ok = any(a in (required, "kafka-cluster:DescribeGroup") for a, *_ in granted)
            elif needed.resource_type == spec.resource_type and spec.resource_type != CLUSTER:
                ok = any(
                    a == required and t == spec.resource_type and _pattern_covers((pt, n), pattern)
                    for a, t, pt, n in granted
                )
            else:
                ok = any(a == required for a, *_ in granted)
            if not ok:
                problems.append(f"{action} on {grant.resource} requires {required}")
    return sorted(set(problems))


def acl_bindings(acls: Iterable[KafkaAcl]) -> list[Any]:
    """confluent_kafka AclBinding objects for `AdminClient.create_acls`."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    # librdkafka calls Kafka's CLUSTER resource type (code 4) BROKER.
    kinds = {CLUSTER: ResourceType.BROKER, TOPIC: ResourceType.TOPIC, GROUP: ResourceType.GROUP}
    kinds[TRANSACTIONAL_ID] = ResourceType.TRANSACTIONAL_ID
    return [
        AclBinding(
            kinds[acl.resource_type],
            acl.name,
            getattr(ResourcePatternType, acl.pattern_type),
            acl.principal,
            "*",
            getattr(AclOperation, acl.operation),
            getattr(AclPermissionType, acl.permission),
        )
        for acl in acls
    ]


# --- internals ------------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _glob_regex(glob: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob))


def _resource_pattern(resource: str, resource_type: str, cluster: ClusterArn) -> tuple[str, str] | None:
    """(pattern type, name) of the Kafka resources of `resource_type` an ARN (glob) names in `cluster`,
    or None if it names none of them."""
    if resource == "*":
        return ("LITERAL", KAFKA_CLUSTER_NAME) if resource_type == CLUSTER else ("LITERAL", "*")
    if "*" in resource.split("/", 1)[0]:
        raise UnsupportedGrant(f"wildcard before the resource type (not used here): {resource}")
    head = f"{cluster.prefix}{ARN_KINDS[resource_type]}/"
    if not resource.startswith(head):
        return None  # another resource type, account or region
    rest = resource[len(head) :]
    if resource_type == CLUSTER:
        return (
            ("LITERAL", KAFKA_CLUSTER_NAME)
            if _glob_regex(rest).fullmatch(f"{cluster.name}/{cluster.uuid}")
            else None
        )
    parts = rest.split("/", 2)
    if len(parts) < 3:  # e.g. "<cluster-name>/*": the last * spans the uuid and the name
        if not (parts[-1] == "*" and _glob_regex("/".join(parts)).match(f"{cluster.name}/{cluster.uuid}/")):
            return None
        return ("LITERAL", "*")
    name_glob, uuid_glob, resource_glob = parts
    if not (
        _glob_regex(name_glob).fullmatch(cluster.name) and _glob_regex(uuid_glob).fullmatch(cluster.uuid)
    ):
        return None
    if "?" in resource_glob or "*" in resource_glob.rstrip("*") or resource_glob.count("*") > 1:
        raise UnsupportedGrant(f"{resource}: Kafka ACLs can express a name, `*` or `prefix*` only")
    if resource_glob == "*":
        return ("LITERAL", "*")
    if resource_glob.endswith("*"):
        return ("PREFIXED", resource_glob[:-1])
    return ("LITERAL", resource_glob)


def _pattern_covers(outer: tuple[str, str], inner: tuple[str, str]) -> bool:
    """Every name `inner` matches is matched by `outer`."""
    outer_type, outer_name = outer
    inner_type, inner_name = inner
    if outer_type == "LITERAL" and outer_name == "*":
        return True
    if inner_type == "LITERAL" and inner_name == "*":
        return False
    if outer_type == "LITERAL":
        return inner_type == "LITERAL" and inner_name == outer_name
    return inner_name.startswith(outer_name)


def _patterns_overlap(a: tuple[str, str], b: tuple[str, str]) -> bool:
    return (
        _pattern_covers(a, b)
        or _pattern_covers(b, a)
        or (a[0] == b[0] == "PREFIXED" and (a[1].startswith(b[1]) or b[1].startswith(a[1])))
    )


def _strict_denies(allows: set[KafkaAcl]) -> set[KafkaAcl]:
    """DENY bindings for operations Kafka would imply but the IAM grants do not give (see module)."""
    denies: set[KafkaAcl] = set()
    for implied, implying in KAFKA_IMPLIED.items():
        for acl in allows:
            if acl.operation not in implying or acl.resource_type == CLUSTER:
                continue
            pattern = (acl.pattern_type, acl.name)
            same = [
                (a.pattern_type, a.name)
                for a in allows
                if a.operation == implied
                and a.resource_type == acl.resource_type
                and a.principal == acl.principal
            ]
            if any(_pattern_covers(p, pattern) for p in same):
                continue
            if any(_patterns_overlap(p, pattern) for p in same):
                raise UnsupportedGrant(f"{implied} is granted on part of {pattern} only: cannot emulate MSK")
            denies.add(
                KafkaAcl(
                    acl.principal, acl.resource_type, acl.pattern_type, acl.name, implied, "DENY", "(implied)"
                )
            )
    return denies
