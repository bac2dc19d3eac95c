"""Mounting in real host portals: the Billing menu in Flask-Admin's and Flask-AppBuilder's own
menus, and the Billing pages inside their layouts."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from conftest import skip_or_fail
from flask import Flask

from lm_billing_plugin import add_to_appbuilder, add_to_flask_admin
from lm_billing_plugin.web.menu import MENU
from lm_billing_plugin.web.portals import APPBUILDER_TEMPLATE, FLASK_ADMIN_TEMPLATE


def admin_portal(
    make_app: Callable[..., Flask], *, may_view: bool = True, category: str | None = None
) -> Flask:
    from flask_admin import Admin

    app = make_app(
        permission_check=lambda user, action: may_view,
        LM_BILLING_BASE_TEMPLATE=FLASK_ADMIN_TEMPLATE,
    )
    try:
        from flask_babel import Babel  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        # With flask-babel installed (Flask-AppBuilder brings it), Flask-Admin translates
        # through it and needs it initialised, as any host of that setup would.
        Babel(app)
    admin = Admin(app, name="Host Admin")
    add_to_flask_admin(admin, category=category)
    return app


def billing_dropdown(html: str) -> str:
    """The <li> of Flask-Admin's main menu whose dropdown is called Billing."""
    match = re.search(r'<a [^>]*dropdown-toggle[^>]*>\s*(?:<[^>]+>\s*)*Billing.*?</ul>', html, re.S)
    return match.group(0) if match else ""


def test_flask_admin_index_shows_the_billing_menu(make_app: Callable[..., Flask]) -> None:
    app = admin_portal(make_app)
    html = app.test_client().get("/admin/").get_data(as_text=True)
    dropdown = billing_dropdown(html)
    assert dropdown, html
    assert re.search(r'href="/billing/"[^>]*>\s*Servers\s*</a>', dropdown)
    # Exactly the entries of menu.MENU whose pages exist (a page not built yet is left out).
    labels = re.findall(r'href="/billing/[^"]*"[^>]*>\s*([^<]+?)\s*</a>', dropdown)
    assert labels == [entry.label for entry in MENU if entry.endpoint in app.view_functions]


def test_flask_admin_menu_hidden_from_users_who_may_not_view(
    make_app: Callable[..., Flask],
) -> None:
    html = admin_portal(make_app, may_view=False).test_client().get("/admin/").get_data(True)
    assert 'href="/billing/"' not in html
    assert billing_dropdown(html) == ""


def test_flask_admin_menu_under_a_category(make_app: Callable[..., Flask]) -> None:
    html = admin_portal(make_app, category="Utilities").test_client().get("/admin/").get_data(True)
    utilities = html.index("Utilities")
    assert utilities < html.index("Billing") < html.index('href="/billing/"')
    assert "dropdown-submenu" in html


def test_billing_page_renders_inside_the_flask_admin_layout(
    make_app: Callable[..., Flask],
) -> None:
    response = admin_portal(make_app).test_client().get("/billing/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    # Flask-Admin's navbar, brand and its own stylesheet, with the Billing menu in it ...
    assert 'class="navbar navbar-expand-lg' in html
    assert re.search(r'class="navbar-brand" href="/admin/?">Host Admin</a>', html)
    assert "/admin/static/" in html
    assert 'href="/billing/"' in billing_dropdown(html)
    # ... around our page: its title, heading and stylesheet, and not our own plain layout.
    assert "<title>Billing: Servers</title>" in html
    assert "<h1>Billing: Servers</h1>" in html
    assert "/billing/static/lm_billing.css" in html
    assert 'class="lmb-menu"' not in html
    assert html.count("<html") == 1


# --- Flask-AppBuilder ----------------------------------------------------------------------


def appbuilder_portal(make_app: Callable[..., Flask], tmp_path: Any) -> tuple[Flask, Any]:
    try:
        with warnings.catch_warnings():
            # Import-time deprecations inside FAB's own dependencies are not ours to fix.
            warnings.simplefilter("ignore", DeprecationWarning)
            from flask_appbuilder import AppBuilder
    except ImportError as exc:  # FAB is optional: not in the test extra
        skip_or_fail(f"Flask-AppBuilder is not importable ({exc}); pip install flask-appbuilder")
        raise
    app = make_app(
        LM_BILLING_BASE_TEMPLATE=APPBUILDER_TEMPLATE,
        WTF_CSRF_ENABLED=False,
        AUTH_ROLE_ADMIN="Admin",
        FAB_ADD_SECURITY_API=False,
        RATELIMIT_ENABLED=False,
        APP_NAME="Host FAB",
    )
    with app.app_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        appbuilder = AppBuilder(app, app.extensions["sqlalchemy"].session)
        add_to_appbuilder(appbuilder)
        admin_role = appbuilder.sm.find_role("Admin")
        user = appbuilder.sm.add_user(
            "admin", "Ada", "Admin", "ada@example.test", admin_role, hashed_password="-"
        )
        user_id = user.id
    return app, user_id


def test_flask_appbuilder_portal_login_menu_and_layout(
    make_app: Callable[..., Flask], tmp_path: Any
) -> None:
    app, user_id = appbuilder_portal(make_app, tmp_path)
    client = app.test_client()
    # Anonymous: FAB's own login page (the adapter fixes FAB's Flask-Login login_view).
    response = client.get("/billing/")
    assert response.status_code == 302
    assert response.location.startswith("/login/?next=")
    assert client.get(response.location).status_code == 200

    with client.session_transaction() as session:  # logged in as FAB's admin user
        session["_user_id"] = str(user_id)
        session["_fresh"] = True
    response = client.get("/billing/")
    assert response.status_code == 200, response.get_data(as_text=True)[:2000]
    html = response.get_data(as_text=True)
    assert re.search(r'class="navbar-brand">\s*<a href="/">\s*Host FAB', html)  # FAB's navbar
    assert "/static/appbuilder/css/bootstrap.min.css" in html
    assert "<title>Billing: Servers - Host FAB</title>" in html
    assert "<h1>Billing: Servers</h1>" in html
    assert re.search(r'href="/billing/">\s*Servers</a>', html), html
    assert 'class="lmb-menu"' not in html


def test_appbuilder_adapter_outside_the_app_context_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="app_context"):
        add_to_appbuilder(object())


@pytest.mark.parametrize("name", ["add_to_flask_admin", "add_to_appbuilder"])
def test_adapters_are_public(name: str) -> None:
    import lm_billing_plugin

    assert name in lm_billing_plugin.__all__
