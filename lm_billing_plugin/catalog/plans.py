"""Create and update hosting plans for pages and CLI alike: the fields, the unique name (any
letter case) and the audit record (plan_create / plan_update)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import audit
from ..engine import versions
from ..engine.store import is_conflict
from ..i18n import M_
from ..models import BILLING_METHODS, HostingPlan, name_key
from ..state import get_state
from .customers import CatalogError, apply_values
from .names import DuplicateName, check_name, conflict_message, name_taken

__all__ = ["PLAN_FIELDS", "PlanNameTaken", "find_plan", "plan_name_taken", "save_plan"]

PLAN_FIELDS: Final = (
    "name", "description", "max_members", "max_members_per_list", "max_lists",
    "max_lists_per_site", "max_sites", "bill_by_list", "billing_method", "monthly_price",
    "overage_cpm", "included_messages", "max_message_size_kb", "monthly_price_per_server",
    "cost_per_gb", "included_gb",
)


class PlanNameTaken(CatalogError):
    """Another hosting plan has this name (case and spaces ignored: catalog.names)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "name")


def plan_name_taken(session: Session, name: str, plan_id: int | None) -> bool:
    # The shared rule (catalog.names): "Gold" and "gold " are one plan.
    return name_taken(session, "plan", name, exclude_id=plan_id)


def find_plan(session: Session, key: str) -> HostingPlan | None:
    """A plan by its name (ignoring case and spaces) or its id."""
    plan = session.scalar(sa.select(HostingPlan)
                          .where(HostingPlan.name_key == name_key(key)).limit(1))
    if plan is None and key.isdigit():
        plan = session.get(HostingPlan, int(key))
    return plan


def save_plan(plan: HostingPlan | None, values: Mapping[str, Any], *, actor: str,
              expected_version: str | None = None) -> tuple[HostingPlan, dict[str, list[Any]]]:
    """Create (plan None) or update a plan from ``values`` (PLAN_FIELDS); commits when
    something changed. Raises PlanNameTaken (also when another writer took the name a moment
    ago) and CatalogError; on update, ``versions.ChangedMeanwhile`` when ``expected_version``
    (the edit form's digest of sorted(values) as loaded) no longer matches the locked row."""
    session = get_state().session
    name = str(values.get("name", plan.name if plan else "")).strip()
    if not name:
        raise CatalogError(M_("enter the plan's name"), "name")
    if values.get("billing_method", "standard") not in BILLING_METHODS:
        raise CatalogError(M_("the Billing Method is one of %(methods)s")
                           % {"methods": ", ".join(BILLING_METHODS)},
                           "billing_method")
    if plan is not None:
        versions.check_version(session, "plan", HostingPlan, plan.id, sorted(values),
                               expected_version)
    try:
        # Before the row changes: only a name that changes is checked (a plan keeping an old
        # duplicate name from before the unique key is not refused).
        check_name(session, "plan", name, exclude_id=plan.id if plan else None)
    except DuplicateName as exc:
        session.rollback()  # let go of the row lock check_version took
        raise PlanNameTaken(str(exc)) from None
    creating = plan is None
    target = plan if plan is not None else HostingPlan()
    try:
        changes = apply_values(target, values, PLAN_FIELDS)
        if not changes:
            session.rollback()
            return target, changes
        if creating:
            session.add(target)
        session.flush()
        audit.record(session, actor=actor, action="plan_create" if creating else "plan_update",
                     object_type="plan", object_id=target.id, detail=changes)
        session.commit()
    except sa.exc.DBAPIError as exc:
        session.rollback()
        if not is_conflict(exc):
            raise
        # Someone saved a plan of this name between our check and our write.
        raise PlanNameTaken(conflict_message("plan")) from None
    except BaseException:
        session.rollback()
        raise
    return target, changes
