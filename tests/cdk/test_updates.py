"""Deploys after the first one (issue 14, defects 7 and 8): a schema edit registers a new Glue schema
version instead of replacing the schema, and a deploy does not reset the processor's scaled task count.

"Would CloudFormation replace it" is decided with CloudFormation's own resource schemas (shipped with
cfn-lint): changing a `createOnlyProperties` member of an existing resource means replacement.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import cfnlint
import pytest
from aws_cdk import App, Stack

from cdk import schema_registry
from tests.cdk.conftest import one, resources, synth_template
from tradepulse import topics

PROVIDER_SCHEMAS = Path(cfnlint.__file__).parent / "data" / "schemas"


@cache
def create_only(type_: str) -> list[str]:
    """Top-level properties of a resource type that can only be set at creation (us-east-1 schemas)."""
    index = json.loads((PROVIDER_SCHEMAS / "providers" / "us-east-1.json").read_text())
    schema = json.loads((PROVIDER_SCHEMAS / "resources" / f"{index[type_]}.json").read_text())
    return sorted({p.split("/")[2] for p in schema.get("createOnlyProperties", [])})


def replacements(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Resources CloudFormation would replace (a create-only property changed) or delete going from the
    `before` template to the `after` one."""
    out = []
    for lid, old in before["Resources"].items():
        new = after["Resources"].get(lid)
        if new is None or new["Type"] != old["Type"]:
            out.append(f"{lid}: deleted")
            continue
        for prop in create_only(old["Type"]):
            if old.get("Properties", {}).get(prop) != new.get("Properties", {}).get(prop):
                out.append(f"{lid}.{prop}: replacement")
    return out


def registry_template() -> dict[str, Any]:
    """The schema registry construct alone, synthesized from the repository's files."""
    app = App()
    stack = Stack(app, "Registry")
    schema_registry.SchemaRegistry(stack, "SchemaRegistry", registry_name="tradepulse-test")
    return app.synth().get_stack_by_name("Registry").template


def edited(schema: dict[str, Any]) -> dict[str, Any]:
    """A backward-compatible edit: one new optional field."""
    changed = copy.deepcopy(schema)
    changed["properties"]["venue_note"] = {"type": ["string", "null"], "default": None}
    return changed


def test_the_create_only_rule_is_cloudformations() -> None:
    assert "SchemaDefinition" in create_only("AWS::Glue::Schema")
    assert {"Schema", "SchemaDefinition"} <= set(create_only("AWS::Glue::SchemaVersion"))
    assert "DesiredCount" not in create_only("AWS::ECS::Service")


def test_a_schema_edit_becomes_a_new_version_not_a_replacement(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The documented workflow: edit the model (here: the committed schema), record it with
    `python -m cdk.schema_registry`, deploy. Nothing deployed is replaced or deleted; one version appears."""
    history = tmp_path / "schema_versions.json"
    history.write_text((Path(schema_registry.__file__).parent / "schema_versions.json").read_text())
    monkeypatch.setattr(schema_registry, "HISTORY_FILE", history, raising=False)
    first = registry_template()

    original = schema_registry.load_schema
    monkeypatch.setattr(
        schema_registry,
        "load_schema",
        lambda topic: edited(original(topic)) if topic == topics.TRADES else original(topic),
    )
    assert schema_registry.main() == 0  # python -m cdk.schema_registry
    second = registry_template()
    assert schema_registry.main() == 0 and registry_template() == second  # idempotent

    assert replacements(first, second) == []
    added = {lid: r for lid, r in second["Resources"].items() if lid not in first["Resources"]}
    assert [r["Type"] for r in added.values()] == ["AWS::Glue::SchemaVersion"]
    (version,) = added.values()
    trades_schema = next(
        lid for lid, r in first["Resources"].items()
        if r["Type"] == "AWS::Glue::Schema" and r["Properties"]["Name"] == topics.TRADES
    )  # fmt: skip
    assert version["Properties"]["Schema"] == {"SchemaArn": {"Fn::GetAtt": [trades_schema, "Arn"]}}
    definition = json.loads(version["Properties"]["SchemaDefinition"])
    assert definition == schema_registry.to_draft07(edited(original(topics.TRADES)))
    assert definition["properties"]["venue_note"]

    # A second edit adds version 3 after version 2 and keeps version 2 as it is.
    monkeypatch.setattr(
        schema_registry,
        "load_schema",
        lambda topic: (
            edited(edited(original(topic)) | {"title": "Trade v3"})
            if topic == topics.TRADES
            else original(topic)
        ),
    )
    schema_registry.main()
    third = registry_template()
    assert replacements(second, third) == []
    (newest_id,) = [lid for lid in third["Resources"] if lid not in second["Resources"]]
    (v2_id,) = added
    assert third["Resources"][newest_id]["DependsOn"] == [v2_id]  # registered in order


def test_an_unrecorded_schema_edit_stops_synth(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the recording step, synth refuses (instead of a deploy that replaces or loses a version)."""
    original = schema_registry.load_schema
    monkeypatch.setattr(
        schema_registry, "load_schema", lambda topic: edited(original(topic)) if topic == topics.NEWS else original(topic)
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"market\.news .*python -m cdk\.schema_registry"):
        registry_template()


def test_every_topic_is_recorded_and_the_latest_version_is_the_committed_schema() -> None:
    template = registry_template()
    history = json.loads((Path(schema_registry.__file__).parent / "schema_versions.json").read_text())
    assert set(history) == set(topics.ALL_TOPICS)
    for topic, versions in history.items():
        assert versions[-1] == schema_registry.to_draft07(schema_registry.load_schema(topic))
        (schema,) = [
            r["Properties"] for r in resources(template, "AWS::Glue::Schema").values()
            if r["Properties"]["Name"] == topic
        ]  # fmt: skip
        assert (schema["Compatibility"], schema["DataFormat"]) == ("BACKWARD", "JSON")
        assert json.loads(schema["SchemaDefinition"]) == versions[0]


# --- scaling ------------------------------------------------------------------------------------


def test_a_deploy_keeps_the_processors_scaled_task_count(tmp_path: Path) -> None:
    """With DesiredCount in the template, every deploy sets the processor back to it, whatever auto scaling
    had reached. Without it CloudFormation keeps the current count on update; the scalable target
    (min..max) owns the count."""
    template = synth_template(tmp_path, env="prod")
    services = {
        r["Properties"]["TaskDefinition"]["Ref"]: r["Properties"]
        for r in resources(template, "AWS::ECS::Service").values()
    }
    by_name = {
        template["Resources"][task]["Properties"]["ContainerDefinitions"][0]["Name"]: props
        for task, props in services.items()
    }
    assert "DesiredCount" not in by_name["processor"]
    assert by_name["ingest"]["DesiredCount"] == 1 and by_name["news"]["DesiredCount"] == 1  # never scaled
    target = one(template, "AWS::ApplicationAutoScaling::ScalableTarget")["Properties"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 6)
    assert "ServicesProcessorService" in json.dumps(target["ResourceId"])
