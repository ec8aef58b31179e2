"""`tradepulse conditions refresh` and the simulator's `/v3/reference/conditions`, over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from massive import RESTClient
from pydantic import SecretStr

from tradepulse.cli.conditions import conditions
from tradepulse.config import get_settings
from tradepulse.core.conditions import ConditionRules, read_snapshot
from tradepulse.sources.conditions_refresh import ConditionsRefreshError, fetch_conditions
from tradepulse.sources.simulator import SimulatorConfig, SimulatorHandle, run_simulator_in_thread

KEY = "conditions-test-key"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    handle = run_simulator_in_thread(
        SimulatorConfig(seed=5, tickers=["AAPL"], api_key=KEY, ws_port=0, http_port=0, rate=200)
    )
    yield handle
    handle.stop()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, sim: SimulatorHandle) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("MASSIVE_API_KEY", KEY)
    monkeypatch.setenv("TRADEPULSE_MASSIVE_REST_URL", sim.rest_base_url)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_the_official_client_pages_through_the_simulators_table(sim: SimulatorHandle) -> None:
    official = RESTClient(api_key=KEY, base=sim.rest_base_url, retries=0)
    listed = list(official.list_conditions(asset_class="stocks", data_type="trade", limit=7))
    want = read_snapshot()["results"]
    assert [c.id for c in listed] == [r["id"] for r in want] and len(want) > 7  # several pages
    by_id = {c.id: c for c in listed}
    official_close = by_id[15].update_rules.consolidated
    assert (official_close.updates_volume, official_close.updates_high_low) == (False, False)
    assert by_id[2].sip_mapping.CTA == "B" and by_id[2].name == "Average Price Trade"


def test_fetch_pages_and_matches_the_snapshot(sim: SimulatorHandle) -> None:
    lines: list[str] = []
    body = fetch_conditions(sim.rest_base_url, SecretStr(KEY), page_limit=10, progress=lines.append)
    assert body["results"] == read_snapshot()["results"]
    assert len(lines) == -(-len(body["results"]) // 10) and lines[0].startswith("page 1: 10 conditions")


def test_refresh_round_trips_the_snapshot_through_the_simulator(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "conditions.json"
    result = CliRunner().invoke(conditions, ["refresh", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "page 1:" in result.output and f"wrote {read_snapshot()['count']} conditions" in result.output
    written = json.loads(out.read_text())
    assert written["results"] == read_snapshot()["results"]
    assert set(written["snapshot"]["row_sources"].values()) == {"api"}
    assert "refresh from http://" in written["snapshot"]["produced_by"]
    assert ConditionRules.from_response(written).rules == ConditionRules.bundled().rules


def test_refresh_errors_are_clear(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = tmp_path / "conditions.json"
    env.setenv("MASSIVE_API_KEY", "wrong")
    get_settings.cache_clear()
    result = CliRunner().invoke(conditions, ["refresh", "--out", str(out)])
    assert result.exit_code == 1 and "HTTP 401: Unknown API Key" in result.output and not out.exists()
    env.delenv("MASSIVE_API_KEY")
    env.delenv("POLYGON_API_KEY", raising=False)
    get_settings.cache_clear()
    result = CliRunner().invoke(conditions, ["refresh", "--out", str(out)])
    assert result.exit_code == 2 and "MASSIVE_API_KEY is not set" in result.output
    with pytest.raises(ConditionsRefreshError, match="ConnectError"):
        fetch_conditions("http://127.0.0.1:9", SecretStr(KEY), timeout_s=2)
