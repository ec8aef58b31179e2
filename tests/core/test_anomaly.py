"""AnomalyDetector: warm-up, detection of injected spikes and jumps, refits and atomic swaps,
flagged rows kept out of training, and the Anomaly dict contract."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

import tradepulse.core.anomaly as anomaly_mod
from tradepulse.core.anomaly import (
    MODEL_FEATURES,
    AnomalyConfig,
    AnomalyDetector,
    CompiledForest,
    model_matrix,
)
from tradepulse.core.columns import QuoteColumns, TradeColumns
from tradepulse.core.features import FeatureEngine
from tradepulse.ids import stable_id
from tradepulse.models import Anomaly

T0 = 1_700_000_000_000
# Defaults except smaller forests and training windows (faster fits): warm after 300 s, first model
# after 300 one-per-second training events, then refits every 100 on the last 400.
CFG = AnomalyConfig(n_estimators=50, refit_every=100, train_size=400)


def market(
    seconds: int, seed: int, spike_at: int | None = None, jump_at: int | None = None
) -> list[TradeColumns]:
    """Five-second batches of two tickers at ~15 trades/s each. Optional: X trades 5× as often with
    30× the size for 4 s from `spike_at`; Y jumps +4 % at `jump_at`."""
    rng = np.random.default_rng(seed)
    price = {"X": 50.0, "Y": 80.0}
    batches, rows, seq = [], [], 0
    for s in range(seconds):
        for ticker in ("X", "Y"):
            spiking = ticker == "X" and spike_at is not None and spike_at <= s < spike_at + 4
            n = rng.poisson(75 if spiking else 15)
            if ticker == "Y" and s == jump_at:
                price["Y"] *= 1.04
            for ts in np.sort(rng.integers(0, 1000, n)):
                price[ticker] *= float(np.exp(rng.normal(0, 2e-5)))  # ~25 % a year
                seq += 1
                size = float(rng.choice([10, 50, 100, 200])) * (30.0 if spiking else 1.0)
                rows.append({"ticker": ticker, "price": round(price[ticker], 4), "size": size,
                             "exchange_ts_ms": T0 + 1000 * s + int(ts), "sequence": seq, "event_id": f"{ticker}{seq}"})  # fmt: skip
        if s % 5 == 4 or s == seconds - 1:
            rows.sort(key=lambda r: r["exchange_ts_ms"])
            batches.append(TradeColumns.from_records(rows))
            rows = []
    return batches


def run(
    detector: AnomalyDetector, batches: list[TradeColumns], engine: FeatureEngine | None = None
) -> list[dict]:
    engine = engine or FeatureEngine()
    flags = []
    for trades in batches:
        flags += detector.score(engine.process(trades, QuoteColumns.empty()).per_trade)
        detector.wait_for_refits()
    return flags


@pytest.fixture(scope="module")
def spiked() -> tuple[AnomalyDetector, list[dict]]:
    detector = AnomalyDetector(CFG)
    flags = run(detector, market(700, seed=3, spike_at=660, jump_at=680))
    yield detector, flags
    detector.close()


def test_no_flags_before_warm_up() -> None:
    """The first 60 s of a ticker are never scored, and after that nothing is flagged before a model
    fitted on `min_train` training events exists, however extreme: here a spike across the end of the
    warm-up, with 50 training events by the end."""
    detector = AnomalyDetector(CFG)
    engine = FeatureEngine()
    assert run(detector, market(590, seed=1, spike_at=298), engine) == []
    assert detector.model_version == 0 and detector.model_for("X") is None
    assert 0 < len(detector.training_rows("X")) < CFG.min_train
    detector.close()


def test_injected_spike_and_jump_are_flagged(spiked: tuple[AnomalyDetector, list[dict]]) -> None:
    _, flags = spiked
    spike = [a for a in flags if a["ticker"] == "X" and T0 + 660_000 <= a["ts_ms"] < T0 + 665_000]
    jump = [a for a in flags if a["ticker"] == "Y" and T0 + 680_000 <= a["ts_ms"] < T0 + 683_000]
    assert len(spike) >= 100 and len(jump) >= 1
    quiet = [a for a in flags if a["ts_ms"] < T0 + 660_000]
    # Contamination 0.01 flags ~1 % of the training distribution; fresh ordinary trades (2 tickers ×
    # 15/s over the ~60 s scored before the spike) a few %; the spike (75 trades/s for 4 s) far more.
    ordinary = 2 * 15 * 60
    assert len(quiet) < 0.05 * ordinary
    assert len(spike) / (4 * 75) > 10 * len(quiet) / ordinary


def test_anomaly_dicts_follow_the_contract(spiked: tuple[AnomalyDetector, list[dict]]) -> None:
    detector, flags = spiked
    for a in flags:
        Anomaly.model_validate(a)
        assert a["anomaly_id"] == stable_id(a["ticker"], a["ts_ms"], a["event_id"])
        assert a["anomaly_score"] < a["threshold"]
        assert set(MODEL_FEATURES) <= set(a["feature_vector"])
        assert 1 <= a["model_version"] <= detector.model_version


def test_flagged_rows_are_not_learned_from(spiked: tuple[AnomalyDetector, list[dict]]) -> None:
    detector, flags = spiked
    training = detector.training_rows("X")
    assert CFG.min_train <= len(training) <= CFG.train_size
    flagged_x = model_matrix({k: np.array([a["feature_vector"][k] for a in flags if a["ticker"] == "X"])
                              for k in (*MODEL_FEATURES, "rolling_avg_5min")})  # fmt: skip
    learned = {tuple(row) for row in training}
    assert not any(tuple(row) in learned for row in flagged_x)
    # The spike rows were flagged, so no training row has a spike-sized volume.
    assert training[:, 1].max() < max(a["feature_vector"]["volume"] for a in flags if a["ticker"] == "X")


def test_refit_runs_off_the_scoring_path_and_swaps_atomically(monkeypatch: pytest.MonkeyPatch) -> None:
    """While a refit is stuck, scoring still returns (with the old model); once it finishes, the new
    model is swapped in whole and `model_version` increments."""
    release = threading.Event()
    fitting = threading.Event()
    real = anomaly_mod.IsolationForest

    class SlowForest(real):  # type: ignore[misc, valid-type]
        def fit(self, *args, **kwargs):
            if slow:
                fitting.set()
                assert release.wait(30)
            return super().fit(*args, **kwargs)

    slow = False
    monkeypatch.setattr(anomaly_mod, "IsolationForest", SlowForest)
    detector = AnomalyDetector(replace(CFG, n_estimators=20, refit_every=20))
    engine = FeatureEngine()
    batches = market(700, seed=5)
    run(detector, batches[:130], engine)
    before = detector.model_version
    old_model = detector.model_for("X")
    assert before >= 1 and old_model is not None

    slow = True
    started = time.perf_counter()
    scored = 0
    for trades in batches[130:]:  # enough rows to make refits due; none may block
        out = engine.process(trades, QuoteColumns.empty())
        detector.score(out.per_trade)
        scored += len(out.per_trade["ts_ms"])
    assert fitting.wait(30)
    assert time.perf_counter() - started < 20 and scored > 500
    assert detector.model_version == before  # nothing swapped while the fit is stuck
    assert detector.model_for("X") is old_model
    release.set()
    detector.wait_for_refits()
    assert detector.model_version > before
    new_model = detector.model_for("X")
    assert new_model is not old_model and new_model.version > old_model.version
    assert new_model.threshold == new_model.forest.forest.offset_
    detector.close()


def test_modes_pooled_by_default_or_one_model_per_ticker() -> None:
    for per_ticker in (False, True):
        detector = AnomalyDetector(replace(CFG, n_estimators=30, per_ticker=per_ticker))
        flags = run(detector, market(640, seed=7, spike_at=630))
        x, y = detector.model_for("X"), detector.model_for("Y")
        assert x is not None and y is not None and (x is y) is not per_ticker
        assert any(a["ticker"] == "X" and a["ts_ms"] >= T0 + 630_000 for a in flags)
        detector.close()
    assert AnomalyConfig().per_ticker is False


@pytest.mark.parametrize("rows", [1, 7, 300, CompiledForest.SMALL_BATCH + 1])
def test_compiled_forest_scores_exactly_like_sklearn(rows: int) -> None:
    rng = np.random.default_rng(rows)
    forest = anomaly_mod.IsolationForest(n_estimators=30, contamination=0.01, random_state=1)
    forest.fit(rng.standard_normal((500, 6)))
    x = rng.standard_normal((rows, 6)) * 3
    assert np.array_equal(CompiledForest(forest).score_samples(x), forest.score_samples(x))
