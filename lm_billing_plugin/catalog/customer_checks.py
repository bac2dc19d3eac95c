"""Validate all Customers: customers with no lists, inactive customers still holding lists,
groups without a hosting plan this month, customers without an email address (set-based)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..engine.store import ASSIGNMENT, active_assignment
from ..models import Assignment, BillingGroup, Customer, GroupPlan, name_key
from .terminate import PLACEHOLDER_COMPANY

__all__ = ["CHECK_KINDS", "CustomerCheck", "validate_customers"]

CHECK_KINDS = {
    "no_lists": "Customer with no lists assigned",
    "inactive_with_lists": "Inactive customer that still has lists",
    "group_without_plan": "Billing group with no hosting plan this month",
    "no_email": "Customer without an email address",
}


@dataclass(frozen=True)
class CustomerCheck:
    kind: str
    customer_id: int
    company: str
    group_id: int | None = None
    group_name: str = ""


def _month(today: date) -> tuple[date, date]:
    first = today.replace(day=1)
    nxt = (first + timedelta(days=32)).replace(day=1)
    return first, nxt - timedelta(days=1)


def validate_customers(session: Session, today: date) -> list[CustomerCheck]:
    """Every finding, four queries whatever the number of customers, ordered by company."""
    holding = (
        sa.select(BillingGroup.customer_id)
        .join(Assignment, Assignment.group_id == BillingGroup.id)
        .where(active_assignment(ASSIGNMENT, today))
    )
    found: list[CustomerCheck] = []
    for customer_id, company in session.execute(
        sa.select(Customer.id, Customer.company)
        .where(Customer.is_active.is_(True), Customer.id.not_in(holding))
    ):
        found.append(CustomerCheck("no_lists", customer_id, company))
    # The placeholder "Terminated" is inactive and holds lists on purpose.
    for customer_id, company in session.execute(
        sa.select(Customer.id, Customer.company).where(
            Customer.is_active.is_(False),
            Customer.company_key != name_key(PLACEHOLDER_COMPANY),
            Customer.id.in_(holding),
        )
    ):
        found.append(CustomerCheck("inactive_with_lists", customer_id, company))
    first, last = _month(today)
    history = sa.select(GroupPlan.group_id).where(GroupPlan.group_id == BillingGroup.id)
    in_force = history.where(
        GroupPlan.start_date <= last,
        sa.or_(GroupPlan.end_date.is_(None), GroupPlan.end_date >= first),
    )
    # No plan history yet for the group: its own plan_id / plan_start / plan_end decide.
    own_plan = sa.and_(
        BillingGroup.plan_id.is_not(None),
        sa.or_(BillingGroup.plan_start.is_(None), BillingGroup.plan_start <= last),
        sa.or_(BillingGroup.plan_end.is_(None), BillingGroup.plan_end >= first),
    )
    for customer_id, company, group_id, group_name in session.execute(
        sa.select(Customer.id, Customer.company, BillingGroup.id, BillingGroup.name)
        .join(BillingGroup, BillingGroup.customer_id == Customer.id)
        .where(
            Customer.is_active.is_(True),
            sa.not_(sa.or_(
                in_force.exists(),
                sa.and_(~history.exists(), own_plan),
            )),
        )
    ):
        found.append(
            CustomerCheck("group_without_plan", customer_id, company, group_id, group_name)
        )
    for customer_id, company in session.execute(
        sa.select(Customer.id, Customer.company).where(
            Customer.is_active.is_(True), sa.func.trim(Customer.email) == ""
        )
    ):
        found.append(CustomerCheck("no_email", customer_id, company))
    order = list(CHECK_KINDS)
    found.sort(key=lambda c: (c.company.casefold(), c.customer_id, order.index(c.kind),
                              c.group_name))
    return found
