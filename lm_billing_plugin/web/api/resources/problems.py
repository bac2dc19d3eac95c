"""API resource: validation problems (filtered like the Errors page) and fixing chosen ones
through engine.fixes.fix_problems, the function the page and `flask lm-billing fix` call."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Response, jsonify, request

from ....engine import fixes
from ....engine.fixes import FIX_ALL_LIMIT
from ....models import PROBLEM_KINDS, Problem
from ...access import actor_name
from ..core import (
    PAGE_QUERY,
    ApiError,
    field,
    get_or_404,
    id_filters,
    id_list,
    int_arg,
    invalid,
    json_body,
    page,
    route,
    row_dict,
    schema,
)

PROBLEM_FIELDS = ("id", "server_id", "group_id", "kind", "object_type", "object_name", "detail",
                  "status", "first_seen_at", "last_seen_at", "closed_at", "first_run_id",
                  "last_run_id")
STATUSES = ("open", "resolved", "fixed", "all")

PROBLEM = schema("Problem", {"type": "object", "properties": {
    "id": {"type": "integer"}, "server_id": {"type": ["integer", "null"]},
    "group_id": {"type": ["integer", "null"]}, "kind": {"type": "string"},
    "object_type": {"type": "string"}, "object_name": {"type": "string"},
    "detail": {"type": "string"}, "status": {"type": "string"}}})
FIX = schema("FixRequest", {"type": "object", "required": ["ids"], "properties": {
    "ids": {"type": "array", "items": {"type": "integer"}, "maxItems": FIX_ALL_LIMIT},
    "enable_logging": {"type": "boolean", "description": "Also switch Enable Logging on "
                       "(logging_off problems are fixed only with it)."}}})
FIX_RESULT = schema("FixResult", {"type": "object", "properties": {
    "problems": {"type": "array", "items": {"type": "object"}},
    "changes": {"type": "object"}}})


def problem_dict(problem: Problem) -> dict[str, Any]:
    return row_dict(problem, PROBLEM_FIELDS)


@route("/problems", "GET", summary="Problems (id order), filtered", tag="problems",
       query=(*PAGE_QUERY, ("server_id", "integer", "Only this server's."),
              ("kind", "string", "Only this kind."),
              ("batch_id", "integer", "Only those this batch's runs found."),
              ("status", "string", "open (default), resolved, fixed or all.")),
       responses={200: ("A page of problems", {"type": "object"})})
def problems_list() -> Response:
    status = request.args.get("status", "open")
    if status not in STATUSES:
        raise ApiError(400, f"status is one of {', '.join(STATUSES)}.")
    kind = request.args.get("kind")
    if kind is not None and kind not in PROBLEM_KINDS:
        raise ApiError(400, f"kind is one of {', '.join(sorted(PROBLEM_KINDS))}.")
    query = sa.select(Problem)
    if status != "all":
        query = query.where(Problem.status == status)
    if kind is not None:
        query = query.where(Problem.kind == kind)
    query = id_filters(query, server_id=Problem.server_id)
    batch_id = int_arg("batch_id")
    if batch_id is not None:
        # The Errors page's query, imported with that page's module when first asked for.
        from ...views.problems import found_by_batch

        query = query.where(found_by_batch(batch_id))
    return page(query, Problem.id, problem_dict)


@route("/problems/<int:problem_id>", "GET", summary="One problem", tag="problems",
       responses={200: ("The problem", PROBLEM), 404: ("No such problem", None)})
def problem_get(problem_id: int) -> Response:
    return jsonify(problem_dict(get_or_404(Problem, problem_id, "problem")))


@route("/problems/fix", "POST", action="run", summary="Fix the chosen problems", tag="problems",
       request_schema=FIX, responses={200: ("What fixing each one did", FIX_RESULT),
                                      422: ("Invalid", None)})
def problems_fix() -> Response:
    body = json_body()
    errors: dict[str, str] = {}
    ids = id_list(body, "ids", errors, required=True)
    enable_logging = field(body, "enable_logging", bool, errors)
    if ids is not None and not 1 <= len(ids) <= FIX_ALL_LIMIT:
        errors["ids"] = f"Choose 1 to {FIX_ALL_LIMIT} problems."
    for name in sorted(set(body) - {"ids", "enable_logging"}):
        errors[name] = "Unknown field."
    invalid(errors)
    assert ids is not None
    result = fixes.fix_problems(ids, actor=actor_name(), enable_logging=bool(enable_logging))
    return jsonify(problems=[i.to_json() for i in result.items], changes=result.changes)
