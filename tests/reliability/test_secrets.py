"""Secrets: the whole pipeline (ingest, news, runner, API) runs at DEBUG log level with recognisable fake
API keys, each accepted by a simulator; afterwards neither key appears in any process's output (stdout
and stderr, which is where every log line goes) nor in any file under the data dir."""

from __future__ import annotations

import secrets
import time
import urllib.request
from pathlib import Path

import pytest

from tests.reliability.harness import TICKERS, Services, child_env, committed_total, wait_until
from tradepulse.bus.admin import recreate_topics
from tradepulse.bus.local_kafka import free_port
from tradepulse.config import Settings
from tradepulse.sources.simulator import SimulatorConfig, run_simulator_in_thread

pytestmark = pytest.mark.kafka


def test_api_keys_appear_in_no_log_line_and_no_file(kafka_bootstrap: str, tmp_path: Path) -> None:
    massive_key = f"MASSIVE-LEAKCHECK-{secrets.token_hex(8)}"
    finnhub_key = f"FINNHUB-LEAKCHECK-{secrets.token_hex(8)}"
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        data_dir=tmp_path / "state",
        topic_partitions=3,
        consumer_group="secrets",
        tickers=TICKERS,
    )
    recreate_topics(settings)
    common = {"tickers": TICKERS, "ws_port": 0, "http_port": 0, "rate": 500, "news_interval_s": 2.0}
    feed = run_simulator_in_thread(SimulatorConfig(seed=3, api_key=massive_key, **common))
    news = run_simulator_in_thread(SimulatorConfig(seed=4, api_key=finnhub_key, backfill_news=10, **common))
    api_port = free_port()
    env = child_env(
        settings,
        MASSIVE_API_KEY=massive_key,
        FINNHUB_API_KEY=finnhub_key,
        TRADEPULSE_LOG_LEVEL="DEBUG",
        TRADEPULSE_NEWS_POLL_INTERVAL_S="1",
        TRADEPULSE_API_PORT=str(api_port),
    )
    services = Services(tmp_path / "logs", env)
    try:
        services.start("ingest", "ingest", "--url", feed.ws_url + "/stocks", "--progress-s", "1")
        services.start("news", "news", "--base-url", news.news_base_url, "--progress-s", "1")
        services.start("runner", "process", "--instance", "0", "--progress-s", "1")
        services.start("api", "api")
        wait_until(lambda: committed_total(settings) > 2000, 90, "the runner to commit", services.check_alive)
        wait_until(
            lambda: "published=0 " not in _last_progress(services, "news"), 60, "news", services.check_alive
        )
        base = f"http://127.0.0.1:{api_port}"
        wait_until(lambda: _get(base + "/health") is not None, 60, "the API", services.check_alive)
        for path in ("/health", "/metrics", "/tickers", "/quotes/AAPL", "/history/AAPL", "/correlations"):
            _get(base + path)
        time.sleep(1)
        for name in ("ingest", "news", "runner"):
            assert services.stop(name) == 0, services.tail(name)
        # uvicorn shuts down gracefully, then re-raises the SIGTERM it handled.
        assert services.stop("api") in (0, -15)
        assert "Application shutdown complete" in services.tail("api")
    finally:
        services.stop_all()
        feed.stop()
        news.stop()

    outputs = sorted((tmp_path / "logs").glob("*.log"))
    data_files = [p for p in settings.data_dir.rglob("*") if p.is_file()]
    # The scan looks at something: every service said things (DEBUG), the data dir is populated.
    assert len(outputs) == 4 and all(p.stat().st_size > 200 for p in outputs)
    names = {p.name for p in data_files}
    assert {"hot.sqlite3", "runner-status.json"} <= names
    assert any(p.suffix == ".parquet" for p in data_files)
    leaks = [
        (str(path), key_name)
        for path in [*outputs, *data_files]
        for key_name, key in (("MASSIVE_API_KEY", massive_key), ("FINNHUB_API_KEY", finnhub_key))
        if key.encode() in path.read_bytes()
    ]
    assert leaks == []


def _last_progress(services: Services, name: str) -> str:
    lines = [line for line in services.tail(name, 200).splitlines() if line.startswith(f"[{name}] rounds")]
    return lines[-1] if lines else "published=0 "


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except OSError:
        return None
