"""Contracts of every topic payload and stored item.

These pydantic models are the single source of the wire and storage formats: `schemas/*.json` is
generated from them (`tradepulse schemas`), the API serialises them, and a test checks the two agree.
The hot path does not build these objects per event (too slow); it emits plain dicts with exactly these
fields, and the tests validate samples of that output against the models.

Time conventions: `*_ts_ms` is Unix epoch milliseconds (exchange/event time), `received_ts_us` is the
local receive time in Unix epoch microseconds (for end-to-end latency).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, model_validator
from pydantic_core import CoreSchema, core_schema

from tradepulse.errors import InvalidArgument

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Event times outside [2000-01-01, 2100-01-01) are unit mistakes (seconds, µs) that would wreck windows.
EPOCH_MS_MIN, EPOCH_MS_MAX = 946_684_800_000, 4_102_444_800_000

Ticker = str
NonEmptyStr = Annotated[str, Field(min_length=1)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
"""Integers are stored as int64 (numpy columns, SQLite, Parquet); a larger one would crash the core."""
EpochMs = Annotated[int, Field(ge=EPOCH_MS_MIN, lt=EPOCH_MS_MAX)]

# Structural bounds of a US-equity print (issue 17): beyond them a value is impossible, not merely
# suspect, and is dead-lettered at ingest. Far from anything real, so no genuine print is refused:
# the highest-priced US stock (BRK.A) trades below $1M, the most shares any company has outstanding
# are ~2.5e10 (NVDA), and the largest block prints are single-digit billions of dollars. Bounding the
# notional also keeps p × s, and any sum of them in a VWAP, finite. Plausible-but-wrong prints (a
# fat finger 50 % off the market) are the runner's outlier flag (`tradepulse.core.outliers`).
MAX_PRICE = 10_000_000.0
"""USD per share, for trade prices and bid/ask prices."""
MAX_SIZE = 100_000_000_000.0
"""Shares, for trade and bid/ask sizes."""
MAX_NOTIONAL = 100_000_000_000.0
"""USD, price × size of one print or one side of a quote."""


@dataclass(frozen=True)
class StructuralMax:
    """An upper bound enforced like `Field(le=...)`, by the model and by the hot paths' rules
    (`tradepulse.validation` reads `le`), but kept out of the topic's JSON Schema: a new `maximum` there
    narrows what the schema accepts, which the Glue Schema Registry's BACKWARD compatibility refuses as
    a new version (cdk/schema_registry.py). docs/schema.md documents the bounds instead."""

    le: float

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def _check(self, value: float) -> float:
        if not value <= self.le:
            raise InvalidArgument(f"must be <= {self.le}")
        return value


Price = Annotated[float, StructuralMax(MAX_PRICE)]
Size = Annotated[float, StructuralMax(MAX_SIZE)]


def notional_error(price_name: str, price: float, size_name: str, size: float) -> str | None:
    """Why price × size is impossible (None if it is not): the one wording of the notional rule, for
    the models and the hand-written paths (`tradepulse.validation.Notional`)."""
    notional = price * size
    if notional <= MAX_NOTIONAL:  # False for NaN too
        return None
    return f"notional {price_name!r} × {size_name!r} must be <= {MAX_NOTIONAL}, got {notional!r}"


Session = Literal["pre_market", "regular", "after_hours", "closed", "unknown"]
"""Trading sessions (`tradepulse.core.sessions`)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Input(BaseModel):
    """An input contract (what ingest and news publish, what the runner consumes). Strict, like the hot
    paths' checks derived from it (`tradepulse.validation`): no coercion ("1" is not 1, true is not an
    int), no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    NOTIONALS: ClassVar[tuple[tuple[str, str], ...]] = ()
    """(price field, size field) pairs whose product is bounded by MAX_NOTIONAL."""

    @model_validator(mode="after")
    def _notional_bounded(self) -> _Input:
        for price_name, size_name in self.NOTIONALS:
            error = notional_error(price_name, getattr(self, price_name), size_name, getattr(self, size_name))
            if error is not None:
                raise InvalidArgument(error)
        return self


class Trade(_Input):
    """A trade from the Massive stocks feed (`ev: "T"`); topic `market.trades`, key = ticker."""

    event_id: NonEmptyStr = Field(
        description="Deterministic id (ticker, exchange, trade id, time, sequence)."
    )
    ticker: NonEmptyStr
    NOTIONALS = (("price", "size"),)

    price: Price = Field(gt=0)
    size: Size = Field(gt=0)
    exchange: Int64 = Field(description="Massive exchange id (`x`).")
    trade_id: NonEmptyStr = Field(description="Trade id on the exchange (`i`).")
    tape: Int64 = Field(description="1 = NYSE (A), 2 = AMEX (B), 3 = Nasdaq (C) (`z`).")
    conditions: list[int] = Field(default_factory=list, description="Trade conditions (`c`).")
    sequence: Int64 = Field(description="Sequence number (`q`), increasing per ticker.")
    exchange_ts_ms: EpochMs = Field(description="SIP timestamp (`t`), Unix ms; the event time.")
    received_ts_us: Int64 = Field(description="When ingest received the frame, Unix µs.")
    trf_id: int | None = Field(default=None, description="Trade reporting facility id (`trfi`).")
    trf_ts_ms: int | None = Field(default=None, description="Trade reporting facility timestamp (`trft`).")


class VendorBar(_Input):
    """The vendor's one-minute aggregate of a ticker (Massive WebSocket `AM`, wire names in brackets); topic
    `market.vendor_bars`, key = ticker. The reference the runner reconciles its bars against
    (`tradepulse.core.reconcile`); fields the feed leaves out are None."""

    ticker: NonEmptyStr = Field(description="`sym`.")
    start_ms: EpochMs = Field(description="Start of the minute (`s`), Unix ms.")
    end_ms: EpochMs = Field(description="End of the minute (`e`), Unix ms.")
    volume: Size = Field(ge=0, description="Tick volume (`v`).")
    received_ts_us: Int64 = Field(description="When ingest received the frame, Unix µs.")
    open: float | None = Field(default=None, gt=0, le=MAX_PRICE, description="`o`.")
    high: float | None = Field(default=None, gt=0, le=MAX_PRICE, description="`h`.")
    low: float | None = Field(default=None, gt=0, le=MAX_PRICE, description="`l`.")
    close: float | None = Field(default=None, gt=0, le=MAX_PRICE, description="`c`.")
    vwap: float | None = Field(
        default=None, gt=0, le=MAX_PRICE, description="Tick VWAP (`vw`), 4 decimals on the wire."
    )
    avg_trade_size: float | None = Field(default=None, ge=0, description="Average trade size (`z`).")
    accumulated_volume: float | None = Field(default=None, ge=0, description="Today's volume (`av`).")
    official_open: float | None = Field(
        default=None, gt=0, le=MAX_PRICE, description="Today's official open (`op`)."
    )
    day_vwap: float | None = Field(default=None, gt=0, le=MAX_PRICE, description="Today's VWAP (`a`).")
    otc: bool = Field(default=False, description="An OTC ticker (`otc`).")


BAR_CHECK_STATUSES = ("match", "outlier", "mismatch", "vendor_only", "ours_only")
"""Outcomes of reconciling a ticker-minute's bar with the vendor's (`tradepulse.core.reconcile`)."""
BAR_CHECK_FIELDS = ("open", "high", "low", "close", "volume", "vwap", "avg_size")
"""The fields the bar reconciliation compares (`tradepulse.core.reconcile.TOLERANCES`)."""

OUTLIER_REASONS = ("above_band", "below_band")
"""Why a trade is an outlier (`tradepulse.core.outliers`): above the band's upper or below its lower edge."""


class StoredTrade(Trade):
    """A trade as the runner stores it (hot store, cold dataset `trades`): the input trade and its
    outlier flag, which the runner sets from the stream (`tradepulse.core.outliers`); market.trades keeps
    the trade as ingest published it."""

    outlier: bool = Field(
        default=False,
        description=(
            "Suspect print: further from the ticker's recent reference price than its LULD-style band. "
            "Kept, but left out of every feature and anomaly input."
        ),
    )


class Quote(_Input):
    """An NBBO quote (`ev: "Q"`); topic `market.quotes`, key = ticker."""

    event_id: NonEmptyStr
    ticker: NonEmptyStr
    NOTIONALS = (("bid_price", "bid_size"), ("ask_price", "ask_size"))

    # 0 is no quote on that side (a one-sided quote), so ≥ 0 here where trades need > 0.
    bid_price: Price = Field(ge=0)
    bid_size: Size = Field(ge=0)
    bid_exchange: Int64
    ask_price: Price = Field(ge=0)
    ask_size: Size = Field(ge=0)
    ask_exchange: Int64
    conditions: list[int] = Field(default_factory=list)
    indicators: list[int] = Field(default_factory=list)
    tape: Int64
    sequence: Int64
    exchange_ts_ms: EpochMs
    received_ts_us: Int64


class NewsArticle(_Input):
    """A company-news article for one ticker (Finnhub `company-news`); topic `market.news`, key = ticker.

    An article whose `related` field names several tickers is published once per ticker.
    """

    event_id: NonEmptyStr = Field(description="Deterministic id of (article_id, ticker).")
    article_id: Int64
    ticker: NonEmptyStr
    related: list[str] = Field(default_factory=list, description="Tickers the article names.")
    headline: NonEmptyStr
    summary: str = ""
    source: str = ""
    url: str = ""
    image: str = ""
    category: str = ""
    published_at: NonEmptyStr = Field(description="ISO 8601 UTC, e.g. 2026-11-24T14:30:00Z.")
    published_ts_ms: EpochMs = Field(description="Publication time, Unix ms; the event time of the join.")
    received_ts_us: Int64


class FeatureVector(_Model):
    """Windowed features of one ticker at an event time; topic `market.features` and the feature store."""

    ticker: Ticker
    ts_ms: int = Field(description="Event time of the last trade folded into this vector.")
    price: float = Field(description="Last trade price.")
    volume: float = Field(description="Volume traded in the current z-score bucket.")
    vwap_1min: float
    vwap_5min: float
    rolling_avg_5min: float = Field(description="Mean trade price over the last 300 s.")
    volume_zscore: float = Field(
        description=(
            "How unusual the current bucket's volume is vs the previous N buckets: z-score of "
            "log(1 + volume), each trade capped at 10x the recent mean trade size; 0 if undefined."
        )
    )
    price_momentum: float = Field(description="% change of price over the last 60 s.")
    trade_frequency: int = Field(description="Trades in the last 60 s.")
    vwap_deviation_bps: float = Field(description="(price − vwap_5min) / vwap_5min × 10,000.")
    bid_ask_spread: float | None = Field(default=None, description="Ask − bid of the latest quote.")
    window_start_ms: int
    window_end_ms: int
    late_events: int = Field(default=0, description="Events after the grace period, excluded from windows.")
    session: Session | None = Field(
        default=None,
        description="Trading session of ts_ms in America/New_York (NYSE calendar); None if not tagged.",
    )
    # Revisions (docs/schema.md#featurevector-revisions): (ticker, snapshot_start_ms) is the vector's
    # natural key; a second's vector is emitted as trades arrive and again when it closes.
    snapshot_start_ms: int | None = Field(
        default=None,
        description="Start of the snapshot second this vector describes; with ticker, its natural key.",
    )
    revision: int = Field(
        default=1,
        ge=1,
        description=(
            "Trades of the ticker with ts in [second start − grace, second end) the vector has seen, "
            "+1 when final: grows with every revision of the second; the final one is the highest."
        ),
    )
    final: bool = Field(
        default=True,
        description="True for the last revision, emitted once the second closed (its end + the late grace).",
    )


class Anomaly(_Model):
    """An Isolation Forest flag; topic `market.anomalies` and the hot store."""

    anomaly_id: str = Field(
        description="Deterministic id of (ticker, ts_ms, triggering event, model_version)."
    )
    ticker: Ticker
    ts_ms: int
    anomaly_score: float = Field(
        description="Isolation Forest score in [-1, 0); more negative = more anomalous."
    )
    threshold: float = Field(description="Score below which a point is flagged (contamination 0.01).")
    feature_vector: dict[str, float]
    model_version: int = Field(
        description="Model that flagged it: the n-th refit of the trade's partition's model (deterministic)."
    )
    event_id: str = Field(description="Trade that produced the flagged feature vector.")


class Sentiment(_Model):
    """VADER scores of a headline (and summary)."""

    compound: float = Field(ge=-1, le=1)
    label: Literal["positive", "negative", "neutral"]
    pos: float
    neg: float
    neu: float


class Correlation(_Model):
    """News joined with volume z-score spikes within ±60 s; topic `market.correlations` and the hot store.

    Exactly one per (article_id, ticker).
    """

    correlation_id: str = Field(description="Deterministic id of (article_id, ticker).")
    article_id: int
    ticker: Ticker
    headline: str
    source: str
    url: str
    published_at: str
    published_ts_ms: int
    sentiment: Sentiment
    volume_zscore_at_publish: float | None = Field(
        description="z-score of the last point in [t − 60 s, t] (t: publication)."
    )
    matched_zscore: float | None = Field(description="z-score of the spike that matched, if any.")
    peak_zscore: float | None = Field(description="Highest z-score in [t − 60 s, t + 60 s].")
    lag_seconds: float | None = Field(description="Spike time − publication time; negative = spike first.")
    correlation_strength: Literal["strong", "moderate", "weak", "none"]


class Bar(_Model):
    """One-minute OHLCV bar of a ticker, closed by event time; topic `market.bars` and the bar store.

    Exactly one per (ticker, start_ms). Field eligibility follows the trade conditions' consolidated
    update rules (`tradepulse.core.bars`)."""

    bar_id: str = Field(description="Deterministic id of (ticker, start_ms).")
    ticker: Ticker
    start_ms: int = Field(description="Start of the minute, Unix ms (UTC minute boundary).")
    end_ms: int = Field(description="End of the minute (exclusive): start_ms + 60,000.")
    open: float | None = Field(description="First open/close-eligible trade price; None if none.")
    high: float | None = Field(description="Highest high/low-eligible trade price; None if none.")
    low: float | None = Field(description="Lowest high/low-eligible trade price; None if none.")
    close: float | None = Field(description="Last open/close-eligible trade price; None if none.")
    volume: float = Field(ge=0, description="Size of the volume-eligible trades.")
    vwap: float | None = Field(description="Σ price·size / Σ size of the volume-eligible trades.")
    trade_count: int = Field(ge=0, description="Number of volume-eligible trades.")
    session: Session = Field(
        description="Trading session of the minute's start in America/New_York (NYSE calendar)."
    )


class RedriveAttempt(_Model):
    """One entry of a dead letter's history: a redrive attempt, or a later failure of what it redrove."""

    at: str = Field(description="ISO 8601 UTC.")
    outcome: Literal["redriven", "failed", "failed_again"] = Field(
        description=(
            "redriven: handed back (re-published or re-written); failed: the redrive itself raised; "
            "failed_again: the redriven message failed again downstream."
        )
    )
    stage: str | None = Field(default=None, description="Where a `failed_again` happened.")
    error_type: str | None = None
    reason: str | None = None


class DeadLetter(_Model):
    """A message that could not be processed, with everything needed to redrive or inspect it.

    `stage`, `error_type`, `reason` and the source fields describe the original failure and are never
    overwritten; every later attempt is appended to `history`.
    """

    dead_letter_id: str = Field(
        description="Deterministic id of (stage, source topic, partition, offset, payload)."
    )
    stage: str = Field(description="Where it failed: ingest, processor, sink:<name>, news.")
    payload: str = Field(description="Original payload; UTF-8 text, or base64 prefixed with 'b64:'.")
    error_type: str
    reason: str
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    ticker: Ticker | None = None
    failure_class: Literal["transient", "permanent"] = Field(
        default="permanent",
        description=(
            "transient (a sink, timeout or throttling: redriven every 15 min, archived after 5 attempts) "
            "or permanent (the payload can never become valid: never redriven, kept for inspection)."
        ),
    )
    retry_count: int = Field(default=0, description="Redrive attempts so far.")
    first_failure_at: str = Field(description="ISO 8601 UTC.")
    last_failure_at: str = Field(description="ISO 8601 UTC.")
    status: Literal["pending", "redriven", "archived"] = "pending"
    history: list[RedriveAttempt] = Field(
        default_factory=list, description="Redrive attempts and later failures, oldest first."
    )


TOPIC_MODELS: dict[str, type[BaseModel]] = {
    "market.trades": Trade,
    "market.quotes": Quote,
    "market.news": NewsArticle,
    "market.features": FeatureVector,
    "market.anomalies": Anomaly,
    "market.correlations": Correlation,
    "market.dead-letters": DeadLetter,
    "market.bars": Bar,
    "market.vendor_bars": VendorBar,
}
