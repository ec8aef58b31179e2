"""A first deploy with placeholder provider keys: ingest/news wait for the key instead of exiting.

Before, ingest authenticated with the placeholder, got `auth_failed` and exited with code 2; on ECS the
deployment circuit breaker then rolled the whole stack back, so "deploy, then put-secret-value" could
not work. Now a placeholder is re-read from the secret (moto Secrets Manager here) until it is real.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tradepulse.config import Settings
from tradepulse.sources.api_keys import PLACEHOLDER, PlaceholderKeyError, read_secret_key, wait_for_api_key
from tradepulse.sources.simulator import SimulatorConfig, run_simulator_in_thread

REGION = "us-east-1"
REAL_KEY = "real-massive-key-123"


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """(Secrets Manager client, ARN) of a secret created as the stack creates it: placeholders."""
    import boto3
    from moto import mock_aws

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("secretsmanager", region_name=REGION)
        placeholders = json.dumps({"MASSIVE_API_KEY": PLACEHOLDER, "FINNHUB_API_KEY": PLACEHOLDER})
        yield client, client.create_secret(Name="tradepulse-api-keys", SecretString=placeholders)["ARN"]


def test_a_placeholder_key_is_re_read_with_backoff_until_it_is_set(
    secret: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    client, arn = secret
    settings = Settings(
        massive_api_key=SecretStr(PLACEHOLDER),
        api_keys_secret_id=arn,
        aws_region=REGION,
        api_key_wait_max_s=25,
    )
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:  # the operator runs put-secret-value while the service waits
            client.put_secret_value(
                SecretId=arn, SecretString=json.dumps({"MASSIVE_API_KEY": REAL_KEY, "FINNHUB_API_KEY": "f"})
            )

    with caplog.at_level(logging.INFO):
        ready = wait_for_api_key(settings, "MASSIVE_API_KEY", sleep=sleep)
    assert ready.massive_api_key is not None and ready.massive_api_key.get_secret_value() == REAL_KEY
    assert slept == [10.0, 20.0, 25.0]  # doubling, capped
    assert caplog.text.count("waiting for API key: MASSIVE_API_KEY") == 3
    assert REAL_KEY not in caplog.text


def test_read_errors_do_not_end_the_wait(secret: tuple[Any, str]) -> None:
    _, arn = secret
    settings = Settings(finnhub_api_key=SecretStr(PLACEHOLDER), api_keys_secret_id=arn, aws_region=REGION)
    answers: list[Any] = [RuntimeError("throttled"), SecretStr(PLACEHOLDER), SecretStr("finnhub-key")]

    def read(*_args: Any) -> SecretStr:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    ready = wait_for_api_key(settings, "FINNHUB_API_KEY", sleep=lambda _s: None, read=read)
    assert ready.finnhub_api_key is not None and ready.finnhub_api_key.get_secret_value() == "finnhub-key"
    assert answers == []


def test_real_or_missing_keys_pass_through_and_a_placeholder_without_a_secret_is_an_error(
    secret: tuple[Any, str],
) -> None:
    real = Settings(massive_api_key=SecretStr(REAL_KEY))
    assert wait_for_api_key(real, "MASSIVE_API_KEY", sleep=pytest.fail) is real
    local = Settings(massive_api_key=None)
    assert wait_for_api_key(local, "MASSIVE_API_KEY", sleep=pytest.fail) is local  # the simulator
    with pytest.raises(PlaceholderKeyError, match="MASSIVE_API_KEY is the placeholder"):
        wait_for_api_key(Settings(massive_api_key=SecretStr(PLACEHOLDER)), "MASSIVE_API_KEY")
    _, arn = secret
    assert read_secret_key(arn, "MASSIVE_API_KEY", REGION).get_secret_value() == PLACEHOLDER  # type: ignore[union-attr]


@pytest.mark.kafka
def test_ingest_with_the_placeholder_key_stays_up_waiting(kafka_bootstrap: str, tmp_path: Path) -> None:
    """`tradepulse ingest` as ECS starts it on a first deploy (MASSIVE_API_KEY = the placeholder, the
    feed answers auth_failed to it): it must stay up, waiting, not exit (before: exit code 2)."""
    config = SimulatorConfig(
        seed=1, tickers=["AAPL"], api_key="the-real-key", ws_port=0, http_port=0, rate=50
    )
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEPULSE_", "MASSIVE_", "FINNHUB_"))}
    with run_simulator_in_thread(config) as sim:
        env = keep | {
            "MASSIVE_API_KEY": PLACEHOLDER,
            "TRADEPULSE_MASSIVE_WS_URL": sim.ws_url + "/stocks",
            "TRADEPULSE_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "TRADEPULSE_DATA_DIR": str(tmp_path / "state"),
            "TRADEPULSE_TICKERS": '["AAPL"]',
            "TRADEPULSE_INGEST_BACKFILL_MAX_S": "0",
            # Secrets Manager unreachable here: the service keeps waiting (and says why).
            "TRADEPULSE_API_KEYS_SECRET_ID": "arn:aws:secretsmanager:us-east-1:123456789012:secret:keys",
            "TRADEPULSE_API_KEY_WAIT_INITIAL_S": "0.5",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": "http://127.0.0.1:9",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "tradepulse.cli.main", "ingest", "--progress-s", "0"],
            env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            time.sleep(6)
            alive = process.poll() is None
        finally:
            process.terminate()
            _, stderr = process.communicate(timeout=30)
    assert alive, f"exited with {process.returncode}: {stderr[-1500:]}"
    assert "waiting for API key: MASSIVE_API_KEY" in stderr
