"""`tradepulse simulate` as a command: a bounded run serves, reports progress and writes ground truth."""

from __future__ import annotations

from pathlib import Path

import orjson
from click.testing import CliRunner

from tradepulse.cli.simulate import simulate


def test_bounded_run_writes_ground_truth_and_exits(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    result = CliRunner().invoke(
        simulate,
        [
            "--ws-port",
            "0",
            "--http-port",
            "0",
            "--duration",
            "1",
            "--rate",
            "500",
            "--backfill-news",
            "3",
            "--ground-truth",
            str(truth),
            "--progress-every",
            "0.2",
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "/stocks" in result.output and "/company-news" in result.output
    assert "ev/s" in result.output and "simulator: stopped" in result.output
    records = [orjson.loads(line) for line in truth.read_bytes().splitlines()]
    assert [r["type"] for r in records] == ["news"] * 3 and all(r["backfill"] for r in records)
