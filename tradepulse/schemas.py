"""JSON Schemas of every topic payload and stored item, generated from `tradepulse.models`.

`schemas/` in the repository holds the generated files (the contracts the Glue Schema Registry
serves in AWS); a test fails when they drift from the models. Regenerate with `tradepulse schemas` from
the repository root (the package does not know where a checkout is: it also runs installed).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from tradepulse.models import TOPIC_MODELS


def schema_documents() -> dict[str, str]:
    """File name → JSON text for every topic payload model."""
    documents = {}
    for topic, model in TOPIC_MODELS.items():
        documents[f"{topic}.json"] = render(model, topic)
    return documents


def render(model: type[BaseModel], topic: str) -> str:
    schema = model.model_json_schema()
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"tradepulse/{topic}.json",
        "x-kafka-topic": topic,
        **schema,
    }
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema file; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_documents().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
