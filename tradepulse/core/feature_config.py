"""The feature core's configuration: windows and tolerances, validated on construction. Its own module
so that the units of the core (trade_state, feature_windows, quote_book) can name it without importing
`tradepulse.core.features`, which imports them (no cycle, not even one for type checking only).
`tradepulse.core.features` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tradepulse.errors import InvalidArgument

if TYPE_CHECKING:
    from tradepulse.config import Settings


@dataclass(frozen=True)
class FeatureConfig:
    """Windows and tolerances of the feature core (all in ms unless named otherwise)."""

    late_grace_ms: int = 2000
    zscore_bucket_ms: int = 1000
    zscore_window_buckets: int = 300
    vwap_short_ms: int = 60_000
    vwap_long_ms: int = 300_000
    momentum_ms: int = 60_000
    frequency_ms: int = 60_000
    zscore_min_history_buckets: int = 30
    zscore_size_cap: float = 10.0
    zscore_cap_window_buckets: int = 60
    zscore_log_volume: bool = True
    momentum_lookback_ms: int = 300_000
    snapshot_ms: int = 1000
    provisional: bool = True
    """Emit provisional revisions of each ticker's newest second (not only final ones)."""
    revision_interval_ms: float = 250.0
    """Least processing time between two provisional revisions of a ticker, on the clock the caller
    passes to `FeatureEngine.process` (0, or no clock: every batch with accepted trades of the ticker
    emits one). Trades accepted in between wait for the ticker's next one: at most this long once a
    batch or an idle flush comes by."""

    def __post_init__(self) -> None:
        windows = (self.vwap_short_ms, self.vwap_long_ms, self.momentum_ms, self.frequency_ms)
        if self.late_grace_ms < 0 or self.zscore_bucket_ms <= 0 or self.snapshot_ms <= 0:
            raise InvalidArgument("grace must be >= 0 and bucket sizes > 0")
        # A trade folded in within the grace must lie inside every window of the trades it arrives
        # after; that is what makes the disorder correction a plain subtraction.
        if min(windows) <= self.late_grace_ms:
            raise InvalidArgument("every window must be longer than the late grace")
        if self.momentum_lookback_ms < self.momentum_ms:
            raise InvalidArgument("momentum_lookback_ms must be >= momentum_ms")
        if not (
            self.zscore_size_cap >= 0 and 0 < self.zscore_cap_window_buckets <= self.zscore_window_buckets
        ):
            raise InvalidArgument(
                "need zscore_size_cap >= 0 and 0 < zscore_cap_window_buckets <= window buckets"
            )
        if not 0 <= self.revision_interval_ms < self.late_grace_ms:
            # Below the grace, a trade's first revision is always a provisional one, never its final.
            raise InvalidArgument("need 0 <= revision_interval_ms < late_grace_ms")
        grace_buckets = -(-self.late_grace_ms // self.zscore_bucket_ms) + 1
        if not grace_buckets < self.zscore_min_history_buckets <= self.zscore_window_buckets:
            raise InvalidArgument(
                "need ceil(grace/bucket) + 1 < zscore_min_history_buckets <= window buckets"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> FeatureConfig:
        """Config from `tradepulse.config.Settings` (imported for type checking only: the core loads no
        pydantic at run time)."""
        return cls(
            late_grace_ms=settings.late_grace_ms,
            zscore_bucket_ms=settings.zscore_bucket_ms,
            zscore_window_buckets=settings.zscore_window_buckets,
            zscore_size_cap=settings.zscore_size_cap,
            zscore_log_volume=settings.zscore_log_volume,
            provisional=settings.feature_revisions,
            revision_interval_ms=settings.feature_revision_interval_ms,
        )

    @property
    def horizon_ms(self) -> int:
        """How far behind (watermark − grace) a future trade's windows can reach."""
        return max(
            self.vwap_short_ms,
            self.vwap_long_ms,
            self.frequency_ms,
            self.momentum_lookback_ms,
            (self.zscore_window_buckets + 1) * self.zscore_bucket_ms,
            self.snapshot_ms,
        )

    @property
    def zscore_settle_ms(self) -> int:
        """How far behind the watermark a z-score can still be emitted: a trade at exactly
        watermark − grace is still accepted."""
        return self.late_grace_ms + 1

    @property
    def rebuild_ms(self) -> int:
        """Event time of input a fresh engine must replay to reproduce a running one exactly: the
        windows, plus the cap window of the oldest z-score history bucket's trades, plus the grace."""
        return self.horizon_ms + self.zscore_cap_window_buckets * self.zscore_bucket_ms + self.late_grace_ms
