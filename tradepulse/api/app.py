"""The FastAPI application: REST endpoints over the hot store, /health, /metrics and the live dashboard.

The same app runs under uvicorn (`tradepulse api`, :8000) and in Lambda behind API Gateway through Mangum
(`lambdas/api/handler.py`); only the hot-store backend differs (SQLite locally, DynamoDB in AWS).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tradepulse import __version__
from tradepulse.api.cache import TTLCache
from tradepulse.api.deps import ApiContext
from tradepulse.api.health import BrokerProbe, HealthChecker
from tradepulse.api.history import History
from tradepulse.api.metrics import ApiMetrics
from tradepulse.api.routes import analytics, market, operations
from tradepulse.api.runner_status import (
    FileRunnerStatusSource,
    HotStoreRunnerStatusSource,
    RunnerStatusSource,
    runner_status_path,
)
from tradepulse.config import Settings, get_settings
from tradepulse.stores.base import DeadLetterQueue, HotStore
from tradepulse.stores.cold_history import ColdHistory, open_cold_history

STATIC_DIR = Path(__file__).parent / "static"

DESCRIPTION = (
    "Real-time market data from the TradePulse pipeline: latest trades, windowed aggregations, "
    "feature vectors, Isolation Forest anomalies and news sentiment joined with volume spikes. "
    "Reads the hot store (last 48 h); `/anomalies` and `/sentiment` windows reaching further back (up to "
    "168 h) also read the cold store. The live dashboard is at `/`."
)


def create_app(
    settings: Settings | None = None,
    hot_store: HotStore | None = None,
    *,
    runner_status: RunnerStatusSource | None = None,
    broker_probe: BrokerProbe | None = None,
    dlq: DeadLetterQueue | None = None,
    cold_history: ColdHistory | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> FastAPI:
    """Build the API. Without a `hot_store` the one of `settings` is opened (and closed on shutdown).

    `dlq` (optional) lets /health and /metrics read the dead-letter depth from the queue itself; with
    the SQS backend (Lambda) it is opened from `settings`, locally the runner's status reports it.
    `cold_history` answers look-back windows beyond the hot store's TTL; by default DuckDB over the
    local cold store or Athena (`settings.cold_store`).

    `clock` (monotonic, for cache expiry and uptime) and `wall_clock` (epoch s, for look-back windows
    and heartbeat ages) are injectable so tests can move time without sleeping.
    """
    settings = settings or get_settings()
    owns_store = hot_store is None
    store = hot_store if hot_store is not None else _open_hot_store(settings)
    context = _build_context(
        settings,
        store,
        runner_status=runner_status or _runner_status_source(settings, store),
        broker_probe=broker_probe or BrokerProbe(settings),
        dlq=dlq if dlq is not None else _open_dlq(settings),
        cold_history=cold_history or open_cold_history(settings),
        clock=clock,
        wall_clock=wall_clock,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_store:
            store.close()

    app = FastAPI(title="TradePulse API", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.context = context
    # The parts by name, for operators and tests poking at a running app.
    app.state.settings = settings
    app.state.hot_store = store
    app.state.cache = context.cache
    app.state.health = context.health
    app.add_middleware(RequestMetrics, metrics=context.metrics)
    for router in (market.router, analytics.router, operations.router):
        app.include_router(router)
    app.add_api_route("/", dashboard, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def _open_hot_store(settings: Settings) -> HotStore:
    from tradepulse.stores.factory import open_hot_store

    return open_hot_store(settings)


def _open_dlq(settings: Settings) -> DeadLetterQueue | None:
    """The SQS queue when that is the DLQ backend (Lambda); locally the runner's status reports it."""
    if settings.dlq_backend == "sqs" and settings.sqs_dlq_url:
        from tradepulse.stores.factory import open_dlq

        return open_dlq(settings)
    return None


def _runner_status_source(settings: Settings, store: HotStore) -> RunnerStatusSource:
    if settings.hot_store == "dynamodb":
        return HotStoreRunnerStatusSource(store)
    return FileRunnerStatusSource(runner_status_path(settings))


def _build_context(
    settings: Settings,
    store: HotStore,
    *,
    runner_status: RunnerStatusSource,
    broker_probe: BrokerProbe,
    dlq: DeadLetterQueue | None,
    cold_history: ColdHistory,
    clock: Callable[[], float],
    wall_clock: Callable[[], float],
) -> ApiContext:
    cache = TTLCache(clock=clock)
    health = HealthChecker(
        settings, runner_status, broker_probe, store, dlq=dlq, wall_clock=wall_clock, monotonic=clock
    )
    return ApiContext(
        settings=settings,
        store=store,
        cache=cache,
        health=health,
        metrics=ApiMetrics(health, cache),
        history=History(store, cold_history, ttl_ms=settings.hot_ttl_hours * 3_600_000),
        wall_clock=wall_clock,
    )


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
            route = scope.get("route")
            template = route.path if isinstance(route, Route | Mount) else "unmatched"
            self.metrics.observe(template, scope["method"], status, time.perf_counter() - started)
