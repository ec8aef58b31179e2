"""The `tradepulse` command group: every registered subcommand resolves, and none is imported before
it is used (the runner's refit worker imports `tradepulse.cli.main` as its spawned `__main__`)."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

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
    code = (
        "import sys\n"
        "import tradepulse.cli.main\n"
        "heavy = ('numpy', 'pandas', 'pyarrow', 'confluent_kafka', 'tradepulse.bus', 'tradepulse.cli.process')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
