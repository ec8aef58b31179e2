"""The bench report's targets table says what a run measured, and nothing it did not."""

from __future__ import annotations

from typing import Any

import pytest

from tradepulse.bench.report import anomaly_models_row, derive, targets_table


def _results(profile: str) -> dict[str, Any]:
    derived = {
        "sustained_events_per_s": 15_000.0,
        "max_lag_s": 0.4,
        "events_lost": 0,
        "lag_s_over_target_after_burst_s": 0.0,
        "e2e_latency_ms": {"p50": 60.0, "p99": 200.0},
        "freshness_ms": {},
        "rss_drift_pct": {"processor": 3.0},
    }
    return {"derived": derived, "config": {"rate": 15_000.0, "profile": profile}, "full_path": {}}


def _burst_row(table: str) -> str:
    (row,) = [line for line in table.splitlines() if line.startswith("| 10× burst")]
    return row


def test_a_flat_run_does_not_report_the_burst_target_as_measured() -> None:
    row = _burst_row(targets_table(_results("flat")))
    assert "not measured" in row and "last lag" not in row


@pytest.mark.parametrize("recovery_s", [0.0, 175.0])
def test_a_market_open_run_reports_when_the_lag_was_back_under_a_second(recovery_s: float) -> None:
    # The figure is the time from t = 60 s to the last sample with ≥ 1 s of lag, not a sum of the
    # samples over it: "for N s" read as a sum (a flat run's one spike at t = 218 s read "for 158 s").
    results = _results("market_open")
    results["derived"]["lag_s_over_target_after_burst_s"] = recovery_s
    row = _burst_row(targets_table(results))
    assert f"last lag ≥ 1 s {recovery_s:.0f} s after t = 60 s" in row and " for " not in row


def _run_with_models(versions: list[int | None]) -> dict[str, Any]:
    """A run's raw results whose runner reported these model versions, one a second."""
    samples = [
        {"t": float(i), "sent": 100 * (i + 1), "high": 100 * (i + 1), "committed": 100 * (i + 1), "lag": 0,
         "write_p99_ms": 1.0, "e2e_window": {}}
        | ({} if version is None else {"model_version": version})
        for i, version in enumerate(versions)
    ]  # fmt: skip
    status = {} if versions[-1] is None else {"model_version": versions[-1]}
    full_path = {"samples": samples, "processes": {}, "process_summary": {}, "reconcile": {"events_lost": 0},
                 "runner_status": status}  # fmt: skip
    return {"full_path": full_path}


def test_the_report_says_from_when_anomaly_models_scored_and_when_none_did() -> None:
    # The detector scores a ticker only after its warm-up and enough training events (~10 min at the
    # defaults): a 10-minute run's `anomaly` stage never scored, which its report must say.
    assert "from t = 6 s" in anomaly_models_row(derive(_run_with_models([0] * 6 + [1, 1, 2])))
    assert "highest model version at the end 2" in anomaly_models_row(
        derive(_run_with_models([0] * 6 + [1, 1, 2]))
    )
    none = anomaly_models_row(derive(_run_with_models([0] * 9)))
    assert "none" in none and "TRADEPULSE_ANOMALY_WARMUP_S" in none and "TRADEPULSE_ANOMALY_MIN_TRAIN" in none
    assert "not recorded" in anomaly_models_row(derive(_run_with_models([None] * 9)))
