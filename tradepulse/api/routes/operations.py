"""Operations: /health (the pipeline's state) and /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from tradepulse.api import responses as r
from tradepulse.api.deps import NO_STORE, Context
from tradepulse.api.metrics import CONTENT_TYPE

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    response_model=r.HealthResponse,
    responses={503: {"model": r.HealthResponse, "description": "Unhealthy: runner stale or broker down."}},
)
def get_health(ctx: Context) -> Any:
    """Pipeline health from the runner heartbeat, a broker metadata request and hot-store latency."""
    result = ctx.health.check()
    return JSONResponse(
        result.model_dump(mode="json"),
        status_code=503 if result.status == "unhealthy" else 200,
        headers={"Cache-Control": NO_STORE},
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus"}},
)
def get_metrics(ctx: Context) -> Response:
    """Prometheus text format: throughput, lag, latencies, DLQ depth, backpressure, API requests."""
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE, headers={"Cache-Control": NO_STORE})
