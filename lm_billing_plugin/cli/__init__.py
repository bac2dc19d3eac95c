"""The `flask lm-billing` command group: database, servers, validate/sync/fix, schedule, the
catalog and bills. Each subject has its own module; commands call the pages' services."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from ..secrets import generate_key
from ..sqlite import writes


def _write_transactions() -> None:
    # Commands change things: on SQLite their transactions take the write lock at BEGIN
    # (lm_billing_plugin.sqlite says why), until the command ends.
    click.get_current_context().with_resource(writes())


cli = AppGroup("lm-billing", help="ListManager Billing: Servers.", callback=_write_transactions)


@cli.command("generate-key")
def generate_key_command() -> None:
    """Print a new key for LM_BILLING_ENCRYPTION_KEYS."""
    click.echo(generate_key())


from . import bills as _bills  # noqa: E402,F401  (each registers its commands on cli)
from . import catalog as _catalog  # noqa: E402,F401
from . import charges as _charges  # noqa: E402,F401
from . import db as _db  # noqa: E402,F401
from . import engine as _engine  # noqa: E402,F401
from . import lookups as _lookups  # noqa: E402,F401
from . import scheduler as _scheduler  # noqa: E402,F401
from . import servers as _servers  # noqa: E402,F401
