"""`tradepulse up` end to end: every service comes up, the broker is visible from another shell, and
after SIGINT no process of the pipeline is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from tests.processes import wait_ended
from tradepulse.bus.local_kafka import free_port
from tradepulse.cli.up import pipeline_services
from tradepulse.config import Settings

pytestmark = pytest.mark.kafka


def test_up_starts_one_processor_per_configured_instance() -> None:
    """TRADEPULSE_PROCESSORS: that many `tradepulse process` instances of the one consumer group, each
    with its own stable --instance (its transactional id and status file)."""
    available = {"simulate", "ingest", "news", "process", "api"}
    one = pipeline_services(available, Settings(processors=1))
    assert [s.name for s in one] == ["simulator", "ingest", "news", "processor", "api"]
    three = pipeline_services(available, Settings(processors=3))
    processors = [s for s in three if s.name.startswith("processor")]
    assert [s.name for s in processors] == ["processor", "processor-1", "processor-2"]
    assert [s.argv[s.argv.index("--instance") + 1] for s in processors] == ["0", "1", "2"]
    assert all(s.argv[3] == "process" for s in processors)


def test_up_starts_everything_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    env = os.environ | {
        "TRADEPULSE_DATA_DIR": str(tmp_path / "state"),
        "TRADEPULSE_API_PORT": str(free_port()),
        "TRADEPULSE_SIMULATOR_WS_PORT": str(free_port()),
        "TRADEPULSE_SIMULATOR_HTTP_PORT": str(free_port()),
        "TRADEPULSE_KAFKA_HEAP": "512m",
        "TRADEPULSE_SIMULATOR_RATE": "500",
    }
    env.pop("TRADEPULSE_KAFKA_BOOTSTRAP", None)
    # The jar cache is shared with the rest of the suite, so this test does not download Kafka again.
    (tmp_path / "state").mkdir()
    repo_cache = Path(__file__).resolve().parents[1] / ".tradepulse" / "kafka-libs"
    (tmp_path / "state" / "kafka-libs").symlink_to(repo_cache)

    up = subprocess.Popen(
        [sys.executable, "-m", "tradepulse.cli.main", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line.rstrip())
            if "pipeline up in" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(180), "pipeline did not come up:\n" + "\n".join(lines[-40:])
        assert any("kafka 3.9.1 ready on" in line for line in lines)
        assert any("topic market.trades" in line for line in lines)

        status = subprocess.run(
            [sys.executable, "-m", "tradepulse.cli.main", "kafka", "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert "market.trades" in status.stdout and "market.news" in status.stdout

        descendants = psutil.Process(up.pid).children(recursive=True)
        assert any("kafka.Kafka" in " ".join(p.cmdline()) for p in descendants), "broker is not a child of up"
        # Every service of the pipeline is a `tradepulse <command>` child of up.
        commands = {p.cmdline()[3] for p in descendants if p.cmdline()[1:3] == ["-m", "tradepulse.cli.main"]}
        assert commands == {"simulate", "ingest", "news", "process", "api"}, commands
    finally:
        up.send_signal(signal.SIGINT)
        exit_code = up.wait(120)

    assert exit_code == 0, "\n".join(lines[-40:])
    left = wait_ended(descendants, within_s=10)
    assert not left, f"processes left after Ctrl-C: {[p.cmdline() for p in left]}"
    assert any("all processes ended" in line for line in lines)
