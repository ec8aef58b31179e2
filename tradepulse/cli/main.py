"""The `tradepulse` command. Each area contributes its subcommands from its own module, imported only when
that subcommand runs (or `--help` lists them all).

Why lazily: every `tradepulse …` call paid for the imports of every command (Kafka, Arrow, pandas,
uvicorn, …), and so did the runner's refit worker while it was a spawned `multiprocessing` process
(which imports its parent's main module, this one): it held ~100 MiB of modules it never used
(docs/benchmarks.md, session 15)."""

from __future__ import annotations

import importlib

import click

from tradepulse import __version__

# Registration of every subcommand, name → "module:attribute"; add yours here (one line each).
COMMANDS = {
    "kafka": "tradepulse.cli.kafka:kafka",
    "topics": "tradepulse.cli.kafka:topics",
    "up": "tradepulse.cli.up:up",
    "schemas": "tradepulse.cli.schemas:schemas",
    "process": "tradepulse.cli.process:process",
    "api": "tradepulse.cli.api:api",
    "simulate": "tradepulse.cli.simulate:simulate",
    "ingest": "tradepulse.cli.sources:ingest",
    "news": "tradepulse.cli.sources:news",
    "query": "tradepulse.cli.storage:query",
    "dlq": "tradepulse.cli.storage:dlq",
    "bench": "tradepulse.cli.bench:bench",
    "conditions": "tradepulse.cli.conditions:conditions",
    "verify-bars": "tradepulse.cli.verify_bars:verify_bars",
}


class LazyGroup(click.Group):
    """A group whose subcommands (`COMMANDS`) are imported when looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tradepulse")
def cli() -> None:
    """TradePulse: real-time market-data pipeline (ingest → Kafka → features/anomalies → stores → API)."""


if __name__ == "__main__":
    cli()
