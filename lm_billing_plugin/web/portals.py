"""Mount the Billing menu and pages in a host's Flask-Admin or Flask-AppBuilder portal: menu
links in the portal's own menu, and the template context the portal's layout needs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from flask import current_app, has_app_context, redirect, request, url_for
from markupsafe import Markup

from .access import action_of, is_allowed
from .menu import MENU

logger = logging.getLogger("lm_billing_plugin.portals")

#: ``LM_BILLING_BASE_TEMPLATE`` for pages inside a Flask-Admin portal.
FLASK_ADMIN_TEMPLATE = "lm_billing/portals/flask_admin.html"
#: ``LM_BILLING_BASE_TEMPLATE`` for pages inside a Flask-AppBuilder portal.
APPBUILDER_TEMPLATE = "lm_billing/portals/appbuilder.html"

# The portal object an adapter mounted us in carries this attribute; the blueprint's context
# processor finds it through the app (app.extensions), so one adapter call serves the app
# whether it ran before or after LMBilling.init_app.
_MOUNT_ATTR = "_lm_billing_mount"


def _may_view(endpoint: str) -> bool:
    """Show a Billing link only for pages that exist here and that this user may view."""
    view = current_app.view_functions.get(endpoint)
    if view is None:
        return False
    try:
        # "view" for every page; a page that needs more (Assign: "edit") asks for that too.
        action = action_of(view)
        return is_allowed("view") and (action == "view" or is_allowed(action))
    except RuntimeError:  # the plugin is not registered on this app
        return False


# --- Flask-Admin ---------------------------------------------------------------------------


def add_to_flask_admin(admin: Any, *, name: str = "Billing", category: str | None = None) -> None:
    """Add the Billing menu to a Flask-Admin ``admin`` and let the Billing pages render in its
    layout.

    The menu is a ``name`` dropdown (under the ``category`` dropdown when one is given) with
    a link per Billing page that exists and that the user may view. For the layout, the host
    sets ``LM_BILLING_BASE_TEMPLATE = lm_billing_plugin.web.portals.FLASK_ADMIN_TEMPLATE`` next to
    its other settings.

    Why the layout is a setting and not something this function switches on: adapters are
    wiring, like the permission callback; they may run before ``init_app`` or for an
    ``Admin`` built without an app (factories), and configuration is read once at
    ``init_app`` and never changed after. So the adapter only touches the portal's menu and
    supplies, at render time, what Flask-Admin's master template needs (``admin_view``,
    ``h``, ``get_url``, ``theme``, ...), and the layout choice stays in one place: config.
    """
    from flask_admin import BaseView, expose
    from flask_admin.menu import MenuLink

    class BillingLink(MenuLink):  # type: ignore[misc]
        def is_accessible(self) -> bool:
            return _may_view(str(self.endpoint))

        def is_active(self, view: Any) -> bool:
            return bool(request.endpoint == self.endpoint)

    class BillingAdminView(BaseView):  # type: ignore[misc]
        """Stands for the Billing pages in Flask-Admin's templates; never added as a view
        (the pages are the plugin's blueprint, not Flask-Admin routes)."""

        @expose("/")  # type: ignore[untyped-decorator]
        def index(self) -> Any:
            # Flask-Admin wants a default view; it is never routed, as the view is not added.
            return redirect(url_for(MENU[0].endpoint))

    menu_category = name
    if category:
        if admin.get_category_menu_item(category) is None:
            admin.add_category(category)
        admin.add_sub_category(name, category)
    for entry in MENU:
        admin.add_link(BillingLink(entry.label, endpoint=entry.endpoint, category=menu_category))

    view = BillingAdminView(name=name, category=category, endpoint="lm_billing_portal")
    view.admin = admin
    setattr(admin, _MOUNT_ATTR, view)


def _flask_admin_context() -> dict[str, Any]:
    for admin in current_app.extensions.get("admin", ()):
        view = getattr(admin, _MOUNT_ATTR, None)
        if view is None:
            continue
        from flask_admin import babel
        from flask_admin import helpers as h

        # What flask_admin.BaseView.render hands its templates (Flask-Admin 2.x).
        nonce = admin.csp_nonce_generator
        return {
            "admin_view": view,
            "admin_base_template": admin.theme.base_template,
            # Markup.format escapes the nonce, so even a strange generator cannot inject.
            "admin_csp_nonce_attribute": Markup('nonce="{}"').format(nonce()) if nonce else "",
            "_gettext": babel.gettext,
            "_ngettext": babel.ngettext,
            "h": h,
            "get_url": view.get_url,
            "theme": admin.theme,
        }
    return {}


# --- Flask-AppBuilder ----------------------------------------------------------------------


def add_to_appbuilder(
    appbuilder: Any,
    *,
    name: str = "Billing",
    category: str = "Billing",
    roles: Sequence[str] = (),
) -> None:
    """Add the Billing pages as links in a Flask-AppBuilder ``appbuilder``'s ``category``
    menu and let the Billing pages render in its layout (the host sets
    ``LM_BILLING_BASE_TEMPLATE = lm_billing_plugin.web.portals.APPBUILDER_TEMPLATE``; see
    :func:`add_to_flask_admin` for why that is a setting). Call it in the app context,
    after FAB's own set-up, as for FAB's ``add_link``.

    Each link is named ``"<name>: <label>"`` in FAB's permission model, so FAB's
    ``menu_access`` permissions can hide it as well; the plugin's own permission callback
    still decides who may open the pages. FAB shows a link only to roles with
    ``menu_access`` on the link *and* on its ``category``: each role named in ``roles``
    (they must exist) is granted all of them. FAB's admin role has them anyway.
    """
    if not has_app_context() or getattr(appbuilder, "menu", None) is None:
        raise RuntimeError(
            "add_to_appbuilder needs an initialised AppBuilder and its app: call it inside "
            "`with app.app_context():`, after AppBuilder(app, session) or "
            "appbuilder.init_app(app, session)"
        )
    for entry in MENU:

        def visible(endpoint: str = entry.endpoint) -> bool:
            return _may_view(endpoint)

        appbuilder.add_link(
            name=f"{name}: {entry.label}",
            label=entry.label,
            href=entry.endpoint,
            category=category,
            cond=visible,
        )
    if roles:
        _grant_menu_access(appbuilder, roles, [category, *(f"{name}: {e.label}" for e in MENU)])
    setattr(appbuilder, _MOUNT_ATTR, True)
    # FAB leaves Flask-Login's login_view at "login", an endpoint it does not have (its own
    # views redirect by themselves). Point it at FAB's login page, so that anonymous users
    # of the Billing pages land there (access.guard_request uses unauthorized()).
    login_manager = getattr(current_app, "login_manager", None)
    auth_view = getattr(appbuilder.sm, "auth_view", None)
    if (
        login_manager is not None
        and auth_view is not None
        and login_manager.login_view not in current_app.view_functions
    ):
        login_manager.login_view = f"{auth_view.endpoint}.login"


def _grant_menu_access(appbuilder: Any, roles: Sequence[str], menus: Sequence[str]) -> None:
    sm = appbuilder.sm
    found = {role: sm.find_role(role) for role in roles}
    missing = [role for role, found_role in found.items() if found_role is None]
    if missing:
        raise ValueError(
            f"add_to_appbuilder(roles=...): there is no Flask-AppBuilder role {missing[0]!r}; "
            "create it first (appbuilder.sm.add_role) or leave it out"
        )
    for menu in menus:
        # add_link registered these already when FAB updates permissions; a host that turned
        # FAB_UPDATE_PERMS off still gets the ones it grants.
        permission = sm.add_permission_view_menu("menu_access", menu)
        for role in found.values():
            sm.add_permission_role(role, permission)


def _appbuilder_context() -> dict[str, Any]:
    appbuilder = current_app.extensions.get("appbuilder")
    if appbuilder is None or not getattr(appbuilder, _MOUNT_ATTR, False):
        return {}
    # What flask_appbuilder.BaseView.render_template hands its templates.
    return {
        "appbuilder": appbuilder,
        "base_template": appbuilder.base_template,
        "current_app": current_app,
    }


def template_context() -> dict[str, Any]:
    """Extra context for the Billing pages: whatever the mounted portal's layout needs."""
    return {**_appbuilder_context(), **_flask_admin_context()}


__all__ = [
    "APPBUILDER_TEMPLATE",
    "FLASK_ADMIN_TEMPLATE",
    "add_to_appbuilder",
    "add_to_flask_admin",
    "template_context",
]
