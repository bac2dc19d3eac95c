"""One rule for names that must be unique (ignoring case and spaces): customers (Company),
hosting plans, billing groups within a customer, additional charges, invoice templates.

Pages and CLI call check_name() before they write; the unique key columns (models.name_key)
catch the insert that races past the check, and conflict_message() words that for the form.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..i18n import M_
from ..models import (
    AdditionalCharge,
    BillingGroup,
    Customer,
    HostingPlan,
    InvoiceTemplate,
    name_key,
)

__all__ = ["NAME_KINDS", "DuplicateName", "check_name", "conflict_message", "name_taken"]

# kind -> (model, key column, what the user calls it, the form field that holds the name)
NAME_KINDS: dict[str, tuple[Any, Any, str, str]] = {
    "customer": (Customer, Customer.company_key, M_("A customer"), "company"),
    "plan": (HostingPlan, HostingPlan.name_key, M_("A hosting plan"), "name"),
    "group": (BillingGroup, BillingGroup.name_key, M_("A billing group of this customer"), "name"),
    "charge": (AdditionalCharge, AdditionalCharge.name_key, M_("An additional charge"), "name"),
    "template": (InvoiceTemplate, InvoiceTemplate.name_key, M_("A template of this kind"), "name"),
}


class DuplicateName(ValueError):
    """The name is taken (ignoring case and spaces); ``field`` is the form field to mark."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def name_taken(
    session: Session,
    kind: str,
    name: str,
    *,
    exclude_id: int | None = None,
    scope_id: int | None = None,
) -> bool:
    """Whether another row of ``kind`` has this name (``scope_id``: a group's customer)."""
    model, key_column, _, _ = NAME_KINDS[kind]
    query = sa.select(model.id).where(key_column == name_key(name))
    if kind == "group":
        query = query.where(BillingGroup.customer_id == scope_id)
    if exclude_id is not None:
        query = query.where(model.id != exclude_id)
    return session.scalar(query.limit(1)) is not None


def check_name(
    session: Session,
    kind: str,
    name: str,
    *,
    exclude_id: int | None = None,
    scope_id: int | None = None,
    template_kind: str | None = None,
) -> None:
    """Raise DuplicateName when the name is taken. A row keeping its own name (even one the
    0003 backfill kept as an old duplicate) is not refused: only what changes is checked."""
    _, _, who, field = NAME_KINDS[kind]
    if exclude_id is not None and not _key_changes(session, kind, exclude_id, name):
        return
    if kind == "template":
        query = sa.select(InvoiceTemplate.id).where(
            InvoiceTemplate.name_key == name_key(name), InvoiceTemplate.kind == template_kind
        )
        if exclude_id is not None:
            query = query.where(InvoiceTemplate.id != exclude_id)
        taken = session.scalar(query.limit(1)) is not None
    else:
        taken = name_taken(session, kind, name, exclude_id=exclude_id, scope_id=scope_id)
    if taken:
        raise DuplicateName(
            M_("%(who)s with this name exists (names ignore case and spaces): choose another "
               "name.") % {"who": who},
            field,
        )


def _key_changes(session: Session, kind: str, row_id: int, name: str) -> bool:
    model, _, _, field = NAME_KINDS[kind]
    current = session.scalar(sa.select(getattr(model, field)).where(model.id == row_id))
    return current is None or name_key(current) != name_key(name)


def conflict_message(kind: str) -> str:
    """What the form says when the database refused a name saved a moment ago elsewhere."""
    _, _, who, _ = NAME_KINDS[kind]
    return M_("%(who)s with this name was saved a moment ago: choose another name.") % {
        "who": who}
