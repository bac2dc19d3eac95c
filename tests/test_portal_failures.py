"""Failures inside real host portals (issue #13): an error page that itself fails, a raising
permission callback, and Flask-AppBuilder's menu permissions on the Billing category."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, render_template_string
from flask_wtf.csrf import CSRFProtect
from test_portals import admin_portal, billing_dropdown

from lm_billing_plugin import add_to_appbuilder
from lm_billing_plugin.web.menu import MENU
from lm_billing_plugin.web.portals import APPBUILDER_TEMPLATE


def _fab_app(
    make_app: Callable[..., Flask], *, csrf: bool = True, roles: tuple[str, ...] = ()
) -> tuple[Flask, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from flask_appbuilder import AppBuilder
    app = make_app(
        LM_BILLING_BASE_TEMPLATE=APPBUILDER_TEMPLATE,
        WTF_CSRF_ENABLED=csrf,
        AUTH_ROLE_ADMIN="Admin",
        FAB_ADD_SECURITY_API=False,
        RATELIMIT_ENABLED=False,
        APP_NAME="Host FAB",
    )
    if csrf:
        # The usual factory order: CSRFProtect first, then AppBuilder. Its before_request
        # then runs before FAB's, which is the one that sets g.user.
        CSRFProtect(app)
    with app.app_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        appbuilder = AppBuilder(app, app.extensions["sqlalchemy"].session)
        for role in roles:
            appbuilder.sm.add_role(role)
        add_to_appbuilder(appbuilder, **({"roles": roles} if roles else {}))
    return app, appbuilder


def _login(client: Any, user_id: int) -> None:
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True


def _add_user(app: Flask, appbuilder: Any, login: str, role_name: str) -> int:
    with app.app_context():
        role = appbuilder.sm.find_role(role_name)
        user = appbuilder.sm.add_user(
            login, "Ada", "Lovelace", f"{login}@example.test", role, hashed_password="-"
        )
        return int(user.id)


@pytest.mark.parametrize("path", ["/billing/servers/new", "/billing/servers/validate"])
def test_fab_post_without_csrf_token_is_400_not_500(
    make_app: Callable[..., Flask], path: str
) -> None:
    """Bug 1: CSRFProtect refuses before FAB sets g.user; FAB's navbar then fails on
    g.user. The refusal must still be a 400 page that says what to do."""
    app, appbuilder = _fab_app(make_app)
    client = app.test_client()
    _login(client, _add_user(app, appbuilder, "ada", "Admin"))
    response = client.post(path, data={"name": "x"})
    assert response.status_code == 400, response.get_data(as_text=True)[:1000]
    body = response.get_data(as_text=True)
    assert "CSRF" in body
    assert "Traceback" not in body


def test_error_page_falls_back_to_plain_text_when_every_layout_fails(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(permission_check=lambda user, action: False)
    # Even the plugin's own layout breaks (a host override of lm_billing/base.html that
    # needs something this request does not have): plain words, never a 500.
    app.jinja_loader = _BrokenBase(app.jinja_loader)  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, "lm_billing_plugin.blueprint"):
        response = app.test_client().get("/billing/")
    assert response.status_code == 403
    assert response.mimetype == "text/plain"
    assert response.get_data(as_text=True).startswith("403 Forbidden: ")


class _BrokenBase:
    """A loader whose lm_billing/base.html raises at render time (not a TemplateError)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def get_source(self, environment: Any, template: str) -> Any:
        if template == "lm_billing/base.html":
            # A ZeroDivisionError at render time: not a jinja2.TemplateError.
            return "{{ 1 // (lm_billing_base_template | length * 0) }}", None, lambda: False
        return self.inner.get_source(environment, template)

    def list_templates(self) -> list[str]:
        return list(self.inner.list_templates())


def _raising(user: Any, action: str) -> bool:
    raise KeyError("the host's role service is down")


def test_raising_permission_callback_is_no_on_flask_admin_pages(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    """Bug 2: a callback that raises is "no": the host's own Flask-Admin page still works
    (without Billing links), and the error is logged once per request, with its traceback."""
    app = admin_portal(make_app)
    app.extensions["lm_billing"].extension.permission_check = _raising
    with caplog.at_level(logging.ERROR, "lm_billing_plugin.access"):
        response = app.test_client().get("/admin/")
    assert response.status_code == 200
    assert billing_dropdown(response.get_data(as_text=True)) == ""
    records = [r for r in caplog.records if r.name == "lm_billing_plugin.access"]
    assert len(records) == 1
    assert records[0].exc_info is not None and records[0].exc_info[0] is KeyError


def test_raising_permission_callback_is_403_on_billing_pages_and_an_empty_menu(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(permission_check=_raising)
    with caplog.at_level(logging.ERROR, "lm_billing_plugin.access"):
        assert app.test_client().get("/billing/").status_code == 403
        with app.test_request_context("/"):
            assert render_template_string("{{ lm_billing_menu() | length }}") == "0"
    assert len([r for r in caplog.records if r.name == "lm_billing_plugin.access"]) == 2


def test_fab_roles_get_menu_access_on_the_category_and_every_link(
    make_app: Callable[..., Flask],
) -> None:
    """Bug 3: FAB shows a link only with menu_access on its category too; roles= grants both."""
    app, appbuilder = _fab_app(make_app, csrf=False, roles=("Billing clerk",))
    with app.app_context():
        role = appbuilder.sm.find_role("Billing clerk")
        granted = {(p.permission.name, p.view_menu.name) for p in role.permissions}
    links = {("menu_access", f"Billing: {e.label}") for e in MENU}
    assert granted == {("menu_access", "Billing"), *links}
    client = app.test_client()
    _login(client, _add_user(app, appbuilder, "clerk", "Billing clerk"))
    html = client.get("/billing/").get_data(as_text=True)
    assert re.search(r'href="/billing/">\s*Servers</a>', html), html[:3000]
    assert re.search(r'href="/billing/customers">\s*Customers</a>', html)


def test_fab_roles_must_exist(make_app: Callable[..., Flask]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from flask_appbuilder import AppBuilder
    app = make_app(FAB_ADD_SECURITY_API=False, RATELIMIT_ENABLED=False, WTF_CSRF_ENABLED=False)
    with app.app_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        appbuilder = AppBuilder(app, app.extensions["sqlalchemy"].session)
        with pytest.raises(ValueError, match="no Flask-AppBuilder role 'Nobody'"):
            add_to_appbuilder(appbuilder, roles=("Nobody",))
