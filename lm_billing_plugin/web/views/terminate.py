"""Terminating: "Terminate lists" from the Assign page, "Delete Customer" for customers
without history, and "Validate all Customers"; the work is in catalog.terminate / checks."""

from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from ...catalog import assignment, terminate
from ...catalog.customer_checks import CHECK_KINDS, validate_customers
from ...i18n import N_, gettext, ngettext
from ...models import Customer
from ..access import actor_name, requires
from ..forms.charges import ConfirmForm, TerminateListsForm
from ..said import said
from .catalog import billing_day, db_session
from .paging import MAX_ID


def _ids(values: list[str]) -> list[int]:
    out = []
    for value in values:
        if value.isdigit() and 0 < int(value) <= MAX_ID:
            out.append(int(value))
    return out


@requires("edit")
def lists_terminate() -> Response:
    form = TerminateListsForm()
    server_ids = _ids([request.form.get("server_id", "")])
    back = url_for("lm_billing.assign", server_id=server_ids[0] if server_ids else None)
    if not form.validate_on_submit():
        flash(gettext("Choose a server and tick its lists, then Terminate lists."), "error")
        return redirect(back)
    list_ids = _ids(request.form.getlist("list_id"))
    try:
        result = terminate.terminate_lists(list_ids, actor=actor_name(), end=form.start.data)
    except assignment.GateError as exc:
        flash(said(exc), "error")
        return redirect(back)
    except assignment.AssignmentError as exc:
        flash(gettext("Nothing was terminated: %(why)s.", why=said(exc)), "error")
        return redirect(back)
    flash(
        ngettext("Terminated %(num)s list: moved to %(company)s: %(group)s, %(ended)s "
                 "assignment(s) ended; history kept.",
                 "Terminated %(num)s lists: moved to %(company)s: %(group)s, %(ended)s "
                 "assignment(s) ended; history kept.", len(list_ids),
                 company=terminate.PLACEHOLDER_COMPANY, group=terminate.PLACEHOLDER_GROUP,
                 ended=result.ended)
    )
    return redirect(url_for("lm_billing.customer_detail", customer_id=result.customer_id))


@requires("edit")
def customer_delete(customer_id: int) -> Any:
    session = db_session()
    customer = session.get(Customer, customer_id)
    if customer is None:
        abort(404, description=N_(
            "No such customer: it may have been removed. Go back to Customers."))
    form = ConfirmForm()
    blockers = terminate.deletion_blockers(session, customer_id)
    if not blockers and form.validate_on_submit():
        try:
            name = terminate.delete_customer(customer_id, actor=actor_name())
        except terminate.CustomerHasHistory as exc:
            flash(said(exc), "error")
            return redirect(url_for("lm_billing.customer_detail", customer_id=customer_id))
        flash(gettext("Customer %(name)s deleted.", name=name))
        return redirect(url_for("lm_billing.customers"))
    body = render_template(
        "lm_billing/customer_delete.html", customer=customer, form=form, blockers=blockers
    )
    return (body, 409) if blockers and request.method == "POST" else body


def customer_checks() -> str:
    today = billing_day()
    findings = validate_customers(db_session(), today)
    return render_template(
        "lm_billing/customer_checks.html", findings=findings, kinds=CHECK_KINDS, today=today
    )
