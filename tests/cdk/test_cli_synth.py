"""`npx cdk synth` with the pinned CLI: offline, without AWS credentials and without Docker (dev stack)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cdk.conftest import REPO_ROOT, one, resources

CLI_VERSION = "2.1148.1"
pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npx") is None,
    reason="Node.js is not installed: the CDK CLI (npx cdk) needs it (see `make node`)",
)


def clean_env(home: Path) -> dict[str, str]:
    """No AWS credentials, config or instance metadata; no Docker on PATH is needed either."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "CDK_DISABLE_VERSION_CHECK": "1",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "18,20",
        "npm_config_update_notifier": "false",
    }


@pytest.fixture(scope="module")
def cli_synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    if not (REPO_ROOT / "node_modules" / "aws-cdk").is_dir():
        pytest.fail(
            "node_modules/aws-cdk is missing: run `npm ci` (or `make node`) to install the pinned CLI"
        )
    home = tmp_path_factory.mktemp("home")
    outdir = tmp_path_factory.mktemp("cli-cdk.out")
    result = subprocess.run(
        ["npx", "--no-install", "cdk", "synth", "--quiet", "--no-notices", "--output", str(outdir)],
        cwd=REPO_ROOT,
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return result, outdir


@pytest.fixture(scope="module")
def dev_template(cli_synth: tuple[subprocess.CompletedProcess[str], Path]) -> dict[str, Any]:
    result, outdir = cli_synth
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((outdir / "TradePulse-dev.template.json").read_text())


def test_pinned_cli_version(tmp_path: Path) -> None:
    result = subprocess.run(
        ["npx", "--no-install", "cdk", "--version"],
        cwd=REPO_ROOT,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == CLI_VERSION


def test_npx_cdk_synth_succeeds_offline_without_credentials(
    cli_synth: tuple[subprocess.CompletedProcess[str], Path], dev_template: dict[str, Any]
) -> None:
    result, outdir = cli_synth
    assert "AwsSolutions-" not in result.stderr  # cdk-nag ran and found nothing unacknowledged
    manifest = json.loads((outdir / "manifest.json").read_text())
    stack = manifest["artifacts"]["TradePulse-dev"]
    assert stack["environment"] == "aws://unknown-account/unknown-region"  # no account lookup happened
    assert "Custom::KafkaTopics" in {r["Type"] for r in dev_template["Resources"].values()}


def test_dev_context_is_applied(dev_template: dict[str, Any]) -> None:
    assert len(resources(dev_template, "AWS::EC2::NatGateway")) == 1
    target = one(dev_template, "AWS::ApplicationAutoScaling::ScalableTarget")["Properties"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    table = one(dev_template, "AWS::DynamoDB::Table")
    assert table["DeletionPolicy"] == "Delete"  # dev data is disposable; prod retains it
    assert one(dev_template, "AWS::Athena::WorkGroup")["Properties"]["Name"] == "tradepulse-dev"
