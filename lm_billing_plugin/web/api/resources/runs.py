"""API resource: validate and sync (start a background batch: 202 and its URL), batches with
their progress, and runs; batches start through the same executor as the pages' buttons."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Response, jsonify, request, url_for

from ....models import Batch, Run
from ....state import get_state
from ..core import (
    PAGE_QUERY,
    PAGE_SCHEMA,
    ApiError,
    field,
    get_or_404,
    id_filters,
    id_list,
    invalid,
    json_body,
    page,
    route,
    row_dict,
    schema,
)

BATCH_FIELDS = ("id", "kind", "status", "total", "done", "failed", "dry_run", "triggered_by",
                "started_at", "finished_at")
RUN_FIELDS = ("id", "batch_id", "server_id", "kind", "status", "triggered_by", "started_at",
              "finished_at", "error_code", "error_message", "lists_seen", "created", "updated",
              "removed", "problems_open", "problems_new")

BATCH = schema("Batch", {"type": "object", "properties": {
    "id": {"type": "integer"}, "kind": {"type": "string", "enum": ["validate", "sync"]},
    "status": {"type": "string"}, "total": {"type": "integer"}, "done": {"type": "integer"},
    "failed": {"type": "integer"}, "dry_run": {"type": "boolean"},
    "triggered_by": {"type": "string"}, "started_at": {"type": "string"},
    "finished_at": {"type": ["string", "null"]}, "finished": {"type": "boolean"},
    "url": {"type": "string"}, "runs_url": {"type": "string"},
    "problems_url": {"type": "string"}}, "required": ["id", "kind", "status", "finished"]})
RUN = schema("Run", {"type": "object", "properties": {
    name: {"type": ["integer", "string", "null"]} for name in RUN_FIELDS}})
START = schema("BatchStart", {"type": "object", "properties": {
    "server_ids": {"type": "array", "items": {"type": "integer"},
                   "description": "Left out: every active server."},
    "dry_run": {"type": "boolean", "default": False,
                "description": "Sync only: work out what would change (the runs' created, "
                "updated, removed) and write nothing else, as `sync --dry-run`."}}})


def batch_dict(batch: Batch) -> dict[str, Any]:
    return {
        **row_dict(batch, BATCH_FIELDS),
        # queued -> running -> finished (or failed), as the batch page reads it.
        "finished": batch.finished_at is not None or batch.status in ("finished", "failed"),
        "url": url_for("lm_billing_api.batch_get", batch_id=batch.id),
        "runs_url": url_for("lm_billing_api.runs_list", batch_id=batch.id),
        "problems_url": url_for("lm_billing_api.problems_list", batch_id=batch.id),
    }


def _start(kind: str) -> Response:
    body = json_body() if request.content_length else {}
    errors: dict[str, str] = {}
    ids = id_list(body, "server_ids", errors)
    dry_run = bool(field(body, "dry_run", bool, errors))
    if dry_run and kind != "sync":
        errors["dry_run"] = "Only a sync has a dry run (a validate changes nothing anyway)."
    for name in sorted(set(body) - {"server_ids", "dry_run"}):
        errors[name] = "Unknown field."
    invalid(errors)
    # The pages' background batch runner (the Batch page's module), when a batch starts.
    from ...views.runs import start_batch

    try:
        batch_id = start_batch(kind, ids, dry_run=dry_run)
    except LookupError as exc:
        raise ApiError(404, str(exc)) from None
    batch = get_state().session.get(Batch, batch_id)
    assert batch is not None
    response = jsonify(batch_dict(batch))
    response.status_code = 202
    response.headers["Location"] = url_for("lm_billing_api.batch_get", batch_id=batch_id)
    return response


@route("/validate", "POST", action="run", tag="runs", request_schema=START,
       summary="Validate servers in the background; poll the batch's URL",
       responses={202: ("Started (Location: the batch)", BATCH), 404: ("Unknown server", None)})
def validate() -> Response:
    return _start("validate")


@route("/sync", "POST", action="run", tag="runs", request_schema=START,
       summary="Sync servers in the background; poll the batch's URL",
       responses={202: ("Started (Location: the batch)", BATCH), 404: ("Unknown server", None)})
def sync() -> Response:
    return _start("sync")


@route("/batches", "GET", summary="Batches (id order)", tag="runs", query=PAGE_QUERY,
       responses={200: ("A page of batches", PAGE_SCHEMA)})
def batches_list() -> Response:
    return page(sa.select(Batch), Batch.id, batch_dict)


@route("/batches/<int:batch_id>", "GET", summary="A batch and its progress", tag="runs",
       responses={200: ("The batch", BATCH), 404: ("No such batch", None)})
def batch_get(batch_id: int) -> Response:
    return jsonify(batch_dict(get_or_404(Batch, batch_id, "batch")))


@route("/runs", "GET", summary="Runs (id order), by server or batch", tag="runs",
       query=(*PAGE_QUERY, ("server_id", "integer", "Only this server's runs."),
              ("batch_id", "integer", "Only this batch's runs.")),
       responses={200: ("A page of runs", PAGE_SCHEMA)})
def runs_list() -> Response:
    query = id_filters(sa.select(Run), server_id=Run.server_id, batch_id=Run.batch_id)
    return page(query, Run.id, lambda r: row_dict(r, RUN_FIELDS))


@route("/runs/<int:run_id>", "GET", summary="One run", tag="runs",
       responses={200: ("The run", RUN), 404: ("No such run", None)})
def run_get(run_id: int) -> Response:
    return jsonify(row_dict(get_or_404(Run, run_id, "run"), RUN_FIELDS))
