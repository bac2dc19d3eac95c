"""The `flask lm-billing` command group: database, servers, validate/sync/fix, schedule, the
catalog and bills. Each subject has its own module; commands call the pages' services."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from ..secrets import generate_key

cli = AppGroup("lm-billing", help="ListManager Billing: Servers.")


@cli.command("generate-key")
def generate_key_command() -> None:
    """Print a new key for LM_BILLING_ENCRYPTION_KEYS."""
    click.echo(generate_key())


from . import bills as _bills  # noqa: E402,F401  (registers its commands on cli)
from . import catalog as _catalog  # noqa: E402,F401
from . import db as _db  # noqa: E402,F401
from . import engine as _engine  # noqa: E402,F401
from . import lookups as _lookups  # noqa: E402,F401
from . import scheduler as _scheduler  # noqa: E402,F401
from . import servers as _servers  # noqa: E402,F401
