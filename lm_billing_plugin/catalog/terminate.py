"""Terminating lists and customers: "Terminate lists" moves lists to the inactive placeholder
customer "Terminated" (history kept); a customer is deleted only when it has no history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import audit
from ..engine.store import ASSIGNMENT, active_assignment, is_conflict, rejudge_rules
from ..i18n import M_, N_, gettext
from ..models import (
    Assignment,
    BillingGroup,
    BillRunItem,
    ChargeAssignment,
    Customer,
    GroupPlan,
    Invoice,
    MailingList,
    Problem,
    Site,
    name_key,
    utcnow,
)
from ..state import get_state
from .assignment import AssignmentError, check_gate

__all__ = [
    "PLACEHOLDER_COMPANY",
    "PLACEHOLDER_GROUP",
    "CustomerHasHistory",
    "TerminateResult",
    "delete_customer",
    "placeholder_customer_id",
    "terminate_lists",
]

PLACEHOLDER_COMPANY = "Terminated"
PLACEHOLDER_GROUP = "Terminated lists"


@dataclass(frozen=True)
class TerminateResult:
    moved: int
    ended: int
    customer_id: int
    group_id: int


def placeholder_customer_id(session: Session) -> int | None:
    """The placeholder customer, when it exists (found by its name's key)."""
    found = session.scalar(
        sa.select(Customer.id).where(Customer.company_key == name_key(PLACEHOLDER_COMPANY))
    )
    return int(found) if found is not None else None


def _placeholder(session: Session, actor: str) -> tuple[int, int]:
    """(customer id, group id) of the placeholder, created on first use (inactive, so no
    bill run ever bills it)."""
    customer_id = placeholder_customer_id(session)
    if customer_id is None:
        customer = Customer(
            company=PLACEHOLDER_COMPANY,
            is_active=False,
            notes="Placeholder for terminated lists (created by Terminate lists); kept for "
            "their billing history.",
        )
        session.add(customer)
        session.flush()
        customer_id = customer.id
        audit.record(session, actor=actor, action="customer_create", object_type="customer",
                     object_id=customer_id, detail={"company": PLACEHOLDER_COMPANY,
                                                    "placeholder": True})
    group_id = session.scalar(
        sa.select(BillingGroup.id).where(
            BillingGroup.customer_id == customer_id,
            BillingGroup.name_key == name_key(PLACEHOLDER_GROUP),
        )
    )
    if group_id is None:
        group = BillingGroup(customer_id=customer_id, name=PLACEHOLDER_GROUP)
        session.add(group)
        session.flush()
        group_id = group.id
        audit.record(session, actor=actor, action="group_create", object_type="group",
                     object_id=group_id, detail={"customer_id": customer_id,
                                                 "name": PLACEHOLDER_GROUP})
    return int(customer_id), int(group_id)


def terminate_lists(
    list_ids: Sequence[int], *, actor: str, end: date | None = None
) -> TerminateResult:
    """Move lists to the placeholder customer "Terminated" from ``end`` (today): their
    current list assignments end on that day (history kept) and a free list assignment in
    the group "Terminated lists" starts. One transaction, audited.

    Raises AssignmentError (unknown list; a list paid through its site or whole server,
    which must be unassigned there first) and GateError (server needs validate and sync).
    Removed lists may be terminated: that is what the placeholder is for.
    """
    session = get_state().session
    end = end or get_state().settings.billing_today()
    wanted = sorted(set(list_ids))
    if not wanted:
        raise AssignmentError(M_("tick the lists to terminate first"))
    for attempt in (1, 2):
        try:
            result = _terminate(session, wanted, actor, end)
            session.commit()
            return result
        except sa.exc.DBAPIError as exc:
            session.rollback()
            # Two first uses at once: the other one created the placeholder; use it.
            if attempt == 2 or not is_conflict(exc):
                raise
        except BaseException:
            session.rollback()
            raise
    raise AssertionError("unreachable")


def _terminate(session: Session, wanted: list[int], actor: str, end: date) -> TerminateResult:
    lists = session.execute(
        sa.select(MailingList.id, MailingList.server_id, MailingList.name,
                  MailingList.site_name).where(MailingList.id.in_(wanted))
    ).all()
    missing = sorted(set(wanted) - {r.id for r in lists})
    if missing:
        raise AssignmentError(M_("there is no list %(ids)s") % {"ids": missing})
    for server_id in sorted({r.server_id for r in lists}):
        check_gate(session, server_id)
    customer_id, group_id = _placeholder(session, actor)
    t = ASSIGNMENT
    # Paid through the whole server or its site (outside the placeholder): moving the list
    # alone would leave it billed by that group, so say what to do instead.
    covering = session.execute(
        sa.select(MailingList.name, Customer.company, BillingGroup.name, Assignment.object_type)
        .select_from(MailingList)
        .join(Assignment, Assignment.server_id == MailingList.server_id)
        .outerjoin(Site, Site.id == Assignment.site_id)
        .join(BillingGroup, BillingGroup.id == Assignment.group_id)
        .join(Customer, Customer.id == BillingGroup.customer_id)
        .where(
            MailingList.id.in_(wanted),
            Assignment.group_id != group_id,
            active_assignment(t, end),
            sa.or_(
                Assignment.object_type == "server",
                sa.and_(Assignment.object_type == "site", Site.name == MailingList.site_name),
            ),
        )
        .order_by(MailingList.name)
    ).all()
    if covering:
        shown = "; ".join(f"{n!r} through its {kind} ({company}: {group})"
                          for n, company, group, kind in covering[:3])
        raise AssignmentError(
            M_("%(count)s ticked list(s) are paid through a site or a whole server "
               "(%(shown)s); unassign that site or server on the customer's page first, or "
               "terminate only single-list assignments") % {"count": len(covering),
                                                             "shown": shown}
        )
    current = session.execute(
        sa.select(t.c.id, t.c.group_id, t.c.list_id, t.c.start_date)
        .where(t.c.object_type == "list", t.c.list_id.in_(wanted),
               sa.or_(t.c.end_date.is_(None), t.c.end_date > end))
    ).all()
    already = {r.list_id for r in current if r.group_id == group_id}
    ending = [r.id for r in current if r.group_id != group_id]
    losing = {r.group_id for r in current if r.group_id != group_id}
    if ending:
        session.execute(
            sa.update(t).where(t.c.id.in_(ending))
            .values(end_date=sa.case((t.c.start_date > end, t.c.start_date), else_=end))
        )
    server_of = {r.id: r.server_id for r in lists}
    create = [lid for lid in wanted if lid not in already]
    if create:
        session.execute(sa.insert(t), [
            {"group_id": group_id, "object_type": "list", "server_id": server_of[lid],
             "site_id": None, "list_id": lid, "start_date": end, "end_date": None,
             "is_free": True, "created_at": utcnow()} for lid in create])
    # The moved lists' billing-rule problems follow them, in this transaction (the groups
    # that lost them are judged again; the placeholder is inactive on purpose, so its own
    # group-wide rules are not asked here).
    for server_id in sorted(set(server_of.values())):
        rejudge_rules(session, server_id,
                      list_ids={lid for lid, sid in server_of.items() if sid == server_id},
                      group_ids=losing,
                      today=get_state().settings.billing_today())
    audit.record(session, actor=actor, action="lists_terminate", object_type="group",
                 object_id=group_id,
                 detail={"list_ids": wanted, "names": sorted(r.name for r in lists),
                         "ended_assignments": sorted(ending), "end": end.isoformat()})
    return TerminateResult(moved=len(create), ended=len(ending), customer_id=customer_id,
                           group_id=group_id)


# --- Deleting a customer -----------------------------------------------------------------------


class CustomerHasHistory(ValueError):
    """A customer with invoices or assignment history: deactivate instead."""


def delete_customer(customer_id: int, *, actor: str) -> str:
    """Delete a customer (and its empty billing groups) that has no invoices, no bill-run
    entries and no assignment or charge history; returns its name.

    Raises CustomerHasHistory, whose message says to deactivate (Is Active No, End Date)."""
    session = get_state().session
    customer = session.get(Customer, customer_id)
    if customer is None:
        raise LookupError(f"there is no customer {customer_id}")
    reasons = deletion_blockers(session, customer_id)
    if reasons:
        raise CustomerHasHistory(
            M_("%(company)s has %(reasons)s: billing keeps that history, so it cannot be "
               "deleted. Deactivate it instead: Edit Customer, set its End Date (the final "
               "bill is prorated to it) and untick Is Active.")
            % {"company": customer.company, "reasons": ", ".join(reasons)}
        )
    group_ids = list(session.scalars(
        sa.select(BillingGroup.id).where(BillingGroup.customer_id == customer_id)))
    try:
        if group_ids:
            session.execute(sa.update(Problem).where(Problem.group_id.in_(group_ids))
                            .values(group_id=None))
            session.execute(sa.delete(GroupPlan).where(GroupPlan.group_id.in_(group_ids)))
            session.execute(sa.delete(BillingGroup).where(BillingGroup.id.in_(group_ids)))
        name = customer.company
        session.delete(customer)
        audit.record(session, actor=actor, action="customer_delete", object_type="customer",
                     object_id=customer_id, detail={"company": name, "groups": group_ids})
        session.commit()
    except sa.exc.DBAPIError as exc:
        # Something was assigned or billed in between (a foreign key refused): keep it.
        session.rollback()
        if not is_conflict(exc):
            raise
        raise CustomerHasHistory(
            M_("Something was just assigned to or billed for this customer: it is kept. "
               "Deactivate it instead.")
        ) from None
    return name


def deletion_blockers(session: Session, customer_id: int) -> list[str]:
    """What keeps a customer from being deleted, in words ([] = nothing)."""
    groups = sa.select(BillingGroup.id).where(BillingGroup.customer_id == customer_id)
    counts = session.execute(sa.select(
        sa.select(sa.func.count(Invoice.id)).where(Invoice.customer_id == customer_id)
        .scalar_subquery(),
        sa.select(sa.func.count(BillRunItem.id)).where(BillRunItem.customer_id == customer_id)
        .scalar_subquery(),
        sa.select(sa.func.count(Assignment.id)).where(Assignment.group_id.in_(groups))
        .scalar_subquery(),
        sa.select(sa.func.count(ChargeAssignment.id))
        .where(ChargeAssignment.group_id.in_(groups)).scalar_subquery(),
    )).one()
    words = (N_("%(num)s invoice(s)"), N_("%(num)s bill run entries"),
             N_("%(num)s assignment(s) (ended ones count too)"),
             N_("%(num)s additional charge(s)"))
    return [gettext(w, num=n) for n, w in zip(counts, words, strict=True) if n]
