"""Forms of the Bill, Run Billing, Invoice and Send pages: the period, void with a reason, run
again, the message around sent bills; labels as ListManager users know them."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    HiddenField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import DataRequired, InputRequired, Length
from wtforms.validators import ValidationError as WTFValidationError

from ...i18n import lazy_gettext


class RunBillingForm(FlaskForm):  # type: ignore[misc]
    """Run Billing: Start and End Dates (inclusive), for all customers in view or the chosen."""

    start = DateField(lazy_gettext("Start Date"),
                      validators=[InputRequired(lazy_gettext("Enter the Start Date."))],
                      description=lazy_gettext("First day billed (YYYY-MM-DD)."))
    end = DateField(lazy_gettext("End Date"),
                    validators=[InputRequired(lazy_gettext("Enter the End Date."))],
                    description=lazy_gettext("Last day billed, inclusive (YYYY-MM-DD)."))
    dry_run = BooleanField(lazy_gettext("Dry run"),
                           description=lazy_gettext("Compute and show the invoices; store none."))
    customer_ids = HiddenField()
    run_all = SubmitField(lazy_gettext("Run All Customers"))
    run_selected = SubmitField(lazy_gettext("Run Selected Customers"))

    def validate_end(self, field: DateField) -> None:
        if field.data and self.start.data and field.data < self.start.data:
            raise WTFValidationError(
                lazy_gettext("The End Date must be on or after the Start Date."))


class VoidForm(FlaskForm):  # type: ignore[misc]
    reason = TextAreaField(lazy_gettext("Reason"), validators=[
        DataRequired(lazy_gettext("Give the reason for voiding: it is kept with the invoice.")),
        Length(max=10_000)])


class RerunForm(FlaskForm):  # type: ignore[misc]
    """Run again: bills the void invoice's customer and period anew."""


class ResendForm(FlaskForm):  # type: ignore[misc]
    """Resend on a send's page: the CSRF token; the bills are its ``invoice_id`` fields."""


class SendBillsForm(FlaskForm):  # type: ignore[misc]
    """Billing: Customers: Send — the message around the selected invoices."""

    from_name = StringField(lazy_gettext("From Name"), validators=[Length(max=200)])
    from_email = StringField(lazy_gettext("From Email Address"), validators=[
        DataRequired(lazy_gettext("Enter the From Email Address.")), Length(max=320)])
    test_email = StringField(
        lazy_gettext("Test Email Address"), validators=[Length(max=320)],
        description=lazy_gettext('Where "Test Selected Bills" sends every selected bill '
                                 "(nobody else gets it)."))
    bounce_email = StringField(
        lazy_gettext("Message Bounce Email Address"), validators=[Length(max=320)],
        description=lazy_gettext("The envelope sender: bounces come back here. Empty: the From "
                                 "Email Address."))
    comments_text = TextAreaField(
        lazy_gettext("Message Comments (Text)"), validators=[Length(max=20_000)],
        description=lazy_gettext("Above the invoice in the text part."))
    comments_html = TextAreaField(
        lazy_gettext("Message Comments (HTML)"), validators=[Length(max=20_000)],
        description=lazy_gettext("Above the invoice in the HTML part (your HTML, sent as "
                                 "written)."))
    resend = BooleanField(
        lazy_gettext("Resend"),
        description=lazy_gettext("Send again the selected bills that were sent already or are "
                                 "in doubt (a send that did not record its end)."))
    test = SubmitField(lazy_gettext("Test Selected Bills"))
    send = SubmitField(lazy_gettext("Send Bills"))
