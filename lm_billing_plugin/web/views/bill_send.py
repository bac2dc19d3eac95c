"""Billing: Customers: Send: pick issued invoices (of a bill run or a period), "Test Selected
Bills" or "Send Bills" in the background (billing.sending), and the send's progress page."""

from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from ...billing.sending import (
    SendError,
    SendOptions,
    create_send_run,
    default_options,
    run_send_run,
    send_outcomes,
    weasyprint_module,
)
from ...i18n import N_, gettext
from ...models import BillRun, Invoice, InvoiceSend, SendRun, SendRunItem, utcnow
from ...sqlite import writes
from ...state import get_state
from ..access import actor_name, requires
from ..forms.bills import ResendForm, SendBillsForm
from ..said import said_sentence
from .runs import submit_background

log = logging.getLogger("lm_billing_plugin.views.bill_send")

_MAX_LISTED = 2000


def _day(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _invoices(run_id: int | None, start: date | None, end: date | None) -> list[Invoice]:
    query = sa.select(Invoice).where(Invoice.status != "void")
    if run_id is not None:
        query = query.where(Invoice.run_id == run_id)
    if start is not None:
        query = query.where(Invoice.period_start >= start)
    if end is not None:
        query = query.where(Invoice.period_end <= end)
    if run_id is None and start is None and end is None:
        query = query.where(Invoice.status.in_(("issued", "test-sent")))
    return list(get_state().session.scalars(
        query.order_by(Invoice.year, Invoice.seq).limit(_MAX_LISTED)))


def _last_sends(ids: list[int]) -> dict[int, InvoiceSend]:
    if not ids:
        return {}
    latest = (sa.select(sa.func.max(InvoiceSend.id)).where(InvoiceSend.invoice_id.in_(ids))
              .group_by(InvoiceSend.invoice_id))
    rows = get_state().session.scalars(sa.select(InvoiceSend).where(InvoiceSend.id.in_(latest)))
    return {row.invoice_id: row for row in rows}


@requires("run")
def bill_send() -> str | BaseResponse | tuple[str, int]:
    session = get_state().session
    settings = get_state().settings
    run_id = request.args.get("run", type=int)
    start, end = _day(request.args.get("start")), _day(request.args.get("end"))
    form = SendBillsForm()
    if not form.is_submitted():
        defaults = default_options(settings)
        form.from_name.data = defaults.from_name
        form.from_email.data = defaults.from_email
        form.bounce_email.data = defaults.bounce_email
        form.test_email.data = defaults.test_email
    chosen = [int(x) for x in request.form.getlist("invoice_id") if x.isdigit()]
    error = ""
    if form.validate_on_submit():
        test = bool(form.test.data)
        options = SendOptions(
            from_name=form.from_name.data or "", from_email=form.from_email.data or "",
            bounce_email=form.bounce_email.data or "", test_email=form.test_email.data or "",
            comments_text=form.comments_text.data or "",
            comments_html=form.comments_html.data or "")
        session.commit()
        try:
            send_run_id = create_send_run(chosen, test=test, resend=bool(form.resend.data),
                                          options=options, actor=actor_name())
        except SendError as exc:
            error = said_sentence(exc)
        else:
            submit_background(lambda app: _send_in_app(app, send_run_id))
            return redirect(url_for("lm_billing.bill_send_run", send_run_id=send_run_id))
    invoices = _invoices(run_id, start, end)
    runs = list(session.scalars(sa.select(BillRun).where(BillRun.dry_run.is_(False))
                                .order_by(BillRun.id.desc()).limit(20)))
    page = render_template(
        "lm_billing/bill_send.html", form=form, invoices=invoices,
        last_sends=_last_sends([i.id for i in invoices]), chosen=set(chosen),
        submitted=form.is_submitted(), runs=runs, run_id=run_id, start=start, end=end,
        error=error, pdf_available=weasyprint_module() is not None, listed_max=_MAX_LISTED)
    return (page, 400) if form.is_submitted() else page


def _send_in_app(app: Flask, send_run_id: int) -> None:
    with app.app_context(), writes():
        try:
            run_send_run(send_run_id)
        except Exception:
            log.exception("background send run %s failed", send_run_id)
        finally:
            get_state(app).db.session.remove()


def _send_run_or_404(send_run_id: int) -> SendRun:
    run = get_state().session.get(SendRun, send_run_id)
    if run is None:
        abort(404, description=N_("No such send. Go back to Billing: Customers: Send."))
    return run


def _resendable(run: SendRun) -> set[int]:
    """The run's invoices that Resend may send: those a real send skipped (sent already or in
    doubt) and that are not void since. A test send skips nothing but void bills, and a
    failed bill goes out with a plain Send again, so neither offers Resend."""
    if run.is_test:
        return set()
    return set(get_state().session.scalars(
        sa.select(SendRunItem.invoice_id)
        .join(Invoice, Invoice.id == SendRunItem.invoice_id)
        .where(SendRunItem.send_run_id == run.id, SendRunItem.status == "skipped",
               Invoice.status != "void")))


def bill_send_run(send_run_id: int) -> str:
    run = _send_run_or_404(send_run_id)
    result = send_outcomes(send_run_id)
    done = sum(1 for o in result.outcomes if o.status != "pending")
    stalled = not result.finished and utcnow() - run.created_at > timedelta(
        seconds=get_state().settings.lease_seconds)
    context: dict[str, Any] = {"run": run, "result": result, "done": done, "stalled": stalled,
                               "resendable": _resendable(run) if result.finished else set(),
                               "resend_form": ResendForm()}
    return render_template("lm_billing/bill_send_run.html", **context)


@requires("run")
def bill_send_resend(send_run_id: int) -> BaseResponse:
    """Resend from a send's page: the chosen bills it skipped go out again in a new send with
    the same message (From, bounce address, comments), so nobody retypes the Send form to
    send one bill a customer says never came; the new send's page follows."""
    run = _send_run_or_404(send_run_id)
    chosen = {int(x) for x in request.form.getlist("invoice_id") if x.isdigit()}
    allowed = _resendable(run)
    ids = [i for i in sorted(chosen) if i in allowed]
    back = redirect(url_for("lm_billing.bill_send_run", send_run_id=send_run_id))
    if not ids:
        flash(gettext("Nothing to resend: choose a bill this send skipped (sent already or in "
                      "doubt) that is not void."), "error")
        return back
    options = SendOptions(from_name=run.from_name, from_email=run.from_email,
                          bounce_email=run.bounce_email, test_email=run.test_email,
                          comments_text=run.comments_text, comments_html=run.comments_html)
    get_state().session.commit()
    try:
        new_id = create_send_run(ids, test=False, resend=True, options=options,
                                 actor=actor_name())
    except SendError as exc:
        flash(said_sentence(exc), "error")
        return back
    submit_background(lambda app: _send_in_app(app, new_id))
    return redirect(url_for("lm_billing.bill_send_run", send_run_id=new_id))
