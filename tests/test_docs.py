"""Keep the operator docs true to the code: every `tradepulse` command they show exists, every metric,
alarm, setting and model field they name is real, every relative link resolves, and the index lists
every document."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from cdk import monitoring
from tradepulse.bus.status import RunnerMetrics
from tradepulse.cli.main import cli
from tradepulse.config import Settings
from tradepulse.models import TOPIC_MODELS, Sentiment
from tradepulse.topics import ALL_TOPICS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OWN = ["architecture.md", "schema.md", "runbook.md", "postmortem.md", "quality.md", "README.md"]


def text(name: str) -> str:
    return (DOCS / name).read_text()


@pytest.mark.parametrize("name", OWN)
def test_every_tradepulse_command_shown_exists(name: str) -> None:
    for command in re.findall(r"`tradepulse ([a-z][a-z-]*(?: [a-z-]+)?)", text(name)):
        words = command.split()
        group = cli.get_command(click.Context(cli), words[0])
        assert group is not None, f"{name}: no command `tradepulse {words[0]}`"
        sub = getattr(group, "commands", None)
        if sub is not None and len(words) > 1 and not words[1].startswith("-"):
            assert words[1] in sub, f"{name}: no command `tradepulse {command}`"


@pytest.mark.parametrize("name", OWN)
def test_prometheus_metric_names_are_real(name: str) -> None:
    sources = "".join(p.read_text() for p in (ROOT / "tradepulse" / "api").glob("*.py"))
    for metric in set(re.findall(r"tradepulse_[a-z0-9_]+", text(name))):
        assert f'"{metric}"' in sources, f"{name}: unknown metric {metric}"


def test_runbook_covers_every_alarm_and_only_real_ones() -> None:
    runbook = text("runbook.md")
    source = (ROOT / "cdk" / "monitoring.py").read_text()
    alarms = set(re.findall(r'alarm\(\s*"(\w+)"', source))
    assert len(alarms) >= 8
    headings = " ".join(re.findall(r"^## (.+)$", runbook, flags=re.M))
    for alarm in alarms:
        assert alarm in headings, f"alarm {alarm} has no runbook section"
    for name in ("ConsumerLag", "HotWriteLatencyP99Ms", "HotWriteThrottles", "ProducerErrors"):
        assert name in runbook and name in source
    assert monitoring.CONSUMER_LAG.warn == 5_000 and "≥ 5,000" in runbook


@pytest.mark.parametrize("name", OWN)
def test_settings_named_in_docs_exist(name: str) -> None:
    env = {f"TRADEPULSE_{field.upper()}" for field in Settings.model_fields}
    for var in set(re.findall(r"TRADEPULSE_[A-Z0-9_]+", text(name))):
        assert var in env, f"{name}: {var} is not a setting"


def test_schema_doc_lists_every_topic_and_model_field() -> None:
    schema = text("schema.md")
    for topic in ALL_TOPICS:
        assert f"`{topic}`" in schema and f"../schemas/{topic}.json" in schema
        assert (ROOT / "schemas" / f"{topic}.json").exists()
    for model in [*TOPIC_MODELS.values(), Sentiment]:
        for field in model.model_fields:
            assert f"`{field}`" in schema, f"{model.__name__}.{field} missing from schema.md"


@pytest.mark.parametrize("name", OWN)
def test_relative_links_resolve(name: str) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text(name)):
        if "://" in target:
            continue
        assert (DOCS / target).resolve().exists(), f"{name}: broken link {target}"


def test_index_links_every_document() -> None:
    index = text("README.md")
    for doc in DOCS.glob("*.md"):
        if doc.name != "README.md":
            assert f"]({doc.name})" in index, f"docs/README.md does not link {doc.name}"


def test_test_files_named_in_docs_exist() -> None:
    for name in OWN:
        for path in set(re.findall(r"tests/[\w/]+\.py", text(name))):
            assert (ROOT / path).exists(), f"{name}: {path} does not exist"


def test_runner_status_fields_named_in_the_runbook_exist() -> None:
    snapshot = RunnerMetrics().snapshot()
    runbook = text("runbook.md")
    named = re.findall(r"`(\w+)` in (?:`<data_dir>/runner-status.json`|the status file)", runbook)
    named += re.findall(r"status file `(\w+)`", runbook)
    assert len(named) >= 4
    for field in named:
        assert field in snapshot, f"runbook.md: {field} is not in the runner status document"
