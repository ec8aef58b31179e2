"""EMF emitter: documents that follow the CloudWatch EMF specification, bounded cadence, counters as
increases, and the real signals (runner status publication, DynamoDB throttles, ingest delivery failures).
The names/namespace/dimension cross-check against the synthesized CDK template is in tests/cdk."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from moto import mock_aws

from tests.aws import ThrottledSends, create_hot_table
from tests.stores.conftest import make_trade
from tests.stores.test_dynamo_hot import TABLE, PartialWrites
from tradepulse import metrics_emf as emf
from tradepulse.bus.pipeline import build_runner
from tradepulse.bus.status import RunnerMetrics, publish_status
from tradepulse.config import Settings
from tradepulse.sources.ingest import IngestService
from tradepulse.stores.dynamo_hot import DynamoHotStore, client_config
from tradepulse.stores.factory import open_dlq
from tradepulse.topics import TRADES

# CloudWatch's unit names (MetricDatum.Unit), the only values EMF accepts.
CLOUDWATCH_UNITS = {
    *("Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes"),
    *("Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count"),
    *("Bytes/Second", "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second"),
    *("Bits/Second", "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second"),
    *("Count/Second", "None"),
}


def parse_emf(line: str) -> dict[str, Any]:
    """Parse one log event and check it against the EMF specification's document structure; returns
    the document. (Spec: CloudWatch_Embedded_Metric_Format_Specification.html.)"""
    assert line.endswith("\n") and "\n" not in line[:-1], "one log event per line"
    doc = orjson.loads(line)  # the whole event is one JSON object, nothing before or after
    assert isinstance(doc, dict)
    meta = doc["_aws"]
    assert set(meta) == {"Timestamp", "CloudWatchMetrics"}
    assert isinstance(meta["Timestamp"], int)
    assert abs(meta["Timestamp"] - time.time() * 1000) < 60_000  # ms since the epoch, now
    (directive,) = meta["CloudWatchMetrics"]
    assert set(directive) == {"Namespace", "Dimensions", "Metrics"}
    assert isinstance(directive["Namespace"], str) and 1 <= len(directive["Namespace"]) <= 1024
    for dimension_set in directive["Dimensions"]:
        assert 1 <= len(dimension_set) <= 30
        for name in dimension_set:
            assert isinstance(doc[name], str), f"dimension {name} must be a top-level string member"
    assert 1 <= len(directive["Metrics"]) <= 100
    for definition in directive["Metrics"]:
        assert set(definition) <= {"Name", "Unit", "StorageResolution"}
        assert definition["Unit"] in CLOUDWATCH_UNITS
        value = doc[definition["Name"]]  # target member at the root
        assert isinstance(value, float) and math.isfinite(value)
    return doc


def values(doc: dict[str, Any]) -> dict[str, float]:
    return {m["Name"]: doc[m["Name"]] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_document_follows_the_emf_specification() -> None:
    out = io.StringIO()
    emitter = emf.EmfEmitter("processor", stream=out)
    assert emitter.emit({emf.CONSUMER_LAG: 12, emf.HOT_WRITE_P99_MS: 3.5}, {emf.HOT_WRITE_THROTTLES: 2})
    doc = parse_emf(out.getvalue())
    directive = doc["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "TradePulse" and directive["Dimensions"] == [["service"]]
    assert doc["service"] == "processor"
    assert values(doc) == {"ConsumerLag": 12.0, "HotWriteLatencyP99Ms": 3.5, "HotWriteThrottles": 2.0}
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units["HotWriteLatencyP99Ms"] == "Milliseconds" and units["ConsumerLag"] == "Count"


def test_cadence_is_bounded_and_counters_are_sent_as_increases() -> None:
    out, clock = io.StringIO(), Clock()
    emitter = emf.EmfEmitter("ingest", interval_s=10, stream=out, clock=clock)
    assert emitter.emit_producer(published=100, failed=3)
    clock.now += 5
    assert not emitter.emit_producer(published=150, failed=4)  # within the interval: nothing written
    clock.now += 5
    assert emitter.emit_producer(published=200, failed=4)
    assert emitter.emit_producer(published=210, failed=6, force=True)  # the final line always goes out
    clock.now += 10
    assert emitter.emit_producer(published=5, failed=1)  # counters restarted from zero
    docs = [parse_emf(line + "\n") for line in out.getvalue().splitlines()]
    assert [values(d)["ProducerErrors"] for d in docs] == [3, 1, 2, 1]
    assert [values(d)["EventsPublished"] for d in docs] == [100, 100, 10, 5]


def test_emitter_from_settings_is_off_by_default_and_names_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().metrics == "off"
    assert emf.emitter_from_settings(Settings(), "processor") is None
    monkeypatch.delenv("POWERTOOLS_SERVICE_NAME", raising=False)
    assert emf.emitter_from_settings(Settings(metrics="emf"), "news").service == "news"
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "ingest")
    monkeypatch.setenv("TRADEPULSE_METRICS", "emf")
    monkeypatch.setenv("TRADEPULSE_METRICS_INTERVAL_S", "30")
    emitter = emf.emitter_from_settings(Settings(), "news")
    assert emitter is not None and (emitter.service, emitter.interval_s) == ("ingest", 30)


@pytest.fixture
def runner_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("POWERTOOLS_SERVICE_NAME", raising=False)
    return Settings(data_dir=tmp_path / "state", kafka_bootstrap="127.0.0.1:1")


@pytest.mark.parametrize("mode", ["emf", "off"])
def test_runner_status_publication_emits_only_when_enabled(
    runner_settings: Settings, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = build_runner(runner_settings.model_copy(update={"metrics": mode}))
    try:
        runner.metrics.consumer_lag = 0
        runner.metrics.write_ms.extend([2.0, 4.0, 80.0])
        runner.metrics.backpressure_activations = 2
        runner._write_status()  # the runner's one status publication (every status_interval_s)
        runner._write_status()  # within metrics_interval_s: no second line
    finally:
        runner.dlq.close()
    status = orjson.loads(runner.status_file.read_bytes())
    lines = [line for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    if mode == "off":
        assert lines == []
        return
    (line,) = lines
    doc = parse_emf(line + "\n")
    assert doc["service"] == "processor"
    got = values(doc)
    assert got[emf.CONSUMER_LAG] == status["consumer_lag"]
    assert got[emf.HOT_WRITE_P99_MS] == status["write_p99_ms"] > 50
    assert got[emf.BACKPRESSURE_ACTIVATIONS] == 2
    assert got[emf.HOT_WRITE_THROTTLES] == 0  # SQLite never throttles


@pytest.fixture
def ddb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1", config=client_config())
        create_hot_table(client, TABLE)
        yield client


def test_dynamodb_throttles_reach_hot_write_throttles(
    ddb: Any, tmp_path: Path, botocore_sleeps: list[float]
) -> None:
    ThrottledSends(ddb, "BatchWriteItem", times=2)  # retried by botocore
    store = DynamoHotStore(TABLE, client=PartialWrites(ddb), sleep=lambda s: None)
    out, clock = io.StringIO(), Clock()
    emitter = emf.EmfEmitter("processor", stream=out, clock=clock)
    try:
        store.write_batch(trades=[make_trade(seq=i) for i in range(10)])
        assert store.throttles == 3  # 2 throttled attempts + 1 response with UnprocessedItems
        publish_status(RunnerMetrics().snapshot(), tmp_path / "status.json", store, emf=emitter)
        clock.now += 10
        store.write_batch(trades=[make_trade(seq=20)])  # no more throttling
        publish_status(RunnerMetrics().snapshot(), tmp_path / "status.json", store, emf=emitter)
    finally:
        store.close()
    docs = [parse_emf(line + "\n") for line in out.getvalue().splitlines()]
    assert [values(d)[emf.HOT_WRITE_THROTTLES] for d in docs] == [3, 0]


def test_ingest_delivery_failures_become_producer_errors(tmp_path: Path) -> None:
    """Real librdkafka delivery reports: nothing listens on the bootstrap port, so the message times out
    and the service counts it as failed; the ingest's progress hook turns that into ProducerErrors."""
    settings = Settings(data_dir=tmp_path / "state", kafka_bootstrap="127.0.0.1:1")
    dlq = open_dlq(settings)
    service = IngestService(settings, dlq=dlq, producer_overrides={"message.timeout.ms": 300})
    try:
        service._producer.produce(TRADES, key=b"AAPL", value=b"{}")
        service._producer.flush(10)
    finally:
        dlq.close()
    m = service.metrics
    assert (m.published, m.failed) == (0, 1)
    out = io.StringIO()
    assert emf.EmfEmitter("ingest", stream=out).emit_producer(m.published, m.failed)
    assert values(parse_emf(out.getvalue()))[emf.PRODUCER_ERRORS] == 1
