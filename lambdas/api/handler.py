"""API Gateway (HTTP API) → the TradePulse FastAPI app, through Mangum. Latency and error metrics come
from API Gateway itself (AWS/ApiGateway), so the handler emits none."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from mangum import Mangum

from tradepulse.api.app import create_app

logger = Logger()
tracer = Tracer()

# Built once per container: the app opens its stores (DynamoDB, Athena) from TRADEPULSE_* settings.
asgi = Mangum(create_app(), lifespan="off")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return asgi(event, context)
