"""The `flask lm-billing` command group: database, servers, validate/sync/fix, schedule, the
catalog and bills. Each subject has its own module; commands call the pages' services.

The group is lazy: a command's module (and the services it imports: billing, catalog,
engine) is imported only when that command is looked up, so `flask lm-billing servers list`
does not pay for the bill run's imports. `COMMANDS` names each top-level command's modules;
tests/test_cli_lazy.py checks it against what the modules really register."""

from __future__ import annotations

import importlib

import click
from flask.cli import AppGroup

from ..secrets import generate_key
from ..sqlite import writes

# Top-level command -> the cli modules that register it (or add subcommands to it: charges
# adds `groups charge`). A new command module goes here, not in an import at the bottom.
COMMANDS: dict[str, tuple[str, ...]] = {
    "assign": ("catalog",),
    "bills": ("bills",),
    "charges": ("charges",),
    "customers": ("catalog",),
    "db": ("db",),
    "find-admin": ("lookups",),
    "find-member": ("lookups",),
    "fix": ("engine",),
    "generate-key": (),
    "groups": ("catalog", "charges"),
    "lists": ("engine",),
    "plans": ("catalog",),
    "rotate-keys": ("servers",),
    "problems": ("engine",),
    "run-batch": ("engine",),
    "run-due": ("scheduler",),
    "scheduler": ("scheduler",),
    "servers": ("servers",),
    "sync": ("engine",),
    "validate": ("engine",),
}


def load_commands(name: str | None = None) -> None:
    """Import the modules that register ``name`` (all of them when None)."""
    wanted = COMMANDS.get(name, ()) if name is not None else sorted(
        {m for modules in COMMANDS.values() for m in modules})
    for module in wanted:
        importlib.import_module(f"{__name__}.{module}")


class LazyGroup(AppGroup):
    """An AppGroup that imports a command's module when click looks the command up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(super().list_commands(ctx)))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        load_commands(cmd_name)
        return super().get_command(ctx, cmd_name)


def _write_transactions() -> None:
    # Commands change things: on SQLite their transactions take the write lock at BEGIN
    # (lm_billing_plugin.sqlite says why), until the command ends.
    click.get_current_context().with_resource(writes())


cli = LazyGroup("lm-billing", help="ListManager Billing: Servers.", callback=_write_transactions)


@cli.command("generate-key")
def generate_key_command() -> None:
    """Print a new key for LM_BILLING_ENCRYPTION_KEYS."""
    click.echo(generate_key())
