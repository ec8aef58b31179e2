"""The runner's processing step on the real core, and the assembly of a runner from settings.

`CoreProcessor` adapts the pure core (`tradepulse.core`) to the runner's `Processor` interface: decoded
rows → columnar batches → `FeatureEngine` (feature snapshots of closed seconds) → `AnomalyDetector`
(batched Isolation Forest scoring, one deterministic model per trades partition, fitted in a worker
process (`RefitPool`), checkpointed by `CheckpointStore` into the cold store's folder or bucket) and
`NewsJoiner` (news ↔ volume z-score join in event time); `BarEngine` (one-minute OHLCV bars of closed minutes, tagged with their NYSE session) over the
same trades; with `vendor_bars` on, `BarReconciler` compares those bars with the vendor's `AM` aggregates
(market.vendor_bars) per ticker-minute (`VendorCheck`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import subprocess
import time
from functools import lru_cache
from typing import Any

import numpy as np

from tradepulse.bus.anomaly_checkpoints import CheckpointStore
from tradepulse.bus.children import python_command
from tradepulse.bus.decode import DecodedBatch
from tradepulse.bus.outputs import BatchOutputs
from tradepulse.bus.refit_pool import RefitPool
from tradepulse.bus.runner import Runner
from tradepulse.bus.watchdog import Watchdog
from tradepulse.config import Settings
from tradepulse.core.anomaly import AnomalyConfig, AnomalyDetector
from tradepulse.core.bars import NO_TS, BarEngine
from tradepulse.core.columns import QuoteColumns, TradeColumns
from tradepulse.core.conditions import EligibilityMasks
from tradepulse.core.features import FeatureConfig, FeatureEngine, FeatureOutput
from tradepulse.core.news_join import NewsJoiner, correlation_id
from tradepulse.core.outliers import OutlierConfig, OutlierFlagger
from tradepulse.core.reconcile import BarReconciler
from tradepulse.core.sessions import SessionTable
from tradepulse.errors import BusError, InvalidArgument
from tradepulse.stores.base import HotStore
from tradepulse.topics import TRADES

log = logging.getLogger(__name__)

SESSIONS_CHILD_TIMEOUT_S = 120.0  # 0.8 s on an idle 2-core box: pandas and the calendar's rules
SESSIONS_CHILD = "from tradepulse.core.sessions import SessionTable; sys.stdout.buffer.write(SessionTable.nyse().to_bytes())"


@lru_cache(maxsize=1)
def nyse_sessions() -> SessionTable:
    """`SessionTable.nyse()`, computed in a child interpreter (`tradepulse.bus.children`) that exits: the
    calendar library loads pandas, which would stay resident in the runner for its whole life (~60 MiB;
    nothing else the runner runs needs it). Once per process."""
    try:
        child = subprocess.run(
            python_command(SESSIONS_CHILD), capture_output=True, timeout=SESSIONS_CHILD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BusError(f"the NYSE session table was not computed within {exc.timeout:.0f} s") from exc
    if child.returncode != 0:
        stderr = child.stderr.decode(errors="replace")[-2000:]
        raise BusError(f"computing the NYSE session table failed (exit {child.returncode}):\n{stderr}")
    return SessionTable.from_bytes(child.stdout)


class CoreProcessor:
    """Window state of the assigned partitions: features, news join, anomaly scoring."""

    def __init__(self, settings: Settings) -> None:
        self.config = FeatureConfig.from_settings(settings)
        self._rebuild_lookback_s = float(settings.rebuild_lookback_s)
        self.anomaly_config = AnomalyConfig.from_settings(settings)
        self.checkpoints = CheckpointStore.from_settings(settings)
        self._refit_pool = RefitPool()
        self.detector = AnomalyDetector(self.anomaly_config, self._refit_pool)
        self._refit_totals = {"refits": 0.0, "refit_s": 0.0, "refit_waits": 0.0, "refit_wait_s": 0.0}
        self.engine = FeatureEngine(self.config)
        self.sessions = nyse_sessions()
        self.bars = BarEngine(self.config.late_grace_ms, self.sessions)
        self.joiner = NewsJoiner(settle_ms=self.config.zscore_settle_ms)
        # Position (news partition, offset) of every article the joiner still holds: committed with the
        # offsets, so that a rebuild re-reads exactly these articles (`pending_news`).
        self._pending_pos: dict[str, tuple[int, int]] = {}
        self.outliers = OutlierFlagger(OutlierConfig.from_settings(settings))
        self.vendor_check = (
            VendorCheck(self.config.late_grace_ms, self.sessions) if settings.vendor_bars_enabled else None
        )

    @property
    def model_version(self) -> int:
        return self.detector.model_version

    def refit_stats(self) -> dict[str, float]:
        """Refits and waits for due ones since start (over every detector, resets included)."""
        d = self.detector
        return {
            "refits": self._refit_totals["refits"] + d.refits,
            "refit_s": self._refit_totals["refit_s"] + d.refit_seconds,
            "refit_waits": self._refit_totals["refit_waits"] + d.refit_waits,
            "refit_wait_s": self._refit_totals["refit_wait_s"] + d.refit_wait_seconds,
        }

    def reset(self) -> None:
        """Forget all state, the anomaly models included: `restore` and the rebuild bring back exactly
        the state at the committed offsets."""
        self.engine = FeatureEngine(self.config)
        self.bars = BarEngine(self.config.late_grace_ms, self.sessions)
        self.joiner = NewsJoiner(settle_ms=self.config.zscore_settle_ms)
        self._pending_pos = {}
        self.outliers.reset()
        if self.vendor_check is not None:
            self.vendor_check = VendorCheck(self.config.late_grace_ms, self.sessions)
        self.detector.close()
        self._refit_totals = self.refit_stats()
        self.detector = AnomalyDetector(self.anomaly_config, self._refit_pool)

    @property
    def state_lookback_s(self) -> float:
        """Input time the rebuild replays: the features' windows (`rebuild_lookback_s`), plus the news join's z-score memory
        (a late article after a restart joins against z-scores up to that far behind the watermark, and
        each of them needs the features' windows before it to come out bit-identical), plus the outlier
        reference window (the first replayed trades the features see are flagged as they were)."""
        reference_s = self.outliers.config.reference_window_ms / 1000
        return self._rebuild_lookback_s + self.joiner.memory_ms / 1000 + reference_s

    def flag_outliers(self, batch: DecodedBatch) -> dict[str, int]:
        """Flag the batch's suspect trades (`tradepulse.core.outliers`) before anything stores or
        processes them: `outlier` is set on every trade row (and added to `trade_fields` for the cold
        store), and `process` leaves the flagged ones out of the features. Returns flagged per reason."""
        if not batch.trades:
            return {}
        columns = batch.trade_columns
        if columns is None:
            columns = batch.trade_columns = TradeColumns.from_records(batch.trades)
        # The reference price follows the trades that may set the last price (not average-price or
        # out-of-sequence prints); the feature core counts unknown condition codes, not this look.
        eligible = None
        if columns.conditions is not None:
            batch.trade_masks = self.engine.rules.masks(columns.conditions, count_unknown=False)
            eligible = batch.trade_masks.last_price
        result = self.outliers.flag(columns, eligible)
        flags = result.outlier
        if batch.trade_fields is not None:
            batch.trade_fields["outlier"] = flags
        for row, flag in zip(batch.trades, flags.tolist(), strict=True):
            row["outlier"] = flag
        if not flags.any():
            return {}
        for i in np.flatnonzero(flags).tolist():
            # For the hot store's outlier view (GET /outliers): why, against what.
            batch.trades[i]["outlier_reason"] = result.reason[i]
            batch.trades[i]["reference_price"] = float(result.reference[i])
            batch.trades[i]["band_usd"] = float(result.half_width[i])
        batch.trade_outliers = flags  # some are flagged: `process` filters them out
        return {reason: count for reason, count in result.counts().items() if count}

    def revisions_waiting(self) -> bool:
        return self.engine.revisions_waiting()

    def revisions_due(self) -> bool:
        return self.engine.revisions_due(time.monotonic() * 1000)  # the clock `process` paces with

    def pending_news(self) -> dict[int, list[int]]:
        """Per news partition, the offsets of the articles still waiting for their join window."""
        out: dict[int, list[int]] = {}
        for partition, offset in sorted(self._pending_pos.values()):
            out.setdefault(partition, []).append(offset)
        return out

    def restore(self, committed: dict[tuple[str, int], int]) -> dict[int, int]:
        """Restore each trades partition's anomaly model from its newest checkpoint at or below the
        committed offset; returns {partition: trades offset} from which the rebuild must replay."""
        replay_from = {}
        for (topic, partition), offset in committed.items():
            if topic != TRADES or offset <= 0:
                continue  # nothing committed yet: the stream starts with the partition
            data = self.checkpoints.latest(str(partition), offset)
            try:
                if data is None:
                    raise InvalidArgument("no checkpoint at or below the committed offset")
                checkpoint = self.detector.restore(data)
            except ValueError as exc:
                # Deterministic from the rebuild's look-back on, but not what the previous owner scored.
                log.warning("anomaly model of partition %d starts afresh: %s", partition, exc)
                continue
            log.info(
                "anomaly model of partition %d restored at trades offset %d", partition, checkpoint.offset
            )
            replay_from[partition] = checkpoint.offset
        return replay_from

    def process(self, batch: DecodedBatch, *, emit: bool, paced: bool = True) -> BatchOutputs:
        # decode_batch already built the columns from the validated fields; rows are the fallback.
        trades = batch.trade_columns
        if trades is None:
            trades = TradeColumns.from_records(batch.trades) if batch.trades else TradeColumns.empty()
        every_trade = trades  # the flagged prints included: the vendor's aggregates have them
        # The condition update rules of every trade, once (`flag_outliers` computed them): for the bars
        # (the features count unknown codes with their own look).
        every_rule = batch.trade_masks
        if every_rule is None and trades.conditions is not None:
            every_rule = self.engine.rules.masks(trades.conditions, count_unknown=False)
        rule = every_rule
        if batch.trade_outliers is not None:
            # Suspect prints stay out of every feature and so out of the anomaly inputs.
            keep = np.flatnonzero(~batch.trade_outliers)
            trades = trades.take(keep)
            rule = None if every_rule is None else every_rule.take(keep)
            batch = dataclasses.replace(batch, trade_pos=[batch.trade_pos[i] for i in keep.tolist()])
        quotes = batch.quote_columns
        if quotes is None:
            quotes = QuoteColumns.from_records(batch.quotes) if batch.quotes else QuoteColumns.empty()
        started = time.perf_counter()
        # The provisional revisions' pace (`feature_revision_interval_ms`) is processing time. A rebuild
        # (emit=False) has no clock, so no trade is left waiting after it: one that waited at the
        # committed offsets may be in a revision already on the topic, which must not come twice.
        clock_ms = time.monotonic() * 1000 if emit and paced else None
        out = self.engine.process(trades, quotes, clock_ms=clock_ms)
        featured = time.perf_counter()
        # Final revisions of the closed seconds, then the provisional ones (docs/schema.md).
        features = [*out.snapshots, *out.provisional]
        if features:
            snapshot_ts = np.fromiter((s["ts_ms"] for s in features), np.int64, len(features))
            for snapshot, session in zip(features, self.sessions.session_of(snapshot_ts), strict=True):
                snapshot["session"] = session
        # The trades the feature core saw, by the same condition update rules.
        if rule is None:
            bars = self.bars.process(trades)
        else:
            bars = self.bars.process(
                trades,
                volume_eligible=rule.volume,
                high_low_eligible=rule.high_low,
                open_close_eligible=rule.open_close,
            )
        checks = []
        if self.vendor_check is not None:
            checks = self.vendor_check.process(
                every_trade, every_rule, self.bars, bars, batch.vendor_bars, emit=emit
            )
        if batch.news:
            self.joiner.add_articles(batch.news)
            for row, (partition, offset) in zip(batch.news, batch.news_pos, strict=True):
                cid = correlation_id(row["article_id"], row["ticker"])
                if self.joiner.is_pending(cid):
                    self._pending_pos.setdefault(cid, (partition, offset))
        z = out.zscores
        if len(z["ts_ms"]):
            self.joiner.add_zscores(z["ticker"], z["ts_ms"], z["volume_zscore"])
        watermarks = {}
        for ticker in {*out.latest, *(row["ticker"] for row in batch.news)}:
            wm = self.engine.watermark(ticker)
            if wm is not None:
                watermarks[ticker] = wm
        correlations = self.joiner.advance(watermarks) if watermarks else []
        for row in correlations:
            self._pending_pos.pop(row["correlation_id"], None)
        anomalies: list[dict[str, Any]] = []
        scoring = time.perf_counter()
        # Rebuilds score too (outputs discarded): the restored models replay from their checkpoints;
        # rows below a model's restored offset are ignored by the detector.
        if len(out.per_trade["ts_ms"]):
            anomalies = self.detector.score(out.per_trade | _positions(trades, batch, out))
        for checkpoint in self.detector.take_checkpoints():
            self.checkpoints.save(checkpoint)
        scored = time.perf_counter()
        if not emit:
            return BatchOutputs()
        return BatchOutputs(
            features=features,
            anomalies=anomalies,
            correlations=correlations,
            late_events=len(out.late_event_ids),
            unknown_conditions=out.unknown_conditions,
            bars=bars,
            bar_checks=checks,
            stage_ms={"features": (featured - started) * 1000, "anomaly": (scored - scoring) * 1000},
            # Freshness (`tradepulse.bus.stages`): the event times of the trades whose first revision
            # (with provisional revisions: the one of this batch or a later one, see
            # `feature_revision_interval_ms`) and final revision this batch writes.
            fresh_ts_ms={
                "fresh_first": (
                    out.provisional_trade_ts_ms if self.config.provisional else out.final_trade_ts_ms
                ),
                "fresh_final": out.final_trade_ts_ms,
            },
        )

    def close(self) -> None:
        self.detector.close()
        self._refit_pool.shutdown(wait=False, cancel_futures=True)


class VendorCheck:
    """The bar reconciliation of a `CoreProcessor` (`tradepulse.core.reconcile`): its own "tape" bar
    engine over every trade, the flagged outliers included (what explains an `outlier` minute), and the
    reconciler. Per batch: one bar-engine pass and one merge of the bars closed in the batch; rebuilt
    with the processor (the rebuild replays market.vendor_bars with the trades). A mismatch is logged,
    at most `LOG_PER_MINUTE` lines a minute (the rest are counted in the next line)."""

    LOG_PER_MINUTE = 10

    def __init__(self, late_grace_ms: int, sessions: SessionTable) -> None:
        self.grace_ms = late_grace_ms
        self.tape = BarEngine(late_grace_ms, sessions)
        self.reconciler = BarReconciler()
        self._log_window = (0.0, 0, 0)  # (window start, lines logged, lines suppressed)

    def process(
        self,
        trades: TradeColumns,
        rule: EligibilityMasks | None,
        published: BarEngine,
        bars: list[dict[str, Any]],
        vendor: list[dict[str, Any]],
        *,
        emit: bool,
    ) -> list[dict[str, Any]]:
        """One batch: `trades` every trade of it (flagged ones included) and `rule` their condition
        update rules (None: every trade updates everything), `published` the engine that made `bars`
        (the batch's closed bars, flagged trades left out), `vendor` its `AM` aggregates. Returns the
        reconciliation decisions the batch completes."""
        if rule is None:
            tape = self.tape.process(trades)
        else:
            tape = self.tape.process(
                trades,
                volume_eligible=rule.volume,
                high_low_eligible=rule.high_low,
                open_close_eligible=rule.open_close,
            )
        # Our bars are final up to the lower of the two engines' watermarks − grace (known to both).
        names = list({*trades.ticker.tolist(), *(bar["ticker"] for bar in vendor)})
        marks = np.minimum(published.watermarks(names), self.tape.watermarks(names))
        known = marks != NO_TS
        final = dict(
            zip(
                itertools.compress(names, known.tolist()),
                (marks[known] - self.grace_ms).tolist(),
                strict=True,
            )
        )
        checks = self.reconciler.update(bars, vendor, final, tape)
        if emit:
            for check in checks:
                if check["status"] == "mismatch":
                    self._log(check)
        return checks

    def _log(self, check: dict[str, Any]) -> None:
        now = time.monotonic()
        start, logged, suppressed = self._log_window
        if now - start >= 60:
            start, logged, suppressed = now, 0, suppressed
        if logged >= self.LOG_PER_MINUTE:
            self._log_window = (start, logged, suppressed + 1)
            return
        minute = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(check["start_ms"] / 1000))
        log.warning(
            "bar mismatch %s %s: %s (ours → vendor's)%s",
            check["ticker"],
            minute,
            ", ".join(f"{f} {a} → {b}" for f, (a, b) in check["diff"].items()),
            f"; {suppressed} more not logged" if suppressed else "",
        )
        self._log_window = (start, logged + 1, 0)


def _positions(trades: TradeColumns, batch: DecodedBatch, out: FeatureOutput) -> dict[str, np.ndarray]:
    """`stream` (partition) and `offset` of each per-trade row: the rows the feature engine accepted,
    in input order (it drops rejected and late trades)."""
    pos = np.asarray(batch.trade_pos, dtype=np.int64).reshape(-1, 2)
    ids = trades.event_id
    dropped = np.concatenate([out.rejected_event_ids, out.late_event_ids]).astype(object)
    keep = ~np.isin(ids, dropped) if len(dropped) else np.ones(len(ids), dtype=bool)
    if keep.sum() != len(out.per_trade["event_id"]) or not np.array_equal(
        ids[keep], out.per_trade["event_id"]
    ):
        # A dropped event id that also occurs accepted (a duplicate): align one by one.
        keep = np.zeros(len(ids), dtype=bool)
        wanted, j = out.per_trade["event_id"], 0
        for i, event_id in enumerate(ids):
            if j < len(wanted) and event_id == wanted[j]:
                keep[i], j = True, j + 1
    return {"stream": pos[keep, 0], "offset": pos[keep, 1]}


def build_runner(
    settings: Settings,
    *,
    instance: str = "0",
    hot: HotStore | None = None,
    commit_watchdog: Watchdog | None = None,
) -> Runner:
    """A runner on the configured stores and the real core. The service passes a commit watchdog;
    in-process callers (tests, benchmarks) leave it out, since it restarts the whole process."""
    from tradepulse.bus.backpressure import BackpressureController
    from tradepulse.retry import retry_call
    from tradepulse.stores.factory import open_cold_store, open_dlq, open_hot_store

    attempts, deadline_s = settings.dlq_inline_attempts, settings.dlq_inline_deadline_s
    return Runner(
        settings,
        processor=CoreProcessor(settings),
        hot=hot if hot is not None else open_hot_store(settings),
        cold_factory=lambda: open_cold_store(settings),
        dlq=open_dlq(settings),
        backpressure=BackpressureController.from_settings(settings),
        sink_retry=lambda fn: retry_call(fn, attempts=attempts, deadline_s=deadline_s),
        instance=instance,
        commit_watchdog=commit_watchdog,
    )
