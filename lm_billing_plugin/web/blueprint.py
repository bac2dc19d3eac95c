"""The `lm_billing` blueprint: access guard, security headers and template context shared
by every page; the pages themselves live in views/ (imported on their first request)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from ..i18n import M_, N_, gettext, say, template_functions
from ..settings import DEFAULTS
from ..sqlite import writes_in_this_request
from ..state import get_state
from .access import guard_request, is_allowed
from .portals import template_context as portal_context
from .views.paging import MAX_ID

blueprint = Blueprint(
    "lm_billing",
    __name__,
    # Templates and static stay at the package's top (templates/lm_billing/, static/lm_billing/),
    # so hosts' overrides and the wheel's package_data keep their paths.
    root_path=str(Path(__file__).resolve().parent.parent),
    template_folder="templates",
    # static/lm_billing/ in the package (a namespaced path, like the templates), served
    # at <prefix>/static/.
    static_folder="static/lm_billing",
    static_url_path="/static",
)

log = logging.getLogger("lm_billing_plugin.blueprint")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")



@blueprint.before_request
def sqlite_write_transactions() -> None:
    """A request that may change something takes SQLite's write lock when its transaction
    begins (sqlite.py says why); first, before the access guard reads the user."""
    if request.method not in SAFE_METHODS:
        writes_in_this_request()


blueprint.before_request(guard_request)


@blueprint.before_request
def guard_csrf() -> None:
    """Every change needs the CSRF token, whether or not the host registered CSRFProtect:
    a form that forgot to check it cannot become a cross-site write. Runs after the access
    guard, so strangers still get the login page or 403 first."""
    if request.method in SAFE_METHODS:
        return
    if not current_app.config.get("WTF_CSRF_ENABLED", True):
        return
    field = current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
    token = request.form.get(field) or request.headers.get("X-CSRFToken")
    # Here, not at import: a CLI process registers the blueprint but never checks a form.
    from flask_wtf.csrf import validate_csrf
    from wtforms.validators import ValidationError

    try:
        validate_csrf(token)
    except ValidationError as exc:
        abort(400, description=M_("%(why)s Reload the page and submit the form again.") % {
            "why": exc.args[0]})


# Flask-WTF's own CSRF refusals (English, no catalog of ours): marked so the error page says
# them in the viewer's language inside the sentence above.
_CSRF_WORDS = (N_("The CSRF token is missing."), N_("The CSRF session token is missing."),
               N_("The CSRF token is invalid."), N_("The CSRF token has expired."),
               N_("The CSRF tokens do not match."))


@blueprint.before_request
def reject_huge_ids() -> None:
    """An id past the column's range would reach the driver and fail as a 500 (SQLite:
    OverflowError); such an object does not exist, so say so. After the access and CSRF
    guards: strangers get the login page, not a hint about what exists."""
    for value in (request.view_args or {}).values():
        if isinstance(value, int) and value > MAX_ID:
            abort(404, description=N_("There is no such object; its number is out of range."))


# What an operator is told after each refusal, beyond the exception's own description.
ERROR_TITLES = {
    400: N_("The request could not be used"),
    403: N_("Not allowed"),
    404: N_("Not found"),
    405: N_("Not allowed this way"),
}
ERROR_HINTS = {
    400: N_("Go back, reload the page and try again."),
    403: N_("You can still look at the pages your permissions allow."),
    404: N_("The object may have been deleted, or the link is out of date."),
    405: N_("Use the buttons on the Billing pages rather than typing the address."),
}


def error_page(exc: HTTPException) -> tuple[str | Response, int]:
    """Errors of Billing pages inside the host's layout, with what to do next.

    An error page must never fail itself: when the host's layout cannot render (a portal
    whose navbar needs what this request never set up, e.g. Flask-AppBuilder's g.user when
    CSRFProtect refused before FAB ran), the plugin's own layout is used, then plain text."""
    code = exc.code or 500
    if request.endpoint and request.endpoint.endswith("_json"):
        # The progress page's poller reads JSON, not a page.
        return jsonify(error=exc.description or exc.name), code
    context: dict[str, Any] = {
        "code": code,
        # The views abort with English (marked) descriptions; the page says them, the
        # title and the hint in the viewer's language.
        "title": gettext(ERROR_TITLES[code]) if code in ERROR_TITLES else exc.name,
        "description": say(exc.description or ""),
        "hint": gettext(ERROR_HINTS[code]) if code in ERROR_HINTS else "",
    }
    for layout in (None, DEFAULTS["LM_BILLING_BASE_TEMPLATE"]):
        # Explicit context wins over the context processor's lm_billing_base_template.
        override = {} if layout is None else {"lm_billing_base_template": layout}
        try:
            return render_template("lm_billing/error.html", **context, **override), code
        except Exception:
            log.exception(
                "error page for %s could not be rendered in the %s layout",
                code,
                "portal's" if layout is None else "plugin's own",
            )
    return Response(f"{code} {exc.name}: {exc.description}", code, mimetype="text/plain"), code


for _code in ERROR_TITLES:
    blueprint.register_error_handler(_code, error_page)


@blueprint.after_app_request
def security_headers(response: Response) -> Response:
    """Every answer under the plugin's prefix — pages, refusals, and the 404/405 of paths no
    view matched (those never reach a blueprint hook) — carries the security headers."""
    settings = get_state().settings
    prefix = settings.url_prefix.rstrip("/")
    if request.blueprint != blueprint.name and not (
        request.path == prefix or request.path.startswith(prefix + "/")
    ):
        return response
    # Plugin pages may sit in the host's own frames, never in anyone else's.
    response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    response.headers.setdefault("Content-Security-Policy", settings.content_security_policy)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != f"{blueprint.name}.static":
        # Billing data (customers, servers, problems) must not stay in shared caches or the
        # browser's history cache after logout; the static files may be cached.
        response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.context_processor
def template_context() -> dict[str, Any]:
    from .views.problem_summary import KIND_WORDS
    from .views.runs import RUN_STATUS_WORDS

    return {
        # Words for the codes stored in the database, for every page.
        "lmb_kind_words": KIND_WORDS,
        "lmb_run_words": RUN_STATUS_WORDS,
        # A host portal's layout (portals.py) may need context of its own.
        **portal_context(),
        "lm_billing_base_template": get_state().settings.base_template,
        "lm_billing_can": is_allowed,
        # {% trans %} on our pages uses our catalog (times and numbers: the app's globals).
        **template_functions(),
    }


from .views import register as _register_views  # noqa: E402

_register_views(blueprint)
