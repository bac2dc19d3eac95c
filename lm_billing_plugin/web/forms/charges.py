"""Forms of the Additional Charges, group charge, invoice template, Terminate lists and
delete-customer pages; amounts are checked by billing.charges, the one rule the CLI shares."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    HiddenField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, InputRequired, Length, Optional

from ...billing.invoice_templates import MAX_SOURCE
from ...i18n import lazy_gettext


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


class ChargeForm(FlaskForm):  # type: ignore[misc]
    name = StringField(
        lazy_gettext("Name"),
        filters=[_strip],
        validators=[DataRequired(lazy_gettext("Enter the charge's name.")), Length(max=200)],
    )
    description = TextAreaField(lazy_gettext("Description"), validators=[Length(max=10_000)])
    # Text, parsed by billing.charges.parse_amount: negative amounts (credits) are allowed.
    default_amount = StringField(
        lazy_gettext("Default Amount"),
        filters=[_strip],
        validators=[
            InputRequired(lazy_gettext("Enter an amount like 19.95 (negative for a credit)."))
        ],
        description=lazy_gettext("A negative amount is a credit, e.g. -100 for a prepaid account."),
    )
    is_recurring = BooleanField(
        lazy_gettext("Is Recurring?"),
        description=lazy_gettext("Billed every period; otherwise billed once."),
    )
    is_proratable = BooleanField(
        lazy_gettext("Is Proratable?"),
        description=lazy_gettext("A recurring charge billed for the part of the period."),
    )


class GroupChargeForm(FlaskForm):  # type: ignore[misc]
    charge_id = SelectField(
        lazy_gettext("Additional Charge"),
        coerce=int,
        validators=[DataRequired(lazy_gettext("Choose an additional charge."))],
    )
    amount = StringField(
        lazy_gettext("Amount"),
        filters=[_strip],
        validators=[Optional()],
        description=lazy_gettext("Blank = the charge's Default Amount; negative = a credit."),
    )
    start_date = DateField(
        lazy_gettext("Start Date"),
        validators=[InputRequired(lazy_gettext("Enter the start date (YYYY-MM-DD)."))],
        description=lazy_gettext("The first day billed (YYYY-MM-DD)."),
    )
    end_date = DateField(
        lazy_gettext("End Date"),
        validators=[Optional()],
        description=lazy_gettext("The last day billed (YYYY-MM-DD); blank while it runs."),
    )
    description = TextAreaField(
        lazy_gettext("Description"),
        validators=[Length(max=10_000)],
        description=lazy_gettext("Shown on the invoice; blank = the charge's description."),
    )


class GroupChargeEndForm(FlaskForm):  # type: ignore[misc]
    end = DateField(
        lazy_gettext("End Date"),
        validators=[Optional()],
        description=lazy_gettext("The last day billed (YYYY-MM-DD); blank = today."),
    )


class ConfirmForm(FlaskForm):  # type: ignore[misc]
    """A POST with nothing but its CSRF token: delete, remove."""


class InvoiceTemplateForm(FlaskForm):  # type: ignore[misc]
    name = StringField(
        lazy_gettext("Name"),
        filters=[_strip],
        validators=[DataRequired(lazy_gettext("Enter the template's name.")), Length(max=200)],
    )
    body = TextAreaField(
        lazy_gettext("Template"),
        validators=[
            DataRequired(lazy_gettext("Enter the template (Jinja syntax).")),
            Length(max=MAX_SOURCE, message=f"Use at most {MAX_SOURCE} characters."),
        ],
        description=lazy_gettext(
            "Jinja syntax: {{ invoice.number }}, {% for group in invoice.groups %} ..."),
    )
    preview_invoice = SelectField(lazy_gettext("Preview with"), coerce=int, default=0)


class TerminateListsForm(FlaskForm):  # type: ignore[misc]
    """Posted by the Assign page's "Terminate lists" button (the same form's fields)."""

    server_id = HiddenField(validators=[DataRequired(lazy_gettext("Choose a server first."))])
    start = DateField(
        lazy_gettext("Start Date"),
        validators=[Optional()],
        description=lazy_gettext("The lists move on this date (YYYY-MM-DD); blank = today."),
    )
