"""The API's OpenAPI 3.1 document, generated with apispec from the route registry in core.py
(every route() is an operation here), and the route that serves it."""

from __future__ import annotations

import re
from typing import Any

from flask import Response, jsonify, request

from ..access import ACTIONS
from .core import API_PREFIX, OPERATIONS, SCHEMAS, Operation, route

_ARG = re.compile(r"<(?:(\w+):)?(\w+)>")
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "field_errors": {"type": "object", "additionalProperties": {"type": "string"}}}}},
}
# Every operation may answer these, whatever it declares.
_COMMON = {400: "Bad request (or a session request without its CSRF token)",
           401: "Not logged in, or the bearer token is not valid",
           403: "The permission callback refused this action"}


def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: ``/servers/<int:server_id>`` -> ``/servers/{server_id}``."""
    return _ARG.sub(lambda m: "{" + m.group(2) + "}", rule)


def _ref(target: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if target is None:
        return None
    if isinstance(target, str):
        return {"$ref": f"#/components/schemas/{target}"}
    return target


def _operation(op: Operation) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": arg, "in": "path", "required": True,
         "schema": {"type": "integer" if conv == "int" else "string"}}
        for conv, arg in _ARG.findall(op.rule)
    ]
    parameters += [{"name": name, "in": "query", "required": False, "description": text,
                    "schema": {"type": kind}} for name, kind, text in op.query]
    if op.if_match:
        parameters.append({"name": "If-Match", "in": "header", "required": True,
                           "description": "The ETag of the object as read (GET).",
                           "schema": {"type": "string"}})
    responses: dict[str, Any] = {}
    for status, (text, target) in sorted({**{c: (t, "Error") for c, t in _COMMON.items()},
                                          **op.responses}.items()):
        if status >= 400:
            target = "Error"
        entry: dict[str, Any] = {"description": text}
        content = _ref(target)
        if content is not None:
            entry["content"] = {"application/json": {"schema": content}}
        responses[str(status)] = entry
    document: dict[str, Any] = {
        "operationId": op.endpoint.split(".", 1)[1],
        "summary": op.summary,
        "tags": [op.tag],
        "description": f"Needs the billing `{op.action}` permission.",
        "responses": responses,
        "x-lm-billing-action": op.action,
    }
    if parameters:
        document["parameters"] = parameters
    body = _ref(op.request_schema)
    if body is not None:
        # validate and sync take an optional body (none = every active server).
        document["requestBody"] = {"required": op.rule not in ("/validate", "/sync"),
                                   "content": {"application/json": {"schema": body}}}
    return document


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm-billing-plugin")
    except PackageNotFoundError:  # a checkout that was never installed
        return "0"


def build_spec(server_url: str) -> dict[str, Any]:
    from apispec import APISpec  # only when the document is asked for

    spec = APISpec(
        title="ListManager Billing API",
        version=_version(),
        openapi_version="3.1.0",
        info={"description": "The JSON API of lm-billing-plugin: the same services as the Billing "
              "pages and the CLI. Errors are {\"error\": {\"code\", \"message\", "
              "\"field_errors\"?}}. Lists are paged by cursor. Permissions: "
              + ", ".join(ACTIONS) + "."},
        servers=[{"url": server_url}],
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme(
        "session", {"type": "apiKey", "in": "cookie", "name": "session",
                    "description": "A logged-in portal session; unsafe methods also send "
                    "the CSRF token in X-CSRFToken."})
    spec.components.schema("Error", _ERROR)
    for name, definition in sorted(SCHEMAS.items()):
        spec.components.schema(name, definition)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(openapi_path(op.rule), {})[op.method.lower()] = _operation(op)
    for path, operations in sorted(paths.items()):
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    document["security"] = [{"bearer": []}, {"session": []}]
    return document


@route("/openapi.json", "GET", summary="This OpenAPI 3.1 document", tag="meta",
       responses={200: ("The document", {"type": "object"})})
def openapi_json() -> Response:
    return jsonify(build_spec(request.url_root.rstrip("/") + request.script_root
                              + request.path.rsplit("/", 1)[0]))


__all__ = ["API_PREFIX", "build_spec", "openapi_path"]
