"""The FlaskForms of the Servers, Errors and batch pages: every POST goes through one of them,
so every change carries a CSRF token; field-level checks live here, database checks in views."""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    Field,
    IntegerField,
    PasswordField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import (
    DataRequired,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    ValidationError,
)

from ...engine.servers import MAX_COMMENTS, MAX_HOST, MAX_NAME, MAX_PASSWORD, validate_host_name
from ...i18n import lazy_gettext, say
from ...state import get_state
from ...tclport import addresses
from .versioned import loaded_version_field

PORT_MESSAGE = lazy_gettext(
    "The port must be a number from 1 to 65535 (TclPort's default is 2021)."
)


def _host_validator(form: FlaskForm, field: Field) -> None:
    # One rule for pages and CLI: the servers service's.
    if field.errors:
        return  # the Length check already said it; one message per problem
    host = (field.data or "").strip()
    # Syntax, then where billing may connect: literal addresses and names, without DNS.
    policy = get_state().settings.client.address_policy
    message = addresses.host_error(host, policy) or validate_host_name(host)
    if message:
        raise ValidationError(say(message))


class IdListField(Field):  # type: ignore[misc]
    """The ticked row checkboxes of a table (many inputs with one name) as a list of ints.

    The checkboxes are rendered by hand in the table rows, each with its own label.
    """

    data: list[int]

    def process_formdata(self, valuelist: list[Any]) -> None:
        ids: list[int] = []
        for raw in valuelist:
            try:
                value = int(raw)
                # Beyond a 32-bit id no row exists, and the driver would fail on it.
                if not 0 < value <= 2**31 - 1:
                    raise ValueError(raw)
                ids.append(value)
            except (TypeError, ValueError):
                self.data = []
                raise ValueError(
                    lazy_gettext("The selection is not valid; reload the page and tick again.")
                ) from None
        # Keep the order, drop repeats.
        self.data = list(dict.fromkeys(ids))

    def _value(self) -> str:
        return ""

    def process_data(self, value: Any) -> None:
        self.data = list(value or [])


class PortField(IntegerField):  # type: ignore[misc]
    """An IntegerField whose parse error says what a port is."""

    def process_formdata(self, valuelist: list[Any]) -> None:
        if not valuelist or not str(valuelist[0]).strip():
            self.data = None
            return
        try:
            self.data = int(str(valuelist[0]).strip())
        except ValueError:
            self.data = None
            raise ValueError(PORT_MESSAGE) from None


class ServerForm(FlaskForm):  # type: ignore[misc]
    """Create or edit a hosting server; the password is write-only (never rendered back)."""

    name = StringField(
        lazy_gettext("Name"),
        validators=[
            DataRequired(lazy_gettext("Enter a name for the server (e.g. Lists).")),
            Length(max=MAX_NAME, message=f"A name has at most {MAX_NAME} characters."),
        ],
    )
    host = StringField(
        lazy_gettext("Host Name"),
        validators=[
            Length(max=MAX_HOST, message=f"A host name has at most {MAX_HOST} characters."),
            _host_validator,
        ],
    )
    port = PortField(
        lazy_gettext("Port"),
        default=2021,
        validators=[
            InputRequired(lazy_gettext("Enter the TclPort port (ListManager's default is 2021).")),
            NumberRange(1, 65535, PORT_MESSAGE),
        ],
    )
    comments = TextAreaField(
        lazy_gettext("Comments"),
        validators=[
            Optional(),
            Length(max=MAX_COMMENTS, message=f"Comments have at most {MAX_COMMENTS} characters."),
        ],
    )
    # render_kw autocomplete=new-password: browsers must not offer the operator's own password.
    password = PasswordField(
        lazy_gettext("TclPort password"),
        validators=[
            Optional(),
            Length(max=MAX_PASSWORD, message=f"A password has at most {MAX_PASSWORD} characters."),
        ],
        render_kw={"autocomplete": "new-password"},
    )
    default_password = BooleanField(lazy_gettext("Use ListManager's default TclPort password"))
    # The edit form's optimistic lock: engine.versions' digest of the fields as loaded.
    loaded_version = loaded_version_field()


class ActionForm(FlaskForm):  # type: ignore[misc]
    """A single-button POST (check, enable logging, delete, validate one server): CSRF only."""


class ServerSelectionForm(FlaskForm):  # type: ignore[misc]
    """The Servers table's checkboxes with its buttons Validate All / Selected, Sync Selected."""

    server_ids = IdListField(lazy_gettext("Selected servers"))


class FixForm(FlaskForm):  # type: ignore[misc]
    """Fix Selected Objects on the Errors page."""

    problem_ids = IdListField(lazy_gettext("Selected problems"))
    enable_logging = BooleanField(lazy_gettext("also switch Enable Logging on through TclPort"))
    all_matching = BooleanField(lazy_gettext("all problems this filter shows, on every page"))


class AssignForm(FlaskForm):  # type: ignore[misc]
    """Assign the ticked lists of one server to a billing group."""

    list_ids = IdListField(lazy_gettext("Selected lists"))
    group_id = SelectField(lazy_gettext("Billing group"), coerce=int, validate_choice=True)


__all__ = [
    "ActionForm",
    "AssignForm",
    "FixForm",
    "IdListField",
    "ServerForm",
    "ServerSelectionForm",
]
