"""API Gateway (HTTP API) → the TradePulse FastAPI app, through Mangum.

The app is built once per Lambda container from the environment (`TRADEPULSE_*`; in AWS
`TRADEPULSE_HOT_STORE=dynamodb`), so warm invocations reuse the store client and the response cache.
"""

from __future__ import annotations

from mangum import Mangum

from tradepulse.api.app import create_app

# lifespan="off": nothing to start, and a Lambda container is frozen rather than shut down.
handler = Mangum(create_app(), lifespan="off")
