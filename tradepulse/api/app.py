"""The FastAPI application: REST endpoints over the hot store, /health, /metrics and the live dashboard.

The same app runs under uvicorn (`tradepulse api`, :8000) and in Lambda behind API Gateway through Mangum
(`lambdas/api/handler.py`); only the hot-store backend differs (SQLite locally, DynamoDB in AWS).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tradepulse import __version__
from tradepulse.api import responses as r
from tradepulse.api.cache import TTLCache
from tradepulse.api.health import (
    BrokerProbe,
    FileRunnerStatusSource,
    HealthChecker,
    HotStoreRunnerStatusSource,
    RunnerStatusSource,
    runner_status_path,
)
from tradepulse.api.metrics import CONTENT_TYPE, ApiMetrics
from tradepulse.config import Settings, get_settings

STATIC_DIR = Path(__file__).parent / "static"

# Server-side TTL = the Cache-Control max-age we send (seconds).
QUOTE_TTL_S = 1
AGGREGATION_TTL_S = 5
FEATURES_TTL_S = 1
HISTORY_TTL_S = 1
TICKERS_TTL_S = 2

NO_STORE = "no-store"

Ticker = Annotated[
    str,
    PathParam(
        pattern=r.TICKER_PATTERN,
        description="Upper-case symbol, 1–10 characters of A–Z and '.', e.g. AAPL or BRK.B.",
        examples=["AAPL"],
    ),
]
Hours = Annotated[int, Query(ge=1, le=168, description="Look-back window in hours (1–168).")]

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": r.ErrorResponse, "description": "No data for this ticker in the hot store."}
}


def create_app(
    settings: Settings | None = None,
    hot_store: Any = None,
    *,
    runner_status: RunnerStatusSource | None = None,
    broker_probe: BrokerProbe | None = None,
    dlq: Any = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> FastAPI:
    """Build the API. Without a `hot_store` the one of `settings` is opened (and closed on shutdown).

    `dlq` (optional) lets /health and /metrics read the dead-letter depth from the queue itself; with
    the SQS backend (Lambda) it is opened from `settings`, locally the runner's status reports it.

    `clock` (monotonic, for cache expiry and uptime) and `wall_clock` (epoch s, for look-back windows
    and heartbeat ages) are injectable so tests can move time without sleeping.
    """
    settings = settings or get_settings()
    owns_store = hot_store is None
    if hot_store is None:
        from tradepulse.stores.factory import open_hot_store

        hot_store = open_hot_store(settings)
    store = hot_store
    if runner_status is None:
        runner_status = (
            HotStoreRunnerStatusSource(store)
            if settings.hot_store == "dynamodb"
            else FileRunnerStatusSource(runner_status_path(settings))
        )
    if dlq is None and settings.dlq_backend == "sqs" and settings.sqs_dlq_url:
        from tradepulse.stores.factory import open_dlq

        dlq = open_dlq(settings)
    cache = TTLCache(clock=clock)
    health = HealthChecker(
        settings,
        runner_status,
        broker_probe or BrokerProbe(settings),
        store,
        dlq=dlq,
        wall_clock=wall_clock,
        monotonic=clock,
    )
    metrics = ApiMetrics(health, cache)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_store:
            store.close()

    app = FastAPI(
        title="TradePulse API",
        version=__version__,
        description=(
            "Real-time market data from the TradePulse pipeline: latest trades, windowed aggregations, "
            "feature vectors, Isolation Forest anomalies and news sentiment joined with volume spikes. "
            "Reads the hot store (last 48 h). The live dashboard is at `/`."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.hot_store = store
    app.state.cache = cache
    app.state.health = health

    app.add_middleware(RequestMetrics, metrics=metrics)

    def now_ms() -> int:
        return int(wall_clock() * 1000)

    def cached(
        key: tuple[str, ...], ttl_s: int, produce: Callable[[], BaseModel | None], missing: str
    ) -> Response:
        """Serve from the TTL cache or produce (and cache) the response; None from produce means 404.

        The cache holds the serialised JSON, so a hit costs no model validation or serialisation.
        """
        hit, body = cache.get(key)
        if not hit:
            model = produce()
            if model is None:
                raise HTTPException(status_code=404, detail=missing)
            body = model.model_dump_json().encode()
            cache.put(key, body, ttl_s)
        return Response(
            body,
            media_type="application/json",
            headers={"Cache-Control": f"max-age={ttl_s}", "X-Cache": "HIT" if hit else "MISS"},
        )

    def known_ticker(ticker: str) -> bool:
        hit, names = cache.get(("ticker-names",))
        if not hit:
            names = frozenset(store.tickers())
            cache.put(("ticker-names",), names, TICKERS_TTL_S)
        # A ticker that appeared after the cached list was read still counts if it has a trade.
        return ticker in names or store.latest_trade(ticker) is not None

    def require_known(ticker: str) -> None:
        if not known_ticker(ticker):
            raise HTTPException(status_code=404, detail=f"no data for ticker {ticker} in the hot store")

    # --- market data ----------------------------------------------------------------------------

    @app.get("/quotes/{ticker}", response_model=r.QuoteResponse, responses=NOT_FOUND, tags=["market data"])
    def get_quote(ticker: Ticker) -> Any:
        """Latest trade of the ticker. Cached for 1 s."""

        def produce() -> r.QuoteResponse | None:
            row = store.latest_trade(ticker)
            return r.quote_from_row(row) if row else None

        return cached(("quote", ticker), QUOTE_TTL_S, produce, f"no trades for ticker {ticker}")

    @app.get(
        "/aggregations/{ticker}",
        response_model=r.AggregationResponse,
        responses=NOT_FOUND,
        tags=["market data"],
    )
    def get_aggregations(ticker: Ticker) -> Any:
        """VWAPs, rolling average, volume z-score and momentum at the latest feature vector. Cached 5 s."""

        def produce() -> r.AggregationResponse | None:
            row = store.latest_features(ticker)
            return r.aggregation_from_row(row) if row else None

        return cached(
            ("aggregations", ticker),
            AGGREGATION_TTL_S,
            produce,
            f"no aggregations for ticker {ticker}",
        )

    @app.get(
        "/features/{ticker}", response_model=r.FeaturesResponse, responses=NOT_FOUND, tags=["market data"]
    )
    def get_features(ticker: Ticker) -> Any:
        """The current feature vector of the ticker. Cached for 1 s."""

        def produce() -> r.FeaturesResponse | None:
            row = store.latest_features(ticker)
            return r.features_from_row(row) if row else None

        return cached(("features", ticker), FEATURES_TTL_S, produce, f"no features for ticker {ticker}")

    @app.get("/history/{ticker}", response_model=r.HistoryResponse, responses=NOT_FOUND, tags=["market data"])
    def get_history(
        ticker: Ticker,
        minutes: Annotated[int, Query(ge=1, le=30, description="Look-back in minutes (1–30).")] = 15,
    ) -> Any:
        """Feature snapshots of the last minutes as columns, oldest first (for charts). Cached for 1 s."""

        def produce() -> r.HistoryResponse | None:
            rows = store.feature_history(ticker, now_ms() - minutes * 60_000)
            return r.history_from_rows(ticker, minutes, rows) if rows else None

        return cached(
            ("history", ticker, str(minutes)),
            HISTORY_TTL_S,
            produce,
            f"no feature snapshots for ticker {ticker} in the last {minutes} min",
        )

    @app.get(
        "/anomalies/{ticker}", response_model=r.AnomaliesResponse, responses=NOT_FOUND, tags=["analytics"]
    )
    def get_anomalies(ticker: Ticker, response: Response, hours: Hours = 24) -> Any:
        """Isolation Forest anomalies of the last `hours`, newest first. Not cached."""
        response.headers["Cache-Control"] = NO_STORE
        require_known(ticker)
        rows = store.anomalies(ticker, now_ms() - hours * 3_600_000)
        items = [r.anomaly_from_row(row) for row in reversed(rows)]
        return r.AnomaliesResponse(ticker=ticker, hours=hours, count=len(items), anomalies=items)

    @app.get(
        "/sentiment/{ticker}", response_model=r.SentimentResponse, responses=NOT_FOUND, tags=["analytics"]
    )
    def get_sentiment(ticker: Ticker, response: Response, hours: Hours = 24) -> Any:
        """News of the last `hours` with VADER sentiment and volume-spike correlation, plus a summary. Not cached."""
        response.headers["Cache-Control"] = NO_STORE
        require_known(ticker)
        rows = store.correlations(ticker, now_ms() - hours * 3_600_000)
        articles = [r.article_from_row(row) for row in reversed(rows)]
        return r.SentimentResponse(
            ticker=ticker, hours=hours, articles=articles, summary=r.sentiment_summary(articles)
        )

    @app.get("/tickers", response_model=r.TickersResponse, tags=["market data"])
    def get_tickers() -> Any:
        """Tickers with data in the hot store and their latest price. Cached for 2 s."""

        def produce() -> r.TickersResponse:
            items = []
            for name in store.tickers():
                trade = store.latest_trade(name)
                items.append(
                    r.TickerItem(
                        ticker=name,
                        price=trade["price"] if trade else None,
                        timestamp_ms=trade["exchange_ts_ms"] if trade else None,
                    )
                )
            return r.TickersResponse(tickers=items)

        return cached(("tickers",), TICKERS_TTL_S, produce, "unreachable")

    # --- operations -----------------------------------------------------------------------------

    @app.get(
        "/health",
        response_model=r.HealthResponse,
        responses={
            503: {"model": r.HealthResponse, "description": "Unhealthy: runner stale or broker down."}
        },
        tags=["operations"],
    )
    def get_health() -> Any:
        """Pipeline health from the runner heartbeat, a broker metadata request and hot-store latency."""
        result = health.check()
        return JSONResponse(
            result.model_dump(mode="json"),
            status_code=503 if result.status == "unhealthy" else 200,
            headers={"Cache-Control": NO_STORE},
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus"}
        },
        tags=["operations"],
    )
    def get_metrics() -> Response:
        """Prometheus text format: throughput, lag, latencies, DLQ depth, backpressure, API requests."""
        return Response(metrics.render(), media_type=CONTENT_TYPE, headers={"Cache-Control": NO_STORE})

    # --- dashboard ------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


class RequestMetrics:
    """Pure ASGI middleware: count and time every request by route template (not raw path, which
    would make one time series per ticker)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            # The router stores the matched route in the (shared) scope.
            template = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(template, scope["method"], status, time.perf_counter() - started)
