"""`tradepulse bench` is part of the package: it runs without the checkout on sys.path, and only its
faust/Quix peers (benchmarks/peers/, their own venv) need the checkout: without them it says so before
starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from tradepulse.cli.bench import parse_variant
from tradepulse.cli.main import cli


def test_missing_peers_fail_fast_with_a_clear_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["bench", "--peers-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code != 0
    assert "benchmark peers not found" in result.output and "--no-peers" in result.output
    assert not (tmp_path / "out").exists()  # nothing was started


def test_bench_imports_no_checkout_module(tmp_path: Path) -> None:
    """From a folder that is not the checkout, with the checkout off sys.path, the bench modules import
    (`scripts` is not importable there, so an import of it would fail)."""
    code = (
        "import sys, importlib\n"
        "sys.path = [p for p in sys.path if p not in ('', '.')]\n"
        "for m in ('harness', 'report', 'drain', 'drain_ours', 'simproc', 'sampling', 'join_quality'):\n"
        "    importlib.import_module('tradepulse.bench.' + m)\n"
        "assert 'scripts' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)


def test_variants_are_parsed_and_malformed_ones_rejected_before_anything_starts(tmp_path: Path) -> None:
    assert parse_variant("linger10:TRADEPULSE_BATCH_LINGER_MS=10,TRADEPULSE_BATCH_MAX_MESSAGES=500") == (
        "linger10",
        {"TRADEPULSE_BATCH_LINGER_MS": "10", "TRADEPULSE_BATCH_MAX_MESSAGES": "500"},
    )
    for bad in ("linger10", "linger10:", "x:KEY", "not a name:K=V", ":K=V"):
        result = CliRunner().invoke(
            cli, ["bench", "--no-peers", "--variant", bad, "--out", str(tmp_path / "out")]
        )
        assert result.exit_code != 0 and "NAME:KEY=VALUE" in result.output, bad
        assert not (tmp_path / "out").exists()
