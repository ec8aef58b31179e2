"""A replaced ECS task against the real broker: a runner stops, its task and local disk disappear, and a
runner with an empty data dir takes its partitions over. It restores each partition's anomaly model from
the checkpoints in the cold store (S3, on moto) and flags exactly what an uninterrupted pass of the core
flags. Every partition stops 20 minutes into the market, past the rebuild's look-back (390 s of features
+ 662 s of the news join's z-score memory), so a model started afresh from the look-back would not be the
uninterrupted one (with checkpoints on the lost local disk, the anomalies differ)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from tests.bus.test_anomaly_restart import ANOMALY, produce_at_receive_times
from tests.bus.test_runner import make_recording, own_group, read_topic
from tests.reliability.harness import anomaly_keys, uninterrupted_outputs
from tradepulse.bus.pipeline import build_runner
from tradepulse.config import Settings
from tradepulse.topics import ANOMALIES

# A 25-minute market (past the rebuild look-back) takes ~2 min: part of `make chaos`, not `make test`
# (the restart test in `make test` covers the checkpoint restore from the local cold store).
pytestmark = [pytest.mark.kafka, pytest.mark.slow]

BUCKET = "tradepulse-cold"
# Refits every minute of market time (as deployed) over a 25-minute market: fewer fits than the restart
# test's 60 (fits dominate its time), still > 20 model versions per partition.
LONG_ANOMALY = {**ANOMALY, "anomaly_refit_interval_s": 60.0}


def test_a_replaced_task_restores_the_anomaly_models_from_the_cold_store(
    kafka_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local = own_group(kafka_settings).model_copy(update={**LONG_ANOMALY, "batch_max_messages": 2000})
    recording = make_recording(duration_s=1500, rate=10)
    # The first task sees the first 20 minutes of every partition (all of them, so that no partition
    # stops early within the look-back), the replacement the rest.
    split = len(recording.events) * 4 // 5
    first_part = produce_at_receive_times(local, recording, slice(None, split))
    cloud = local.model_copy(update={"cold_store": "s3", "s3_bucket": BUCKET})
    with mock_aws():
        boto3.client("s3", region_name=cloud.aws_region).create_bucket(Bucket=BUCKET)
        task = cloud.model_copy(update={"data_dir": tmp_path / "task-1"})
        build_runner(task, instance="replaced-task").run(stop_when=lambda m: m.events_processed >= first_part)
        shutil.rmtree(task.data_dir)  # the task is gone, and its disk with it
        rest = produce_at_receive_times(local, recording, slice(split, None))
        with caplog.at_level(logging.INFO, logger="tradepulse.bus.pipeline"):
            task = cloud.model_copy(update={"data_dir": tmp_path / "task-2"})
            build_runner(task, instance="replaced-task").run(stop_when=lambda m: m.events_processed >= rest)
    expected, _ = uninterrupted_outputs(local, tmp_path / "oracle", LONG_ANOMALY)
    assert len(expected) > 100 and len({a["model_version"] for a in expected}) > 10
    assert anomaly_keys(read_topic(local, ANOMALIES)) == anomaly_keys(expected)
    restored = [r.args for r in caplog.records if "restored at trades offset" in r.getMessage()]
    assert len(restored) == local.topic_partitions and all(offset > 0 for _, offset in restored), restored  # type: ignore[misc]
