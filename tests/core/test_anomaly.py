"""AnomalyDetector: warm-up, detection of injected spikes and jumps, refits at event-time points with
a deterministic effective point, flagged rows kept out of training, the Anomaly dict contract, and
determinism: the same trades in any batch split, at any fit speed and across a restart from a
checkpoint give exactly the same anomalies."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

import tradepulse.core.anomaly_model as anomaly_model
from tradepulse.core.anomaly import (
    MODEL_FEATURES,
    AnomalyConfig,
    AnomalyDetector,
    Checkpoint,
    anomaly_id,
    model_matrix,
    row_keys,
)
from tradepulse.core.columns import QuoteColumns, TradeColumns
from tradepulse.core.features import FeatureConfig, FeatureEngine
from tradepulse.models import Anomaly

T0 = 1_700_000_000_000
# Defaults except smaller forests and training windows (faster fits): warm after 300 s, a model once
# a ticker has 300 one-per-second training events, refits every 30 s of market time on the last 400,
# each used from 5 s after its refit point.
CFG = AnomalyConfig(n_estimators=50, train_size=400, refit_interval_ms=30_000, refit_delay_ms=5_000)
# Faster still for the determinism tests: ten training events per second, warm after 60 s, so a
# 4-minute market sees ~10 model versions.
FAST = replace(
    CFG, n_estimators=30, warmup_ms=60_000, sample_ms=100, refit_interval_ms=15_000, refit_delay_ms=3_000
)
STREAM_OF = {"X": 0, "Y": 1}  # as if X and Y were keyed to two partitions


def market_rows(
    seconds: int, seed: int, spike_at: int | None = None, jump_at: int | None = None
) -> list[dict]:
    """Two tickers at ~15 trades/s each, in arrival order (sorted within five-second chunks).
    Optional: X trades 5× as often with 30× the size for 4 s from `spike_at`; Y jumps +4 % at
    `jump_at`."""
    rng = np.random.default_rng(seed)
    price = {"X": 50.0, "Y": 80.0}
    out, rows, seq = [], [], 0
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
            out += rows
            rows = []
    return out


def split(rows: list[dict], sizes: list[int] | None = None) -> list[TradeColumns]:
    """Batches of the given sizes (the last one takes the rest); five seconds each by default."""
    if sizes is None:
        cuts = [
            i
            for i in range(1, len(rows))
            if rows[i]["exchange_ts_ms"] // 5000 != rows[i - 1]["exchange_ts_ms"] // 5000
        ]
    else:
        cuts = list(np.cumsum(sizes))
    bounds = [0, *[c for c in cuts if 0 < c < len(rows)], len(rows)]
    return [TradeColumns.from_records(rows[a:b]) for a, b in itertools.pairwise(bounds) if b > a]


def market(
    seconds: int, seed: int, spike_at: int | None = None, jump_at: int | None = None
) -> list[TradeColumns]:
    return split(market_rows(seconds, seed, spike_at, jump_at))


def positions(rows: list[dict]) -> dict[str, tuple[int, int]]:
    """event id -> (stream, offset): each ticker's rows in order on its own stream."""
    counts = {0: 0, 1: 0}
    out = {}
    for row in rows:
        stream = STREAM_OF[row["ticker"]]
        out[row["event_id"]] = (stream, counts[stream])
        counts[stream] += 1
    return out


def run(
    detector: AnomalyDetector,
    batches: list[TradeColumns],
    engine: FeatureEngine | None = None,
    where: dict[str, tuple[int, int]] | None = None,
    wait: bool = True,
) -> list[dict]:
    """Features then scores, batch by batch; with `where`, rows carry their stream and offset."""
    engine = engine or FeatureEngine()
    flags = []
    for trades in batches:
        per_trade = engine.process(trades, QuoteColumns.empty()).per_trade
        if where is not None and len(per_trade["ts_ms"]):
            stream, offset = zip(*(where[e] for e in per_trade["event_id"]), strict=True)
            per_trade = per_trade | {"stream": np.array(stream), "offset": np.array(offset)}
        flags += detector.score(per_trade)
        if wait:
            detector.wait_for_refits()
    return flags


def identity(flags: list[dict]) -> list[tuple]:
    """What must be equal between two runs: ids, scores, thresholds and versions, in any order."""
    return sorted((a["anomaly_id"], a["anomaly_score"], a["threshold"], a["model_version"]) for a in flags)


@pytest.fixture(scope="module")
def spiked() -> tuple[AnomalyDetector, list[dict]]:
    detector = AnomalyDetector(CFG)
    flags = run(detector, market(700, seed=3, spike_at=660, jump_at=680))
    yield detector, flags
    detector.close()


def test_no_flags_before_warm_up() -> None:
    """The first 300 s of a ticker are never scored, and after that nothing is flagged before a model
    fitted on `min_train` training events exists, however extreme: here a spike across the end of the
    warm-up, with ~290 training events by the end."""
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
        assert a["anomaly_id"] == anomaly_id(a["ticker"], a["ts_ms"], a["event_id"], a["model_version"])
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


def test_a_refit_is_used_from_its_effective_point_and_waited_for_only_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The refit due at market time T is fitted off the scoring path: while it is stuck, batches up to
    T + refit_delay score with the old model and return; the batch that reaches T + refit_delay waits
    for it, and every row from that point on carries the new version."""
    release = threading.Event()
    fitting = threading.Event()
    real = anomaly_model.IsolationForest

    class SlowForest(real):  # type: ignore[misc, valid-type]
        @classmethod
        def fit(cls, *args, **kwargs):
            if slow:
                fitting.set()
                assert release.wait(30)
            return super().fit(*args, **kwargs)

    slow = False
    monkeypatch.setattr(anomaly_model, "IsolationForest", SlowForest)
    # Refit points every 20 s of market time (T0 is on that grid), each effective 10 s later.
    cfg = replace(FAST, refit_interval_ms=20_000, refit_delay_ms=10_000)
    detector = AnomalyDetector(cfg)
    engine = FeatureEngine()
    rows = market_rows(240, seed=5)
    per_second = [sum(1 for r in rows if r["exchange_ts_ms"] // 1000 == T0 // 1000 + s) for s in range(240)]
    one_second = split(rows, per_second)
    run(detector, one_second[:140], engine)  # to 139.9 s: the refit of 120 s is in use since 130 s
    before = detector.model_version
    old_model = detector.model_for("X")
    assert before >= 1 and old_model is not None

    slow = True
    flags: list[dict] = []
    for trades in one_second[140:150]:  # the refit of 140 s is stuck; none of these may block
        started = time.perf_counter()
        flags += run(detector, [trades], engine, wait=False)
        assert time.perf_counter() - started < 5
    assert fitting.is_set()
    assert detector.model_version == before and detector.model_for("X") is old_model
    assert _versions(flags) <= {before}

    done = threading.Event()
    late: list[dict] = []
    worker = threading.Thread(
        target=lambda: (late.extend(run(detector, one_second[150:200], engine, wait=False)), done.set())
    )
    worker.start()
    assert not done.wait(1.0)  # blocked at 150 s, waiting for the refit of 140 s
    waits = detector.refit_waits
    slow = False
    release.set()
    assert done.wait(60)
    worker.join()
    assert detector.refit_waits > waits >= 0
    new_model = detector.model_for("X")
    assert new_model is not old_model and new_model.version > old_model.version
    # The model is the fit of its refit's training rows: its threshold is that forest's 1 % quantile.
    refit = detector._stream_of("X").current
    assert refit is not None and refit.version == new_model.version
    assert isinstance(new_model.forests["*"], SlowForest)
    assert (
        new_model.thresholds["*"]
        == anomaly_model.fit_model(cfg.fit_params, refit.version, refit.data).thresholds["*"]
    )
    # Rows from 150 s on were all scored by versions newer than `before`.
    assert late and min(a["model_version"] for a in late) > before
    detector.close()


def _versions(flags: list[dict]) -> set[int]:
    return {a["model_version"] for a in flags}


@pytest.mark.parametrize("streams", [False, True], ids=["one-stream", "two-streams"])
def test_the_same_trades_in_any_batch_split_give_the_same_anomalies(streams: bool) -> None:
    """Five-second batches, random batch sizes (1 … 400 rows) and three big batches, without waiting
    for refits between batches: identical anomalies (ids, scores, thresholds, versions)."""
    rows = market_rows(240, seed=11, spike_at=200, jump_at=220)
    where = positions(rows) if streams else None
    rng = np.random.default_rng(0)
    splits = {
        "5s": split(rows),
        "random": split(rows, list(rng.integers(1, 400, len(rows)))),
        "big": split(rows, [len(rows) // 3] * 3),
    }
    results = {}
    for name, batches in splits.items():
        detector = AnomalyDetector(FAST)
        results[name] = run(detector, batches, where=where, wait=False)
        detector.close()
    reference = identity(results["5s"])
    assert len(reference) > 50 and len(_versions(results["5s"])) >= 4
    for name, flags in results.items():
        assert identity(flags) == reference, name


def test_streams_are_independent_of_how_their_rows_interleave() -> None:
    """Two streams fed with different cut points each (X's batch k next to Y's batch k, which are
    seconds apart in market time): the same anomalies as a time-ordered feed."""
    rows = market_rows(240, seed=12, spike_at=190)
    where = positions(rows)
    xs = [r for r in rows if r["ticker"] == "X"]
    ys = [r for r in rows if r["ticker"] == "Y"]
    x_batches = split(xs, [700] * (len(xs) // 700 + 1))
    y_batches = split(ys, [300] * (len(ys) // 300 + 1))
    mixed = []
    for k in range(max(len(x_batches), len(y_batches))):
        parts = [b for b in (x_batches[k : k + 1] + y_batches[k : k + 1])]
        mixed.append(TradeColumns.from_records([r for b in parts for r in _records(b)]))
    a, b = AnomalyDetector(FAST), AnomalyDetector(FAST)
    expected = identity(run(a, split(rows), where=where, wait=False))
    assert len(expected) > 50
    assert identity(run(b, mixed, where=where, wait=False)) == expected
    a.close()
    b.close()


class RowByRowDetector(AnomalyDetector):
    """The training-event definition one row at a time, in stream order: the reference for the
    vectorised `_learn`."""

    def _learn(self, states, idx, codes, rows) -> None:  # type: ignore[no-untyped-def]
        for i, c in zip(idx.tolist(), codes.tolist(), strict=True):
            state = states[c]
            p = int(rows.ts[i]) // self.config.sample_ms
            if p < state.period:  # an older period than one already seen
                continue
            if p != state.period:
                self._close_period(state)
                state.period = p
            flagged, key = bool(rows.flagged[i]), int(rows.key[i])
            state.n += 1
            state.n_flagged += flagged
            if key < state.any_key:
                state.any_key, state.any_row = key, rows.x[i].copy()
            if not flagged and key < state.free_key:
                state.free_key, state.free_row = key, rows.x[i].copy()


@pytest.mark.parametrize("shared", [False, True], ids=["a-stream-per-ticker", "one-stream"])
def test_training_events_are_picked_as_the_row_by_row_definition_picks_them(shared: bool) -> None:
    """The vectorised `_learn` against the per-row definition, with late rows (a period older than
    one already seen) and batches of 1 … 40 rows, the two tickers on their own streams or on one:
    the same anomalies and, at every refit point, the same checkpoint bytes (training rows, open
    periods and their picks)."""
    rows = market_rows(240, seed=17, spike_at=150, jump_at=200)
    rng = np.random.default_rng(3)
    late = rng.choice(len(rows) - 30, size=len(rows) // 20, replace=False)
    for i in sorted(late.tolist(), reverse=True):  # each arrives up to 30 rows (~1 s) later
        rows.insert(i + int(rng.integers(5, 30)), rows.pop(i))
    where = {r["event_id"]: (0, i) for i, r in enumerate(rows)} if shared else positions(rows)
    batches = split(rows, list(rng.integers(1, 40, len(rows))))
    results = {}
    for name, detector in (("vectorised", AnomalyDetector(FAST)), ("row by row", RowByRowDetector(FAST))):
        flags = run(detector, batches, where=where)
        results[name] = (identity(flags), [c.data for c in detector.take_checkpoints()])
        detector.close()
    assert len(results["vectorised"][0]) > 20 and len(results["vectorised"][1]) > 10
    assert results["vectorised"] == results["row by row"]


def _records(trades: TradeColumns) -> list[dict]:
    return [
        {"ticker": t, "price": p, "size": s, "exchange_ts_ms": int(ts), "sequence": int(q), "event_id": e}
        for t, p, s, ts, q, e in zip(
            trades.ticker,
            trades.price,
            trades.size,
            trades.ts_ms,
            trades.sequence,
            trades.event_id,
            strict=True,
        )
    ]


def test_slow_fits_change_nothing_but_the_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fits that take longer than the market time between refit and effective point (here: always,
    since batches run far faster than market time) make scoring wait, never score differently."""
    rows = market_rows(240, seed=13, spike_at=200)
    fast = AnomalyDetector(FAST)
    expected = identity(run(fast, split(rows), wait=True))  # every model fitted before it is needed
    fast.close()
    real = anomaly_model.IsolationForest

    class SlowForest(real):  # type: ignore[misc, valid-type]
        @classmethod
        def fit(cls, *args, **kwargs):
            time.sleep(0.2)
            return super().fit(*args, **kwargs)

    monkeypatch.setattr(anomaly_model, "IsolationForest", SlowForest)
    slow = AnomalyDetector(FAST)
    assert identity(run(slow, split(rows), wait=False)) == expected
    assert slow.refit_waits >= 3 and slow.refit_wait_seconds > 0.1
    slow.close()


@pytest.mark.parametrize("crash_after", [20, 37])
def test_a_restart_from_a_checkpoint_scores_like_an_uninterrupted_run(crash_after: int) -> None:
    """Kill -9 in the pure core: a run processes `crash_after` batches but only the first
    `crash_after − 2` are committed (the last two are lost with their outputs). A fresh detector
    restores each stream's newest checkpoint at or below the committed offsets, a fresh feature
    engine replays the feature look-back before it, the detector replays from the checkpoint (outputs
    discarded), and the run goes on in other batch sizes. Committed + post-restart anomalies are
    exactly those of an uninterrupted run."""
    rows = market_rows(240, seed=14, spike_at=185, jump_at=215)
    where = positions(rows)
    batches = split(rows)
    uninterrupted = AnomalyDetector(FAST)
    expected = identity(run(uninterrupted, batches, where=where, wait=False))
    uninterrupted.close()

    crashed = AnomalyDetector(FAST)
    committed_batches = crash_after - 2
    engine = FeatureEngine()
    emitted = run(crashed, batches[:committed_batches], engine, where=where, wait=False)
    run(crashed, batches[committed_batches:crash_after], engine, where=where, wait=False)  # lost
    checkpoints = crashed.take_checkpoints()
    crashed.close()
    committed_rows = sum(len(b) for b in batches[:committed_batches])
    committed = {0: 0, 1: 0}  # per stream, the next offset to process (Kafka's committed offset)
    for row in rows[:committed_rows]:
        stream, offset = where[row["event_id"]]
        committed[stream] = offset + 1

    restarted = AnomalyDetector(FAST)
    restored: list[Checkpoint] = []
    for stream in (0, 1):
        usable = [c for c in checkpoints if c.stream == str(stream) and c.offset <= committed[stream]]
        restored.append(restarted.restore(max(usable, key=lambda c: c.offset).data))
    assert any(c.offset > 0 for c in restored)  # a real mid-stream checkpoint, not a stream's start
    since = min(c.ts_ms for c in restored) - FeatureConfig().rebuild_ms
    replay = [r for r in rows[:committed_rows] if r["exchange_ts_ms"] >= since]
    engine = FeatureEngine()
    run(restarted, split(replay, [997] * (len(replay) // 997 + 1)), engine, where=where, wait=False)
    rest = rows[committed_rows:]
    emitted += run(restarted, split(rest, [433] * (len(rest) // 433 + 1)), engine, where=where, wait=False)
    restarted.close()
    assert len(expected) > 50
    assert identity(emitted) == expected


def test_modes_pooled_by_default_or_one_model_per_ticker() -> None:
    for per_ticker in (False, True):
        detector = AnomalyDetector(replace(CFG, n_estimators=30, per_ticker=per_ticker))
        flags = run(detector, market(680, seed=7, spike_at=660))
        x, y = detector.model_for("X"), detector.model_for("Y")
        # One model per stream; pooled it holds one forest, per ticker one forest per ticker.
        assert x is not None and x is y
        assert set(x.forests) == ({"X", "Y"} if per_ticker else {"*"})
        assert any(a["ticker"] == "X" and a["ts_ms"] >= T0 + 660_000 for a in flags)
        detector.close()
    assert AnomalyConfig().per_ticker is False


def test_row_keys_are_fixed_values_of_the_event_ids() -> None:
    """The keys that pick a period's training row are stored in checkpoints: a restarted (or upgraded)
    runner must compute the same ones. Pinned values (pandas' SipHash with its fixed key), duplicates
    included."""
    ids = np.array(["AAPL-1", "MSFT-42", "AAPL-1", "T:x:7"], dtype=object)
    assert row_keys(ids).tolist() == [
        1402087537774936940,
        15531035983199011399,
        1402087537774936940,
        11228434866604646261,
    ]
