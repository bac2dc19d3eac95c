"""Audit log: who did what to which server, customer, group or plan, and when — the entries
audit.record wrote, newest first, filtered (who, action, subject kind, subject name, dates in
the viewer's time zone), paged, and as CSV of everything the filter shows (streamed). Each
page is one statement for the rows (the subject's name joined in, no query per row) and one
for the count."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from flask import render_template, request, stream_with_context
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from ...i18n import gettext
from ...models import AdditionalCharge, AuditEntry, BillingGroup, Customer, HostingPlan, Server
from ...state import get_state
from ..csvout import csv_stream, text_cell
from ..forms.audit import ACTION_WORDS, SUBJECT_KINDS, AuditFilterForm
from ..l10n import iso_utc, viewer_timezone
from .catalog import page_size, search_clause
from .paging import clamp, page_from_request

CSV_HEADER = ("When (UTC)", "Who", "Action", "Action code", "Subject kind", "Subject",
              "Server", "Detail")


def _subject_name() -> Any:
    """The subject's name by its kind, from the table of that kind (outer-joined below)."""
    return sa.case(
        (AuditEntry.object_type == "customer", Customer.company),
        (AuditEntry.object_type == "group", BillingGroup.name),
        (AuditEntry.object_type == "plan", HostingPlan.name),
        (AuditEntry.object_type == "charge", AdditionalCharge.name),
        (AuditEntry.object_type == "server", Server.name),
        else_=None,
    )


def _query() -> Any:
    kind = AuditEntry.object_type
    subject = _subject_name()
    return (
        sa.select(AuditEntry.id, AuditEntry.at, AuditEntry.actor, AuditEntry.action,
                  AuditEntry.object_type, AuditEntry.object_id, AuditEntry.server_id,
                  AuditEntry.detail, subject.label("subject"), Server.name.label("server"))
        .select_from(AuditEntry)
        .outerjoin(Server, Server.id == AuditEntry.server_id)
        .outerjoin(Customer, sa.and_(kind == "customer", Customer.id == AuditEntry.object_id))
        .outerjoin(BillingGroup,
                   sa.and_(kind == "group", BillingGroup.id == AuditEntry.object_id))
        .outerjoin(HostingPlan, sa.and_(kind == "plan", HostingPlan.id == AuditEntry.object_id))
        .outerjoin(AdditionalCharge,
                   sa.and_(kind == "charge", AdditionalCharge.id == AuditEntry.object_id))
    ), subject


def _utc_bound(day: Any, *, end: bool) -> datetime:
    """Midnight of ``day`` (the day after, for an inclusive end) in the viewer's zone, in
    UTC (the column stores UTC)."""
    if end:
        day = day + timedelta(days=1)
    local = datetime.combine(day, time(), tzinfo=viewer_timezone())
    return local.astimezone(UTC)


def _filter(form: AuditFilterForm) -> tuple[Any, Any]:
    query, subject = _query()
    where: list[Any] = []
    if form.actor.data:
        where.append(search_clause(AuditEntry.actor, form.actor.data.strip()))
    if form.action.data:
        where.append(AuditEntry.action == form.action.data)
    if form.kind.data:
        where.append(AuditEntry.object_type == form.kind.data)
    if form.subject.data:
        text = form.subject.data.strip()
        where.append(sa.or_(search_clause(subject, text), search_clause(Server.name, text)))
    if form.start.data:
        where.append(AuditEntry.at >= _utc_bound(form.start.data, end=False))
    if form.end.data:
        where.append(AuditEntry.at < _utc_bound(form.end.data, end=True))
    return query.where(*where), [AuditEntry.at.desc(), AuditEntry.id.desc()]


def _form() -> AuditFilterForm:
    form = AuditFilterForm(formdata=MultiDict(request.args) if request.args else None)
    if request.args:
        form.validate()
    return form


def _args(form: AuditFilterForm) -> dict[str, str]:
    return {name: request.args.get(name, "") for name in ("actor", "action", "kind",
                                                           "subject", "start", "end")
            if request.args.get(name)}


def action_words(code: str) -> str:
    words = ACTION_WORDS.get(code)
    return gettext(words) if words else code


def kind_words(code: str) -> str:
    words = SUBJECT_KINDS.get(code)
    return str(words) if words is not None else code


def audit_log() -> tuple[str, int]:
    form = _form()
    page = page_from_request("lm_billing.audit_log", {"at": AuditEntry.at}, default_sort="at",
                             size=page_size(), keep=_args(form))
    rows: list[Any] = []
    if not form.errors:
        query, order = _filter(form)
        session = get_state().session
        page.total = session.scalar(
            sa.select(sa.func.count()).select_from(query.subquery())) or 0
        clamp(page)
        rows = list(session.execute(query.order_by(*order).offset(page.offset)
                                    .limit(page.size)).all())
    # Bad input is a field error on an ordinary page (200), as on every Billing form.
    return render_template("lm_billing/audit_log.html", form=form, rows=rows, page=page,
                           action_words=action_words, kind_words=kind_words,
                           csv_args=_args(form)), 200


def _csv_lines(rows: Any) -> Iterator[str]:
    return csv_stream(CSV_HEADER, (
        [
            iso_utc(r.at), text_cell(r.actor), text_cell(action_words(r.action)),
            r.action, text_cell(kind_words(r.object_type)) if r.object_type else "",
            text_cell(r.subject if r.subject is not None else
                      (f"#{r.object_id}" if r.object_id is not None else "")),
            text_cell(r.server), text_cell(json.dumps(r.detail or {}, ensure_ascii=False,
                                                      sort_keys=True)),
        ]
        for r in rows))


def audit_log_csv() -> Any:
    """What the page's filter shows, every page, newest first, as CSV (streamed). A bad
    filter shows the page with its field errors instead of a file."""
    form = _form()
    if form.errors:
        return audit_log()
    query, order = _filter(form)
    stmt = query.order_by(*order).execution_options(yield_per=500)

    def rows() -> Any:
        # Run while streaming, in the session of the context the stream carries.
        yield from get_state().session.execute(stmt)

    return Response(stream_with_context(_csv_lines(rows())), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="billing-audit.csv"'})
