"""Analytics: anomalies and news sentiment of a look-back window (hot store, plus the cold store for the
part of the window older than the hot store's TTL; see `tradepulse.api.history`). Not cached."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from tradepulse.api import responses as r
from tradepulse.api.deps import NO_STORE, NOT_FOUND, Context, HotHours, Hours, Ticker

router = APIRouter(tags=["analytics"])


@router.get("/anomalies/{ticker}", response_model=r.AnomaliesResponse, responses=NOT_FOUND)
def get_anomalies(ticker: Ticker, response: Response, ctx: Context, hours: Hours = 24) -> Any:
    """Isolation Forest anomalies of the last `hours` (newest 1000), newest first; beyond the hot store's
    48 h also from the cold store. Not cached."""
    response.headers["Cache-Control"] = NO_STORE
    ctx.require_known(ticker)
    now = ctx.now_ms()
    rows = ctx.history.anomalies(ticker, now - hours * 3_600_000, now)
    items = [r.anomaly_from_row(row) for row in reversed(rows)]
    return r.AnomaliesResponse(ticker=ticker, hours=hours, count=len(items), anomalies=items)


@router.get("/sentiment/{ticker}", response_model=r.SentimentResponse, responses=NOT_FOUND)
def get_sentiment(ticker: Ticker, response: Response, ctx: Context, hours: Hours = 24) -> Any:
    """News of the last `hours` with VADER sentiment and volume-spike correlation, plus a summary; beyond
    the hot store's 48 h also from the cold store. Not cached."""
    response.headers["Cache-Control"] = NO_STORE
    ctx.require_known(ticker)
    now = ctx.now_ms()
    rows = ctx.history.correlations(ticker, now - hours * 3_600_000, now)
    articles = [r.article_from_row(row) for row in reversed(rows)]
    return r.SentimentResponse(
        ticker=ticker, hours=hours, articles=articles, summary=r.sentiment_summary(articles)
    )


@router.get("/outliers/{ticker}", response_model=r.OutliersResponse, responses=NOT_FOUND)
def get_outliers(ticker: Ticker, response: Response, ctx: Context, hours: HotHours = 24) -> Any:
    """Trades of the last `hours` (newest 1000) the runner flagged outlier: further from the ticker's
    recent reference price than its LULD-style band; kept, but left out of every feature. Newest first,
    from the hot store (the cold store's `trades` keep the `outlier` column for longer look-backs).
    Not cached."""
    response.headers["Cache-Control"] = NO_STORE
    ctx.require_known(ticker)
    rows = ctx.store.outliers(ticker, ctx.now_ms() - hours * 3_600_000)
    items = [r.outlier_from_row(row) for row in reversed(rows)]
    return r.OutliersResponse(ticker=ticker, hours=hours, count=len(items), outliers=items)
