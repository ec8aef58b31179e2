"""AWS Glue Schema Registry holding the JSON Schema of every topic (from `schemas/`), one version per edit.

CloudFormation cannot edit a schema in place: on `AWS::Glue::Schema`, `SchemaDefinition` (like `Name`,
`Registry` and `DataFormat`) is create-only, so a changed definition means a replacement, which fails
because a schema of that name already exists. New definitions are registered as
`AWS::Glue::SchemaVersion` resources instead (Glue checks each against the schema's compatibility mode,
BACKWARD, and the deploy fails if it is not compatible).

So the registry's history is in the repository: `cdk/schema_versions.json` lists, per topic, every
definition ever registered, oldest first (the Glue form: draft-07, see `to_draft07`). The schema resource
is created with the first one and never changes; each later one is a version resource whose logical id
is its number and content hash, chained so Glue receives them in order. Versions are never removed from
the file (removing a resource would delete the version from the registry).

After a model change, `tradepulse schemas` regenerates `schemas/*.json`; then
`python -m cdk.schema_registry` appends every changed definition to the history. Synth refuses to run
while a topic's current schema is not the last recorded version.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aws_cdk import aws_glue as glue
from constructs import Construct

from tradepulse.topics import ALL_TOPICS

SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas"
HISTORY_FILE = Path(__file__).resolve().parent / "schema_versions.json"
DRAFT_07 = "http://json-schema.org/draft-07/schema#"
COMPATIBILITY = "BACKWARD"

History = Mapping[str, Sequence[dict[str, Any]]]


def load_schema(topic: str) -> dict[str, Any]:
    """The topic's JSON Schema, from `schemas/<topic>.json`."""
    return json.loads((SCHEMAS_DIR / f"{topic}.json").read_text())


def to_draft07(schema: dict[str, Any]) -> dict[str, Any]:
    """Glue validates JSON Schema drafts 04/06/07; ours are 2020-12 from pydantic. For these schemas the
    only difference that matters is `$defs` → `definitions` (and the `$ref`s pointing into it)."""
    text = json.dumps(schema).replace('"#/$defs/', '"#/definitions/')
    converted = json.loads(text)
    if "$defs" in converted:
        converted["definitions"] = converted.pop("$defs")
    converted["$schema"] = DRAFT_07
    return converted


def definition_text(definition: dict[str, Any]) -> str:
    """The exact string sent to Glue (canonical: sorted keys), so an unchanged schema is an unchanged
    template property."""
    return json.dumps(definition, sort_keys=True)


def definition_hash(definition: dict[str, Any]) -> str:
    return hashlib.sha256(definition_text(definition).encode()).hexdigest()[:12]


def current_definitions() -> dict[str, dict[str, Any]]:
    """Topic → the Glue form of its committed `schemas/<topic>.json`."""
    return {topic: to_draft07(load_schema(topic)) for topic in ALL_TOPICS}


def load_history(path: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Topic → its recorded definitions, oldest first (default: cdk/schema_versions.json)."""
    path = path or HISTORY_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def record_versions(
    history: History, current: Mapping[str, dict[str, Any]]
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """(the history with every changed or new topic's current definition appended, the topics that
    changed). Old versions are kept as they are."""
    updated = {topic: list(versions) for topic, versions in history.items()}
    changed = []
    for topic, definition in current.items():
        versions = updated.setdefault(topic, [])
        if not versions or definition_text(versions[-1]) != definition_text(definition):
            versions.append(definition)
            changed.append(topic)
    return updated, changed


class SchemaRegistry(Construct):
    """One registry; one schema per topic named after the topic, BACKWARD compatible, created with the
    topic's first recorded definition; one `AWS::Glue::SchemaVersion` per later definition.

    `history` (topic → definitions, oldest first) defaults to `cdk/schema_versions.json`, whose last
    definition of each topic must equal `current` (default: `schemas/*.json`).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        registry_name: str,
        history: History | None = None,
        current: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(scope, id)
        history = load_history() if history is None else history
        current = current_definitions() if current is None else current
        stale = [
            topic
            for topic, definition in current.items()
            if not history.get(topic) or definition_text(history[topic][-1]) != definition_text(definition)
        ]
        if stale:
            raise ValueError(
                f"schemas of {', '.join(sorted(stale))} are not the last recorded registry version: run "
                "`python -m cdk.schema_registry` to record them as new versions in cdk/schema_versions.json"
            )
        self.registry = glue.CfnRegistry(
            self, "Registry", name=registry_name, description="TradePulse topic payload contracts"
        )
        self.schemas: dict[str, glue.CfnSchema] = {}
        #: topic → its version resources (versions 2, 3, …; version 1 is the schema's own definition)
        self.versions: dict[str, list[glue.CfnSchemaVersion]] = {}
        for topic in current:
            first, *later = history[topic]
            schema = glue.CfnSchema(
                self,
                f"Schema-{topic}",
                name=topic,
                registry=glue.CfnSchema.RegistryProperty(arn=self.registry.attr_arn),
                data_format="JSON",
                compatibility=COMPATIBILITY,
                schema_definition=definition_text(first),
                description=f"Payload of Kafka topic {topic}",
            )
            self.schemas[topic] = schema
            self.versions[topic] = []
            previous: Any = schema
            for number, definition in enumerate(later, start=2):
                version = glue.CfnSchemaVersion(
                    self,
                    f"SchemaVersion-{topic}-v{number}-{definition_hash(definition)}",
                    schema=glue.CfnSchemaVersion.SchemaProperty(schema_arn=schema.attr_arn),
                    schema_definition=definition_text(definition),
                )
                # Glue numbers versions in registration order: register v2 before v3.
                version.add_dependency(previous)
                self.versions[topic].append(version)
                previous = version


def main(argv: Sequence[str] = ()) -> int:
    """`python -m cdk.schema_registry`: append changed `schemas/*.json` to cdk/schema_versions.json."""
    updated, changed = record_versions(load_history(), current_definitions())
    if not changed:
        print("schema registry history is up to date")
        return 0
    HISTORY_FILE.write_text(json.dumps(updated, indent=2, sort_keys=True) + "\n")
    for topic in changed:
        print(f"{topic}: recorded as version {len(updated[topic])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
