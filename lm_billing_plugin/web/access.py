"""Deny-by-default access to the plugin's pages: login first, then the host's permission
callback decides each action (view, edit, run)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from flask import abort, current_app, g, has_request_context, request

from ..i18n import M_, N_

ACTIONS = ("view", "edit", "run")

PermissionCheck = Callable[[Any, str], bool]
F = TypeVar("F", bound=Callable[..., Any])

_ACTION_ATTR = "_lm_billing_action"
# Actions whose callback already failed (and was logged) in this request: a portal page
# asks once per menu link, and one traceback per request says it all.
_FAILED_ATTR = "_lm_billing_permission_failed"

log = logging.getLogger("lm_billing_plugin.access")


def requires(action: str) -> Callable[[F], F]:
    """Mark a view with the action it needs; unmarked views need `view`."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {ACTIONS}")

    def mark(view: F) -> F:
        setattr(view, _ACTION_ATTR, action)
        return view

    return mark


def action_of(view: Callable[..., Any] | None) -> str:
    return str(getattr(view, _ACTION_ATTR, "view"))


# Set by the JSON API for a request that came with a bearer token: the user the host's
# token checker returned stands for the request, whatever the session says.
TOKEN_USER_ATTR = "lm_billing_api_user"  # noqa: S105  (a g attribute name, not a secret)


def current_user() -> Any:
    """The host's user: the API token's user, else Flask-Login's current_user when the host
    uses it, else g.user."""
    if has_request_context() and TOKEN_USER_ATTR in g:
        return g.get(TOKEN_USER_ATTR)
    if getattr(current_app, "login_manager", None) is not None:
        from flask_login import current_user as login_user

        return login_user._get_current_object()
    return g.get("user")


def actor_name() -> str:
    """How the audit log names the person behind this request."""
    user = current_user()
    # Flask-Login's anonymous user is an object, not None.
    if user is None or getattr(user, "is_anonymous", False):
        return "anonymous"
    for attr in ("username", "email", "name"):
        value = getattr(user, attr, None)
        if value:
            return str(value)
    get_id = getattr(user, "get_id", None)
    return f"user:{get_id()}" if callable(get_id) else str(user)


def is_allowed(action: str) -> bool:
    from ..state import get_state

    state = get_state()
    check = state.extension.permission_check
    if check is None:
        return state.settings.allow_all
    try:
        return bool(check(current_user(), action))
    except Exception:
        # One rule for pages, menus and portal links alike: a callback that fails says no
        # (deny by default), and the host hears of it with the traceback.
        failed: set[str] = g.setdefault(_FAILED_ATTR, set()) if has_request_context() else set()
        if action not in failed:
            failed.add(action)
            log.exception("the billing permission callback raised for %r: access refused", action)
        return False


def guard_request() -> Any:
    """Blueprint before_request: login, then permission for the endpoint's action."""
    if request.endpoint == "lm_billing.static":
        # The stylesheet is public (the host's login page may use it); data never is.
        return None
    login_manager = getattr(current_app, "login_manager", None)
    if login_manager is not None:
        user = current_user()
        if not getattr(user, "is_authenticated", False):
            return login_manager.unauthorized()
    view = current_app.view_functions.get(request.endpoint or "")
    action = action_of(view)
    if not is_allowed(action):
        abort(403, description=refusal(action))
    return None


def refusal(action: str) -> str:
    """Why a request was refused, and who can change that."""
    from ..state import get_state

    if get_state().extension.permission_check is None:
        return N_(
            "Billing is closed: this portal has not said who may use it. Its administrator "
            "passes permission_check= to LMBilling (LM_BILLING_ALLOW_ALL is for demos only)."
        )
    return M_(
        "You may not %(action)s billing here. Ask the portal's administrator for the "
        "billing %(permission)s permission."
    ) % {"action": action, "permission": repr(action)}
