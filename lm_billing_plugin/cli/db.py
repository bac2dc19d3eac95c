"""`flask lm-billing db upgrade|downgrade|current`: the plugin's own migrations."""

from __future__ import annotations

import click

from .. import migrate
from . import cli


@cli.group("db")
def db_group() -> None:
    """The plugin's database schema (its own Alembic history)."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
def upgrade_command(revision: str) -> None:
    """Upgrade the plugin's tables to REVISION (default: head)."""
    migrate.upgrade(revision=revision)
    click.echo(f"lm-billing schema at {migrate.current() or 'base'}")


@db_group.command("downgrade")
@click.argument("revision", default="base")
def downgrade_command(revision: str) -> None:
    """Downgrade the plugin's tables to REVISION (default: base, which drops them)."""
    migrate.downgrade(revision=revision)
    click.echo(f"lm-billing schema at {migrate.current() or 'base'}")


@db_group.command("current")
def current_command() -> None:
    """Print the plugin's schema revision."""
    click.echo(migrate.current() or "base (not upgraded yet)")


@db_group.command("revision")
@click.option("-m", "--message", required=True, help="What the revision changes.")
def revision_command(message: str) -> None:
    """(Plugin developers) Autogenerate the next revision from the models."""
    click.echo(f"wrote {migrate.revision(message)}: read it before committing")
