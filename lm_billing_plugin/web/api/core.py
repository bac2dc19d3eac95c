"""The JSON API's machinery: its blueprint, authentication (session or bearer token), CSRF for
session requests, JSON errors, cursor pagination, ETags, and the route registry OpenAPI reads."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from ...state import get_state
from ..access import TOKEN_USER_ATTR, action_of, is_allowed, requires

log = logging.getLogger("lm_billing_plugin.api")

API_PREFIX: Final = "/api/v1"
api = Blueprint("lm_billing_api", __name__)

MAX_LIMIT: Final = 500
DEFAULT_LIMIT: Final = 50


# --- errors ---------------------------------------------------------------------------------

# The machine-readable code of each status we answer with; the message says it for people.
ERROR_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "precondition_failed",
    415: "unsupported_media_type",
    422: "invalid",
    428: "precondition_required",
    500: "internal_error",
}


class ApiError(HTTPException):
    """An API refusal; rendered as ``{"error": {"code", "message", "field_errors"?}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        field_errors: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description=message)
        self.code = status
        self.error_code = code or ERROR_CODES.get(status, "error")
        self.field_errors = dict(field_errors) if field_errors else None
        self.extra_headers = dict(headers or {})


def error_response(exc: HTTPException) -> Response:
    status = exc.code or 500
    body: dict[str, Any] = {
        "code": getattr(exc, "error_code", None) or ERROR_CODES.get(status, "error"),
        "message": exc.description or exc.name,
    }
    field_errors = getattr(exc, "field_errors", None)
    if field_errors:
        body["field_errors"] = field_errors
    response = jsonify(error=body)
    response.status_code = status
    for name, value in getattr(exc, "extra_headers", {}).items():
        response.headers[name] = value
    if status == 401:
        response.headers.setdefault("WWW-Authenticate", 'Bearer realm="lm-billing"')
    return response


@api.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return error_response(exc)


@api.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    # Never an HTML traceback page for a script; the log has the traceback.
    log.exception("API request %s %s failed", request.method, request.path)
    get_state().session.rollback()
    return error_response(ApiError(500, "The request failed unexpectedly; see the server's log."))


def unrouted_as_json(root: str) -> Callable[[], Response | None]:
    """An app-level before_request hook: an unknown URL under the API's ``root`` (404) or a
    method its route lacks (405) answers a JSON error too. No blueprint handler sees these
    (no rule matched, so no blueprint), and an app-level errorhandler would replace the
    host's own 404 page or be replaced by it; this hook runs before Flask raises the routing
    error and looks only at the API's paths, so the host's error pages stay as they are."""

    def answer() -> Response | None:
        exc = request.routing_exception
        path = request.path
        if not isinstance(exc, NotFound | MethodNotAllowed) or not (
            path == root or path.startswith(root + "/")
        ):
            return None
        if isinstance(exc, MethodNotAllowed):
            allowed = sorted(exc.valid_methods or ())
            error = ApiError(405, f"{request.method} is not allowed on {path}; it takes "
                             f"{', '.join(allowed)}.", headers={"Allow": ", ".join(allowed)})
        else:
            error = ApiError(404, f"There is no API route {path}; the routes are listed in "
                             f"{root}/openapi.json.")
        return _headers(error_response(error))

    return answer


# --- authentication, permission, CSRF -------------------------------------------------------

TokenCheck = Callable[[str], Any]


def _token_user(header: str) -> Any:
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "Use 'Authorization: Bearer <token>'.", code="invalid_token")
    check: TokenCheck | None = getattr(get_state().extension, "token_check", None)
    if check is None:
        raise ApiError(
            401,
            "This portal accepts no API tokens (it registered no @billing.token_checker); "
            "use a logged-in session with its CSRF token instead.",
            code="invalid_token",
        )
    try:
        user = check(token)
    except Exception:
        # Deny by default, as for the permission callback: a failing check is "no".
        log.exception("the billing token checker raised: token refused")
        user = None
    if user is None:
        raise ApiError(
            401, "The bearer token is not valid (unknown or expired).", code="invalid_token"
        )
    return user


def _session_user_ok() -> bool:
    login_manager = getattr(current_app, "login_manager", None)
    if login_manager is None:
        return True  # the host authenticates some other way; the callback decides
    from flask_login import current_user

    return bool(getattr(current_user, "is_authenticated", False))


def is_token_request() -> bool:
    return TOKEN_USER_ATTR in g


@api.before_request
def guard() -> None:
    """Who (token or session), then may they (the host's callback), then, for a session's
    unsafe request, the CSRF token in X-CSRFToken. Token requests need no CSRF token: a
    browser never adds an Authorization header to a cross-site request by itself."""
    header = request.headers.get("Authorization")
    if header:
        setattr(g, TOKEN_USER_ATTR, _token_user(header))
    elif not _session_user_ok():
        raise ApiError(401, "Log in first, or send 'Authorization: Bearer <token>'.")
    view = current_app.view_functions.get(request.endpoint or "")
    action = action_of(view)
    if not is_allowed(action):
        raise ApiError(
            403, f"You may not {action} billing here (the billing {action!r} permission)."
        )
    if request.method in ("GET", "HEAD", "OPTIONS") or is_token_request():
        return
    if not current_app.config.get("WTF_CSRF_ENABLED", True):
        return
    # Here, not at import: a CLI process mounts the API but never checks a token.
    from flask_wtf.csrf import validate_csrf
    from wtforms.validators import ValidationError

    try:
        validate_csrf(request.headers.get("X-CSRFToken"))
    except ValidationError as exc:
        raise ApiError(
            400,
            f"{exc.args[0]} Session requests send the page's CSRF token in X-CSRFToken; "
            "scripts use a bearer token.",
            code="csrf_failed",
        ) from None


@api.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def exempt_from_host_csrf(app: Flask) -> None:
    """The host's app-wide CSRFProtect would refuse token requests (no CSRF token) before our
    guard runs; the guard checks session requests itself, so the API is exempted there."""
    csrf = app.extensions.get("csrf")
    exempt = getattr(csrf, "exempt", None)
    if callable(exempt):
        exempt(api)


# --- request bodies -------------------------------------------------------------------------


def json_body() -> dict[str, Any]:
    if not request.is_json:
        raise ApiError(415, "Send a JSON object with 'Content-Type: application/json'.")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "The body is not a JSON object.")
    return body


def field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], errors: dict[str, str],
          *, required: bool = False) -> Any:
    """``body[name]`` if it has the right JSON type; else an entry in ``errors``."""
    if name not in body:
        if required:
            errors[name] = "This field is required."
        return None
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON true is no number, and a number is no true.
    if isinstance(value, bool) and bool not in kinds:
        errors[name] = f"Expected {' or '.join(k.__name__ for k in kinds)}."
        return None
    if not isinstance(value, kinds):
        errors[name] = f"Expected {' or '.join(k.__name__ for k in kinds)}."
        return None
    return value


def id_list(body: Mapping[str, Any], name: str, errors: dict[str, str], *,
            required: bool = False) -> list[int] | None:
    value = field(body, name, list, errors, required=required)
    if value is None:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        errors[name] = "Expected a list of ids (positive integers)."
        return None
    return [int(v) for v in value]


def invalid(errors: Mapping[str, str]) -> None:
    if errors:
        raise ApiError(422, "Some fields are not valid.", field_errors=errors)


# --- serialising ----------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)  # exact: prices are decimals, never floats
    return value


def row_dict(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: jsonable(getattr(obj, name)) for name in names}


def etag_of(document: Any) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:32] + '"'


def with_etag(document: dict[str, Any], status: int = 200) -> Response:
    response = jsonify(document)
    response.status_code = status
    response.headers["ETag"] = etag_of(document)
    return response


def require_if_match(current: dict[str, Any]) -> None:
    """An update must say which version it changes: none is 428, another one 412."""
    given = request.headers.get("If-Match")
    if not given:
        raise ApiError(428, "Send If-Match with the ETag of the object you read, so a change "
                       "made meanwhile is not overwritten.")
    tags = {t.strip() for t in given.split(",")}
    if "*" not in tags and etag_of(current) not in tags:
        raise ApiError(412, "The object changed since you read it: read it again (its new "
                       "ETag) and redo the change.", headers={"ETag": etag_of(current)})


# --- pagination -----------------------------------------------------------------------------


def _decode_cursor(text: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
        prefix, _, value = raw.partition(":")
        after = int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(400, "The cursor is not one this API gave out.", code="bad_cursor") from None
    if prefix != "v1" or after < 0:
        raise ApiError(400, "The cursor is not one this API gave out.", code="bad_cursor")
    return after


def encode_cursor(after: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{after}".encode()).decode("ascii").rstrip("=")


def limit_arg() -> int:
    text = request.args.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, f"limit is a number from 1 to {MAX_LIMIT}.")
    return int(text)


def int_arg(name: str) -> int | None:
    text = request.args.get(name)
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ApiError(400, f"{name} is an id (a positive integer).")
    return int(text)


def id_filters(query: sa.Select[Any], **columns: Any) -> sa.Select[Any]:
    """``query`` narrowed to ``column == id`` for each ``name=column`` whose id argument the
    request has (checked in the order given, so the first bad one is the one reported)."""
    for name, column in columns.items():
        value = int_arg(name)
        if value is not None:
            query = query.where(column == value)
    return query


def get_or_404(model: type[Any], object_id: int, what: str) -> Any:
    """The ``model`` row ``object_id``, or a 404 saying "There is no <what> <id>."."""
    obj = get_state().session.get(model, object_id)
    if obj is None:
        raise ApiError(404, f"There is no {what} {object_id}.")
    return obj


def page(
    query: sa.Select[Any], id_column: Any, serialise: Callable[[Any], dict[str, Any]]
) -> Response:
    """One page of ``query`` in id order, from the request's cursor; ``next_cursor`` is None
    on the last page. Stable whatever is added meanwhile: the cursor is the last id seen."""
    limit = limit_arg()
    cursor = request.args.get("cursor")
    if cursor:
        query = query.where(id_column > _decode_cursor(cursor))
    rows = list(get_state().session.scalars(query.order_by(id_column).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return jsonify(
        items=[serialise(r) for r in rows],
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )


# --- the route registry (OpenAPI is generated from it) --------------------------------------


# A documented response: its description and its schema (a component's name, inline, none).
Response_ = tuple[str, str | dict[str, Any] | None]


@dataclass(frozen=True)
class Operation:
    """One method of one API route, with what the OpenAPI document says of it."""

    rule: str
    method: str
    endpoint: str
    action: str
    summary: str
    tag: str
    request_schema: str | dict[str, Any] | None = None
    responses: dict[int, Response_] = dataclass_field(default_factory=dict)
    query: tuple[tuple[str, str, str], ...] = ()
    if_match: bool = False


OPERATIONS: list[Operation] = []
SCHEMAS: dict[str, dict[str, Any]] = {}


def schema(name: str, definition: dict[str, Any]) -> str:
    """Declare a named component schema; returns its name for ``route(responses=...)``."""
    SCHEMAS[name] = definition
    return name


def route(
    rule: str,
    method: str,
    *,
    action: str = "view",
    summary: str,
    tag: str,
    request_schema: str | dict[str, Any] | None = None,
    responses: dict[int, Response_] | None = None,
    query: tuple[tuple[str, str, str], ...] = (),
    if_match: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add an API route and its OpenAPI operation in one place, so neither can be forgotten."""

    def register(view: Callable[..., Any]) -> Callable[..., Any]:
        endpoint = view.__name__
        requires(action)(view)
        api.add_url_rule(rule, endpoint, view, methods=[method])
        OPERATIONS.append(
            Operation(rule, method, f"{api.name}.{endpoint}", action, summary, tag,
                      request_schema, dict(responses or {200: ("OK", None)}), query, if_match)
        )
        return view

    return register


# The response of every list route: one page of items and the cursor of the next.
PAGE_SCHEMA: Final = {"type": "object", "properties": {"items": {"type": "array"},
                                                       "next_cursor": {"type": ["string", "null"]}}}
PAGE_QUERY: Final = (
    ("cursor", "string", "The next_cursor of the previous page (opaque)."),
    ("limit", "integer", f"Items per page, 1-{MAX_LIMIT} (default {DEFAULT_LIMIT})."),
)
