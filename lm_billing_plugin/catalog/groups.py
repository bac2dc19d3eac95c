"""Billing groups and their hosting plan history, for pages and CLI alike.

One source of truth: GroupPlan rows (lm_billing_group_plan) are the plan history billing
reads; an end date there is the last day the plan is in force (None = open). The columns
BillingGroup.plan_id / plan_start / plan_end are a mirror of the group's latest term for the
pages that show "the" plan, written only here (:func:`_mirror`), never on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import audit
from ..engine import versions
from ..i18n import M_
from ..models import BillingGroup, Customer, GroupPlan, HostingPlan, name_key, utcnow
from ..state import get_state
from .customers import CatalogError, apply_values, check_unique_name, saving

__all__ = ["GROUP_FIELDS", "create_group", "find_customer", "find_group", "plan_history",
           "set_group_plan", "update_group"]

GROUP_FIELDS: Final = ("name", "plan_id", "plan_start", "plan_end")


def find_customer(session: Session, key: str) -> Customer | None:
    """A customer by its company name (exact, then ignoring case and spaces, the way names
    are unique: catalog.names) or its id."""
    found = session.scalar(sa.select(Customer).where(Customer.company == key).limit(1))
    if found is None:
        found = session.scalar(sa.select(Customer)
                               .where(Customer.company_key == name_key(key)).limit(1))
    if found is None and key.isdigit():
        found = session.get(Customer, int(key))
    return found


def find_group(session: Session, customer_id: int, name: str) -> BillingGroup | None:
    """The customer's billing group of this name (exact, then ignoring case and spaces)."""
    query = sa.select(BillingGroup).where(BillingGroup.customer_id == customer_id)
    found = session.scalar(query.where(BillingGroup.name == name).limit(1))
    if found is None:
        found = session.scalar(
            query.where(BillingGroup.name_key == name_key(name)).limit(1))
    return found


def plan_history(session: Session, group_id: int) -> list[GroupPlan]:
    return list(session.scalars(sa.select(GroupPlan).where(GroupPlan.group_id == group_id)
                                .order_by(GroupPlan.start_date, GroupPlan.id)))


def _mirror(session: Session, group: BillingGroup) -> None:
    terms = plan_history(session, group.id)
    latest = terms[-1] if terms else None
    group.plan_id = latest.plan_id if latest else None
    group.plan_start = latest.start_date if latest else None
    group.plan_end = latest.end_date if latest else None


def _add_term(session: Session, group: BillingGroup, plan_id: int, start: date,
              end: date | None) -> GroupPlan:
    """Add a plan term; the term in force on ``start`` ends the day before. A later term in
    the way is refused (the history is never rewritten silently)."""
    if end is not None and end < start:
        raise CatalogError(M_("the plan's End Date is before its Start Date"), "plan_end")
    if session.get(HostingPlan, plan_id) is None:
        raise CatalogError(M_("there is no hosting plan %(plan)s") % {"plan": plan_id}, "plan_id")
    for term in plan_history(session, group.id):
        if term.start_date >= start:
            raise CatalogError(
                M_("group %(group)s already has a plan term from %(start)s; give a Start Date "
                   "after it, or change that term") % {"group": group.name,
                                                       "start": term.start_date},
                "plan_start")
        if term.end_date is None or term.end_date >= start:
            term.end_date = start - timedelta(days=1)
    term = GroupPlan(group_id=group.id, plan_id=plan_id, start_date=start, end_date=end,
                     created_at=utcnow())
    session.add(term)
    session.flush()
    return term


def set_group_plan(group: BillingGroup, plan_id: int, start: date, end: date | None, *,
                   actor: str) -> GroupPlan:
    """Give the group ``plan_id`` from ``start`` to ``end`` (inclusive; None = open); commits.
    Raises CatalogError."""
    session = get_state().session
    try:
        term = _add_term(session, group, plan_id, start, end)
        _mirror(session, group)
        audit.record(session, actor=actor, action="group_plan", object_type="group",
                     object_id=group.id,
                     detail={"plan_id": plan_id, "start": start.isoformat(),
                             "end": end.isoformat() if end else None})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return term


def _plan_change(session: Session, group: BillingGroup, plan_id: int | None,
                 start: date | None, end: date | None) -> bool:
    """The pages' single plan field, written into the history; False when the group is left
    with no plan (then the mirror says so too, though the history keeps the ended term)."""
    terms = plan_history(session, group.id)
    latest = terms[-1] if terms else None
    today = get_state().settings.billing_today()
    if plan_id is None:
        # "No plan": a term not started yet never billed anything and goes; the one in
        # force ends yesterday (today is no longer billed).
        if latest is not None and latest.start_date >= today:
            session.delete(latest)
        elif latest is not None and (latest.end_date is None or latest.end_date >= today):
            latest.end_date = today - timedelta(days=1)
        return False
    if latest is not None and latest.plan_id == plan_id:
        latest.start_date = start or latest.start_date
        latest.end_date = end
        return True
    _add_term(session, group, plan_id, start or today, end)
    return True


def create_group(customer: Customer, values: Mapping[str, Any], *, actor: str) -> BillingGroup:
    """A new billing group (GROUP_FIELDS; a plan starts its history); commits. Raises
    CatalogError (field "name" when the customer has a group of this name, ignoring case and
    spaces)."""
    session = get_state().session
    with saving(session, "group"):
        fields = dict(values)
        if not str(fields.get("name", "")).strip():
            raise CatalogError(M_("enter the billing group's name"), "name")
        check_unique_name(session, "group", str(fields["name"]), scope_id=customer.id)
        plan_id = fields.pop("plan_id", None) or None
        start, end = fields.pop("plan_start", None), fields.pop("plan_end", None)
        group = BillingGroup(customer_id=customer.id, created_at=utcnow())
        changes = apply_values(group, fields, GROUP_FIELDS)
        session.add(group)
        session.flush()
        if plan_id is not None:
            _add_term(session, group, plan_id, start or get_state().settings.billing_today(), end)
            _mirror(session, group)
            changes.update({"plan_id": [None, plan_id],
                            "plan_start": [None, group.plan_start.isoformat()
                                           if group.plan_start else None]})
        audit.record(session, actor=actor, action="group_create", object_type="group",
                     object_id=group.id, detail={"customer_id": customer.id, **changes})
        session.commit()
    return group


def update_group(group: BillingGroup, values: Mapping[str, Any], *, actor: str,
                 expected_version: str | None = None) -> dict[str, list[Any]]:
    """Rename the group and/or change its plan (written into the history); commits.
    Returns what changed ({} = nothing). Raises CatalogError (field "name" for a name
    another group of the customer has, else the plan field it is about), and
    ``versions.ChangedMeanwhile`` when ``expected_version`` (the edit form's digest of
    sorted(values) as loaded) no longer matches the locked row."""
    session = get_state().session
    with saving(session, "group"):
        versions.check_version(session, "group", BillingGroup, group.id, sorted(values),
                               expected_version)
        fields = dict(values)
        if "name" in fields:
            if not str(fields["name"] or "").strip():
                raise CatalogError(M_("enter the billing group's name"), "name")
            # Before the row changes: only a name that changes is checked (catalog.names).
            check_unique_name(session, "group", str(fields["name"]), exclude_id=group.id,
                              scope_id=group.customer_id)
        if "plan_id" in fields and not fields["plan_id"]:
            fields["plan_id"] = None
        before = {k: getattr(group, k) for k in GROUP_FIELDS}
        changes = apply_values(group, fields, GROUP_FIELDS)
        if not changes:
            session.rollback()
            return changes
        if {"plan_id", "plan_start", "plan_end"} & set(changes):
            # Back to the stored values: the history decides, then the mirror follows.
            for k in ("plan_id", "plan_start", "plan_end"):
                setattr(group, k, before[k])
            has_plan = _plan_change(session, group, fields.get("plan_id", before["plan_id"]),
                                    fields.get("plan_start", before["plan_start"]),
                                    fields.get("plan_end", before["plan_end"]))
            session.flush()
            if has_plan:
                _mirror(session, group)
            else:
                group.plan_id = group.plan_start = group.plan_end = None
        audit.record(session, actor=actor, action="group_update", object_type="group",
                     object_id=group.id, detail=changes)
        session.commit()
    return changes
