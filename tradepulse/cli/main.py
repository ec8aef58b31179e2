"""The `tradepulse` command. Each area contributes its subcommands from its own module."""

from __future__ import annotations

import click

from tradepulse import __version__
from tradepulse.cli.api import api
from tradepulse.cli.bench import bench
from tradepulse.cli.conditions import conditions
from tradepulse.cli.kafka import kafka, topics
from tradepulse.cli.process import process
from tradepulse.cli.schemas import schemas
from tradepulse.cli.simulate import simulate
from tradepulse.cli.sources import ingest, news
from tradepulse.cli.storage import dlq, query
from tradepulse.cli.up import up
from tradepulse.cli.verify_bars import verify_bars


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tradepulse")
def cli() -> None:
    """TradePulse: real-time market-data pipeline (ingest → Kafka → features/anomalies → stores → API)."""


# Registration of every subcommand; add yours here (one line each).
cli.add_command(kafka)
cli.add_command(topics)
cli.add_command(up)
cli.add_command(schemas)
cli.add_command(process)
cli.add_command(api)
cli.add_command(simulate)
cli.add_command(ingest)
cli.add_command(news)
cli.add_command(query)
cli.add_command(dlq)
cli.add_command(bench)
cli.add_command(conditions)
cli.add_command(verify_bars)


if __name__ == "__main__":
    cli()
