"""Create and update customers for pages and CLI alike: the fields, the checks and the audit
record (customer_create / customer_update / customer_activate / customer_deactivate)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import Any, Final

from .. import audit
from ..models import Customer
from ..state import get_state

__all__ = ["CUSTOMER_FIELDS", "CatalogError", "create_customer", "jsonable", "update_customer"]

CUSTOMER_FIELDS: Final = ("company", "contact_name", "email", "is_active", "payment_method",
                          "notes", "start_date", "end_date", "additional_emails",
                          "customer_type")


class CatalogError(ValueError):
    """A catalog change that cannot be made as asked; the message says what to do."""


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
        raise CatalogError(f"unknown field(s) {unknown}")
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
        raise CatalogError("enter the company name")
    if customer.start_date and customer.end_date and customer.end_date < customer.start_date:
        raise CatalogError("the End Date is before the Start Date; correct one of them")


def create_customer(values: Mapping[str, Any], *, actor: str) -> Customer:
    """A new customer from ``values`` (CUSTOMER_FIELDS); commits. Raises CatalogError."""
    session = get_state().session
    try:
        customer = Customer(is_active=True)
        changes = apply_values(customer, values, CUSTOMER_FIELDS)
        _check(customer)
        session.add(customer)
        session.flush()
        audit.record(session, actor=actor, action="customer_create", object_type="customer",
                     object_id=customer.id, detail=changes)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return customer


def update_customer(customer: Customer, values: Mapping[str, Any], *, actor: str
                    ) -> tuple[str, dict[str, list[Any]]]:
    """Apply ``values`` and record what changed; commits. Returns (audit action, changes);
    action is "" when nothing changed."""
    session = get_state().session
    try:
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
    except BaseException:
        session.rollback()
        raise
    return action, changes
