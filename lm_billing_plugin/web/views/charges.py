"""Billing: Additional Charges (list, create, edit, delete when never assigned) and a billing
group's charges (Add Additional Charge, End, Remove), through billing.charges."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import abort, flash, redirect, render_template, url_for
from werkzeug.wrappers import Response
from wtforms import SelectChoice

from ...billing import charges as service
from ...i18n import N_, gettext, say
from ...models import AdditionalCharge, BillingGroup, ChargeAssignment, Customer
from ..access import actor_name, requires
from ..forms.charges import ChargeForm, ConfirmForm, GroupChargeEndForm, GroupChargeForm
from ..said import said
from .catalog import counted_page, db_session, page_size
from .paging import page_from_request

CHARGE_SORTS: dict[str, Any] = {
    "name": AdditionalCharge.name,
    "amount": AdditionalCharge.default_amount,
}


def _show_errors(form: Any, errors: dict[str, list[str]]) -> None:
    """The service's field errors, next to their fields (others at the top)."""
    for name, messages in errors.items():
        field = getattr(form, name, None)
        if field is None:
            form.form_errors.extend(messages)
        else:
            field.errors = [*field.errors, *messages]


def charges() -> str:
    page = page_from_request(
        "lm_billing.charges", CHARGE_SORTS, default_sort="name", size=page_size()
    )
    rows = counted_page(page, AdditionalCharge, CHARGE_SORTS, ChargeAssignment.id,
                        ChargeAssignment.charge_id == AdditionalCharge.id)
    return render_template("lm_billing/charges.html", rows=rows, page=page)


def _input(form: ChargeForm) -> service.ChargeInput:
    return service.ChargeInput(
        name=form.name.data or "",
        description=form.description.data or "",
        default_amount=form.default_amount.data or "",  # type: ignore[arg-type]
        is_recurring=bool(form.is_recurring.data),
        is_proratable=bool(form.is_proratable.data),
    )


@requires("edit")
def charge_new() -> str | Response:
    form = ChargeForm()
    if form.validate_on_submit():
        try:
            charge = service.create_charge(_input(form), actor=actor_name())
        except service.ChargeInputError as exc:
            _show_errors(form, exc.errors)
        else:
            flash(gettext("Additional charge %(name)s created. Add it to billing groups on "
                          "their customer's page.", name=charge.name))
            return redirect(url_for("lm_billing.charges"))
    return render_template("lm_billing/charge_form.html", form=form, charge=None)


def _charge_or_404(charge_id: int) -> AdditionalCharge:
    charge = db_session().get(AdditionalCharge, charge_id)
    if charge is None:
        abort(404, description=N_("No such additional charge. Go back to Additional Charges."))
    return charge


@requires("edit")
def charge_edit(charge_id: int) -> str | Response:
    charge = _charge_or_404(charge_id)
    form = ChargeForm(obj=charge)
    if not form.is_submitted():
        form.default_amount.data = str(charge.default_amount)
    if form.validate_on_submit():
        try:
            changes = service.update_charge(charge_id, _input(form), actor=actor_name())
        except service.ChargeInputError as exc:
            _show_errors(form, exc.errors)
        else:
            flash(gettext("Additional charge %(name)s saved.", name=form.name.data) if changes
                  else gettext("Nothing changed."))
            return redirect(url_for("lm_billing.charges"))
    return render_template("lm_billing/charge_form.html", form=form, charge=charge)


@requires("edit")
def charge_delete(charge_id: int) -> Any:
    charge = _charge_or_404(charge_id)
    form = ConfirmForm()
    refusal = ""
    if form.validate_on_submit():
        try:
            name = service.delete_charge(charge_id, actor=actor_name())
        except service.ChargeInUse as exc:
            refusal = said(exc)
        else:
            flash(gettext("Additional charge %(name)s deleted.", name=name))
            return redirect(url_for("lm_billing.charges"))
    body = render_template(
        "lm_billing/charge_delete.html", form=form, charge=charge, refusal=refusal
    )
    return (body, 409) if refusal else body


# --- A group's charges -------------------------------------------------------------------------


def _group_or_404(group_id: int) -> tuple[BillingGroup, Customer]:
    session = db_session()
    group = session.get(BillingGroup, group_id)
    if group is None:
        abort(404, description=N_("No such billing group. Go back to the customer's page."))
    customer = session.get(Customer, group.customer_id)
    assert customer is not None
    return group, customer


@requires("edit")
def group_charge_new(group_id: int) -> str | Response:
    session = db_session()
    group, customer = _group_or_404(group_id)
    form = GroupChargeForm()
    choices = session.execute(
        sa.select(AdditionalCharge.id, AdditionalCharge.name, AdditionalCharge.default_amount)
        .order_by(AdditionalCharge.name)
    ).all()
    form.charge_id.choices = [
        SelectChoice(0, gettext("— choose a charge —")),
        *(SelectChoice(cid, f"{name} ({amount})") for cid, name, amount in choices),
    ]
    if form.validate_on_submit():
        try:
            service.add_group_charge(
                group.id,
                form.charge_id.data,
                start=form.start_date.data,
                end=form.end_date.data,
                amount=form.amount.data or None,
                description=form.description.data or "",
                actor=actor_name(),
            )
        except service.ChargeInputError as exc:
            _show_errors(form, exc.errors)
        else:
            flash(gettext("Additional charge added to billing group %(name)s.", name=group.name))
            return redirect(url_for("lm_billing.customer_detail", customer_id=customer.id))
    return render_template(
        "lm_billing/charge_group_form.html", form=form, group=group, customer=customer,
        has_charges=bool(choices),
    )


def _group_charge_or_404(group_charge_id: int) -> ChargeAssignment:
    row = db_session().get(ChargeAssignment, group_charge_id)
    if row is None:
        abort(404, description=N_("No such charge on a billing group: it may have been removed."))
    return row


def _back_to_customer(group_id: int) -> Response:
    group = db_session().get(BillingGroup, group_id)
    customer_id = group.customer_id if group else None
    if customer_id is None:
        return redirect(url_for("lm_billing.customers"))
    return redirect(url_for("lm_billing.customer_detail", customer_id=customer_id))


@requires("edit")
def group_charge_end(group_charge_id: int) -> Response:
    row = _group_charge_or_404(group_charge_id)
    group_id = row.group_id
    form = GroupChargeEndForm()
    if not form.validate_on_submit():
        flash(gettext("Enter the end date as YYYY-MM-DD."), "error")
        return _back_to_customer(group_id)
    try:
        service.end_group_charge(group_charge_id, end=form.end.data, actor=actor_name())
    except service.ChargeInputError as exc:
        flash(" ".join(say(m) for ms in exc.errors.values() for m in ms), "error")
    else:
        flash(gettext("Charge ended; its history is kept."))
    return _back_to_customer(group_id)


@requires("edit")
def group_charge_remove(group_charge_id: int) -> Response:
    row = _group_charge_or_404(group_charge_id)
    group_id = row.group_id
    if not ConfirmForm().validate_on_submit():
        flash(gettext("Reload the page and try again."), "error")
        return _back_to_customer(group_id)
    try:
        service.remove_group_charge(group_charge_id, actor=actor_name())
    except service.ChargeInUse as exc:
        flash(said(exc), "error")
    else:
        flash(gettext("Charge removed from the billing group."))
    return _back_to_customer(group_id)
