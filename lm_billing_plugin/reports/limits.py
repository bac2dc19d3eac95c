"""The Plan limits report: billing groups over, or near (at least 90 % of), a limit of their
hosting plan — Max Members, Max Members Per List, Max Lists, Max Lists Per Site, Max Sites
(0 = unlimited) — counted on what each group pays for today; one query for every group.

Counting follows the customer page (web/views/customers.GroupTotals): a list covered twice
(by its site and by itself) counts once; with "Bill by List" Max Members applies to each list,
so the largest list is what counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..engine.store import active_assignment
from ..i18n import N_
from ..models import Assignment, BillingGroup, Customer, HostingPlan, MailingList, Site

__all__ = ["LIMITS", "NEAR", "LimitRow", "plan_limits"]

# (plan column, label as ListManager names it, the group's figure that it limits); the page
# shows the label translated (gettext at display).
LIMITS: Final = (
    ("max_members", N_("Max Members"), "members"),
    ("max_members_per_list", N_("Max Members Per List"), "largest_list"),
    ("max_lists", N_("Max Lists"), "lists"),
    ("max_lists_per_site", N_("Max Lists Per Site"), "fullest_site"),
    ("max_sites", N_("Max Sites"), "sites"),
)
NEAR: Final = 90  # per cent of a limit from which a group is "near" it


@dataclass(frozen=True, slots=True)
class LimitRow:
    group_id: int
    group: str
    customer_id: int
    company: str
    plan: str
    limit: str
    value: int
    maximum: int

    @property
    def percent(self) -> int:
        return self.value * 100 // self.maximum

    @property
    def over(self) -> bool:
        return self.value > self.maximum


def _covered(today: date) -> Any:
    """(group, list, server, site, members) for every live list a group pays for today."""
    live = active_assignment(Assignment.__table__, today)
    cols = (Assignment.group_id.label("group_id"), MailingList.id.label("list_id"),
            MailingList.server_id.label("server_id"), MailingList.site_name.label("site"),
            MailingList.members.label("members"))
    active = MailingList.status == "active"
    whole_servers = (sa.select(*cols)
                     .join(MailingList, MailingList.server_id == Assignment.server_id)
                     .where(Assignment.object_type == "server", live, active))
    whole_sites = (sa.select(*cols)
                   .join(Site, Site.id == Assignment.site_id)
                   .join(MailingList, sa.and_(MailingList.server_id == Site.server_id,
                                              MailingList.site_name == Site.name))
                   .where(Assignment.object_type == "site", live, active))
    single = (sa.select(*cols)
              .join(MailingList, MailingList.id == Assignment.list_id)
              .where(Assignment.object_type == "list", live, active))
    # UNION (not ALL): a list covered twice by one group counts once.
    return sa.union(whole_servers, whole_sites, single).subquery("covered")


def plan_limits(session: Session, today: date) -> list[LimitRow]:
    """One row per (group, limit) at or over NEAR per cent, fullest first."""
    covered = _covered(today)
    per_group = (
        sa.select(covered.c.group_id, sa.func.count().label("lists"),
                  sa.func.sum(covered.c.members).label("members"),
                  sa.func.max(covered.c.members).label("largest_list"))
        .group_by(covered.c.group_id).subquery("per_group")
    )
    per_site = (
        sa.select(covered.c.group_id, covered.c.server_id, covered.c.site,
                  sa.func.count().label("n"))
        .where(covered.c.site != "")
        .group_by(covered.c.group_id, covered.c.server_id, covered.c.site).subquery("per_site")
    )
    # Sites assigned on their own count even while they hold no lists.
    own_sites = (
        sa.select(Assignment.group_id.label("group_id"), Site.server_id.label("server_id"),
                  Site.name.label("site"), sa.literal(0).label("n"))
        .join(Site, Site.id == Assignment.site_id)
        .where(Assignment.object_type == "site", active_assignment(Assignment.__table__, today))
    )
    sites_all = sa.union_all(sa.select(per_site), own_sites).subquery("sites_all")
    site_keys = (
        sa.select(sites_all.c.group_id, sites_all.c.server_id, sites_all.c.site,
                  sa.func.max(sites_all.c.n).label("n"))
        .group_by(sites_all.c.group_id, sites_all.c.server_id, sites_all.c.site)
        .subquery("site_keys")
    )
    site_stats = (
        sa.select(site_keys.c.group_id, sa.func.count().label("sites"),
                  sa.func.max(site_keys.c.n).label("fullest_site"))
        .group_by(site_keys.c.group_id).subquery("site_stats")
    )
    figures = {
        "lists": sa.func.coalesce(per_group.c.lists, 0),
        "members": sa.case(
            (HostingPlan.bill_by_list.is_(True), sa.func.coalesce(per_group.c.largest_list, 0)),
            else_=sa.func.coalesce(per_group.c.members, 0)),
        "largest_list": sa.func.coalesce(per_group.c.largest_list, 0),
        "fullest_site": sa.func.coalesce(site_stats.c.fullest_site, 0),
        "sites": sa.func.coalesce(site_stats.c.sites, 0),
    }
    near = [
        sa.and_(getattr(HostingPlan, column) > 0,
                figures[figure] * 100 >= getattr(HostingPlan, column) * NEAR)
        for column, _label, figure in LIMITS
    ]
    rows = session.execute(
        sa.select(BillingGroup.id, BillingGroup.name, Customer.id, Customer.company,
                  HostingPlan, *[figures[f].label(f) for f in figures])
        .join(Customer, Customer.id == BillingGroup.customer_id)
        .join(HostingPlan, HostingPlan.id == BillingGroup.plan_id)
        .outerjoin(per_group, per_group.c.group_id == BillingGroup.id)
        .outerjoin(site_stats, site_stats.c.group_id == BillingGroup.id)
        .where(sa.or_(*near))
    ).all()
    out: list[LimitRow] = []
    for r in rows:
        plan: HostingPlan = r.HostingPlan
        for column, label, figure in LIMITS:
            maximum = int(getattr(plan, column) or 0)
            value = int(getattr(r, figure) or 0)
            if maximum > 0 and value * 100 >= maximum * NEAR:
                out.append(LimitRow(r[0], r[1], r[2], r[3], plan.name, label, value, maximum))
    out.sort(key=lambda x: (-x.value * 1000 // x.maximum, x.company, x.group, x.limit))
    return out
