"""Forms of the customer, billing group, hosting plan and assignment pages: fields, labels
and help text as ListManager users know them, and field-level validation."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    DecimalField,
    Field,
    Form,
    HiddenField,
    IntegerField,
    RadioField,
    SelectChoice,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional
from wtforms.validators import ValidationError as WTFValidationError

from ...i18n import lazy_gettext
from .versioned import loaded_version_field

UNLIMITED_HELP = lazy_gettext("0 = unlimited.")
# Integer columns are 32-bit on every backend; BigInteger ones hold more.
MAX_INT = 2_147_483_647
MAX_BIGINT = 9_223_372_036_854_775_807
# Numeric(12, s): 12 digits in all.
_EMAIL = re.compile(r"^[^@\s<>\"',;]+@[^@\s<>\"',;]+\.[^@\s<>\"',;.]+$")


def email_address(form: Form, field: Field) -> None:
    """A plain address check (no DNS): name@domain.tld, no spaces or list separators."""
    value = (field.data or "").strip()
    if value and not _EMAIL.match(value):
        raise WTFValidationError(lazy_gettext("Enter an email address like billing@example.com."))


def _decimal_places(places: int, digits: int = 12) -> Any:
    """The column's precision: no more decimals than it stores, no more digits than fit."""

    def check(form: Form, field: Field) -> None:
        value = field.data
        if value is None:
            return
        assert isinstance(value, Decimal)
        if not value.is_finite():
            raise WTFValidationError(lazy_gettext("Enter a number, like 19.95."))
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)
        if -exponent > places:
            raise WTFValidationError(f"Use at most {places} decimal places.")
        if value >= Decimal(10) ** (digits - places):
            raise WTFValidationError(f"Enter a value below {Decimal(10) ** (digits - places)}.")

    return check


def _count(label: str, help_text: str, maximum: int = MAX_INT) -> IntegerField:
    return IntegerField(
        label,
        default=0,
        validators=[
            InputRequired(lazy_gettext("Enter a whole number (0 or more).")),
            NumberRange(min=0, max=maximum, message=f"Enter a whole number from 0 to {maximum}."),
        ],
        description=help_text,
    )


def _money(label: str, help_text: str, places: int) -> DecimalField:
    return DecimalField(
        label,
        default=Decimal("0"),
        places=places,
        validators=[
            InputRequired(lazy_gettext("Enter an amount (0 or more).")),
            NumberRange(min=0, message=lazy_gettext("Enter 0 or more.")),
            _decimal_places(places),
        ],
        description=help_text,
    )


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


class CustomerForm(FlaskForm):  # type: ignore[misc]
    company = StringField(
        lazy_gettext("Company"),
        filters=[_strip],
        validators=[DataRequired(lazy_gettext("Enter the company name.")), Length(max=200)],
    )
    contact_name = StringField(
        lazy_gettext("Contact Name"), filters=[_strip], validators=[Length(max=200)]
    )
    email = StringField(
        lazy_gettext("Email Address"),
        filters=[_strip],
        validators=[Length(max=320), email_address],
        description=lazy_gettext("Where bills for this customer are sent."),
    )
    is_active = BooleanField(
        lazy_gettext("Is Active"),
        default=True,
        description=lazy_gettext(
            "Untick to deactivate a customer who has left: their history is kept."
        ),
    )
    payment_method = StringField(
        lazy_gettext("Payment Method"),
        filters=[_strip],
        validators=[Length(max=100)],
        description=lazy_gettext("For example: Invoice, Credit Card, Check."),
    )
    notes = TextAreaField(lazy_gettext("Notes"), validators=[Length(max=10_000)])
    start_date = DateField(
        lazy_gettext("Start Date"),
        validators=[Optional()],
        description=lazy_gettext("Billing starts (YYYY-MM-DD)."),
    )
    end_date = DateField(
        lazy_gettext("End Date"),
        validators=[Optional()],
        description=lazy_gettext(
            "The last day billed: the final bill is prorated to it (YYYY-MM-DD)."
        ),
    )
    email_template_id = SelectField(lazy_gettext("Email Invoice Template"), coerce=int, default=0)
    web_template_id = SelectField(lazy_gettext("Web Invoice Template"), coerce=int, default=0)
    loaded_version = loaded_version_field()  # the edit form's optimistic lock

    def validate_end_date(self, field: DateField) -> None:
        start = self.start_date.data
        if field.data is not None and start is not None and field.data < start:
            raise WTFValidationError(
                lazy_gettext("The end date must not be before the start date.")
            )


class PlanForm(FlaskForm):  # type: ignore[misc]
    loaded_version = loaded_version_field()  # the edit form's optimistic lock
    name = StringField(
        lazy_gettext("Name"),
        filters=[_strip],
        validators=[DataRequired(lazy_gettext("Enter the plan's name.")), Length(max=200)],
    )
    description = TextAreaField(lazy_gettext("Description"), validators=[Length(max=10_000)])
    max_members = _count(
        lazy_gettext("Max Members"),
        lazy_gettext("Members in all the group's lists together. 0 = unlimited."),
    )
    max_members_per_list = _count(lazy_gettext("Max Members Per List"), UNLIMITED_HELP)
    max_lists = _count(lazy_gettext("Max Lists"), UNLIMITED_HELP)
    max_lists_per_site = _count(lazy_gettext("Max Lists Per Site"), UNLIMITED_HELP)
    max_sites = _count(lazy_gettext("Max Sites"), UNLIMITED_HELP)
    bill_by_list = BooleanField(
        lazy_gettext("Bill by List"),
        description=lazy_gettext("The limits and prices apply to each list separately."),
    )
    billing_method = RadioField(
        lazy_gettext("Billing Method"),
        choices=[
            SelectChoice("standard", lazy_gettext("Standard")),
            SelectChoice("bandwidth", lazy_gettext("Bandwidth")),
        ],
        default="standard",
        validators=[InputRequired(lazy_gettext("Choose Standard or Bandwidth."))],
    )
    # Standard
    monthly_price = _money(lazy_gettext("Monthly Price"), lazy_gettext("Charged every month."), 2)
    overage_cpm = _money(
        lazy_gettext("Overage CPM"),
        lazy_gettext("Price per thousand message units above the included messages."),
        4,
    )
    included_messages = _count(
        lazy_gettext("Included Messages"),
        lazy_gettext("Message units included in the monthly price."),
        MAX_BIGINT,
    )
    max_message_size_kb = _count(
        lazy_gettext("Max Message Size in KB"),
        lazy_gettext(
            "Size of one message unit: a larger message counts as several units; "
            "0 = every message counts as one unit."
        ),
    )
    # Bandwidth
    monthly_price_per_server = _money(
        lazy_gettext("Monthly Price Per Server"), lazy_gettext("Charged every month."), 2
    )
    cost_per_gb = _money(
        lazy_gettext("Cost Per GB"), lazy_gettext("Price of each GB sent above the included GB."), 4
    )
    included_gb = _money(
        lazy_gettext("Included GB"), lazy_gettext("GB sent included in the monthly price."), 3
    )


class GroupForm(FlaskForm):  # type: ignore[misc]
    name = StringField(
        lazy_gettext("Name"),
        filters=[_strip],
        validators=[DataRequired(lazy_gettext("Enter the billing group's name.")), Length(max=200)],
        description=lazy_gettext("One group per contract, e.g. 'Newsletters 2026'."),
    )
    plan_id = SelectField(lazy_gettext("Hosting Plan"), coerce=int, default=0)
    loaded_version = loaded_version_field()  # the edit form's optimistic lock
    plan_start = DateField(
        lazy_gettext("Start Date"),
        validators=[Optional()],
        description=lazy_gettext("When the plan starts (YYYY-MM-DD)."),
    )
    plan_end = DateField(
        lazy_gettext("End Date"),
        validators=[Optional()],
        description=lazy_gettext("Leave blank while the contract runs (YYYY-MM-DD)."),
    )

    def validate_plan_end(self, field: DateField) -> None:
        start = self.plan_start.data
        if field.data is not None and start is not None and field.data <= start:
            raise WTFValidationError(lazy_gettext("The end date must be after the start date."))

    def validate_plan_id(self, field: SelectField) -> None:
        if field.data == 0 and (self.plan_start.data or self.plan_end.data):
            raise WTFValidationError(
                lazy_gettext("Choose a hosting plan for these dates, or clear the dates.")
            )


class AssignForm(FlaskForm):  # type: ignore[misc]
    """Bulk assignment; the chosen lists and sites come as repeated list_id / site_id fields."""

    group_id = SelectField(
        lazy_gettext("Billing Group"),
        coerce=int,
        validators=[DataRequired(lazy_gettext("Choose a billing group."))],
    )
    server_id = HiddenField(validators=[DataRequired(lazy_gettext("Choose a server first."))])
    whole_server = BooleanField(
        lazy_gettext("Assign the whole server"),
        description=lazy_gettext(
            "The group pays for every list on this server, present and future."
        ),
    )
    start = DateField(
        lazy_gettext("Start Date"),
        validators=[Optional()],
        description=lazy_gettext("Billing starts on this date (YYYY-MM-DD); blank = today."),
    )
    is_free = BooleanField(
        lazy_gettext("Is Free"),
        description=lazy_gettext(
            "The group holds these objects without paying: no price, no usage."
        ),
    )


class UnassignForm(FlaskForm):  # type: ignore[misc]
    """Ends the chosen assignments (repeated assignment_id fields); history is kept."""

    customer_id = HiddenField()
    end = DateField(
        lazy_gettext("End Date"),
        validators=[Optional()],
        description=lazy_gettext("The first day no longer billed (YYYY-MM-DD); blank = today."),
    )
