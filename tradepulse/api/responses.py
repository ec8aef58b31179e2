"""Response models of the REST API (the OpenAPI schema is generated from these).

They are derived from the stored items in `tradepulse.models`; the `*_from_row` helpers turn a hot-store
row (a plain dict with the model's fields) into the response, adding ISO 8601 times next to the epoch
milliseconds so both humans and programs can read them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tradepulse.models import Sentiment

TICKER_PATTERN = r"^[A-Z][A-Z.]{0,9}$"

Row = dict[str, Any]


def iso_ms(ts_ms: int) -> str:
    """Unix epoch ms → ISO 8601 UTC with milliseconds, e.g. 2026-11-24T14:30:00.123Z."""
    return (
        datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorResponse(_Response):
    """A 404 (or other non-validation) error."""

    detail: str = Field(description="What was not found or what went wrong, in plain words.")


class QuoteResponse(_Response):
    """The latest trade of a ticker."""

    ticker: str
    price: float
    volume: float = Field(description="Size of the trade (shares).")
    timestamp: str = Field(description="Exchange (SIP) time, ISO 8601 UTC.")
    timestamp_ms: int = Field(description="Exchange (SIP) time, Unix ms.")
    sequence_number: int
    exchange: int
    event_id: str


class AggregationResponse(_Response):
    """Windowed aggregations of a ticker at the latest feature vector."""

    ticker: str
    vwap_1min: float
    vwap_5min: float
    rolling_avg_5min: float
    volume_zscore: float
    price_momentum: float = Field(description="% change of price over the last 60 s.")
    window_start: str = Field(description="ISO 8601 UTC.")
    window_end: str = Field(description="ISO 8601 UTC.")
    window_start_ms: int
    window_end_ms: int


class FeaturesResponse(_Response):
    """The current feature vector of a ticker (tradepulse.models.FeatureVector plus ISO time)."""

    ticker: str
    timestamp: str = Field(description="Event time of the last trade folded in, ISO 8601 UTC.")
    ts_ms: int
    price: float
    volume: float
    vwap_1min: float
    vwap_5min: float
    rolling_avg_5min: float
    volume_zscore: float
    price_momentum: float
    trade_frequency: int
    vwap_deviation_bps: float
    bid_ask_spread: float | None = None
    window_start_ms: int
    window_end_ms: int
    late_events: int = 0
    session: Literal["pre_market", "regular", "after_hours", "closed", "unknown"] | None = Field(
        default=None, description="Trading session of ts_ms (America/New_York, NYSE calendar)."
    )
    snapshot_start_ms: int | None = Field(
        default=None, description="Start of the second this vector describes."
    )
    revision: int = Field(default=1, description="Revision of that second's vector (docs/schema.md).")
    final: bool = Field(
        default=True, description="False: provisional, a later revision may still fold in late trades."
    )


class HistoryResponse(_Response):
    """Feature snapshots as columns (oldest first), the shape a time-series chart wants."""

    ticker: str
    minutes: int
    ts_ms: list[int]
    price: list[float]
    vwap_1min: list[float]
    vwap_5min: list[float]
    volume_zscore: list[float]


class BarsResponse(_Response):
    """One-minute OHLCV bars as columns (oldest first), the shape a candlestick chart wants. A price
    entry is null when no trade of the minute was eligible for it (trade-condition update rules)."""

    ticker: str
    minutes: int
    start_ms: list[int] = Field(description="Start of each bar's minute, Unix ms.")
    open: list[float | None]
    high: list[float | None]
    low: list[float | None]
    close: list[float | None]
    volume: list[float]
    vwap: list[float | None]
    trade_count: list[int]
    session: list[Literal["pre_market", "regular", "after_hours", "closed", "unknown"]] = Field(
        description="Trading session of each bar (America/New_York, NYSE calendar)."
    )


class AnomalyItem(_Response):
    anomaly_id: str
    timestamp: str = Field(description="ISO 8601 UTC.")
    ts_ms: int
    anomaly_score: float = Field(description="More negative = more anomalous.")
    threshold: float = Field(description="Scores below this are flagged.")
    feature_vector: dict[str, float]
    model_version: int
    event_id: str


class AnomaliesResponse(_Response):
    ticker: str
    hours: int
    count: int
    anomalies: list[AnomalyItem] = Field(description="Newest first.")


class OutlierItem(_Response):
    """A trade the runner flagged outlier: kept in the stores, left out of every feature."""

    event_id: str
    timestamp: str = Field(description="ISO 8601 UTC of the exchange timestamp.")
    ts_ms: int
    price: float
    size: float
    exchange: int
    trade_id: str
    conditions: list[int]
    reason: Literal["above_band", "below_band"]
    reference_price: float = Field(description="Median of the ticker's recent trades before this one.")
    band_usd: float = Field(description="Half-width of the band around the reference (LULD Tier 2 style).")
    deviation_pct: float = Field(description="(price − reference) / reference × 100.")


class OutliersResponse(_Response):
    ticker: str
    hours: int
    count: int
    outliers: list[OutlierItem] = Field(description="Newest first.")


class ArticleSentiment(_Response):
    """VADER scores; `score` is the compound score."""

    score: float = Field(ge=-1, le=1)
    label: Literal["positive", "negative", "neutral"]
    compound: float = Field(ge=-1, le=1)
    pos: float
    neg: float
    neu: float


class ArticleItem(_Response):
    article_id: int
    headline: str
    source: str
    url: str
    published_at: str
    published_ts_ms: int
    sentiment: ArticleSentiment
    volume_zscore_at_publish: float | None
    matched_zscore: float | None
    peak_zscore: float | None
    correlation_strength: Literal["strong", "moderate", "weak", "none"]
    lag_seconds: float | None = Field(description="Spike time − publication time; negative = spike first.")


class StrongCorrelation(_Response):
    article_id: int
    headline: str
    published_at: str
    matched_zscore: float | None
    lag_seconds: float | None
    sentiment_label: Literal["positive", "negative", "neutral"]


class SentimentSummary(_Response):
    articles: int
    by_label: dict[Literal["positive", "negative", "neutral"], int]
    by_strength: dict[Literal["strong", "moderate", "weak", "none"], int]
    average_compound: float | None = Field(description="Mean compound score; null without articles.")
    strong_correlations: list[StrongCorrelation]


class SentimentResponse(_Response):
    ticker: str
    hours: int
    articles: list[ArticleItem] = Field(description="Newest first.")
    summary: SentimentSummary


class TickerItem(_Response):
    ticker: str
    price: float | None = None
    timestamp_ms: int | None = None


class TickersResponse(_Response):
    tickers: list[TickerItem]


ComponentState = Literal["ok", "degraded", "down", "unknown"]


class ComponentHealth(_Response):
    status: ComponentState
    detail: str
    metrics: dict[str, float | int | None] = Field(default_factory=dict)
    error: str | None = Field(
        default=None,
        description="Class of the exception that failed the check (never its message), e.g. "
        "'ResourceNotFoundException', 'ClientError (ThrottlingException)'.",
    )


class HealthResponse(_Response):
    status: Literal["healthy", "degraded", "unhealthy"]
    consumer_lag: int | None = Field(description="Messages behind the high watermarks (runner status).")
    dynamo_latency_p99: float | None = Field(
        description="p99 of hot-store batch writes in ms, whichever backend (DynamoDB or SQLite)."
    )
    uptime_seconds: float = Field(description="Seconds since this API process started.")
    checked_at: str = Field(description="ISO 8601 UTC.")
    components: dict[str, ComponentHealth]


# --- row → response --------------------------------------------------------------------------------


def quote_from_row(row: Row) -> QuoteResponse:
    return QuoteResponse(
        ticker=row["ticker"],
        price=row["price"],
        volume=row["size"],
        timestamp=iso_ms(row["exchange_ts_ms"]),
        timestamp_ms=row["exchange_ts_ms"],
        sequence_number=row["sequence"],
        exchange=row["exchange"],
        event_id=row["event_id"],
    )


def aggregation_from_row(row: Row) -> AggregationResponse:
    return AggregationResponse(
        ticker=row["ticker"],
        vwap_1min=row["vwap_1min"],
        vwap_5min=row["vwap_5min"],
        rolling_avg_5min=row["rolling_avg_5min"],
        volume_zscore=row["volume_zscore"],
        price_momentum=row["price_momentum"],
        window_start=iso_ms(row["window_start_ms"]),
        window_end=iso_ms(row["window_end_ms"]),
        window_start_ms=row["window_start_ms"],
        window_end_ms=row["window_end_ms"],
    )


def features_from_row(row: Row) -> FeaturesResponse:
    fields = {
        name: row[name] for name in FeaturesResponse.model_fields if name in row and name != "timestamp"
    }
    return FeaturesResponse(timestamp=iso_ms(row["ts_ms"]), **fields)


def history_from_rows(ticker: str, minutes: int, rows: list[Row]) -> HistoryResponse:
    return HistoryResponse(
        ticker=ticker,
        minutes=minutes,
        ts_ms=[r["ts_ms"] for r in rows],
        price=[r["price"] for r in rows],
        vwap_1min=[r["vwap_1min"] for r in rows],
        vwap_5min=[r["vwap_5min"] for r in rows],
        volume_zscore=[r["volume_zscore"] for r in rows],
    )


def bars_from_rows(ticker: str, minutes: int, rows: list[Row]) -> BarsResponse:
    return BarsResponse(
        ticker=ticker,
        minutes=minutes,
        start_ms=[r["start_ms"] for r in rows],
        open=[r["open"] for r in rows],
        high=[r["high"] for r in rows],
        low=[r["low"] for r in rows],
        close=[r["close"] for r in rows],
        volume=[r["volume"] for r in rows],
        vwap=[r["vwap"] for r in rows],
        trade_count=[r["trade_count"] for r in rows],
        session=[r["session"] for r in rows],
    )


def anomaly_from_row(row: Row) -> AnomalyItem:
    return AnomalyItem(
        anomaly_id=row["anomaly_id"],
        timestamp=iso_ms(row["ts_ms"]),
        ts_ms=row["ts_ms"],
        anomaly_score=row["anomaly_score"],
        threshold=row["threshold"],
        feature_vector=row["feature_vector"],
        model_version=row["model_version"],
        event_id=row["event_id"],
    )


def outlier_from_row(row: Row) -> OutlierItem:
    reference = row["reference_price"]
    return OutlierItem(
        event_id=row["event_id"],
        timestamp=iso_ms(row["exchange_ts_ms"]),
        ts_ms=row["exchange_ts_ms"],
        price=row["price"],
        size=row["size"],
        exchange=row["exchange"],
        trade_id=row["trade_id"],
        conditions=row.get("conditions") or [],
        reason=row["outlier_reason"],
        reference_price=reference,
        band_usd=row["band_usd"],
        deviation_pct=(row["price"] - reference) / reference * 100,
    )


def article_from_row(row: Row) -> ArticleItem:
    sentiment = Sentiment.model_validate(row["sentiment"])
    return ArticleItem(
        article_id=row["article_id"],
        headline=row["headline"],
        source=row["source"],
        url=row["url"],
        published_at=row["published_at"],
        published_ts_ms=row["published_ts_ms"],
        sentiment=ArticleSentiment(score=sentiment.compound, **sentiment.model_dump()),
        volume_zscore_at_publish=row.get("volume_zscore_at_publish"),
        matched_zscore=row.get("matched_zscore"),
        peak_zscore=row.get("peak_zscore"),
        correlation_strength=row["correlation_strength"],
        lag_seconds=row.get("lag_seconds"),
    )


def sentiment_summary(articles: list[ArticleItem]) -> SentimentSummary:
    by_label: dict[Literal["positive", "negative", "neutral"], int] = {
        "positive": 0,
        "negative": 0,
        "neutral": 0,
    }
    by_strength: dict[Literal["strong", "moderate", "weak", "none"], int] = {
        "strong": 0,
        "moderate": 0,
        "weak": 0,
        "none": 0,
    }
    for article in articles:
        by_label[article.sentiment.label] += 1
        by_strength[article.correlation_strength] += 1
    compounds = [a.sentiment.compound for a in articles]
    return SentimentSummary(
        articles=len(articles),
        by_label=by_label,
        by_strength=by_strength,
        average_compound=round(sum(compounds) / len(compounds), 4) if compounds else None,
        strong_correlations=[
            StrongCorrelation(
                article_id=a.article_id,
                headline=a.headline,
                published_at=a.published_at,
                matched_zscore=a.matched_zscore,
                lag_seconds=a.lag_seconds,
                sentiment_label=a.sentiment.label,
            )
            for a in articles
            if a.correlation_strength == "strong"
        ],
    )
