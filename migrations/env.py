"""Alembic environment of the plugin: its own version table, only its own tables, batch mode
on SQLite. The connection is handed in by lm_billing_plugin.migrate (config.attributes)."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine

from lm_billing_plugin.migrate import VERSION_TABLE, include_own_object
from lm_billing_plugin.models import Base, UTCDateTime

config = context.config
# The env (not the revisions) may use the models: autogenerate compares against them.
target_metadata = Base.metadata


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Revisions must not import the plugin (its models change later): spell our UTC
    # timestamps in plain SQLAlchemy, as 0001 does.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        autogen_context.imports.add("from sqlalchemy.dialects import mysql")
        return 'sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")'
    return False


def run_migrations(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_object=include_own_object,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("run the plugin's migrations with `flask lm-billing db upgrade`")
    engine = create_engine(url)
    with engine.begin() as conn:
        run_migrations(conn)
    engine.dispose()
