"""API resource: delete runs ("Delete Them" of Find Member) — list them, read one with its
per-membership outcomes (paged), and start one in the background. Everything here needs the
``run`` permission, as the pages do (a run names the addresses of an erasure request); a
start is stored, audited (with the actor: the session's user or the token's) and run exactly
as the page's confirmation does (views.utilities.start_delete_run)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Response, jsonify, url_for

from ....engine import deletions, lookups
from ....models import DeleteRun, DeleteRunItem
from ....state import get_state
from ....tclport.records import MAX_MATCHES
from ..core import (
    PAGE_QUERY,
    PAGE_SCHEMA,
    ApiError,
    field,
    get_or_404,
    invalid,
    json_body,
    page,
    route,
    row_dict,
    schema,
)

RUN_FIELDS = ("id", "email", "status", "total", "servers", "deleted", "not_found", "failed",
              "actor", "created_at", "updated_at", "finished_at")
ITEM_FIELDS = ("id", "position", "server_id", "server_name", "list_name", "list_id", "email",
               "outcome", "code", "message", "finished_at")

DELETE_RUN = schema("DeleteRun", {"type": "object", "properties": {
    "id": {"type": "integer"}, "email": {"type": "string"},
    "status": {"type": "string", "enum": ["running", "finished", "failed", "interrupted"]},
    "total": {"type": "integer"}, "servers": {"type": "integer"},
    "deleted": {"type": "integer"}, "not_found": {"type": "integer"},
    "failed": {"type": "integer"}, "actor": {"type": "string"},
    "created_at": {"type": "string"}, "updated_at": {"type": "string"},
    "finished_at": {"type": ["string", "null"]}, "finished": {"type": "boolean"},
    "outcomes": {"type": "object", "description": "Only on GET /delete-runs/{id}: how many "
                 "memberships are pending, deleted, not_found, failed, interrupted."},
    "url": {"type": "string"}, "items_url": {"type": "string"}},
    "required": ["id", "status", "total", "finished"]})
DELETE_START = schema("DeleteRunStart", {"type": "object", "properties": {
    "email": {"type": "string", "description": "The address searched for (kept with the "
              "run); also each membership's address unless it names its own."},
    "memberships": {"type": "array", "items": {"type": "object", "properties": {
        "server_id": {"type": "integer"}, "list": {"type": "string"},
        "email": {"type": "string"}}, "required": ["server_id", "list"]},
        "description": f"At most {MAX_MATCHES:,} per server (what Find Member shows)."}},
    "required": ["email", "memberships"]})
OUTCOMES = ("pending", "deleted", "not_found", "failed", "interrupted")


def delete_run_dict(run: DeleteRun) -> dict[str, Any]:
    return {
        **row_dict(run, RUN_FIELDS),
        "finished": run.finished_at is not None,
        "url": url_for("lm_billing_api.delete_run_get", delete_run_id=run.id),
        "items_url": url_for("lm_billing_api.delete_run_items", delete_run_id=run.id),
    }


def _memberships(body: dict[str, Any], errors: dict[str, str]) -> list[lookups.Membership]:
    email = field(body, "email", str, errors, required=True)
    given = field(body, "memberships", list, errors, required=True)
    if given is None:
        return []
    if not given:
        errors["memberships"] = "Choose at least one membership to delete."
        return []
    out = []
    for n, item in enumerate(given):
        where = f"memberships[{n}]"
        if not isinstance(item, dict):
            errors[where] = "Expected an object with server_id and list."
            continue
        item_errors: dict[str, str] = {}
        server_id = field(item, "server_id", int, item_errors, required=True)
        name = field(item, "list", str, item_errors, required=True)
        own = field(item, "email", str, item_errors)
        for extra in sorted(set(item) - {"server_id", "list", "email"}):
            item_errors[extra] = "Unknown field."
        if server_id is not None and server_id <= 0:
            item_errors["server_id"] = "Expected a server id (a positive integer)."
        if name is not None and not name.strip():
            item_errors["list"] = "Expected a list name."
        for key, message in item_errors.items():
            errors[f"{where}.{key}"] = message
        if not item_errors:
            out.append(lookups.Membership(server_id, name, own if own is not None else
                                          (email or "")))
    return out


@route("/delete-runs", "POST", action="run", tag="utilities", request_schema=DELETE_START,
       summary="Delete memberships in the background (Find Member's Delete Them); poll the "
       "run's URL",
       responses={202: ("Started (Location: the run)", DELETE_RUN),
                  422: ("Invalid: nothing stored", None)})
def delete_run_create() -> Response:
    body = json_body()
    errors: dict[str, str] = {}
    items = _memberships(body, errors)
    for name in sorted(set(body) - {"email", "memberships"}):
        errors[name] = "Unknown field."
    invalid(errors)
    # The page module (and its forms) only when a run is started: mounting the API must not
    # import the pages (tests/test_startup.py).
    from ...views.utilities import start_delete_run

    try:
        run_id = start_delete_run(items, email=str(body["email"]).strip())
    except lookups.LookupInputError as exc:
        raise ApiError(422, f"Nothing was deleted: {exc}.") from None
    run = get_state().session.get(DeleteRun, run_id)
    assert run is not None
    response = jsonify(delete_run_dict(run))
    response.status_code = 202
    response.headers["Location"] = url_for("lm_billing_api.delete_run_get",
                                           delete_run_id=run_id)
    return response


@route("/delete-runs", "GET", action="run", summary="Delete runs (id order)",
       tag="utilities", query=PAGE_QUERY, responses={200: ("A page of delete runs", PAGE_SCHEMA)})
def delete_runs_list() -> Response:
    deletions.sweep_stale_delete_runs(get_state().session, get_state().settings.lease_seconds)
    return page(sa.select(DeleteRun), DeleteRun.id, delete_run_dict)


@route("/delete-runs/<int:delete_run_id>", "GET", action="run", tag="utilities",
       summary="A delete run: its progress and how many memberships had each outcome",
       responses={200: ("The run", DELETE_RUN), 404: ("No such delete run", None)})
def delete_run_get(delete_run_id: int) -> Response:
    session = get_state().session
    deletions.sweep_stale_delete_runs(session, get_state().settings.lease_seconds)
    doc = delete_run_dict(get_or_404(DeleteRun, delete_run_id, "delete run"))
    counts = dict.fromkeys(OUTCOMES, 0)
    for outcome, n in session.execute(
            sa.select(DeleteRunItem.outcome, sa.func.count())
            .where(DeleteRunItem.delete_run_id == delete_run_id)
            .group_by(DeleteRunItem.outcome)):
        counts[outcome] = int(n)
    doc["outcomes"] = counts
    return jsonify(doc)


@route("/delete-runs/<int:delete_run_id>/items", "GET", action="run", tag="utilities",
       summary="A delete run's memberships in the order asked, each with its outcome",
       query=PAGE_QUERY,
       responses={200: ("A page of memberships", PAGE_SCHEMA), 404: ("No such delete run",
                                                                      None)})
def delete_run_items(delete_run_id: int) -> Response:
    get_or_404(DeleteRun, delete_run_id, "delete run")
    # Items are stored in the order asked (position), so id order is that order.
    return page(sa.select(DeleteRunItem).where(DeleteRunItem.delete_run_id == delete_run_id),
                DeleteRunItem.id, lambda i: row_dict(i, ITEM_FIELDS))
