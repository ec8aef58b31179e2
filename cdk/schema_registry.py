"""AWS Glue Schema Registry holding the JSON Schema of every topic (from `schemas/`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aws_cdk import aws_glue as glue
from constructs import Construct

from tradepulse.topics import ALL_TOPICS

SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas"
DRAFT_07 = "http://json-schema.org/draft-07/schema#"


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


class SchemaRegistry(Construct):
    """One registry; one schema per topic named after the topic, BACKWARD compatible."""

    def __init__(self, scope: Construct, id: str, *, registry_name: str) -> None:
        super().__init__(scope, id)
        self.registry = glue.CfnRegistry(
            self, "Registry", name=registry_name, description="TradePulse topic payload contracts"
        )
        self.schemas: dict[str, glue.CfnSchema] = {}
        for topic in ALL_TOPICS:
            self.schemas[topic] = glue.CfnSchema(
                self,
                f"Schema-{topic}",
                name=topic,
                registry=glue.CfnSchema.RegistryProperty(arn=self.registry.attr_arn),
                data_format="JSON",
                compatibility="BACKWARD",
                schema_definition=json.dumps(to_draft07(load_schema(topic)), sort_keys=True),
                description=f"Payload of Kafka topic {topic}",
            )
