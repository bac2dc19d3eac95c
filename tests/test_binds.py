"""LM_BILLING_BIND_KEY: the plugin's tables, migrations, pages, API and validations on a
host's named bind (a second SQLite file), the host's default database left without them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import build_app
from flask import Flask

import lm_billing_plugin
from lm_billing_plugin.migrate import VERSION_TABLE, current
from lm_billing_plugin.models import Base, Server
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim

PAGES = ["/billing/", "/billing/overview", "/billing/servers/1", "/billing/errors",
         "/billing/customers", "/billing/plans", "/billing/reports/usage", "/billing/background"]


def tables(path: Path) -> set[str]:
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


TOKEN = {"Authorization": "Bearer robot"}


def robot(app: Flask) -> Flask:
    get_state(app).extension.token_checker(lambda token: "robot" if token == "robot" else None)
    return app


def bound_app(tmp_path: Path, **config: object) -> Flask:
    return robot(build_app(
        f"sqlite:///{tmp_path / 'host.sqlite'}",
        create_tables=False,
        SQLALCHEMY_BINDS={"billing": f"sqlite:///{tmp_path / 'billing.sqlite'}"},
        LM_BILLING_BIND_KEY="billing",
        LM_BILLING_INLINE_BATCHES=True,
        **config,
    ))


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=2, lists=6, seed=3)) as server:
        yield server


def dispose(app: Flask) -> None:
    with app.app_context():
        for engine in app.extensions["sqlalchemy"].engines.values():
            engine.dispose()


def test_tables_migrations_pages_api_and_a_validation_live_on_the_bind(
    tmp_path: Path, sim: HostSim
) -> None:
    app = bound_app(tmp_path)
    runner = app.test_cli_runner()
    try:
        result = runner.invoke(args=["lm-billing", "db", "upgrade"])
        assert result.exit_code == 0, result.output
        plugin_tables = set(Base.metadata.tables) | {VERSION_TABLE}
        assert plugin_tables <= tables(tmp_path / "billing.sqlite")
        assert not {t for t in tables(tmp_path / "host.sqlite") if t.startswith("lm_billing")}
        assert current(app) is not None

        added = runner.invoke(args=["lm-billing", "servers", "add", "--name", "Lists",
                                    "--host", sim.host, "--port", str(sim.port)])
        assert added.exit_code == 0, added.output
        synced = runner.invoke(args=["lm-billing", "sync", "--all", "--json"])
        doc = json.loads(synced.stdout_bytes)
        assert doc["servers"][0]["ok"] is True, synced.output
        assert doc["servers"][0]["changes"]["created"] > 0

        client = app.test_client()
        for page in PAGES:
            assert client.get(page).status_code == 200, page
        api = client.get("/billing/api/v1/servers").get_json()
        assert [s["name"] for s in api["items"]] == ["Lists"]
        batch = client.post("/billing/api/v1/validate", json={}, headers=TOKEN)
        assert batch.status_code == 202, batch.get_json()

        with app.app_context():
            # The plugin's session and engine are the bind's; the host's stays its own.
            session = get_state().session
            assert session.scalars(sa.select(Server.name)).all() == ["Lists"]
            assert str(get_state().engine.url).endswith("billing.sqlite")
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'billing.sqlite'}")
        with engine.connect() as conn:
            lists = conn.scalar(sa.text("SELECT count(*) FROM lm_billing_list"))
        engine.dispose()
        assert lists == 6

        lm_billing_plugin.downgrade(app)
        assert not {t for t in tables(tmp_path / "billing.sqlite") if t.startswith("lm_billing")}
        lm_billing_plugin.upgrade(app)
        assert plugin_tables <= tables(tmp_path / "billing.sqlite")
        assert not {t for t in tables(tmp_path / "host.sqlite") if t.startswith("lm_billing")}
    finally:
        dispose(app)


def test_an_app_on_a_bind_and_one_without_share_the_process(tmp_path: Path) -> None:
    """The bind is per app (the models carry none), so both work side by side."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    bound = bound_app(tmp_path / "a")
    plain = robot(build_app(f"sqlite:///{tmp_path / 'b' / 'plain.sqlite'}"))
    try:
        lm_billing_plugin.upgrade(bound)
        for app, name in ((bound, "On bind"), (plain, "On default")):
            client = app.test_client()
            created = client.post("/billing/api/v1/servers",
                                  json={"name": name, "host": "127.0.0.1"}, headers=TOKEN)
            assert created.status_code == 201, created.get_json()
        for app, name in ((bound, "On bind"), (plain, "On default")):
            items = app.test_client().get("/billing/api/v1/servers").get_json()["items"]
            assert [s["name"] for s in items] == [name]
        assert not {t for t in tables(tmp_path / "a" / "host.sqlite")
                    if t.startswith("lm_billing")}
    finally:
        dispose(bound)
        dispose(plain)


def test_a_bind_key_the_host_does_not_have_is_refused_at_init_app(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="SQLALCHEMY_BINDS has no such bind"):
        build_app(f"sqlite:///{tmp_path / 'host.sqlite'}", create_tables=False,
                  LM_BILLING_BIND_KEY="nowhere")
    with pytest.raises(ValueError, match="LM_BILLING_BIND_KEY"):
        build_app(f"sqlite:///{tmp_path / 'host.sqlite'}", create_tables=False,
                  LM_BILLING_BIND_KEY="")
