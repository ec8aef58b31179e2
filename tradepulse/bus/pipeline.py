"""The runner's processing step on the real core, and the assembly of a runner from settings.

`CoreProcessor` adapts the pure core (`tradepulse.core`) to the runner's `Processor` interface: decoded
rows → columnar batches → `FeatureEngine` (feature snapshots of closed seconds) → `AnomalyDetector`
(batched Isolation Forest scoring) and `NewsJoiner` (news ↔ volume z-score join in event time).
"""

from __future__ import annotations

from typing import Any

from tradepulse.bus.decode import DecodedBatch
from tradepulse.bus.runner import BatchOutputs, Runner
from tradepulse.bus.watchdog import Watchdog
from tradepulse.config import Settings
from tradepulse.core.columns import QuoteColumns, TradeColumns
from tradepulse.core.features import FeatureConfig, FeatureEngine
from tradepulse.core.news_join import NewsJoiner


class CoreProcessor:
    """Window state of the assigned partitions: features, news join, anomaly scoring."""

    def __init__(self, settings: Settings, detector: Any = None) -> None:
        self.config = FeatureConfig.from_settings(settings)
        self.detector = detector
        self.engine = FeatureEngine(self.config)
        self.joiner = NewsJoiner()
        self._live = False  # set by the first batch that emits

    @property
    def model_version(self) -> int:
        return int(getattr(self.detector, "model_version", 0) or 0)

    def reset(self) -> None:
        """Forget the window state; the anomaly model is kept (it is not window state, and a model
        trained on more history is only better)."""
        self.engine = FeatureEngine(self.config)
        self.joiner = NewsJoiner()

    def process(self, batch: DecodedBatch, *, emit: bool) -> BatchOutputs:
        # decode_batch already built the columns from the validated fields; rows are the fallback.
        trades = batch.trade_columns
        if trades is None:
            trades = TradeColumns.from_records(batch.trades) if batch.trades else TradeColumns.empty()
        quotes = batch.quote_columns
        if quotes is None:
            quotes = QuoteColumns.from_records(batch.quotes) if batch.quotes else QuoteColumns.empty()
        out = self.engine.process(trades, quotes)
        if batch.news:
            self.joiner.add_articles(batch.news)
        z = out.zscores
        if len(z["ts_ms"]):
            self.joiner.add_zscores(z["ticker"], z["ts_ms"], z["volume_zscore"])
        watermarks = {}
        for ticker in {*out.latest, *(row["ticker"] for row in batch.news)}:
            wm = self.engine.watermark(ticker)
            if wm is not None:
                watermarks[ticker] = wm
        correlations = self.joiner.advance(watermarks) if watermarks else []
        anomalies: list[dict[str, Any]] = []
        # A rebuild warms a fresh model up; later rebuilds (rebalances) would make the kept model
        # learn the look-back twice, so they skip it.
        if self.detector is not None and len(out.per_trade["ts_ms"]) and (emit or not self._live):
            anomalies = self.detector.score(out.per_trade)
        self._live = self._live or emit
        if not emit:
            return BatchOutputs()
        return BatchOutputs(
            features=out.snapshots,
            anomalies=anomalies,
            correlations=correlations,
            late_events=len(out.late_event_ids),
        )

    def close(self) -> None:
        close = getattr(self.detector, "close", None)
        if close is not None:
            close()


def build_runner(
    settings: Settings,
    *,
    instance: str = "0",
    hot: Any = None,
    detector: Any = None,
    commit_watchdog: Watchdog | None = None,
) -> Runner:
    """A runner on the configured stores and the real core. The service passes a commit watchdog;
    in-process callers (tests, benchmarks) leave it out, since it restarts the whole process."""
    from tradepulse.core.anomaly import AnomalyDetector
    from tradepulse.retry import retry_call
    from tradepulse.stores.backpressure import BackpressureController
    from tradepulse.stores.factory import open_cold_store, open_dlq, open_hot_store

    attempts, deadline_s = settings.dlq_inline_attempts, settings.dlq_inline_deadline_s
    return Runner(
        settings,
        processor=CoreProcessor(settings, detector=detector if detector is not None else AnomalyDetector()),
        hot=hot if hot is not None else open_hot_store(settings),
        cold_factory=lambda: open_cold_store(settings),
        dlq=open_dlq(settings),
        backpressure=BackpressureController.from_settings(settings),
        sink_retry=lambda fn: retry_call(fn, attempts=attempts, deadline_s=deadline_s),
        instance=instance,
        commit_watchdog=commit_watchdog,
    )
