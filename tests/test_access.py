"""Deny by default: Flask-Login's login first, then the host's permission callback per action
(view, edit, run); security headers; the menu only for those who may view."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, render_template_string
from flask.testing import FlaskClient
from flask_login import FlaskLoginClient, LoginManager, UserMixin

from lm_billing_plugin import LMBilling, requires
from lm_billing_plugin.web.access import actor_name

VIEW = "/billing/_probe/view"
ACCOUNTS = {"operator": ("view", "edit", "run"), "viewer": ("view",), "stranger": ()}


class User(UserMixin):  # type: ignore[misc]
    def __init__(self, username: str) -> None:
        self.id = username
        self.username = username
        self.actions = ACCOUNTS[username]


def may(user: Any, action: str) -> bool:
    return bool(user.is_authenticated) and action in user.actions


def add_probes(app: Flask) -> None:
    """Test-only plugin routes for the actions no foundation page needs yet. Endpoints in
    the lm_billing namespace get the blueprint's guard and headers, as real pages do."""

    def view_probe() -> str:
        # A page like the real ones (base template, menu) that other work cannot break.
        return render_template_string(
            "{% extends lm_billing_base_template %}{% block title %}Probe{% endblock %}"
            "{% block content %}<h1>Billing: Probe</h1>{% endblock %}"
        )

    @requires("edit")
    def edit_probe() -> str:
        return "edited"

    @requires("run")
    def run_probe() -> str:
        return "ran"

    app.add_url_rule("/billing/_probe/view", "lm_billing.probe_view", view_probe)
    app.add_url_rule("/billing/_probe/edit", "lm_billing.probe_edit", edit_probe, methods=["POST"])
    app.add_url_rule("/billing/_probe/run", "lm_billing.probe_run", run_probe, methods=["POST"])


def with_login(app: Flask) -> Flask:
    """Make ``app`` a Flask-Login host with a login view, like a real portal."""
    manager = LoginManager(app)
    manager.login_view = "login"
    manager.user_loader(lambda user_id: User(user_id) if user_id in ACCOUNTS else None)
    app.add_url_rule("/login", "login", lambda: "the host's login page")
    app.test_client_class = FlaskLoginClient
    add_probes(app)
    return app


# The blueprint's CSRF check is tested with the forms; here only access decides.
NO_CSRF = {"WTF_CSRF_ENABLED": False}


@pytest.fixture
def portal(make_app: Callable[..., Flask]) -> Flask:
    return with_login(make_app(permission_check=may, **NO_CSRF))


def client_as(app: Flask, username: str | None) -> FlaskClient:
    return app.test_client(user=User(username)) if username else app.test_client()


def test_anonymous_goes_to_the_hosts_login_view(portal: Flask) -> None:
    response = client_as(portal, None).get("/billing/")
    assert response.status_code == 302
    assert response.location.startswith("/login?next=")
    assert "billing" in response.location
    # POSTs too: the login check comes before any permission or CSRF question.
    assert client_as(portal, None).post("/billing/_probe/edit").status_code == 302


def test_view_only_user_may_look_but_not_edit_or_run(portal: Flask) -> None:
    viewer = client_as(portal, "viewer")
    page = viewer.get(VIEW)
    assert page.status_code == 200
    assert "<h1>Billing: Probe</h1>" in page.get_data(as_text=True)
    refused = viewer.post("/billing/_probe/edit")
    assert refused.status_code == 403
    assert "billing &#39;edit&#39; permission" in refused.get_data(as_text=True)
    assert viewer.post("/billing/_probe/run").status_code == 403


def test_operator_may_do_everything(portal: Flask) -> None:
    operator = client_as(portal, "operator")
    assert operator.get(VIEW).status_code == 200
    assert operator.post("/billing/_probe/edit").get_data(as_text=True) == "edited"
    assert operator.post("/billing/_probe/run").get_data(as_text=True) == "ran"


def test_logged_in_user_without_view_is_refused(portal: Flask) -> None:
    assert client_as(portal, "stranger").get(VIEW).status_code == 403


def test_the_callback_is_asked_about_the_endpoints_action(make_app: Callable[..., Flask]) -> None:
    asked: list[tuple[str, str]] = []

    def check(user: Any, action: str) -> bool:
        asked.append((user.username, action))
        return True

    app = with_login(make_app(permission_check=check, **NO_CSRF))
    client = client_as(app, "viewer")
    client.get(VIEW)
    assert ("viewer", "view") in asked
    # The page's menu also asks "edit", for its "Assign Lists to Customers" entry.
    assert {action for _, action in asked} == {"view", "edit"}
    asked.clear()
    client.post("/billing/_probe/edit")
    client.post("/billing/_probe/run")
    assert [action for _, action in asked if action != "view"] == ["edit", "run"]


def test_no_callback_means_403_even_when_logged_in(make_app: Callable[..., Flask]) -> None:
    app = with_login(make_app(permission_check=None))
    refused = client_as(app, "operator").get(VIEW)
    assert refused.status_code == 403
    assert "passes permission_check= to LMBilling" in refused.get_data(as_text=True)
    # ... and without Flask-Login at all.
    bare = make_app(permission_check=None)
    add_probes(bare)
    assert bare.test_client().get(VIEW).status_code == 403


def test_allow_all_lets_everyone_in(make_app: Callable[..., Flask]) -> None:
    app = make_app(permission_check=None, LM_BILLING_ALLOW_ALL=True, **NO_CSRF)
    add_probes(app)
    client = app.test_client()
    assert client.get(VIEW).status_code == 200
    assert client.post("/billing/_probe/edit").status_code == 200
    # As a string from the environment (FLASK_LM_BILLING_ALLOW_ALL=false) it is parsed.
    off = make_app(permission_check=None, LM_BILLING_ALLOW_ALL="false")
    add_probes(off)
    assert off.test_client().get(VIEW).status_code == 403


def test_permission_checker_decorator_form(tmp_path: Any) -> None:
    from flask_sqlalchemy import SQLAlchemy

    app = Flask("decorated")
    app.config.update(
        TESTING=True,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'd.sqlite'}",
        LM_BILLING_SCHEDULER_AUTOSTART=False,
        **NO_CSRF,
    )
    db = SQLAlchemy(app)
    billing = LMBilling()

    @billing.permission_checker
    def only_viewing(user: Any, action: str) -> bool:
        return action == "view"

    billing.init_app(app)
    add_probes(app)
    from lm_billing_plugin.models import Base

    with app.app_context():
        Base.metadata.create_all(db.engine)
    client = app.test_client()
    assert client.get(VIEW).status_code == 200
    assert client.post("/billing/_probe/edit").status_code == 403
    with app.app_context():
        db.engine.dispose()


def test_security_headers_on_pages_and_refusals(portal: Flask) -> None:
    viewer = client_as(portal, "viewer")
    for response in (viewer.get(VIEW), viewer.post("/billing/_probe/edit")):
        assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
        assert "frame-ancestors 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_stylesheet_is_public_but_pages_are_not(portal: Flask) -> None:
    anonymous = client_as(portal, None)
    css = anonymous.get("/billing/static/lm_billing.css")
    assert css.status_code == 200
    assert css.headers["X-Content-Type-Options"] == "nosniff"
    css.close()
    assert anonymous.get("/billing/").status_code == 302


@pytest.mark.parametrize(
    ("username", "labels"), [("stranger", []), ("viewer", ["Overview", "Servers"])]
)
def test_menu_only_for_users_who_may_view(
    portal: Flask, username: str, labels: list[str]
) -> None:
    template = "{% for e in lm_billing_menu() %}{{ e.label }}={{ e.url }};{% endfor %}"
    with portal.test_request_context("/"):
        from flask_login import login_user

        login_user(User(username))
        rendered = render_template_string(template)
    entries = [item.split("=") for item in rendered.split(";") if item]
    assert [label for label, _ in entries][: len(labels)] == labels
    if labels:
        assert dict(entries)["Servers"] == "/billing/"
    else:
        assert entries == []


def test_actor_name_names_the_logged_in_user(portal: Flask) -> None:
    with portal.test_request_context("/"):
        from flask_login import login_user

        assert actor_name() == "anonymous"
        login_user(User("operator"))
        assert actor_name() == "operator"
