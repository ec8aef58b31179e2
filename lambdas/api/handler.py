"""API Gateway (HTTP API) → the TradePulse FastAPI app, through Mangum."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from mangum import Mangum

from tradepulse.api.app import create_app

logger = Logger()
tracer = Tracer()
metrics = Metrics()

# Built once per container: the app opens its stores (DynamoDB, Athena) from TRADEPULSE_* settings.
asgi = Mangum(create_app(), lifespan="off")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return asgi(event, context)
