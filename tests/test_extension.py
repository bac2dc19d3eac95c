"""The extension object: factory-safe init_app, config defaults, database wiring."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from lm_billing_plugin import LMBilling, get_state
from lm_billing_plugin.settings import CONFIG, DEFAULTS

ROOT = Path(__file__).resolve().parent.parent


def test_init_app_keeps_state_in_extensions_not_on_self(app: Flask) -> None:
    state = get_state(app)
    assert state.settings.url_prefix == "/billing"
    assert not hasattr(state.extension, "app")
    assert "lm_billing" in app.blueprints
    assert "lm-billing" in app.cli.commands


def test_second_registration_raises(app: Flask) -> None:
    with pytest.raises(RuntimeError, match="already registered"):
        LMBilling(app)


def test_one_extension_serves_two_apps(tmp_path: Path) -> None:
    billing = LMBilling(permission_check=lambda user, action: True)
    apps = []
    for name, prefix in (("one", "/billing"), ("two", "/money")):
        app = Flask(name)
        app.config.update(
            TESTING=True,
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / name}.sqlite",
            LM_BILLING_URL_PREFIX=prefix,
        )
        SQLAlchemy(app)
        billing.init_app(app)
        apps.append(app)
    assert get_state(apps[0]).settings.url_prefix == "/billing"
    assert get_state(apps[1]).settings.url_prefix == "/money"
    assert get_state(apps[0]).db is not get_state(apps[1]).db


def test_defaults_are_set_without_overriding_the_host(tmp_path: Path) -> None:
    app = Flask("host")
    app.config.update(
        TESTING=True,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/x.sqlite", LM_BILLING_MAX_PARALLEL=3
    )
    SQLAlchemy(app)
    LMBilling(app)
    assert app.config["LM_BILLING_MAX_PARALLEL"] == 3
    assert app.config["LM_BILLING_PAGE_SIZE"] == DEFAULTS["LM_BILLING_PAGE_SIZE"]
    assert all(key.startswith("LM_BILLING_") for key in DEFAULTS)


def test_reuses_the_hosts_sqlalchemy(app: Flask) -> None:
    assert get_state(app).db is app.extensions["sqlalchemy"]


def test_sets_up_a_database_when_the_host_has_none(tmp_path: Path) -> None:
    app = Flask("bare")
    app.testing = True
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path}/own.sqlite"
    LMBilling(app)
    assert isinstance(app.extensions["sqlalchemy"], SQLAlchemy)


def test_without_any_database_init_app_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="SQLALCHEMY_DATABASE_URI"):
        LMBilling(Flask("nodb"))


def test_bad_setting_is_refused_at_init_app(tmp_path: Path) -> None:
    app = Flask("bad")
    app.config.update(
        TESTING=True,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/x.sqlite", LM_BILLING_LIST_PAGE_SIZE=0
    )
    with pytest.raises(ValueError, match="LM_BILLING_LIST_PAGE_SIZE"):
        LMBilling(app)


def test_readme_configuration_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [key for key, _, _ in CONFIG if f"`{key}`" not in readme]
    assert not missing, f"README configuration table lacks {missing}"
