"""Market data: latest trade, aggregations, feature vector, feature history, one-minute bars, tickers (hot
store, cached)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from tradepulse.api import responses as r
from tradepulse.api.deps import (
    AGGREGATION_TTL_S,
    BARS_TTL_S,
    FEATURES_TTL_S,
    HISTORY_TTL_S,
    NOT_FOUND,
    QUOTE_TTL_S,
    TICKERS_TTL_S,
    Context,
    Ticker,
)

router = APIRouter(tags=["market data"])


@router.get("/quotes/{ticker}", response_model=r.QuoteResponse, responses=NOT_FOUND)
def get_quote(ticker: Ticker, ctx: Context) -> Any:
    """Latest trade of the ticker. Cached for 1 s."""

    def produce() -> r.QuoteResponse | None:
        row = ctx.store.latest_trade(ticker)
        return r.quote_from_row(row) if row else None

    return ctx.cached(("quote", ticker), QUOTE_TTL_S, produce, f"no trades for ticker {ticker}")


@router.get("/aggregations/{ticker}", response_model=r.AggregationResponse, responses=NOT_FOUND)
def get_aggregations(ticker: Ticker, ctx: Context) -> Any:
    """VWAPs, rolling average, volume z-score and momentum at the latest feature vector. Cached 5 s."""

    def produce() -> r.AggregationResponse | None:
        row = ctx.store.latest_features(ticker)
        return r.aggregation_from_row(row) if row else None

    return ctx.cached(
        ("aggregations", ticker), AGGREGATION_TTL_S, produce, f"no aggregations for ticker {ticker}"
    )


@router.get("/features/{ticker}", response_model=r.FeaturesResponse, responses=NOT_FOUND)
def get_features(ticker: Ticker, ctx: Context) -> Any:
    """The current feature vector of the ticker. Cached for 1 s."""

    def produce() -> r.FeaturesResponse | None:
        row = ctx.store.latest_features(ticker)
        return r.features_from_row(row) if row else None

    return ctx.cached(("features", ticker), FEATURES_TTL_S, produce, f"no features for ticker {ticker}")


@router.get("/history/{ticker}", response_model=r.HistoryResponse, responses=NOT_FOUND)
def get_history(
    ticker: Ticker,
    ctx: Context,
    minutes: Annotated[int, Query(ge=1, le=30, description="Look-back in minutes (1–30).")] = 15,
) -> Any:
    """Feature snapshots of the last minutes as columns, oldest first (for charts). Cached for 1 s."""

    def produce() -> r.HistoryResponse | None:
        # At most 30 min: always inside the hot store's TTL, so never a cold read.
        rows = ctx.store.feature_history(ticker, ctx.now_ms() - minutes * 60_000)
        return r.history_from_rows(ticker, minutes, rows) if rows else None

    return ctx.cached(
        ("history", ticker, str(minutes)),
        HISTORY_TTL_S,
        produce,
        f"no feature snapshots for ticker {ticker} in the last {minutes} min",
    )


@router.get("/bars/{ticker}", response_model=r.BarsResponse, responses=NOT_FOUND)
def get_bars(
    ticker: Ticker,
    ctx: Context,
    minutes: Annotated[int, Query(ge=1, le=1440, description="Look-back in minutes (1–1440).")] = 60,
) -> Any:
    """Closed one-minute OHLCV bars that started in the last minutes, as columns, oldest first (for
    candlestick charts). A bar appears once its minute is closed (watermark − 2 s grace past its end).
    Cached for 5 s."""

    def produce() -> r.BarsResponse | None:
        # At most a day: always inside the hot store's TTL, so never a cold read.
        rows = ctx.store.bars(ticker, ctx.now_ms() - minutes * 60_000, limit=minutes)
        return r.bars_from_rows(ticker, minutes, rows) if rows else None

    return ctx.cached(
        ("bars", ticker, str(minutes)),
        BARS_TTL_S,
        produce,
        f"no bars for ticker {ticker} in the last {minutes} min",
    )


@router.get("/tickers", response_model=r.TickersResponse)
def get_tickers(ctx: Context) -> Any:
    """Tickers with data in the hot store and their latest price. Cached for 2 s."""

    def produce() -> r.TickersResponse:
        items = []
        for name in ctx.store.tickers():
            trade = ctx.store.latest_trade(name)
            items.append(
                r.TickerItem(
                    ticker=name,
                    price=trade["price"] if trade else None,
                    timestamp_ms=trade["exchange_ts_ms"] if trade else None,
                )
            )
        return r.TickersResponse(tickers=items)

    return ctx.cached(("tickers",), TICKERS_TTL_S, produce, "unreachable")
