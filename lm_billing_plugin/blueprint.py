"""The `lm_billing` blueprint: access guard, security headers and template context shared
by every page; the pages themselves live in views/."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, current_app, request
from flask_wtf.csrf import validate_csrf
from wtforms.validators import ValidationError

from .access import guard_request, is_allowed
from .extension import get_state
from .portals import template_context as portal_context

blueprint = Blueprint(
    "lm_billing",
    __name__,
    template_folder="templates",
    # static/lm_billing/ in the package (a namespaced path, like the templates), served
    # at <prefix>/static/.
    static_folder="static/lm_billing",
    static_url_path="/static",
)

blueprint.before_request(guard_request)


@blueprint.before_request
def guard_csrf() -> None:
    """Every change needs the CSRF token, whether or not the host registered CSRFProtect:
    a form that forgot to check it cannot become a cross-site write. Runs after the access
    guard, so strangers still get the login page or 403 first."""
    if request.method in ("GET", "HEAD", "OPTIONS", "TRACE"):
        return
    if not current_app.config.get("WTF_CSRF_ENABLED", True):
        return
    field = current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
    token = request.form.get(field) or request.headers.get("X-CSRFToken")
    try:
        validate_csrf(token)
    except ValidationError as exc:
        abort(400, description=f"{exc.args[0]} Reload the page and submit the form again.")


@blueprint.after_request
def security_headers(response: Response) -> Response:
    # Plugin pages may sit in the host's own frames, never in anyone else's.
    response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'self'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


@blueprint.context_processor
def template_context() -> dict[str, Any]:
    return {
        # A host portal's layout (portals.py) may need context of its own.
        **portal_context(),
        "lm_billing_base_template": get_state().settings.base_template,
        "lm_billing_can": is_allowed,
    }


from .views import register as _register_views  # noqa: E402

_register_views(blueprint)
