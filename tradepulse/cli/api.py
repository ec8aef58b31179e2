"""`tradepulse api`: the REST API and live dashboard under uvicorn."""

from __future__ import annotations

import click

from tradepulse.config import get_settings


@click.command()
@click.option("--host", default=None, help="Bind address (default: TRADEPULSE_API_HOST).")
@click.option("--port", type=int, default=None, help="Port (default: TRADEPULSE_API_PORT, 8000).")
def api(host: str | None, port: int | None) -> None:
    """Serve the REST API (/docs) and the live dashboard (/) over the hot store."""
    import uvicorn

    from tradepulse.api.app import create_app
    from tradepulse.stores.factory import open_dlq

    settings = get_settings()
    uvicorn.run(
        # The API reads the DLQ itself: depth and the permanent-letter count on /health and /metrics.
        create_app(settings, dlq=open_dlq(settings)),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )
