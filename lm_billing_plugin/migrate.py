"""The plugin's own Alembic history: upgrade, downgrade and current for hosts and the CLI,
and a filter a host's own Alembic env.py uses so its autogenerate leaves our tables alone."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic (and Mako, which it loads) is imported inside the functions that use it: importing
# the plugin, e.g. for every `flask lm-billing validate`, must not pay for them.

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


def _config(connection: Connection, directory: str | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", directory or script_location())
    # New revisions are numbered files: versions/0002_add_something.py
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.attributes["connection"] = connection
    return cfg


def _engine(app: Flask | None) -> Any:
    from .state import get_state

    if app is not None:
        with app.app_context():
            return get_state(app).engine
    return get_state().engine


def upgrade(app: Flask | None = None, revision: str = "head") -> None:
    """Bring the plugin's tables up to ``revision`` (default: the newest)."""
    from alembic import command

    with _engine(app).begin() as connection:
        command.upgrade(_config(connection), revision)


def downgrade(app: Flask | None = None, revision: str = "base") -> None:
    """Take the plugin's tables down to ``revision`` (``base`` drops them all)."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    with _engine(app).begin() as connection:
        command.downgrade(_config(connection), revision)
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        if context.get_current_revision() is None:
            # At base nothing of the plugin should remain, its version table included, so
            # a host that uninstalls the plugin is left with a clean database.
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))


def revision(message: str, app: Flask | None = None, *, directory: str | None = None) -> str:
    """For the plugin's developers: autogenerate the next numbered revision from the models
    (the database must be at head) and return its path. Read it before committing:
    autogenerate misses renames and server-side defaults."""
    from alembic import command
    from alembic.script import ScriptDirectory

    with _engine(app).begin() as connection:
        cfg = _config(connection, directory)
        head = ScriptDirectory.from_config(cfg).get_current_head()
        rev_id = f"{int(head) + 1:04d}" if head and head.isdigit() else "0001"
        script = command.revision(cfg, message=message, autogenerate=True, rev_id=rev_id)
    if script is None or isinstance(script, list):  # only with several heads or branches
        raise RuntimeError("the plugin's history has several heads; merge them first")
    return str(script.path)


def current(app: Flask | None = None) -> str | None:
    """The plugin's schema revision in the database, or None before the first upgrade."""
    from alembic.runtime.migration import MigrationContext

    with _engine(app).connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        )
        return context.get_current_revision()


def _table_name(obj: Any, name: str | None, type_: str) -> str:
    if type_ == "table":
        return name or ""
    # Columns, indexes and constraints belong to a table; judge them by it.
    return str(getattr(getattr(obj, "table", None), "name", "") or "")


def include_own_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """``include_object=`` of the plugin's own env.py: only the plugin's tables (the host's
    share the database and are none of our migrations' business)."""
    return _table_name(obj, name, type_).startswith(TABLE_PREFIX)


def alembic_include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """For a host's env.py ``include_object=``: skip the plugin's tables, so the host's
    autogenerate never proposes to drop or alter them."""
    table_name = _table_name(obj, name, type_)
    return not table_name.startswith(TABLE_PREFIX) and table_name != VERSION_TABLE
