"""Start-up cost of a CLI command (issue 15): importing the plugin and running `servers list`
loads no Alembic, Mako, pygments or WeasyPrint, and the lazy `lm-billing` group imports a
command's module only when that command runs, so its map of commands must stay complete."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import click
from flask import Flask
from flask.testing import FlaskCliRunner

from lm_billing_plugin import cli as cli_package

HEAVY = ("alembic", "mako", "pygments", "weasyprint")

# A fresh interpreter: this test process has imported everything long ago.
HOST = textwrap.dedent(
    """
    import sys
    from flask import Flask
    import lm_billing_plugin

    def loaded():
        return sorted({m.split(".")[0] for m in sys.modules} & set(%(heavy)r))

    at_import = loaded()
    app = Flask("host")
    app.config.update(TESTING=True, SQLALCHEMY_DATABASE_URI="sqlite://",
                      LM_BILLING_SCHEDULER_AUTOSTART=False, SECRET_KEY="x")
    lm_billing_plugin.LMBilling(app)
    with app.app_context():
        lm_billing_plugin.BillingBase.metadata.create_all(lm_billing_plugin.get_state().engine)
    result = app.test_cli_runner().invoke(args=["lm-billing", "servers", "list"])
    assert result.exit_code == 0, result.output
    cli_modules = sorted(m for m in sys.modules if m.startswith("lm_billing_plugin.cli."))
    print(repr((at_import, loaded(), cli_modules)))
    """
) % {"heavy": HEAVY}


def test_servers_list_imports_no_heavy_module_and_only_its_own_command_module() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HOST], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    at_import, at_run, cli_modules = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert at_import == []
    assert at_run == []
    assert cli_modules == ["lm_billing_plugin.cli.output", "lm_billing_plugin.cli.servers"]


def _modules_of(command: click.Command) -> set[str]:
    """The modules whose functions make up ``command`` and, for a group, its subcommands."""
    found = {command.callback.__module__} if command.callback is not None else set()
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            found |= _modules_of(sub)
    return found


def test_the_lazy_map_names_every_command_and_every_module_that_adds_to_it() -> None:
    cli_package.load_commands()
    group = cli_package.cli
    assert set(group.commands) == set(cli_package.COMMANDS)
    for name, command in group.commands.items():
        prefix = f"{cli_package.__name__}."
        modules = {m.removeprefix(prefix) for m in _modules_of(command) if m.startswith(prefix)}
        # A group's own callback may live in a module the map names for it; subcommands
        # registered by another module (charges adds `groups charge`) must be named too.
        assert modules <= set(cli_package.COMMANDS[name]), name


def test_help_lists_every_command(runner: FlaskCliRunner, app: Flask) -> None:
    result = runner.invoke(args=["lm-billing", "--help"])
    assert result.exit_code == 0, result.output
    for name in cli_package.COMMANDS:
        assert name in result.output


def test_an_unknown_command_is_a_usage_error(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["lm-billing", "no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output
