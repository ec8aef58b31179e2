"""`tradepulse conditions refresh`: re-fetch the trade-condition rules from Massive."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import click

from tradepulse.config import get_settings
from tradepulse.errors import TradePulseError


def _packaged_snapshot() -> Path:
    return Path(str(resources.files("tradepulse.core").joinpath("data", "conditions.json")))


@click.group()
def conditions() -> None:
    """Trade-condition update rules (which trades count toward volume / set the last price)."""


@conditions.command()
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File to write [default: the snapshot shipped in the package, tradepulse/core/data/conditions.json].",
)
def refresh(out: Path | None) -> None:
    """Fetch GET /v3/reference/conditions (stocks, trades) with MASSIVE_API_KEY from
    TRADEPULSE_MASSIVE_REST_URL and write the snapshot (review the diff before committing it)."""
    from tradepulse.sources.conditions_refresh import fetch_conditions, snapshot_document, write_snapshot

    settings = get_settings()
    if settings.massive_api_key is None:
        click.secho(
            "error: MASSIVE_API_KEY is not set (the table comes from Massive's REST API)", fg="red", err=True
        )
        sys.exit(2)
    path = out or _packaged_snapshot()
    base = settings.massive_rest_url
    click.echo(f"fetching {base.rstrip('/')}/v3/reference/conditions (stocks, trade) ...", err=True)
    try:
        body = fetch_conditions(
            base, settings.massive_api_key, progress=lambda line: click.echo(f"  {line}", err=True)
        )
        document = snapshot_document(body, base)
        write_snapshot(document, path)
    except (TradePulseError, OSError) as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
    click.echo(f"wrote {document['count']} conditions to {path}")
