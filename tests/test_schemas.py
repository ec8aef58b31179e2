"""The committed JSON Schemas are exactly what the pydantic models generate, and real payloads of
every topic validate against them."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.paths import REPO_ROOT
from tradepulse.ids import trade_event_id
from tradepulse.schemas import schema_documents

SCHEMA_DIR = REPO_ROOT / "schemas"


@pytest.mark.parametrize("name", sorted(schema_documents()))
def test_committed_schema_matches_model(name: str) -> None:
    committed = SCHEMA_DIR / name
    assert committed.exists(), f"{committed} missing: run `tradepulse schemas`"
    assert committed.read_text() == schema_documents()[name], f"{name} is stale: run `tradepulse schemas`"


def test_trade_payload_validates_and_bad_one_does_not() -> None:
    schema = json.loads((SCHEMA_DIR / "market.trades.json").read_text())
    trade = {
        "event_id": trade_event_id("AAPL", 4, "1", 1_700_000_000_000, 7),
        "ticker": "AAPL",
        "price": 190.5,
        "size": 100,
        "exchange": 4,
        "trade_id": "1",
        "tape": 3,
        "conditions": [12],
        "sequence": 7,
        "exchange_ts_ms": 1_700_000_000_000,
        "received_ts_us": 1_700_000_000_001_000,
    }
    jsonschema.validate(trade, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(trade | {"price": 0}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in trade.items() if k != "ticker"}, schema)
