"""The forms of Billing: Utilities (Find Administrator, Find Member, Delete Them): input is
checked by engine.lookups' own rules, so the page and the CLI refuse the same things."""

from __future__ import annotations

import json
from typing import Any

from flask_wtf import FlaskForm
from wtforms import BooleanField, Field, HiddenField, StringField
from wtforms.validators import ValidationError

from ...engine.lookups import LookupInputError, Membership, check_email, check_pattern
from ...i18n import lazy_gettext, say

__all__ = [
    "DeleteMembersForm",
    "FindAdminForm",
    "FindMemberForm",
    "MembershipField",
    "membership_value",
    "sentence",
]


def sentence(message: str) -> str:
    """The service's message as a sentence next to a field (it starts lower-case for the CLI)."""
    text = message[:1].upper() + message[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


def _pattern_rule(form: FlaskForm, field: Field) -> None:
    try:
        check_pattern(field.data or "")
    except LookupInputError as exc:
        raise ValidationError(sentence(say(str(exc)))) from None


def _email_rule(form: FlaskForm, field: Field) -> None:
    try:
        field.data = check_email(field.data or "")
    except LookupInputError as exc:
        raise ValidationError(sentence(say(str(exc)))) from None


class FindAdminForm(FlaskForm):  # type: ignore[misc]
    """Find Administrator: a search, so it is a GET form without a CSRF token (it changes
    nothing; a bookmark or a link from another page repeats it)."""

    class Meta:
        csrf = False

    pattern = StringField(
        lazy_gettext("Administrator's name or email address"),
        validators=[_pattern_rule],
        description=lazy_gettext(
            "Part of a name or address, any letter case; separate several with | "
            "(e.g. smith|jones)."
        ),
        # The service's own limit (200) decides; the browser only stops absurd input early.
        render_kw={"maxlength": 1000, "autocomplete": "off"},
    )


class FindMemberForm(FlaskForm):  # type: ignore[misc]
    """Find Member: one address, searched on every list of every active server (GET, no CSRF)."""

    class Meta:
        csrf = False

    email = StringField(
        lazy_gettext("Member's email address"),
        validators=[_email_rule],
        description=lazy_gettext(
            "The whole address, e.g. pat.jones@example.org (any letter case)."
        ),
        render_kw={"maxlength": 1000, "autocomplete": "off"},
    )


class MembershipField(Field):  # type: ignore[misc]
    """The ticked result rows of Find Member, each a JSON ``[server id, list, email]`` (the
    address as that server stores it: that is the member it removes). JSON because list
    names and addresses may hold any character a separator could be."""

    data: list[Membership]

    def process_formdata(self, valuelist: list[Any]) -> None:
        out: list[Membership] = []
        for raw in valuelist:
            try:
                server_id, name, email = json.loads(str(raw))
                ok = (isinstance(server_id, int) and 0 < server_id <= 2**31 - 1
                      and isinstance(name, str) and name and isinstance(email, str))
            except (ValueError, TypeError):
                ok = False
            if not ok:
                self.data = []
                raise ValueError(
                    lazy_gettext("The selection is not valid; search again and tick the rows.")
                )
            out.append(Membership(server_id, name, email))
        self.data = list(dict.fromkeys(out))

    def process_data(self, value: Any) -> None:
        self.data = list(value or [])

    def _value(self) -> str:
        return ""


def membership_value(server_id: int, list_name: str, email: str) -> str:
    """The checkbox value MembershipField reads back."""
    return json.dumps([server_id, list_name, email], ensure_ascii=False)


class DeleteMembersForm(FlaskForm):  # type: ignore[misc]
    """Delete Them: the ticked memberships of one address; ``confirmed`` is set by the
    confirmation page's button, so the first POST only asks."""

    email = HiddenField(lazy_gettext("Email"), validators=[_email_rule])
    membership = MembershipField(lazy_gettext("Memberships to delete"))
    confirmed = BooleanField(lazy_gettext("Yes, delete them"))
