"""The `tradepulse` command group: every registered subcommand resolves, and none is imported before
it is used (the runner's refit worker imports `tradepulse.cli.main` as its spawned `__main__`)."""

from __future__ import annotations

import click
from click.testing import CliRunner

from tests.processes import modules_loaded_by
from tradepulse.cli.main import COMMANDS, cli


def test_every_registered_command_resolves_to_itself() -> None:
    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(COMMANDS)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name
    assert cli.get_command(ctx, "no-such-command") is None


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert f"  {name} " in result.output


def test_importing_the_command_group_imports_no_command() -> None:
    heavy = ("numpy", "pandas", "pyarrow", "confluent_kafka", "tradepulse.bus", "tradepulse.cli.process")
    assert modules_loaded_by("import tradepulse.cli.main", heavy) == []
