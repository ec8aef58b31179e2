"""`tradepulse schemas`: regenerate schemas/*.json from the pydantic models."""

from __future__ import annotations

import click

from tradepulse.schemas import write_schemas


@click.command()
def schemas() -> None:
    """Write the JSON Schema of every topic payload to schemas/."""
    for path in write_schemas():
        click.echo(f"wrote {path}")
