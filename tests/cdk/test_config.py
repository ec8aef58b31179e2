"""Deployment settings from cdk.json context (no synthesis)."""

from __future__ import annotations

import pytest

from cdk.config import load_config
from tests.cdk.conftest import cdk_context


def config_of(**context):  # type: ignore[no-untyped-def]
    ctx = cdk_context(**context)
    return load_config(ctx.get)


def test_dev_is_the_default_and_prod_is_bigger() -> None:
    dev, prod = config_of(), config_of(env="prod")
    assert dev.name == "dev" and prod.name == "prod"
    assert dev.nat_gateways == 1 and prod.nat_gateways == 2
    assert prod.processor.max_tasks > dev.processor.max_tasks
    assert prod.retain_data and not dev.retain_data
    assert prod.stack_name == "TradePulse-prod" and prod.glue_database == "tradepulse_prod"


def test_single_values_are_overridable_from_the_command_line() -> None:
    config = config_of(env="prod", natGateways="1", alarmEmail="oncall@example.com", tickers="AAPL,MSFT")
    assert config.nat_gateways == 1
    assert config.alarm_email == "oncall@example.com"
    assert config_of().alarm_https_endpoint is None and config_of().runbook_url is None
    paging = config_of(alarmHttpsEndpoint="https://events.example.com/x", runbookUrl="https://git/runbook.md")
    assert (paging.alarm_https_endpoint, paging.runbook_url) == (
        "https://events.example.com/x",
        "https://git/runbook.md",
    )
    assert config.tickers == ("AAPL", "MSFT")


def test_unknown_environment_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown environment 'staging'"):
        config_of(env="staging")


def test_more_processors_than_partitions_is_rejected() -> None:
    ctx = cdk_context()
    ctx["tradepulse:environments"]["dev"]["processor"]["maxTasks"] = 99
    with pytest.raises(ValueError, match="maxTasks"):
        load_config(ctx.get)


def test_cost_knobs() -> None:
    config = config_of(dynamodbTrades="all", batchMaxWaitMs="100")
    assert (config.dynamodb_trades, config.batch_max_wait_ms) == ("all", 100)
    assert config_of().dynamodb_trades == "latest"
    with pytest.raises(ValueError, match="dynamodbTrades"):
        config_of(dynamodbTrades="some")
