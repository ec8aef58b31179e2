"""`tradepulse query` and `tradepulse dlq list|archive|redrive` on real local stores."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.stores.conftest import BASE_MS, make_trade
from tradepulse import topics
from tradepulse.cli.storage import dlq, query
from tradepulse.config import Settings, get_settings
from tradepulse.stores.dlq import make_dead_letter
from tradepulse.stores.factory import open_cold_store, open_dlq


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("TRADEPULSE_DATA_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_query_prints_a_table(settings: Settings) -> None:
    cold = open_cold_store(settings)
    trades = [make_trade("NVDA", seq=o, price=10.0 + o) for o in range(3)]
    cold.append_batch(topics.TRADES, trades, [(0, o) for o in range(3)])
    cold.close()
    result = CliRunner().invoke(
        query, ["SELECT ticker, COUNT(*) AS n, MAX(price) AS hi FROM trades GROUP BY ticker"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["ticker", "n", "hi", "NVDA", "3", "12.0"]
    csv = CliRunner().invoke(query, ["--format", "csv", "SELECT COUNT(*) AS n FROM trades"])
    assert csv.output == "n\n3\n"
    bad = CliRunner().invoke(query, ["SELECT nope FROM trades"])
    assert bad.exit_code != 0 and "nope" in bad.output


def test_dlq_list_and_archive(settings: Settings) -> None:
    queue = open_dlq(settings)
    queue.put([make_dead_letter(stage="ingest", payload="{bad", reason="invalid JSON", now_s=BASE_MS / 1000)])
    queue.close()
    listed = CliRunner().invoke(dlq, ["list"])
    assert listed.exit_code == 0, listed.output
    assert "1 pending" in listed.output and "invalid JSON" in listed.output
    archived = CliRunner().invoke(dlq, ["archive"])
    assert archived.output.strip() == "archived 1"
    assert "0 pending" in CliRunner().invoke(dlq, ["list"]).output
    assert "archived" in CliRunner().invoke(dlq, ["list", "--status", "all"]).output
    out = CliRunner().invoke(query, ["SELECT reason FROM dead_letter_archive"])
    assert "invalid JSON" in out.output


def test_dlq_redrive_leaves_permanent_ingest_letters_with_their_reason(settings: Settings) -> None:
    """Issue 16's reproduction: `dlq redrive --force` on ingest letters (a negative price, NaN, a missing id,
    bad JSON) replaced each reason with "letter has no source topic"; they are permanent now."""
    rejects = {
        "field 'p' must be > 0, got -1.0": '{"ev":"T","sym":"AAPL","p":-1.0}',
        "field 'p' must be a finite number, got nan": '{"ev":"T","sym":"AAPL","p":NaN}',
        "missing field 'i'": '{"ev":"T","sym":"AAPL"}',
        "bad JSON frame: unexpected character": "[{bad",
    }
    queue = open_dlq(settings)
    queue.put(
        [
            make_dead_letter(
                stage="ingest", payload=p, error_type="InvalidEvent", reason=r, now_s=BASE_MS / 1000
            )
            for r, p in rejects.items()
        ]
    )
    queue.close()
    result = CliRunner().invoke(dlq, ["redrive", "--force"])
    assert result.exit_code == 0, result.output
    assert "redriven 0, failed 0, archived 0, not due 0, permanent (not redriven) 4" in result.output
    listed = CliRunner().invoke(dlq, ["list", "--class", "permanent", "--history"])
    assert "4 pending (0 transient, 4 permanent)" in listed.output
    for reason in rejects:
        assert reason in listed.output
    assert "no source topic" not in listed.output
    assert CliRunner().invoke(dlq, ["archive", "--class", "transient"]).output.strip() == "archived 0"
    assert CliRunner().invoke(dlq, ["archive", "--class", "permanent"]).output.strip() == "archived 4"
