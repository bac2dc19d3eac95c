"""Create and update customers for pages and CLI alike: the fields, the checks and the audit
record (customer_create / customer_update / customer_activate / customer_deactivate)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import audit
from ..engine import versions
from ..engine.store import is_conflict
from ..i18n import M_
from ..models import Customer
from ..state import get_state
from .names import NAME_KINDS, DuplicateName, check_name, conflict_message

__all__ = ["CUSTOMER_FIELDS", "CatalogError", "check_unique_name", "create_customer", "jsonable",
           "saving", "update_customer"]

CUSTOMER_FIELDS: Final = ("company", "contact_name", "email", "is_active", "payment_method",
                          "notes", "start_date", "end_date", "additional_emails",
                          "customer_type", "email_template_id", "web_template_id")


class CatalogError(ValueError):
    """A catalog change that cannot be made as asked; the message says what to do.

    ``field`` names the field it is about (the form field a page marks, e.g. "company",
    "name", "plan_id"), or None when it is about the change as a whole."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def check_unique_name(session: Session, kind: str, name: str, **where: Any) -> None:
    """The shared duplicate-name rule (catalog.names: case and spaces ignored) as a
    CatalogError on the name's field. Call it before the new name is set on the row."""
    try:
        check_name(session, kind, name, **where)
    except DuplicateName as exc:
        raise CatalogError(str(exc), exc.field) from None


@contextmanager
def saving(session: Session, kind: str) -> Iterator[None]:
    """One catalog change (create or update, committed inside): rolled back on any error,
    and a unique-key refusal (a row of this name saved a moment ago by another writer)
    raised as the same field error as the name check's."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        session.rollback()
        if not is_conflict(exc):
            raise
        raise CatalogError(conflict_message(kind), NAME_KINDS[kind][3]) from None
    except BaseException:
        session.rollback()
        raise


def jsonable(value: Any) -> Any:
    """A value as the audit log's JSON keeps it."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def apply_values(obj: Any, values: Mapping[str, Any], allowed: tuple[str, ...]
                 ) -> dict[str, list[Any]]:
    """Set the given fields on the row; return what changed as {field: [old, new]}."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise CatalogError(M_("unknown field(s) %(fields)s") % {"fields": unknown})
    changes: dict[str, list[Any]] = {}
    for name in allowed:
        if name not in values:
            continue
        new, old = values[name], getattr(obj, name, None)
        if old != new:
            changes[name] = [jsonable(old), jsonable(new)]
            setattr(obj, name, new)
    return changes


def _check(customer: Customer) -> None:
    if not (customer.company or "").strip():
        raise CatalogError(M_("enter the company name"), "company")
    if customer.start_date and customer.end_date and customer.end_date < customer.start_date:
        raise CatalogError(M_("the End Date is before the Start Date; correct one of them"),
                           "end_date")


def create_customer(values: Mapping[str, Any], *, actor: str) -> Customer:
    """A new customer from ``values`` (CUSTOMER_FIELDS); commits. Raises CatalogError
    (field "company" when another customer has the name, ignoring case and spaces)."""
    session = get_state().session
    with saving(session, "customer"):
        customer = Customer(is_active=True)
        changes = apply_values(customer, values, CUSTOMER_FIELDS)
        _check(customer)
        check_unique_name(session, "customer", customer.company)
        session.add(customer)
        session.flush()
        audit.record(session, actor=actor, action="customer_create", object_type="customer",
                     object_id=customer.id, detail=changes)
        session.commit()
    return customer


def update_customer(customer: Customer, values: Mapping[str, Any], *, actor: str,
                    expected_version: str | None = None) -> tuple[str, dict[str, list[Any]]]:
    """Apply ``values`` and record what changed; commits. Returns (audit action, changes);
    action is "" when nothing changed.

    ``expected_version``: the edit form's ``versions.fields_version(customer,
    sorted(values))`` as loaded; when given, the row is locked and compared first, and a
    change made meanwhile by someone else raises ``versions.ChangedMeanwhile`` (nothing
    saved). Only the fields being saved are compared: a field the form does not show may
    change meanwhile (the API, the CLI) and is kept, as the save does not write it."""
    session = get_state().session
    with saving(session, "customer"):
        versions.check_version(session, "customer", Customer, customer.id, sorted(values),
                               expected_version)
        if "company" in values:
            # Before the row changes: only a name that changes is checked (catalog.names).
            check_unique_name(session, "customer", str(values["company"] or ""),
                              exclude_id=customer.id)
        changes = apply_values(customer, values, CUSTOMER_FIELDS)
        if not changes:
            session.rollback()
            return "", changes
        _check(customer)
        action = "customer_update"
        if "is_active" in changes:
            action = "customer_activate" if customer.is_active else "customer_deactivate"
        audit.record(session, actor=actor, action=action, object_type="customer",
                     object_id=customer.id, detail=changes)
        session.commit()
    return action, changes
