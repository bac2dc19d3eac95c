"""The Audit log page's filter: a GET form without a CSRF token (it changes nothing; a
bookmark repeats it). Bad input (a date that is not YYYY-MM-DD, an end before the start, an
unknown subject kind, an over-long text) is an error next to its field."""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from wtforms import DateField, SelectChoice, SelectField, StringField
from wtforms.validators import Length, Optional, ValidationError

from ...i18n import lazy_gettext

__all__ = ["SUBJECT_KINDS", "AuditFilterForm"]

#: The object types the audit log records (audit.record's ``object_type``), as the page says.
SUBJECT_KINDS: dict[str, Any] = {
    "server": lazy_gettext("Server"),
    "customer": lazy_gettext("Customer"),
    "group": lazy_gettext("Billing Group"),
    "plan": lazy_gettext("Hosting Plan"),
    "charge": lazy_gettext("Additional Charge"),
    "template": lazy_gettext("Invoice Template"),
    "list": lazy_gettext("List"),
    "assignment": lazy_gettext("Assignment"),
    "bill_run": lazy_gettext("Bill run"),
    "invoice": lazy_gettext("Invoice"),
}

_TEXT = 200


def _not_before_start(form: FlaskForm, field: Any) -> None:
    start = form.start.data
    if field.data is not None and start is not None and field.data < start:
        raise ValidationError(lazy_gettext("The end date is before the start date."))


class AuditFilterForm(FlaskForm):  # type: ignore[misc]
    class Meta:
        csrf = False

    actor = StringField(lazy_gettext("Who"), validators=[Optional(), Length(max=_TEXT)],
                        description=lazy_gettext("Part of the user's name, any letter case."))
    action = StringField(lazy_gettext("Action"), validators=[Optional(), Length(max=_TEXT)],
                         description=lazy_gettext("Part of the action, e.g. assign or sync."))
    kind = SelectField(
        lazy_gettext("Subject kind"),
        choices=[SelectChoice("", lazy_gettext("Any")),
                 *(SelectChoice(k, label) for k, label in SUBJECT_KINDS.items())],
        validate_choice=True,
        default="",
    )
    subject = StringField(
        lazy_gettext("Subject"), validators=[Optional(), Length(max=_TEXT)],
        description=lazy_gettext("Part of the server's, customer's, group's or plan's name."))
    start = DateField(lazy_gettext("From"), validators=[Optional()],
                      description=lazy_gettext("YYYY-MM-DD, in your time zone."))
    end = DateField(lazy_gettext("To"), validators=[Optional(), _not_before_start],
                    description=lazy_gettext("YYYY-MM-DD, inclusive."))
