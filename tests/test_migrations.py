"""The plugin's own Alembic history on SQLite, PostgreSQL and MariaDB: round trip, models equal
to the migrated schema, CLI and Python entry points, and peace with a host's own Alembic."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from flask.testing import FlaskCliRunner

from lm_billing_plugin import alembic_include_object, downgrade, upgrade
from lm_billing_plugin.migrate import (
    VERSION_TABLE,
    current,
    include_own_object,
    revision,
    script_location,
)
from lm_billing_plugin.migrate import _config as migrate_config
from lm_billing_plugin.models import (
    Assignment,
    Base,
    BillingGroup,
    Customer,
    MailingList,
    Server,
    UTCDateTime,
)
from lm_billing_plugin.state import get_state

HEAD = ScriptDirectory(script_location()).get_current_head()
ROOT = Path(__file__).resolve().parent.parent


def engine_of(app: Flask) -> sa.Engine:
    with app.app_context():
        return get_state(app).db.engine


def plugin_tables(engine: sa.Engine) -> set[str]:
    return {name for name in sa.inspect(engine).get_table_names() if name.startswith("lm_billing_")}


def schema_diffs(engine: sa.Engine) -> list[object]:
    """What autogenerate would change to make the database equal the models."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_object": include_own_object,
                "version_table": VERSION_TABLE,
            },
        )
        return list(compare_metadata(context, Base.metadata))


def mariadb_drift(engine: sa.Engine) -> list[str]:
    """What Alembic's type comparison does not see on MariaDB: table charsets, the names'
    binary no-pad collation and the microseconds of DATETIME(6)."""
    if engine.dialect.name not in ("mysql", "mariadb"):
        return []
    inspector = sa.inspect(engine)
    drift = []
    for table in Base.metadata.sorted_tables:
        charset = inspector.get_table_options(table.name).get("mysql_default charset")
        if charset != "utf8mb4":
            drift.append(f"{table.name}: charset {charset}")
        reflected = {col["name"]: col["type"] for col in inspector.get_columns(table.name)}
        for column in table.columns:
            wanted = column.type.compile(dialect=engine.dialect)
            if "COLLATE" in wanted or wanted.startswith("DATETIME"):
                found = reflected[column.name].compile(dialect=engine.dialect)
                if found != wanted:
                    drift.append(f"{table.name}.{column.name}: {found} != {wanted}")
    return drift


@pytest.fixture
def bare_app(make_app: Callable[..., Flask], db_url: str) -> Iterator[Flask]:
    """A host app on each backend whose database holds none of the plugin's tables yet."""
    app = make_app(db_url, create_tables=False)
    yield app
    with engine_of(app).begin() as conn:  # the host's own tables that a test made
        conn.execute(sa.text("DROP TABLE IF EXISTS host_user"))
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))


def test_cli_round_trip_leaves_models_and_schema_equal(bare_app: Flask) -> None:
    runner: FlaskCliRunner = bare_app.test_cli_runner()
    engine = engine_of(bare_app)
    # The host's own Alembic history shares the database and must never be touched.
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('host0042')"))

    result = runner.invoke(args=["lm-billing", "db", "current"])
    assert result.exit_code == 0, result.output
    assert "base (not upgraded yet)" in result.output

    result = runner.invoke(args=["lm-billing", "db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"lm-billing schema at {HEAD}" in result.output
    assert plugin_tables(engine) == set(Base.metadata.tables) | {VERSION_TABLE}
    assert schema_diffs(engine) == []
    assert mariadb_drift(engine) == []

    result = runner.invoke(args=["lm-billing", "db", "current"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == HEAD

    result = runner.invoke(args=["lm-billing", "db", "downgrade"])
    assert result.exit_code == 0, result.output
    assert "lm-billing schema at base" in result.output
    assert plugin_tables(engine) == set()

    with engine.connect() as conn:
        host_versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    assert [tuple(row) for row in host_versions] == [("host0042",)]


def test_python_upgrade_and_downgrade_for_deploy_scripts(bare_app: Flask) -> None:
    engine = engine_of(bare_app)
    upgrade(bare_app)
    assert current(bare_app) == HEAD
    assert VERSION_TABLE in plugin_tables(engine)
    # Upgrading again is a no-op, so deploy scripts may run it on every release.
    upgrade(bare_app)
    assert current(bare_app) == HEAD
    downgrade(bare_app)
    assert current(bare_app) is None
    assert plugin_tables(engine) == set()


def test_hosts_autogenerate_leaves_plugin_tables_alone(bare_app: Flask) -> None:
    engine = engine_of(bare_app)
    upgrade(bare_app)
    host_metadata = sa.MetaData()
    sa.Table("host_user", host_metadata, sa.Column("id", sa.Integer, primary_key=True))
    host_metadata.create_all(engine)

    def host_autogenerate(include_object: object) -> list[object]:
        with engine.connect() as conn:
            opts: dict[str, object] = {"compare_type": True}
            if include_object is not None:
                opts["include_object"] = include_object
            context = MigrationContext.configure(conn, opts=opts)
            return list(compare_metadata(context, host_metadata))

    # Without the filter the host's autogenerate would drop every plugin table ...
    unfiltered = host_autogenerate(None)
    assert any(diff[0] == "remove_table" for diff in unfiltered if isinstance(diff, tuple))
    assert "lm_billing_server" in repr(unfiltered)
    # ... with it, it proposes nothing at all: its own table is in sync.
    assert host_autogenerate(alembic_include_object) == []


def test_migrated_schema_keeps_its_data_rules(bare_app: Flask) -> None:
    """Case and trailing spaces make a different name on every backend (MariaDB's default
    collations would merge them), utf8mb4 keeps emoji, timestamps keep microseconds, and
    the assignment check constraint holds. (The db_url fixture drops the tables after.)"""
    upgrade(bare_app)
    names = ["Lists", "lists", "Lists ", "Ünïcødé-😀-列表"]
    with bare_app.app_context():
        session = get_state(bare_app).session
        servers = [Server(name=name, host="lm.example.test") for name in names]
        session.add_all(servers)
        session.flush()
        session.add_all(
            MailingList(server_id=servers[0].id, name=name, site_name=name) for name in names
        )
        session.commit()
        session.expire_all()

        assert sorted(session.scalars(sa.select(Server.name))) == sorted(names)
        assert sorted(session.scalars(sa.select(MailingList.name))) == sorted(names)
        found = session.scalars(sa.select(MailingList.site_name).filter_by(name="Lists")).all()
        assert found == ["Lists"]
        server = session.scalars(sa.select(Server).filter_by(name="Ünïcødé-😀-列表")).one()
        # Timestamps come back aware and keep their microseconds (DATETIME(6) on MariaDB).
        assert server.created_at.tzinfo is UTC
        stamp = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        server.validated_at = stamp
        session.commit()
        session.expire_all()
        assert session.get(Server, server.id).validated_at == stamp  # type: ignore[union-attr]

    with bare_app.app_context():
        session = get_state(bare_app).session
        server = Server(name="alpha", host="alpha.example.test")
        customer = Customer(company="Acme")
        session.add_all([server, customer])
        session.flush()
        group = BillingGroup(customer_id=customer.id, name="Acme main")
        session.add(group)
        session.flush()
        ok = Assignment(
            group_id=group.id, object_type="server", server_id=server.id, start_date=date.today()
        )
        session.add(ok)
        session.commit()
        # A "list" assignment without a list is what the check constraint forbids.
        session.add(
            Assignment(
                group_id=group.id, object_type="list", server_id=server.id, start_date=date.today()
            )
        )
        # PyMySQL reports MariaDB's failed CHECK (error 4025) as OperationalError, the other
        # drivers as IntegrityError: both are DBAPIError, and the message names the check.
        with pytest.raises(sa.exc.DBAPIError, match=r"(?i)ck_lm_billing_assignment_object|check"):
            session.commit()
        session.rollback()


def test_autogenerated_revision_is_numbered_self_contained_and_valid(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    """`flask lm-billing db revision` for the plugin's developers: the next number, no import
    of the plugin, and it migrates the database to equal the changed models."""
    directory = tmp_path / "migrations"
    shutil.copytree(script_location(), directory, ignore=shutil.ignore_patterns("__pycache__"))
    app = make_app(create_tables=False)
    upgrade(app)
    probe = sa.Table(
        "lm_billing_probe",
        Base.metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("seen_at", UTCDateTime(), nullable=False),
    )
    try:
        path = Path(revision("add probe", app, directory=str(directory)))
        number = int(HEAD or "0") + 1
        assert path.name == f"{number:04d}_add_probe.py"
        text = path.read_text(encoding="utf-8")
        assert "lm_billing_plugin" not in text
        assert 'sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")' in text
        # Lint-clean as generated (long lines are allowed in migrations/ by pyproject).
        ruff = Path(sys.executable).with_name("ruff")
        lint = subprocess.run(
            [str(ruff), "check", "--config", str(ROOT / "pyproject.toml"), "--ignore", "E501",
             "--no-cache", str(path)],
            capture_output=True, text=True, check=False, cwd=ROOT,
        )
        assert lint.returncode == 0, lint.stdout
        engine = engine_of(app)
        with engine.begin() as conn:
            command.upgrade(migrate_config(conn, str(directory)), "head")
        assert "lm_billing_probe" in plugin_tables(engine)
        assert schema_diffs(engine) == []
    finally:
        Base.metadata.remove(probe)
