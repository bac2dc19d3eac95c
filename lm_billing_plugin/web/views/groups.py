"""Billing Groups: every billing group across customers, with its customer, the hosting plan
in force today and what it holds (lists, sites, whole servers assigned today); sortable,
paged, filtered by customer and plan name. One statement for the page's rows, one for the
count, whatever the number of groups."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import render_template, request

from ...models import Assignment, BillingGroup, Customer, GroupPlan, HostingPlan
from .catalog import active_assignment_clause, billing_day, db_session, page_size, search_clause
from .paging import MAX_SEARCH, clamp, order_by, page_from_request


def _plan_in_force(today: Any) -> Any:
    """The plan id a group bills on ``today``: its plan history's term in force (the latest
    start wins), else — a group with no history yet — its own plan field when in force (the
    rule of catalog.customer_checks and billing)."""
    term = (
        sa.select(GroupPlan.plan_id)
        .where(GroupPlan.group_id == BillingGroup.id, GroupPlan.start_date <= today,
               sa.or_(GroupPlan.end_date.is_(None), GroupPlan.end_date >= today))
        .order_by(GroupPlan.start_date.desc(), GroupPlan.id.desc())
        .limit(1)
        .correlate(BillingGroup)
        .scalar_subquery()
    )
    history = sa.select(GroupPlan.id).where(GroupPlan.group_id == BillingGroup.id)
    own = sa.case(
        (sa.and_(~history.exists(), BillingGroup.plan_id.is_not(None),
                 sa.or_(BillingGroup.plan_start.is_(None), BillingGroup.plan_start <= today),
                 sa.or_(BillingGroup.plan_end.is_(None), BillingGroup.plan_end >= today)),
         BillingGroup.plan_id),
        else_=None,
    )
    return sa.func.coalesce(term, own)


def groups_query(today: Any) -> Any:
    """(group id, group name, customer id, company, customer active, plan id, plan name,
    lists, sites, servers) of every group: a subquery the page filters, sorts and pages."""
    held = (
        sa.select(
            Assignment.group_id,
            sa.func.sum(sa.case((Assignment.object_type == "list", 1), else_=0)).label("lists"),
            sa.func.sum(sa.case((Assignment.object_type == "site", 1), else_=0)).label("sites"),
            sa.func.sum(sa.case((Assignment.object_type == "server", 1), else_=0))
            .label("servers"),
        )
        .where(active_assignment_clause(today))
        .group_by(Assignment.group_id)
        .subquery("held")
    )
    base = (
        sa.select(
            BillingGroup.id.label("group_id"), BillingGroup.name.label("group_name"),
            Customer.id.label("customer_id"), Customer.company, Customer.is_active,
            _plan_in_force(today).label("plan_id"),
            sa.func.coalesce(held.c.lists, 0).label("lists"),
            sa.func.coalesce(held.c.sites, 0).label("sites"),
            sa.func.coalesce(held.c.servers, 0).label("servers"),
        )
        .select_from(BillingGroup)
        .join(Customer, Customer.id == BillingGroup.customer_id)
        .outerjoin(held, held.c.group_id == BillingGroup.id)
        .subquery("groups")
    )
    return (
        sa.select(base, HostingPlan.name.label("plan_name"))
        .select_from(base.outerjoin(HostingPlan, HostingPlan.id == base.c.plan_id))
    )


def billing_groups() -> str:
    customer_q = request.args.get("customer", "").strip()[:MAX_SEARCH]
    plan_q = request.args.get("plan", "").strip()[:MAX_SEARCH]
    query = groups_query(billing_day()).subquery("rows")
    sorts: dict[str, Any] = {
        "customer": query.c.company,
        "group": query.c.group_name,
        "plan": query.c.plan_name,
        "lists": query.c.lists,
        "sites": query.c.sites,
        "servers": query.c.servers,
    }
    page = page_from_request("lm_billing.billing_groups", sorts, default_sort="customer",
                             size=page_size(), keep={"customer": customer_q, "plan": plan_q})
    where: list[Any] = []
    if customer_q:
        where.append(search_clause(query.c.company, customer_q))
    if plan_q:
        where.append(search_clause(query.c.plan_name, plan_q))
    session = db_session()
    page.total = session.scalar(sa.select(sa.func.count()).select_from(query).where(*where)) or 0
    clamp(page)
    rows = session.execute(
        sa.select(query).where(*where)
        .order_by(*order_by(page, sorts, query.c.group_id))
        .offset(page.offset).limit(page.size)
    ).all()
    return render_template("lm_billing/billing_groups.html", rows=rows, page=page,
                           customer_q=customer_q, plan_q=plan_q)
