"""What the route handlers depend on, as FastAPI dependencies.

`create_app` builds one `ApiContext` (settings, hot store, response cache, health checker, metrics,
history reader, clocks) and puts it on `app.state.context`; the handlers receive its parts through
`Depends`, so a router module needs nothing but these annotations and the request. The shared path and
query parameter types (`Ticker`, `Hours`) and the cached-response helper live here too, so every
router declares them the same way (the OpenAPI schema is generated from them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel

from tradepulse.api import responses as r
from tradepulse.api.cache import TTLCache
from tradepulse.api.health import HealthChecker
from tradepulse.api.history import History
from tradepulse.api.metrics import ApiMetrics
from tradepulse.config import Settings
from tradepulse.stores.base import HotStore

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
HotHours = Annotated[
    int, Query(ge=1, le=48, description="Look-back window in hours (1–48: the hot store's retention).")
]

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": r.ErrorResponse, "description": "No data for this ticker in the hot store."}
}


@dataclass(frozen=True)
class ApiContext:
    """Everything the handlers of one app share; built once by `create_app`."""

    settings: Settings
    store: HotStore
    cache: TTLCache
    health: HealthChecker
    metrics: ApiMetrics
    history: History
    wall_clock: Callable[[], float]

    def now_ms(self) -> int:
        return int(self.wall_clock() * 1000)

    def known_ticker(self, ticker: str) -> bool:
        hit, names = self.cache.get(("ticker-names",))
        if not hit:
            names = frozenset(self.store.tickers())
            self.cache.put(("ticker-names",), names, TICKERS_TTL_S)
        # A ticker that appeared after the cached list was read still counts if it has a trade.
        return ticker in names or self.store.latest_trade(ticker) is not None

    def require_known(self, ticker: str) -> None:
        if not self.known_ticker(ticker):
            raise HTTPException(status_code=404, detail=f"no data for ticker {ticker} in the hot store")

    def cached(
        self, key: tuple[str, ...], ttl_s: int, produce: Callable[[], BaseModel | None], missing: str
    ) -> Response:
        """Serve from the TTL cache or produce (and cache) the response; None from produce means 404.

        The cache holds the serialised JSON, so a hit costs no model validation or serialisation.
        """
        hit, body = self.cache.get(key)
        if not hit:
            model = produce()
            if model is None:
                raise HTTPException(status_code=404, detail=missing)
            body = model.model_dump_json().encode()
            self.cache.put(key, body, ttl_s)
        return Response(
            body,
            media_type="application/json",
            headers={"Cache-Control": f"max-age={ttl_s}", "X-Cache": "HIT" if hit else "MISS"},
        )


def api_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(api_context)]
