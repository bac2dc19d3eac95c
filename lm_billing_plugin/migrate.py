"""The plugin's own Alembic history: upgrade, downgrade and current for hosts and the CLI,
and a filter a host's own Alembic env.py uses so its autogenerate leaves our tables alone."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from flask import Flask
from sqlalchemy.engine import Connection

VERSION_TABLE = "lm_billing_alembic_version"
TABLE_PREFIX = "lm_billing_"


def script_location() -> str:
    """Where the migration scripts are: inside the installed package, or the checkout."""
    try:
        path = Path(str(resources.files("lm_billing_plugin.migrations")))
        if (path / "env.py").exists():
            return str(path)
    except ModuleNotFoundError:
        pass
    return str(Path(__file__).resolve().parent.parent / "migrations")


def _config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", script_location())
    cfg.attributes["connection"] = connection
    return cfg


def _engine(app: Flask | None) -> Any:
    from .extension import get_state

    if app is not None:
        with app.app_context():
            return get_state(app).db.engine
    return get_state().db.engine


def upgrade(app: Flask | None = None, revision: str = "head") -> None:
    """Bring the plugin's tables up to ``revision`` (default: the newest)."""
    with _engine(app).begin() as connection:
        command.upgrade(_config(connection), revision)


def downgrade(app: Flask | None = None, revision: str = "base") -> None:
    """Take the plugin's tables down to ``revision`` (``base`` drops them all)."""
    with _engine(app).begin() as connection:
        command.downgrade(_config(connection), revision)


def current(app: Flask | None = None) -> str | None:
    """The plugin's schema revision in the database, or None before the first upgrade."""
    with _engine(app).connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        )
        return context.get_current_revision()


def alembic_include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """For a host's env.py ``include_object=``: skip the plugin's tables, so the host's
    autogenerate never proposes to drop or alter them."""
    table_name = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", "")
    return not (table_name or "").startswith(TABLE_PREFIX) and name != VERSION_TABLE
