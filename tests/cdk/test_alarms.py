"""Alarms that fire and page (issue 14, defect 9): a dead process alarms (missing data is breaching where
silence means death), running tasks, heartbeats, Lambda errors/throttles, API 5xx and DLQ age are
alarmed, every alarm notifies an SNS topic that has the subscribers given in context, and every alarm's
description links a runbook section that exists."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.cdk.conftest import REPO_ROOT, resources, synth_template

EMAIL = "oncall@example.com"
HTTPS = "https://events.example.com/integration/tradepulse"
RUNBOOK_URL = "https://git.example.com/tradepulse/blob/main/docs/runbook.md"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """prod without any alarm context."""
    return synth_template(tmp_path_factory.mktemp("plain"), env="prod")


@pytest.fixture(scope="module")
def paged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """prod with `-c alarmEmail=… -c alarmHttpsEndpoint=… -c runbookUrl=…`."""
    return synth_template(
        tmp_path_factory.mktemp("paged"),
        env="prod",
        alarmEmail=EMAIL,
        alarmHttpsEndpoint=HTTPS,
        runbookUrl=RUNBOOK_URL,
    )


def alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Monitoring alarm id (construct id, without the hash) → properties."""
    return {
        re.sub(r"[0-9A-F]{8}$", "", lid.removeprefix("Monitoring")): r["Properties"]
        for lid, r in resources(template, "AWS::CloudWatch::Alarm").items()
        if lid.startswith("Monitoring")
    }


def topic_of(alarm: dict[str, Any]) -> str:
    (action,) = alarm["AlarmActions"]
    return "page" if "PageTopic" in action["Ref"] else "warn"


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation other than `-` and `_` dropped,
    each space a hyphen."""
    return "".join(c for c in heading.strip().lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def github_anchors(markdown: str) -> set[str]:
    """The anchors of every heading of a Markdown document."""
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.M)}


def test_anchor_rule_agrees_with_the_stack() -> None:
    from cdk.monitoring import runbook_anchor

    for heading in ("ConsumerLagWarn / ConsumerLagPage", "Cost: idle floor (15k ev/s)", "Api5xx"):
        assert runbook_anchor(heading) == github_anchor(heading)
    assert github_anchor("ConsumerLagWarn / ConsumerLagPage") == "consumerlagwarn--consumerlagpage"


def test_a_dead_service_alarms_on_missing_data(plain: dict[str, Any]) -> None:
    """For each service, an alarm on a metric only a live task produces, breaching when it is absent:
    Container Insights' running task count below the minimum, and the service's EMF heartbeat."""
    found = alarms(plain)
    minimum = {"ingest": 1, "news": 1, "processor": 2}  # prod: processor minTasks 2
    for service, count in minimum.items():
        running = found[f"{service.capitalize()}TasksRunning"]
        assert (running["Namespace"], running["MetricName"]) == ("ECS/ContainerInsights", "RunningTaskCount")
        dims = {d["Name"]: d["Value"] for d in running["Dimensions"]}
        assert set(dims) == {"ClusterName", "ServiceName"}
        assert f"Services{service.capitalize()}Service" in json.dumps(dims["ServiceName"])
        assert running["ComparisonOperator"] == "LessThanThreshold" and running["Threshold"] == count
        assert running["TreatMissingData"] == "breaching"

        heartbeat = found[f"{service.capitalize()}Heartbeat"]
        assert heartbeat["Namespace"] == "TradePulse"
        assert heartbeat["Dimensions"] == [{"Name": "service", "Value": service}]
        assert heartbeat["MetricName"] == ("ConsumerLag" if service == "processor" else "EventsPublished")
        assert heartbeat["Statistic"] == "SampleCount"
        assert heartbeat["ComparisonOperator"] == "LessThanThreshold" and heartbeat["Threshold"] == 1
        assert heartbeat["TreatMissingData"] == "breaching"
    assert topic_of(found["ProcessorHeartbeat"]) == topic_of(found["IngestTasksRunning"]) == "page"


def test_heartbeat_metrics_are_written_by_the_running_services() -> None:
    """The heartbeats alarm on lines the services write on a timer, whatever the traffic: the processor
    publishes its status (with the EMF line) while idle too, ingest/news on every progress line."""
    import io

    import orjson

    from tradepulse import metrics_emf
    from tradepulse.bus.status import RunnerMetrics

    out = io.StringIO()
    metrics_emf.EmfEmitter("processor", stream=out).emit_runner(RunnerMetrics().snapshot())
    assert "ConsumerLag" in orjson.loads(out.getvalue())
    out = io.StringIO()
    metrics_emf.EmfEmitter("ingest", stream=out).emit_producer(published=0, failed=0)
    assert orjson.loads(out.getvalue())["EventsPublished"] == 0  # nothing published: still a sample


def test_lambda_api_and_dlq_age_alarms(plain: dict[str, Any]) -> None:
    found = alarms(plain)
    functions = {lid for lid, r in resources(plain, "AWS::Lambda::Function").items() if "Lambdas" in lid}
    for kind, metric in (("LambdaErrors", "Errors"), ("LambdaThrottles", "Throttles")):
        stats = [m["MetricStat"] for m in found[kind]["Metrics"] if "MetricStat" in m]
        assert {s["Metric"]["MetricName"] for s in stats} == {metric}
        alarmed = {s["Metric"]["Dimensions"][0]["Value"]["Ref"] for s in stats}
        assert alarmed == functions  # api, dlq_redrive, archival
        assert found[kind]["Threshold"] == 1
    api_5xx = found["Api5xx"]
    assert (api_5xx["Namespace"], api_5xx["MetricName"], api_5xx["Statistic"]) == (
        "AWS/ApiGateway",
        "5xx",
        "Sum",
    )
    assert topic_of(api_5xx) == "page"
    age = found["DlqAge"]
    assert (age["Namespace"], age["MetricName"]) == ("AWS/SQS", "ApproximateAgeOfOldestMessage")
    assert age["Dimensions"][0]["Value"]["Fn::GetAtt"][0].startswith("DeadLettersQueue")
    assert age["Threshold"] == 2 * 3600 and topic_of(age) == "page"


def test_every_alarm_notifies_a_topic_and_links_an_existing_runbook_section(paged: dict[str, Any]) -> None:
    anchors = github_anchors((REPO_ROOT / "docs" / "runbook.md").read_text())
    found = alarms(paged)
    assert len(found) >= 20
    for name, alarm in found.items():
        assert topic_of(alarm) in ("page", "warn")
        assert alarm["OKActions"] == alarm["AlarmActions"]
        link = re.search(r"Runbook: (\S+)#([\w-]+)$", alarm["AlarmDescription"])
        assert link, f"{name}: no runbook link in {alarm['AlarmDescription']!r}"
        assert link.group(1) == RUNBOOK_URL
        assert link.group(2) in anchors, f"{name}: docs/runbook.md has no section #{link.group(2)}"
        assert name in alarm["AlarmDescription"] or name.lower() in link.group(2), name


def test_page_topic_always_exists_and_context_adds_email_and_https_subscribers(
    plain: dict[str, Any], paged: dict[str, Any]
) -> None:
    topics = {lid for lid in resources(plain, "AWS::SNS::Topic") if "PageTopic" in lid}
    assert len(topics) == 1
    assert resources(plain, "AWS::SNS::Subscription") == {}
    subscriptions = {
        (s["Properties"]["TopicArn"]["Ref"].split("Topic")[0], s["Properties"]["Protocol"], s["Properties"]["Endpoint"])
        for s in resources(paged, "AWS::SNS::Subscription").values()
    }  # fmt: skip
    assert subscriptions == {
        ("MonitoringPage", "email", EMAIL),
        ("MonitoringWarn", "email", EMAIL),
        ("MonitoringPage", "https", HTTPS),  # the paging service gets pages only
    }


def test_https_endpoint_must_be_https(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="alarmHttpsEndpoint must be an https:// URL"):
        synth_template(tmp_path, env="dev", alarmHttpsEndpoint="http://insecure.example.com/hook")
