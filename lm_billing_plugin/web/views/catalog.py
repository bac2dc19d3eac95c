"""What the catalog pages (customers, groups, plans, charges, assign, terminate, audit log)
share: editable fields, a form applied with an audit diff, search, page size, billing day."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ...catalog.customers import CatalogError
from ...engine.store import active_assignment
from ...models import Assignment
from ...state import get_state
from ..said import said
from .paging import Page, clamp, order_by

CUSTOMER_FIELDS = (
    "company",
    "contact_name",
    "email",
    "is_active",
    "payment_method",
    "notes",
    "start_date",
    "end_date",
    "email_template_id",
    "web_template_id",
)
# Select fields whose choice 0 means "none" (stored as NULL).
ZERO_IS_NONE = ("plan_id", "email_template_id", "web_template_id")
PLAN_FIELDS = (
    "name",
    "description",
    "max_members",
    "max_members_per_list",
    "max_lists",
    "max_lists_per_site",
    "max_sites",
    "bill_by_list",
    "billing_method",
    "monthly_price",
    "overage_cpm",
    "included_messages",
    "max_message_size_kb",
    "monthly_price_per_server",
    "cost_per_gb",
    "included_gb",
)
GROUP_FIELDS = ("name", "plan_id", "plan_start", "plan_end")


def db_session() -> Session:
    return get_state().session


def page_size() -> int:
    return get_state().settings.page_size


def counted_page(
    page: Page, model: Any, sorts: dict[str, Any], counted: Any, link: Any,
    where: Sequence[Any] = (),
) -> list[Any]:
    """One page of ``model`` rows (``where`` them), each with how many ``counted`` rows
    ``link`` to it, as (row, count); sets the page's total and clamps it first."""
    session = db_session()
    page.total = session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0
    clamp(page)
    count = sa.select(sa.func.count(counted)).where(link).scalar_subquery()
    return list(
        session.execute(
            sa.select(model, count)
            .where(*where)
            .order_by(*order_by(page, sorts, model.id))
            .offset(page.offset)
            .limit(page.size)
        ).all()
    )


def billing_day() -> date:
    # Today where billing days start (LM_BILLING_BILLING_TIMEZONE).
    return get_state().settings.billing_today()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _apply(obj: Any, form: Any, names: Iterable[str]) -> dict[str, list[Any]]:
    """Copy the form's fields onto the row; return what changed as {field: [old, new]}."""
    changes: dict[str, list[Any]] = {}
    for name in names:
        new = getattr(form, name).data
        if name in ZERO_IS_NONE and new == 0:
            new = None
        old = getattr(obj, name, None)
        if old != new:
            changes[name] = [_jsonable(old), _jsonable(new)]
            setattr(obj, name, new)
    return changes


def field_error(form: Any, exc: CatalogError, default: str) -> None:
    """The service's error next to the field it is about (``exc.field``; else ``default``)."""
    field = getattr(form, exc.field or default, None)
    if field is None or not hasattr(field, "errors"):
        field = getattr(form, default)
    message = said(exc)
    message = message[:1].upper() + message[1:]
    if not message.endswith((".", "!", "?")):
        message += "."
    field.errors = [*field.errors, message]


def search_clause(column: Any, text: str) -> Any:
    # lower() on both sides: MariaDB's binary name collation would make LIKE case-sensitive.
    return sa.func.lower(column).contains(text.lower(), autoescape=True)


# --- Customers --------------------------------------------------------------------------


def active_assignment_clause(today: date) -> Any:
    # The engine's rule, so pages and billing agree on who pays today (end date exclusive).
    return active_assignment(Assignment.__table__, today)
