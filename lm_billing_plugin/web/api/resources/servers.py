"""API resource: hosting servers (list, get, create, update, delete) and the per-server check
and enable-logging calls, through the same engine.servers functions as the pages and CLI."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Response, jsonify, request, url_for

from ....engine import servers as registry
from ....models import Server
from ....state import get_state
from ...access import actor_name
from ..core import (
    PAGE_QUERY,
    ApiError,
    field,
    invalid,
    json_body,
    page,
    require_if_match,
    route,
    schema,
    with_etag,
)

SERVER = schema("Server", {
    "type": "object",
    "description": "A hosting server. The TclPort password is write-only: only password_set "
    "says whether one is stored.",
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "host": {"type": "string"},
        "port": {"type": "integer"},
        "comments": {"type": "string"},
        "active": {"type": "boolean"},
        "password_set": {"type": "boolean"},
        "status": {"type": "string"},
        "status_message": {"type": "string"},
        "version": {"type": ["string", "null"]},
        "logging_mode": {"type": ["string", "null"]},
        "logging_label": {"type": ["string", "null"]},
        "checked_at": {"type": ["string", "null"], "format": "date-time"},
        "validated_at": {"type": ["string", "null"], "format": "date-time"},
        "synced_at": {"type": ["string", "null"], "format": "date-time"},
        "url": {"type": "string"},
    },
    "required": ["id", "name", "host", "port", "active", "password_set", "status"],
})
SERVER_WRITE = schema("ServerWrite", {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "host": {"type": "string"},
        "port": {"type": "integer"},
        "comments": {"type": "string"},
        "password": {"type": "string", "writeOnly": True,
                     "description": "TclPort password; \"\" = ListManager's default. On "
                     "update: left out = unchanged."},
        "keep_password": {"type": "boolean", "description": "On update: keep the stored "
                          "password although the host changes."},
    },
})
SERVER_LIST = schema("ServerPage", {
    "type": "object",
    "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Server"}},
                   "next_cursor": {"type": ["string", "null"]}},
    "required": ["items", "next_cursor"],
})
CHECK = schema("ServerCheck", {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                   "ok": {"type": "boolean"}, "status": {"type": "string"},
                   "message": {"type": "string"}, "connection": {"type": "object"},
                   "logging": {"type": ["object", "null"]}},
})
LOGGING = schema("LoggingReport", {"type": "object", "properties": {
    "ok": {"type": "boolean"}, "mode": {"type": ["string", "null"]},
    "label": {"type": ["string", "null"]}, "message": {"type": "string"},
    "code": {"type": ["string", "null"]}, "changed": {"type": "boolean"}}})
DELETED = schema("ServerDeleted", {"type": "object", "properties": {
    "outcome": {"type": "string", "enum": ["deactivated", "erased"]}}})


def server_dict(server: Server) -> dict[str, Any]:
    return {**registry.server_json(server),
            "url": url_for("lm_billing_api.server_get", server_id=server.id)}


def _server(server_id: int) -> Server:
    try:
        return registry.get_server(server_id)
    except registry.ServerNotFound:
        raise ApiError(404, f"There is no hosting server {server_id}.") from None


def _lock_if_match(server_id: int) -> Server:
    """Lock the server's row, then compare If-Match with it: two requests with the same
    ETag cannot both pass, the second one waits for the first one's commit and gets 412."""
    if not request.headers.get("If-Match"):
        require_if_match({})  # no If-Match: 428, before any lock is taken
    try:
        server = registry.lock_server(server_id)
    except registry.ServerNotFound:
        raise ApiError(404, f"There is no hosting server {server_id}.") from None
    try:
        require_if_match(server_dict(server))
    except ApiError:
        get_state().session.rollback()
        raise
    return server


def _write_fields(body: dict[str, Any], *, create: bool) -> dict[str, Any]:
    errors: dict[str, str] = {}
    values = {
        "name": field(body, "name", str, errors, required=create),
        "host": field(body, "host", str, errors, required=create),
        "port": field(body, "port", int, errors),
        "comments": field(body, "comments", str, errors),
        "password": field(body, "password", str, errors),
    }
    keep = field(body, "keep_password", bool, errors)
    unknown = sorted(set(body) - {*values, "keep_password"})
    for name in unknown:
        errors[name] = "Unknown field."
    invalid(errors)
    out = {k: v for k, v in values.items() if v is not None}
    if keep is not None and not create:
        out["keep_password"] = keep
    return out


def _field_error(exc: registry.ServerError) -> ApiError:
    if isinstance(exc, registry.ServerFieldError):
        return ApiError(422, "Some fields are not valid.", field_errors=exc.errors)
    if isinstance(exc, registry.ServerNotFound):
        return ApiError(404, str(exc))
    return ApiError(409, str(exc))


@route("/servers", "GET", summary="List hosting servers (id order)", tag="servers",
       query=(*PAGE_QUERY, ("active", "boolean", "Only active (true) or deactivated (false).")),
       responses={200: ("A page of servers", SERVER_LIST)})
def servers_list() -> Response:
    query = sa.select(Server)
    active = request.args.get("active")
    if active is not None:
        if active not in ("true", "false"):
            raise ApiError(400, "active is true or false.")
        query = query.where(Server.active.is_(active == "true"))
    return page(query, Server.id, server_dict)


@route("/servers", "POST", action="edit", summary="Register a hosting server", tag="servers",
       request_schema=SERVER_WRITE,
       responses={201: ("Created (Location: its URL, ETag)", SERVER), 422: ("Invalid", None)})
def server_create() -> Response:
    values = _write_fields(json_body(), create=True)
    try:
        server = registry.create_server(actor=actor_name(), **values)
    except registry.ServerError as exc:
        raise _field_error(exc) from None
    response = with_etag(server_dict(server), 201)
    response.headers["Location"] = url_for("lm_billing_api.server_get", server_id=server.id)
    return response


@route("/servers/<int:server_id>", "GET", summary="One hosting server (with its ETag)",
       tag="servers", responses={200: ("The server", SERVER), 404: ("No such server", None)})
def server_get(server_id: int) -> Response:
    return with_etag(server_dict(_server(server_id)))


@route("/servers/<int:server_id>", "PATCH", action="edit", if_match=True, tag="servers",
       summary="Change a server's fields (If-Match: its ETag)", request_schema=SERVER_WRITE,
       responses={200: ("The changed server", SERVER), 412: ("Changed meanwhile", None),
                  422: ("Invalid", None), 428: ("If-Match missing", None)})
def server_update(server_id: int) -> Response:
    values = _write_fields(json_body(), create=False)
    _lock_if_match(server_id)
    try:
        # Commits the transaction _lock_if_match began: no other change in between.
        server = registry.update_server(server_id, actor=actor_name(), **values)
    except registry.ServerError as exc:
        raise _field_error(exc) from None
    return with_etag(server_dict(server))


@route("/servers/<int:server_id>", "DELETE", action="edit", tag="servers",
       summary="Delete a server (deactivated when it has billing history); If-Match optional",
       responses={200: ("Deleted or deactivated", DELETED), 409: ("A run holds it", None),
                  412: ("Changed meanwhile", None)})
def server_delete(server_id: int) -> Response:
    if request.headers.get("If-Match"):
        _lock_if_match(server_id)
    else:
        _server(server_id)
    try:
        outcome = registry.delete_server(server_id, actor=actor_name())
    except registry.ServerError as exc:
        raise _field_error(exc) from None
    return jsonify(outcome=outcome)


@route("/servers/<int:server_id>/check", "POST", action="run", tag="servers",
       summary="Connection check step by step, then Enable Logging (synchronous)",
       responses={200: ("The check's report", CHECK), 409: ("Cannot be checked", None)})
def server_check(server_id: int) -> Response:
    _server(server_id)
    try:
        connection, logging_report = registry.check_server(server_id, actor=actor_name())
    except registry.ServerError as exc:
        raise _field_error(exc) from None
    server = _server(server_id)
    return jsonify(
        id=server.id, name=server.name, ok=server.status == "ok", status=server.status,
        message=server.status_message, connection=connection.as_dict(),
        logging=logging_report.as_dict() if logging_report else None,
    )


@route("/servers/<int:server_id>/enable-logging", "POST", action="run", tag="servers",
       summary="Switch the server's Enable Logging on over TclPort",
       responses={200: ("What the server did", LOGGING)})
def server_enable_logging(server_id: int) -> Response:
    _server(server_id)
    try:
        report = registry.enable_logging(server_id, actor=actor_name())
    except registry.ServerError as exc:
        raise _field_error(exc) from None
    get_state().session.commit()
    return jsonify(report.as_dict())
