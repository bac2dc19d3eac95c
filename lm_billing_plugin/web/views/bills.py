"""The Billing: Customers: Bill pages: the customer list to bill, Run Billing (in the background,
with progress), a run's result, the invoice (printable, PDF), void / run again, and export."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any, Final

import sqlalchemy as sa
from flask import (
    Flask,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from ...billing.invoices import (
    EXPORT_FIELDS,
    InvoiceError,
    export_csv,
    void_invoice,
)
from ...billing.runs import (
    BillRunError,
    BillRunResult,
    create_bill_run,
    last_bills,
    last_month,
    rerun_invoice,
    run_bill_run,
    run_outcomes,
)
from ...billing.sending import (
    invoice_sends,
    print_context,
    render_invoice_pdf,
    weasyprint_module,
)
from ...i18n import N_, gettext
from ...models import BillRun, Customer, Invoice, utcnow
from ...sqlite import writes
from ...state import get_state
from ..access import actor_name, requires
from ..forms.bills import RerunForm, RunBillingForm, VoidForm
from ..l10n import format_currency as money
from ..said import said_sentence
from .runs import submit_background

log = logging.getLogger("lm_billing_plugin.views.bills")

FILTERS: Final = (
    ("all", N_("All Customers")),
    ("active", N_("Active Customers")),
    ("inactive", N_("Inactive Customers")),
    ("start_after", N_("Start Date After")),
    ("active_before", N_("Active Before")),
)
# Invoice statuses as shown (the stored value is the key).
INVOICE_STATUSES: Final = (N_("issued"), N_("void"))
# Export Invoice Data: each CSV column's label on the page (the CSV header keeps the names).
EXPORT_FIELD_WORDS: Final = {
    "number": N_("Invoice number"), "issued": N_("Issued"), "start": N_("Period start"),
    "end": N_("Period end"), "customer": N_("Customer"), "customer_type": N_("Customer Type"),
    "group": N_("Billing group"), "kind": N_("Line kind"), "line": N_("Line"),
    "quantity": N_("Quantity"), "unit_price": N_("Unit Price"), "amount": N_("Amount"),
    "invoice_total": N_("Invoice total"), "currency": N_("Currency"), "status": N_("Status"),
}
DRY_RUNS_KEY: Final = "bills.dry_runs"
_KEEP_DRY_RUNS: Final = 20


def _parse_day(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _filtered(show: str, on: date | None) -> Any:
    query = sa.select(Customer).order_by(Customer.company, Customer.id)
    if show == "active":
        query = query.where(Customer.is_active.is_(True))
    elif show == "inactive":
        query = query.where(Customer.is_active.is_(False))
    elif show == "start_after" and on is not None:
        query = query.where(Customer.start_date > on)
    elif show == "active_before" and on is not None:
        # Active before a day: started before it (or no Start Date) and still active.
        query = query.where(Customer.is_active.is_(True),
                            sa.or_(Customer.start_date.is_(None), Customer.start_date < on))
    return query


def _view_args() -> tuple[str, date | None]:
    show = request.args.get("show", "active")
    if show not in dict(FILTERS):
        show = "active"
    return show, _parse_day(request.args.get("on"))


def bills() -> str:
    """Billing: Customers: Bill — every customer in the filter, with its last bill."""
    session = get_state().session
    show, on = _view_args()
    customers = list(session.scalars(_filtered(show, on).limit(5000)))
    last = last_bills(session, [c.id for c in customers])
    return render_template("lm_billing/bills.html", customers=customers, last=last,
                           show=show, on=on, filters=FILTERS, money=money)


def _chosen_ids() -> list[int]:
    ids: list[int] = []
    for raw in request.values.getlist("customer_id"):
        if raw.isdigit():
            ids.append(int(raw))
    return ids


@requires("run")
def run_billing() -> str | BaseResponse:
    """Run Billing: Start and End Dates (default: last calendar month), then run all the
    customers in view or the chosen ones, in the background."""
    session = get_state().session
    form = RunBillingForm()
    show, on = _view_args()
    if not form.is_submitted():
        period = last_month()
        form.start.data, form.end.data = period.start, period.end
        form.dry_run.data = request.args.get("dry_run") == "1"
        if request.args.get("scope") == "selected":
            form.customer_ids.data = ",".join(str(i) for i in _chosen_ids())
    if form.validate_on_submit():
        if form.run_selected.data:
            ids: list[int] | None = [int(x) for x in (form.customer_ids.data or "").split(",")
                                     if x.isdigit()]
        else:
            ids = [c.id for c in session.scalars(_filtered(show, on))]
        session.commit()
        try:
            run_id = start_bill_run(form.start.data, form.end.data, ids,
                                    dry_run=bool(form.dry_run.data))
        except BillRunError as exc:
            form.start.errors = [*form.start.errors, said_sentence(exc)]
        else:
            return redirect(url_for("lm_billing.bill_run", bill_run_id=run_id))
    chosen_ids = [int(x) for x in (form.customer_ids.data or "").split(",") if x.isdigit()]
    chosen = list(session.scalars(sa.select(Customer.company).where(Customer.id.in_(chosen_ids))
                                  .order_by(Customer.company))) if chosen_ids else []
    in_view = int(session.scalar(sa.select(sa.func.count())
                                 .select_from(_filtered(show, on).subquery())) or 0)
    return render_template("lm_billing/bill_run_form.html", form=form, chosen=chosen,
                           in_view=in_view, show=show, on=on, filters=FILTERS)


def start_bill_run(start: date, end: date, customer_ids: list[int] | None, *,
                   dry_run: bool = False) -> int:
    """Create the bill run now (so its page and API URL have something to show) and run it in
    the background, as Run Billing does; returns its id. Raises BillRunError."""
    run_id = create_bill_run(start, end, customer_ids, actor=actor_name(), dry_run=dry_run)
    submit_background(lambda app: _run_in_app(app, run_id))
    return run_id


def _run_in_app(app: Flask, run_id: int) -> None:
    # The run writes invoices: on SQLite its transactions take the write lock at BEGIN.
    with app.app_context(), writes():
        try:
            result = run_bill_run(run_id)
            if result.dry_run:
                # A dry run's drafts are not stored; this process keeps the last few to show.
                kept: dict[int, BillRunResult] = get_state(app).extras.setdefault(
                    DRY_RUNS_KEY, {})
                kept[run_id] = result
                for old in sorted(kept)[:-_KEEP_DRY_RUNS]:
                    kept.pop(old, None)
        except Exception:
            log.exception("background bill run %s failed", run_id)
        finally:
            get_state(app).db.session.remove()


def bill_run(bill_run_id: int) -> str:
    """A run's progress, then every customer's outcome."""
    run_id = bill_run_id
    session = get_state().session
    run = session.get(BillRun, run_id)
    if run is None:
        abort(404, description=N_("No such bill run. Go back to Billing: Customers: Bill."))
    result = run_outcomes(run_id)
    if run.dry_run:
        kept = get_state().extras.get(DRY_RUNS_KEY, {}).get(run_id)
        if kept is not None:
            drafts = {o.customer_id: o.draft for o in kept.outcomes}
            for o in result.outcomes:
                o.draft = drafts.get(o.customer_id)
    done = sum(1 for o in result.outcomes if o.status != "pending")
    finished = run.finished_at is not None
    stalled = not finished and utcnow() - run.created_at > timedelta(
        seconds=get_state().settings.lease_seconds)
    last = last_bills(session, [o.customer_id for o in result.outcomes])
    return render_template("lm_billing/bill_run.html", run=run, result=result, done=done,
                           finished=finished, stalled=stalled, last=last, money=money)


def _invoice_or_404(invoice_id: int) -> Invoice:
    invoice = get_state().session.get(Invoice, invoice_id)
    if invoice is None:
        abort(404, description=N_("No such invoice. Go back to Billing: Customers: Bill."))
    return invoice


def _invoice_context(invoice: Invoice) -> dict[str, Any]:
    session = get_state().session
    return {**print_context(session, invoice), "pdf_available": weasyprint_module() is not None,
            "sends": invoice_sends(session, invoice.id)}


def invoice(invoice_id: int) -> str:
    record = _invoice_or_404(invoice_id)
    return render_template("lm_billing/invoice.html", void_form=VoidForm(),
                           rerun_form=RerunForm(), printable=False,
                           **_invoice_context(record))


def invoice_pdf(invoice_id: int) -> BaseResponse:
    record = _invoice_or_404(invoice_id)
    pdf = render_invoice_pdf(record)
    if pdf is None:
        abort(404, description=N_("PDF invoices need WeasyPrint: install the plugin with its "
              "[pdf] extra (pip install 'lm-billing-plugin[pdf]') and the pango library "
              "(Debian: apt-get install libpango-1.0-0 libpangoft2-1.0-0), then reload."))
    return Response(pdf, mimetype="application/pdf", headers={
        "Content-Disposition": f'inline; filename="invoice-{record.number}.pdf"'})


@requires("edit")
def invoice_void(invoice_id: int) -> str | BaseResponse:
    record = _invoice_or_404(invoice_id)
    form = VoidForm()
    if form.validate_on_submit():
        try:
            void_invoice(record.id, reason=form.reason.data or "", actor=actor_name())
        except InvoiceError as exc:
            flash(said_sentence(exc), "error")
        else:
            flash(gettext("Invoice %(number)s is void. Run again bills its period anew.",
                          number=record.number))
        return redirect(url_for("lm_billing.invoice", invoice_id=record.id))
    return render_template("lm_billing/invoice.html", void_form=form, rerun_form=RerunForm(),
                           printable=False, **_invoice_context(record)), 400  # type: ignore[return-value]


@requires("run")
def invoice_rerun(invoice_id: int) -> BaseResponse:
    record = _invoice_or_404(invoice_id)
    form = RerunForm()
    if not form.validate_on_submit():
        abort(400, description=N_("The form expired. Reload the invoice and try again."))
    try:
        run_id = rerun_invoice(record.id, actor=actor_name())
    except (InvoiceError, BillRunError) as exc:
        flash(said_sentence(exc), "error")
        return redirect(url_for("lm_billing.invoice", invoice_id=record.id))
    submit_background(lambda app: _run_in_app(app, run_id))
    return redirect(url_for("lm_billing.bill_run", bill_run_id=run_id))


def invoice_export() -> str | BaseResponse:
    """Export Invoice Data: a CSV of invoices from a start date, streamed."""
    start = _parse_day(request.args.get("start"))
    fields = [f for f in request.args.getlist("field") if f in EXPORT_FIELDS]
    customer_type = request.args.get("customer_type", "").strip()[:50]
    session = get_state().session
    types = [t for t in session.scalars(sa.select(Customer.customer_type).distinct()
                                        .order_by(Customer.customer_type)) if t]
    session.commit()
    if start is None or not request.args.get("download"):
        return render_template("lm_billing/invoice_export.html", start=start or
                               last_month().start, fields=fields or list(EXPORT_FIELDS),
                               all_fields=EXPORT_FIELDS, types=types,
                               field_words=EXPORT_FIELD_WORDS,
                               customer_type=customer_type,
                               missing_start=bool(request.args.get("download")))

    def rows() -> Iterator[str]:
        yield from export_csv(start, customer_type=customer_type,
                              fields=fields or EXPORT_FIELDS)

    return Response(stream_with_context(rows()), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="invoices-from-{start}.csv"'})
