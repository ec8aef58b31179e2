"""`tradepulse schemas`: regenerate schemas/*.json from the pydantic models."""

from __future__ import annotations

from pathlib import Path

import click

from tradepulse.schemas import write_schemas


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("schemas"),
    show_default=True,
    help="Folder to write (run from the repository root to refresh the committed schemas/).",
)
def schemas(out: Path) -> None:
    """Write the JSON Schema of every topic payload to schemas/."""
    for path in write_schemas(out):
        click.echo(f"wrote {path}")
