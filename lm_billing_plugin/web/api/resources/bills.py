"""API resource: bill runs (start one in the background: 202 and its URL; poll its progress and
outcomes) and invoices (list, one with its lines and usage, void with If-Match), through the
same billing.runs / billing.invoices functions as the Bill pages and `flask lm-billing bills`."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import Response, jsonify, request, url_for

from ....models import BillRun, Invoice
from ....state import get_state
from ...access import actor_name
from ..core import (
    PAGE_QUERY,
    ApiError,
    field,
    id_list,
    int_arg,
    invalid,
    json_body,
    jsonable,
    page,
    require_if_match,
    route,
    row_dict,
    schema,
    with_etag,
)

# The billing services (and the Bill pages' module, whose bill runs these are) are imported
# by the routes that use them: mounting the API at init_app must not load the billing cycle.
if TYPE_CHECKING:
    from ....billing.runs import BillRunResult

RUN_FIELDS = ("id", "status", "dry_run", "customers", "invoiced", "skipped", "already_billed",
              "actor", "created_at", "finished_at")
INVOICE_STATUSES = ("issued", "void")

BILL_RUN = schema("BillRun", {"type": "object", "properties": {
    "id": {"type": "integer"}, "start": {"type": "string", "format": "date"},
    "end": {"type": "string", "format": "date"},
    "status": {"type": "string", "enum": ["running", "done", "failed", "interrupted"]},
    "dry_run": {"type": "boolean"}, "customers": {"type": "integer"},
    "invoiced": {"type": "integer"}, "skipped": {"type": "integer"},
    "already_billed": {"type": "integer"}, "done": {"type": "integer",
                                                    "description": "Customers settled so far."},
    "finished": {"type": "boolean"}, "actor": {"type": "string"},
    "created_at": {"type": "string"}, "finished_at": {"type": ["string", "null"]},
    "url": {"type": "string"},
    "outcomes": {"type": "array", "description": "Only on GET /bill-runs/{id}: one per "
                 "customer (status pending, invoiced, already_billed, skipped, dry_run).",
                 "items": {"type": "object"}}},
    "required": ["id", "start", "end", "status", "finished"]})
BILL_RUN_START = schema("BillRunStart", {"type": "object", "properties": {
    "start": {"type": "string", "format": "date"}, "end": {"type": "string", "format": "date"},
    "customer_ids": {"type": "array", "items": {"type": "integer"},
                     "description": "Left out: every customer."},
    "dry_run": {"type": "boolean", "default": False,
                "description": "Compute every invoice, store none (as `bills run --dry-run`)."}},
    "required": ["start", "end"]})
INVOICE = schema("Invoice", {"type": "object", "properties": {
    "id": {"type": "integer"}, "number": {"type": "string"},
    "customer_id": {"type": "integer"}, "customer": {"type": "string"},
    "run_id": {"type": ["integer", "null"]},
    "start": {"type": "string", "format": "date"}, "end": {"type": "string", "format": "date"},
    "status": {"type": "string", "enum": list(INVOICE_STATUSES)},
    "currency": {"type": "string"},
    "total": {"type": "string", "description": "Exact decimal, 2 places."},
    "carried_over": {"type": "string"}, "created_by": {"type": "string"},
    "created_at": {"type": "string"}, "void_reason": {"type": ["string", "null"]},
    "voided_by": {"type": ["string", "null"]}, "voided_at": {"type": ["string", "null"]},
    "url": {"type": "string"}, "page_url": {"type": "string"}, "pdf_url": {"type": "string"},
    "lines": {"type": "array", "items": {"type": "object"},
              "description": "Only on GET /invoices/{id}."},
    "usage": {"type": "array", "items": {"type": "object"},
              "description": "Only on GET /invoices/{id}: per list of the period."}},
    "required": ["id", "number", "customer_id", "start", "end", "status", "total"]})
VOID = schema("InvoiceVoid", {"type": "object", "properties": {
    "reason": {"type": "string", "description": "Why (kept with the invoice)."}},
    "required": ["reason"]})
PAGE = {"type": "object", "properties": {"items": {"type": "array"},
                                         "next_cursor": {"type": ["string", "null"]}}}


# --- bill runs --------------------------------------------------------------------------------


def bill_run_dict(run: BillRun) -> dict[str, Any]:
    return {
        **row_dict(run, RUN_FIELDS),
        "start": run.period_start.isoformat(), "end": run.period_end.isoformat(),
        "done": int(run.invoiced or 0) + int(run.skipped or 0) + int(run.already_billed or 0),
        "finished": run.finished_at is not None,
        "url": url_for("lm_billing_api.bill_run_get", bill_run_id=run.id),
    }


def _outcomes(result: BillRunResult) -> list[dict[str, Any]]:
    out = []
    for o in result.outcomes:
        doc: dict[str, Any] = {"customer_id": o.customer_id, "customer": o.company,
                               "status": o.status, "code": o.code, "reason": o.reason,
                               "invoice_id": o.invoice_id, "number": o.number,
                               "total": f"{o.draft.total:.2f}" if o.draft else None}
        if o.invoice_id is not None:
            doc["invoice_url"] = url_for("lm_billing_api.invoice_get", invoice_id=o.invoice_id)
        out.append(doc)
    return out


def _date(body: dict[str, Any], name: str, errors: dict[str, str]) -> date | None:
    text = field(body, name, str, errors, required=True)
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        errors[name] = "Expected a date, YYYY-MM-DD."
        return None


@route("/bill-runs", "POST", action="run", tag="bills", request_schema=BILL_RUN_START,
       summary="Run bills for a period in the background; poll the run's URL",
       responses={202: ("Started (Location: the run)", BILL_RUN), 404: ("Unknown customer", None),
                  422: ("Invalid", None)})
def bill_run_create() -> Response:
    body = json_body()
    errors: dict[str, str] = {}
    start, end = _date(body, "start", errors), _date(body, "end", errors)
    ids = id_list(body, "customer_ids", errors)
    dry_run = bool(field(body, "dry_run", bool, errors))
    for name in sorted(set(body) - {"start", "end", "customer_ids", "dry_run"}):
        errors[name] = "Unknown field."
    if start and end and end < start:
        errors["end"] = f"The end ({end}) is before the start ({start})."
    invalid(errors)
    assert start is not None and end is not None
    from ....billing.runs import BillRunError
    from ...views.bills import start_bill_run

    try:
        run_id = start_bill_run(start, end, ids, dry_run=dry_run)
    except BillRunError as exc:
        code = 404 if "there is no customer" in str(exc) else 422
        raise ApiError(code, f"{str(exc).capitalize()}.") from None
    run = get_state().session.get(BillRun, run_id)
    assert run is not None
    response = jsonify(bill_run_dict(run))
    response.status_code = 202
    response.headers["Location"] = url_for("lm_billing_api.bill_run_get", bill_run_id=run_id)
    return response


@route("/bill-runs", "GET", summary="Bill runs (id order)", tag="bills", query=PAGE_QUERY,
       responses={200: ("A page of bill runs", PAGE)})
def bill_runs_list() -> Response:
    return page(sa.select(BillRun), BillRun.id, bill_run_dict)


@route("/bill-runs/<int:bill_run_id>", "GET", tag="bills",
       summary="A bill run: its progress and every customer's outcome",
       responses={200: ("The run", BILL_RUN), 404: ("No such bill run", None)})
def bill_run_get(bill_run_id: int) -> Response:
    session = get_state().session
    run = session.get(BillRun, bill_run_id)
    if run is None:
        raise ApiError(404, f"There is no bill run {bill_run_id}.")
    from ....billing.runs import run_outcomes
    from ...views.bills import DRY_RUNS_KEY

    doc = bill_run_dict(run)
    result = run_outcomes(bill_run_id)
    if result.dry_run:
        # A dry run's drafts are not stored; this process keeps the last few (as the page).
        kept = get_state().extras.get(DRY_RUNS_KEY, {}).get(bill_run_id)
        if kept is not None:
            drafts = {o.customer_id: o.draft for o in kept.outcomes}
            for o in result.outcomes:
                o.draft = drafts.get(o.customer_id)
    doc["outcomes"] = _outcomes(result)
    return jsonify(doc)


# --- invoices ---------------------------------------------------------------------------------


def invoice_dict(invoice: Invoice) -> dict[str, Any]:
    return {
        "id": invoice.id, "number": invoice.number, "customer_id": invoice.customer_id,
        "customer": invoice.company, "run_id": invoice.run_id,
        "start": invoice.period_start.isoformat(), "end": invoice.period_end.isoformat(),
        "status": invoice.status, "currency": invoice.currency,
        "total": f"{invoice.total:.2f}", "carried_over": f"{invoice.carried_over or 0:.2f}",
        "created_by": invoice.created_by, "created_at": jsonable(invoice.created_at),
        "void_reason": invoice.void_reason, "voided_by": invoice.voided_by,
        "voided_at": jsonable(invoice.voided_at),
        "url": url_for("lm_billing_api.invoice_get", invoice_id=invoice.id),
        "page_url": url_for("lm_billing.invoice", invoice_id=invoice.id),
        "pdf_url": url_for("lm_billing.invoice_pdf", invoice_id=invoice.id),
    }


def invoice_full(invoice: Invoice) -> dict[str, Any]:
    from ....billing.invoices import invoice_lines, invoice_usage, line_document

    session = get_state().session
    return {
        **invoice_dict(invoice),
        "lines": [line_document(li.group_name, li.kind, li.description, li.quantity,
                                li.unit_price, li.amount)
                  for li in invoice_lines(session, invoice.id)],
        "usage": [{"group": u.group_name, "server": u.server_name, "site": u.site_name,
                   "list": u.list_name, "messages": u.messages, "recipients": u.recipients,
                   "bytes": u.bytes, "units": f"{u.units:.3f}"}
                  for u in invoice_usage(session, invoice.id)],
    }


def _date_arg(name: str) -> date | None:
    text = request.args.get(name)
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"{name} is a date, YYYY-MM-DD.") from None


@route("/invoices", "GET", summary="Invoices (id order), by customer, status or period",
       tag="bills",
       query=(*PAGE_QUERY, ("customer_id", "integer", "Only this customer's invoices."),
              ("status", "string", "issued or void."),
              ("start", "string", "Only periods starting on or after this date."),
              ("end", "string", "Only periods ending on or before this date.")),
       responses={200: ("A page of invoices (without lines)", PAGE)})
def invoices_list() -> Response:
    query = sa.select(Invoice)
    customer_id = int_arg("customer_id")
    if customer_id is not None:
        query = query.where(Invoice.customer_id == customer_id)
    status = request.args.get("status")
    if status:
        if status not in INVOICE_STATUSES:
            raise ApiError(400, f"status is one of {', '.join(INVOICE_STATUSES)}.")
        query = query.where(Invoice.status == status)
    start, end = _date_arg("start"), _date_arg("end")
    if start is not None:
        query = query.where(Invoice.period_start >= start)
    if end is not None:
        query = query.where(Invoice.period_end <= end)
    return page(query, Invoice.id, invoice_dict)


def _invoice(invoice_id: int) -> Invoice:
    invoice = get_state().session.get(Invoice, invoice_id)
    if invoice is None:
        raise ApiError(404, f"There is no invoice {invoice_id}.")
    return invoice


@route("/invoices/<int:invoice_id>", "GET", tag="bills",
       summary="One invoice with its lines and usage (with its ETag)",
       responses={200: ("The invoice", INVOICE), 404: ("No such invoice", None)})
def invoice_get(invoice_id: int) -> Response:
    return with_etag(invoice_full(_invoice(invoice_id)))


@route("/invoices/<int:invoice_id>/void", "POST", action="edit", if_match=True, tag="bills",
       summary="Void an invoice with a reason (If-Match: its ETag); its period can be run again",
       request_schema=VOID,
       responses={200: ("The void invoice", INVOICE), 404: ("No such invoice", None),
                  409: ("Already void", None), 412: ("Changed meanwhile", None),
                  422: ("Invalid", None), 428: ("If-Match missing", None)})
def invoice_void(invoice_id: int) -> Response:
    body = json_body()
    errors: dict[str, str] = {}
    reason = field(body, "reason", str, errors, required=True)
    if reason is not None and not reason.strip():
        errors["reason"] = "Give the reason for voiding (it is kept with the invoice)."
    for name in sorted(set(body) - {"reason"}):
        errors[name] = "Unknown field."
    if not request.headers.get("If-Match"):
        require_if_match({})  # 428, before any lock is taken
    invalid(errors)
    session = get_state().session
    # Lock the invoice's row, then compare: two voids with the same ETag cannot both pass.
    invoice = session.scalar(sa.select(Invoice).where(Invoice.id == invoice_id)
                             .with_for_update())
    if invoice is None:
        session.rollback()
        raise ApiError(404, f"There is no invoice {invoice_id}.")
    try:
        require_if_match(invoice_full(invoice))
    except ApiError:
        session.rollback()
        raise
    from ....billing.invoices import InvoiceError, void_invoice

    try:
        # Commits the transaction the lock began.
        void_invoice(invoice.id, reason=reason, actor=actor_name())
    except InvoiceError as exc:
        raise ApiError(409, f"{str(exc).capitalize()}.") from None
    return with_etag(invoice_full(_invoice(invoice_id)))
