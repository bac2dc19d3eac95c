"""The Audit log page's filter: a GET form without a CSRF token (it changes nothing; a
bookmark repeats it). Bad input (a date that is not YYYY-MM-DD, an end before the start, an
unknown subject kind, an over-long text) is an error next to its field."""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from wtforms import DateField, SelectChoice, SelectField, StringField
from wtforms.validators import Length, Optional, ValidationError

from ...i18n import N_, gettext, lazy_gettext

__all__ = ["ACTION_WORDS", "SUBJECT_KINDS", "AuditFilterForm"]

#: What each recorded action did, as the page says it (unknown ones show their code).
ACTION_WORDS: dict[str, str] = {
    "validate": N_("validated"),
    "sync": N_("synced"),
    "sync_dry_run": N_("sync dry run"),
    "fix": N_("fixed problems"),
    "enable_logging": N_("switched Enable Logging on"),
    "server_check": N_("checked the connection"),
    "server_create": N_("created the server"),
    "server_update": N_("changed the server"),
    "server_deactivate": N_("deactivated the server"),
    "server_delete": N_("deleted the server"),
    "rotate_keys": N_("re-encrypted the stored TclPort passwords"),
    "customer_create": N_("created the customer"),
    "customer_update": N_("changed the customer"),
    "customer_activate": N_("made the customer active"),
    "customer_deactivate": N_("made the customer inactive"),
    "customer_delete": N_("deleted the customer"),
    "group_create": N_("created the billing group"),
    "group_update": N_("changed the billing group"),
    "group_plan": N_("gave the group a hosting plan"),
    "group_charge_add": N_("added an additional charge"),
    "group_charge_end": N_("ended an additional charge"),
    "group_charge_remove": N_("removed an additional charge"),
    "plan_create": N_("created the hosting plan"),
    "plan_update": N_("changed the hosting plan"),
    "charge_create": N_("created the additional charge"),
    "charge_update": N_("changed the additional charge"),
    "charge_delete": N_("deleted the additional charge"),
    "template_create": N_("created the invoice template"),
    "template_update": N_("changed the invoice template"),
    "assign": N_("assigned"),
    "unassign": N_("unassigned"),
    "lists_terminate": N_("terminated lists"),
    "delete_member": N_("deleted a membership"),
    "bill_run": N_("ran billing"),
    "bill_run_dry": N_("billing dry run"),
    "invoice_issue": N_("issued an invoice"),
    "invoice_void": N_("voided an invoice"),
    "invoice_send": N_("sent an invoice"),
    "schedule_run_now": N_("started a scheduled task now"),
}

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The actions in the viewer's language, in alphabetical order of what they say.
        words = sorted(((gettext(w), code) for code, w in ACTION_WORDS.items()),
                       key=lambda pair: pair[0].lower())
        self.action.choices = [SelectChoice("", gettext("Any")),
                               *(SelectChoice(code, label) for label, code in words)]

    actor = StringField(lazy_gettext("Who"), validators=[Optional(), Length(max=_TEXT)],
                        description=lazy_gettext("Part of the user's name, any letter case."))
    action = SelectField(lazy_gettext("Action"), validate_choice=True, default="")
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
