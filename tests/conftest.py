"""Shared fixtures: a small host app per test, built with the plugin's factory pattern, on
SQLite always and on PostgreSQL / MariaDB when their URLs are set."""

from __future__ import annotations

import contextlib
import datetime
import os
import sqlite3
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from flask_sqlalchemy import SQLAlchemy
from jinja2 import StrictUndefined

from lm_billing_plugin import LMBilling
from lm_billing_plugin.migrate import VERSION_TABLE
from lm_billing_plugin.models import Base
from lm_billing_plugin.secrets import generate_key

IN_CI = os.environ.get("CI", "").lower() == "true"

# Tests that write raw SQL with date/datetime parameters relied on sqlite3's default adapters,
# deprecated since Python 3.12 (a warning, so an error here): the same ISO formats, explicitly
# (the recipe of the sqlite3 documentation). The plugin's own columns never reach them.
sqlite3.register_adapter(datetime.date, lambda v: v.isoformat())
sqlite3.register_adapter(datetime.datetime, lambda v: v.isoformat(" "))
# The extra-Python legs of .ci/run test the SQLite part only: there a missing PostgreSQL or
# MariaDB URL is an expected skip even under CI=true.
SQLITE_ONLY = os.environ.get("LM_BILLING_TEST_SQLITE_ONLY", "") == "1"
TEST_KEY = generate_key()

EXTERNAL_DATABASES = {
    "postgresql": "LM_BILLING_TEST_POSTGRES_URL",
    "mariadb": "LM_BILLING_TEST_MARIADB_URL",
}


def _worker_database(url: str, worker: str) -> str:
    """The URL of this xdist worker's own database beside ``url``'s (``test`` -> ``test_gw0``),
    created when missing: tests reset their schema, so two workers must never share one."""
    base = sa.engine.make_url(url)
    name = f"{base.database}_{worker}"
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if base.get_backend_name() == "postgresql":
                exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                      {"n": name}).scalar()
                if not exists:
                    conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            else:
                conn.execute(sa.text(
                    f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4"))
    finally:
        engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs two workers) each worker gets its own PostgreSQL
    and MariaDB database; the environment is rewritten so the processes tests start inherit it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    for env in EXTERNAL_DATABASES.values():
        url = os.environ.get(env)
        if not url:
            continue
        # Unreachable: the tests that need it skip or fail with the reason.
        with contextlib.suppress(sa.exc.OperationalError):
            os.environ[env] = _worker_database(url, worker)


def skip_or_fail(reason: str, *, external_db: bool = False) -> None:
    """Skip with a visible reason on a developer machine; under CI=true a missing part fails
    (a missing external database only skips when LM_BILLING_TEST_SQLITE_ONLY=1)."""
    if external_db and SQLITE_ONLY:
        pytest.skip(f"{reason} (LM_BILLING_TEST_SQLITE_ONLY=1)")
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this must not be skipped)")
    pytest.skip(reason)


def reset_schema(url: str) -> None:
    """Drop whatever an earlier (maybe crashed) test left, so each test starts empty."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            Base.metadata.drop_all(conn)
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL, once per backend: SQLite always, the others when configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'billing.sqlite'}"
        return
    env = EXTERNAL_DATABASES[request.param]
    url = os.environ.get(env)
    if not url:
        skip_or_fail(f"{request.param}: set {env} to run this test there", external_db=True)
        return
    try:
        reset_schema(url)
    except sa.exc.OperationalError as exc:
        skip_or_fail(f"{request.param} at {env} is unreachable: {exc.orig}")
        return
    yield url
    reset_schema(url)


# Every engine a test connected through (apps of build_app, the demo's, the login host's, a
# test's own) is disposed at the test's end: an idle connection left for the collector is a
# ResourceWarning (on Python 3.13 for SQLite too) in whichever later test the collector happens
# to run, listed in the warnings summary (pyproject.toml). In-memory SQLite is left alone
# (disposing it would drop its data).
_ENGINES: weakref.WeakSet[sa.engine.Engine] = weakref.WeakSet()


@sa.event.listens_for(sa.engine.Engine, "engine_connect")
def _remember_engine(connection: sa.engine.Connection) -> None:
    engine = connection.engine
    _ENGINES.add(getattr(engine, "_proxied", engine))  # an execution_options() copy: its parent


def _in_memory(engine: sa.engine.Engine) -> bool:
    url = engine.url
    return url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory")


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    yield
    for engine in list(_ENGINES):
        if not _in_memory(engine):
            engine.dispose()
    _ENGINES.clear()


def build_app(
    db_url: str, *, permission_check: Any = "allow", create_tables: bool = True, **config: Any
) -> Flask:
    """A minimal host app: its own Flask-SQLAlchemy, then the plugin."""
    app = Flask("host_app")
    app.config.update(
        TESTING=True,
        SECRET_KEY="test-secret",
        SQLALCHEMY_DATABASE_URI=db_url,
        LM_BILLING_ENCRYPTION_KEYS=[TEST_KEY],
        LM_BILLING_SCHEDULER_AUTOSTART=False,
    )
    app.config.update(config)
    app.jinja_env.undefined = StrictUndefined
    db = SQLAlchemy()
    db.init_app(app)
    if permission_check == "allow":
        permission_check = lambda user, action: True  # noqa: E731
    LMBilling(app, permission_check=permission_check)
    if create_tables:
        with app.app_context():
            Base.metadata.create_all(db.engine)
    return app


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., Flask]:
    """Factory for host apps on SQLite in tmp_path (their engines are disposed afterwards)."""

    def make(db_url: str | None = None, **kwargs: Any) -> Flask:
        return build_app(db_url or f"sqlite:///{tmp_path / 'billing.sqlite'}", **kwargs)

    return make


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def any_db_app(make_app: Callable[..., Flask], db_url: str) -> Flask:
    """The host app on each database backend in turn."""
    return make_app(db_url)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()
