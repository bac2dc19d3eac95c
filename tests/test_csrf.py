"""CSRF on every POST route of the lm_billing blueprint, generated from the URL map: without a
token, or with a forged one, the answer is 400 and no row changes; with it, the change happens."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _login_host import (
    as_user,
    build_url,
    csrf_token,
    fingerprint,
    login_host_app,
    plugin_rules,
    seed_rows,
)
from flask import Flask
from werkzeug.routing import Rule


def _rules() -> list[Rule]:
    app = login_host_app("sqlite://")
    try:
        return [r for r in plugin_rules(app) if "POST" in (r.methods or ())]
    finally:
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


POST_RULES = [pytest.param(r, id=r.endpoint) for r in _rules()]

# Form data that WOULD change something when the token is right, so "nothing changed"
# without it means the CSRF check stopped a real change. Routes not listed are posted with
# a plausible empty form; the 400 and the unchanged database are checked all the same.
VALID_FORMS: dict[str, Any] = {
    "lm_billing.customer_new": lambda s: {"company": "Forged Ltd", "is_active": "y"},
    "lm_billing.customer_edit": lambda s: {"company": "Forged Ltd", "is_active": "y"},
    "lm_billing.group_new": lambda s: {"name": "Forged group", "plan_id": str(s["plan_id"])},
    "lm_billing.group_edit": lambda s: {"name": "Forged group", "plan_id": str(s["plan_id"])},
    "lm_billing.plan_new": lambda s: _plan("Forged plan"),
    "lm_billing.plan_edit": lambda s: _plan("Forged plan"),
    "lm_billing.server_new": lambda s: {"name": "Forged", "host": "192.0.2.7", "port": "2021"},
    "lm_billing.server_delete": lambda s: {},
}


def _plan(name: str) -> dict[str, str]:
    numbers = [
        "max_members",
        "max_members_per_list",
        "max_lists",
        "max_lists_per_site",
        "max_sites",
        "monthly_price",
        "overage_cpm",
        "included_messages",
        "max_message_size_kb",
        "monthly_price_per_server",
        "cost_per_gb",
        "included_gb",
    ]
    return {"name": name, "billing_method": "standard", **dict.fromkeys(numbers, "0")}


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[Flask, dict[str, Any]]]:
    from lm_billing_plugin.web.views.runs import shutdown_executor

    app = login_host_app(f"sqlite:///{tmp_path / 'billing.sqlite'}")
    yield app, seed_rows(app)
    shutdown_executor(app, wait=True)  # a bill run started by a request finishes first
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


def test_every_post_route_is_listed() -> None:
    endpoints = {p.values[0].endpoint for p in POST_RULES}  # type: ignore[union-attr]
    assert {"lm_billing.customer_new", "lm_billing.assign", "lm_billing.unassign"} <= endpoints
    assert len(endpoints) >= 10


@pytest.mark.parametrize("rule", POST_RULES)
def test_post_without_token_is_400_and_changes_nothing(
    seeded: tuple[Flask, dict[str, Any]], rule: Rule
) -> None:
    app, samples = seeded
    url = build_url(app, rule, samples)
    data = VALID_FORMS.get(rule.endpoint, lambda s: {})(samples)
    client = app.test_client()
    headers = as_user(client, "operator")
    real_token = csrf_token(client)  # the session has a token; the request just lacks it
    before = fingerprint(app)

    missing = client.post(url, data=data, headers=headers)
    assert missing.status_code == 400, (rule.endpoint, missing.status_code)
    assert "CSRF token is missing" in missing.get_data(as_text=True)
    assert "Reload the page" in missing.get_data(as_text=True)

    forged = client.post(
        url, data={**data, "csrf_token": real_token[:-4] + "AAAA"}, headers=headers
    )
    assert forged.status_code == 400, (rule.endpoint, forged.status_code)

    # A token from another browser session is no good either.
    other = app.test_client()
    stolen = csrf_token(other)
    cross = client.post(url, data={**data, "csrf_token": stolen}, headers=headers)
    # Flask-WTF ties the token to the session; a fresh session has no CSRF secret to match.
    assert cross.status_code == 400, (rule.endpoint, cross.status_code)

    assert fingerprint(app) == before


@pytest.mark.parametrize("endpoint", sorted(VALID_FORMS))
def test_the_same_post_with_the_token_does_change(
    seeded: tuple[Flask, dict[str, Any]], endpoint: str
) -> None:
    """The counterpart that keeps the test above honest: its form data is a real change."""
    app, samples = seeded
    rules = [p.values[0] for p in POST_RULES if p.values[0].endpoint == endpoint]  # type: ignore[union-attr]
    if not rules:
        pytest.fail(f"{endpoint} is in VALID_FORMS but not in the URL map: update the table")
    url = build_url(app, rules[0], samples)
    client = app.test_client()
    headers = as_user(client, "operator")
    data = {**VALID_FORMS[endpoint](samples), "csrf_token": csrf_token(client)}
    if endpoint.endswith("_edit"):
        # An edit form is saved only with the version it was loaded with, as a browser sends.
        page = client.get(url, headers=headers).get_data(as_text=True)
        found = re.search(r'name="loaded_version"[^>]*value="([^"]+)"', page)
        assert found, f"{endpoint}: no loaded_version on its page"
        data["loaded_version"] = found.group(1)
    before = fingerprint(app)
    response = client.post(url, data=data, headers=headers)
    assert response.status_code in (200, 302, 303), (endpoint, response.status_code)
    assert fingerprint(app) != before, f"{endpoint}: the sample form changed nothing"


# --- the JSON API: a session request needs X-CSRFToken, a bearer-token request does not ----


def _api_write_rules() -> list[Any]:
    from _login_host import api_methods, api_rules

    app = login_host_app("sqlite://")
    try:
        return [
            pytest.param(r, m, id=f"{r.endpoint}-{m}")
            for r in api_rules(app)
            for m in api_methods(r)
            if m != "GET"
        ]
    finally:
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


API_WRITES = _api_write_rules()
# JSON bodies that DO change something when the request gets through.
API_BODIES: dict[str, Any] = {
    "lm_billing_api.server_create": lambda s: {"name": "Forged", "host": "192.0.2.7"},
    "lm_billing_api.server_update": lambda s: {"comments": "forged"},
    "lm_billing_api.server_delete": lambda s: {},
    "lm_billing_api.assignment_delete": lambda s: {},
    "lm_billing_api.bill_run_create": lambda s: {"start": "2026-02-01", "end": "2026-02-28"},
    "lm_billing_api.invoice_void": lambda s: {"reason": "forged"},
}


def _api_body(endpoint: str, samples: dict[str, Any]) -> Any:
    return API_BODIES.get(endpoint, lambda s: {})(samples)


@pytest.mark.parametrize(("rule", "method"), API_WRITES)
def test_api_session_write_without_csrf_header_is_400_json_and_changes_nothing(
    seeded: tuple[Flask, dict[str, Any]], rule: Rule, method: str
) -> None:
    app, samples = seeded
    url = build_url(app, rule, samples)
    client = app.test_client()
    headers = {**as_user(client, "operator"), "If-Match": "*"}
    real_token = csrf_token(client)
    body = _api_body(rule.endpoint, samples)
    before = fingerprint(app)
    for extra in ({}, {"X-CSRFToken": real_token[:-4] + "AAAA"}):
        response = client.open(url, method=method, json=body, headers={**headers, **extra})
        assert response.status_code == 400, (rule.endpoint, response.status_code)
        assert response.get_json()["error"]["code"] == "csrf_failed"
    # A token in the form field does not count for the API: only the header does.
    response = client.open(url, method=method, data={"csrf_token": real_token}, headers=headers)
    assert response.status_code == 400
    assert fingerprint(app) == before


@pytest.mark.parametrize("endpoint", sorted(API_BODIES))
@pytest.mark.parametrize("how", ["session+csrf", "token"])
def test_api_write_with_csrf_header_or_bearer_token_does_change(
    seeded: tuple[Flask, dict[str, Any]], endpoint: str, how: str
) -> None:
    """The counterpart: the same body from a session with X-CSRFToken, or with a bearer token
    and no CSRF token at all, makes the change."""
    from _login_host import as_token

    app, samples = seeded
    rule, method = next(
        (p.values[0], p.values[1])
        for p in API_WRITES
        if p.values[0].endpoint == endpoint  # type: ignore[union-attr]
    )
    url = build_url(app, rule, samples)
    client = app.test_client()
    if how == "token":
        headers = as_token("operator")
    else:
        headers = {**as_user(client, "operator"), "X-CSRFToken": csrf_token(client)}
    if endpoint == "lm_billing_api.assignment_delete":
        _validate_seeded_server(app, samples)
    before = fingerprint(app)
    response = client.open(
        url, method=method, json=_api_body(endpoint, samples), headers={**headers, "If-Match": "*"}
    )
    assert response.status_code in (200, 201, 202), (endpoint, response.get_data(as_text=True))
    assert fingerprint(app) != before, f"{endpoint}: the sample body changed nothing"


def _validate_seeded_server(app: Flask, samples: dict[str, Any]) -> None:
    # The gate lets assignments change only on a validated server without drift.
    from lm_billing_plugin.models import Server, utcnow
    from lm_billing_plugin.state import get_state

    with app.app_context():
        session = get_state(app).session
        server = session.get(Server, samples["server_id"])
        assert server is not None
        server.validated_at = utcnow()
        session.commit()


@pytest.mark.parametrize("order", ["csrfprotect-first", "csrfprotect-last"])
def test_api_token_request_passes_the_hosts_app_wide_csrfprotect(
    tmp_path: Path, order: str
) -> None:
    from _login_host import as_token
    from flask_wtf.csrf import CSRFProtect

    if order == "csrfprotect-first":
        app = _with_csrf_first(tmp_path)
    else:
        app = login_host_app(f"sqlite:///{tmp_path / 'billing.sqlite'}")
        CSRFProtect(app)
    try:
        client = app.test_client()
        created = client.post(
            "/billing/api/v1/servers",
            json={"name": "Scripted", "host": "192.0.2.9"},
            headers=as_token("operator"),
        )
        assert created.status_code == 201, created.get_data(as_text=True)
        # Session requests are still checked, by the plugin itself.
        refused = client.post(
            "/billing/api/v1/servers",
            json={"name": "Sessioned", "host": "192.0.2.10"},
            headers=as_user(client, "operator"),
        )
        assert refused.status_code == 400
        assert refused.get_json()["error"]["code"] == "csrf_failed"
        # And the host's own forms stay protected.
        assert client.post("/login").status_code in (400, 405)
    finally:
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


def _with_csrf_first(tmp_path: Path) -> Flask:
    """login_host_app's host, but with CSRFProtect set up before LMBilling."""
    from _login_host import USER_HEADER, USERS, TestUser
    from flask_login import LoginManager
    from flask_sqlalchemy import SQLAlchemy
    from flask_wtf.csrf import CSRFProtect

    from lm_billing_plugin import LMBilling
    from lm_billing_plugin.models import Base

    app = Flask("csrf_first")
    app.config.update(
        SECRET_KEY="x", SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'csrf_first.sqlite'}",
        LM_BILLING_ENCRYPTION_KEYS=[_key()], LM_BILLING_SCHEDULER_AUTOSTART=False, TESTING=True,
    )
    db = SQLAlchemy(app)
    CSRFProtect(app)
    manager = LoginManager(app)
    manager.request_loader(
        lambda req: TestUser(req.headers[USER_HEADER]) if req.headers.get(USER_HEADER) in USERS
        else None
    )
    billing = LMBilling(app, permission_check=lambda user, action: user.is_authenticated)
    billing.token_checker(lambda token: TestUser("operator") if token == "token-operator" else None)
    app.add_url_rule("/login", "login", lambda: "login", methods=["POST"])
    with app.app_context():
        Base.metadata.create_all(db.engine)
    return app


def _key() -> str:
    from conftest import TEST_KEY

    return TEST_KEY
