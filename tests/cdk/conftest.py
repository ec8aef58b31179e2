"""Shared helpers of the CDK tests. The prod template is synthesized once per session (`prod_synth`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

# Node 20 is Debian 12's; jsii would print an end-of-life banner on every start.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "18,20")

REPO_ROOT = Path(__file__).resolve().parents[2]
PROD_STACK = "TradePulse-prod"


@pytest.fixture(scope="session")
def prod_synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """(template, cloud assembly dir) of the prod stack, synthesized once with cdk-nag (as `app.py` does);
    the same synthesis as `synth_template(..., env="prod")`."""
    template, outdir = synthesized(tmp_path_factory.mktemp("cdk.out"), env="prod")
    assert (outdir / f"{PROD_STACK}.template.json").exists()
    return template, outdir


def cdk_context(**overrides: Any) -> dict[str, Any]:
    """The context of cdk.json (what the CLI passes to the app), with overrides."""
    return json.loads((REPO_ROOT / "cdk.json").read_text())["context"] | overrides


def resources(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    """Logical id → resource, of one CloudFormation type."""
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == type_}


def one(template: dict[str, Any], type_: str, id_contains: str = "") -> dict[str, Any]:
    """The single resource of a type (whose logical id contains `id_contains`)."""
    found = [r for lid, r in resources(template, type_).items() if id_contains in lid]
    assert len(found) == 1, f"expected one {type_} matching {id_contains!r}, found {len(found)}"
    return found[0]


_SYNTHESIZED: dict[tuple[tuple[str, str], ...], tuple[dict[str, Any], Path]] = {}


def synthesized(tmp_root: Path, **context: str) -> tuple[dict[str, Any], Path]:
    """(template, cloud assembly dir) of the app synthesized with `cdk.json`'s context plus `context`
    (cdk-nag attached, as `app.py` does); cached per context for the test session (a synthesis takes
    ~20 s: `prod_synth` and the tests' `synth_template(..., env="prod")` share one)."""
    key = tuple(sorted(context.items()))
    if key not in _SYNTHESIZED:
        from cdk.app import build_app
        from cdk.config import load_config

        ctx = cdk_context(**context)
        outdir = tmp_root / f"cdk.out-{len(_SYNTHESIZED)}"
        build_app(outdir=str(outdir), context=ctx).synth()
        stack = load_config(ctx.get).stack_name
        _SYNTHESIZED[key] = json.loads((outdir / f"{stack}.template.json").read_text()), outdir
    return _SYNTHESIZED[key]


def synth_template(tmp_root: Path, **context: str) -> dict[str, Any]:
    """The template of `synthesized(tmp_root, **context)`."""
    return synthesized(tmp_root, **context)[0]


def policy_actions(template: dict[str, Any], role_id_contains: str) -> dict[str, set[str]]:
    """Action → the JSON of the resources it is granted on, over the IAM policies attached to the role
    whose logical id contains the text."""
    (role_id,) = [lid for lid in resources(template, "AWS::IAM::Role") if role_id_contains in lid]
    granted: dict[str, set[str]] = {}
    for policy in resources(template, "AWS::IAM::Policy").values():
        if {"Ref": role_id} not in policy["Properties"]["Roles"]:
            continue
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            targets = (
                statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            )
            for action in actions:
                granted.setdefault(action, set()).update(json.dumps(t, sort_keys=True) for t in targets)
    return granted
