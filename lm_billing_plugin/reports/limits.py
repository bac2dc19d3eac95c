"""The Plan limits report: billing groups over, or near (at least 90 % of), a limit of their
hosting plan — Max Members, Max Members Per List, Max Lists, Max Lists Per Site, Max Sites
(0 = unlimited) — counted on what each group pays for today; one query for every group, from
the counts of active lists per server and site (models.ListCount) and the assignments, so its
cost does not grow with the lists.

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
from ..models import (
    Assignment,
    BillingGroup,
    Customer,
    HostingPlan,
    ListCount,
    MailingList,
    Site,
)

__all__ = ["LIMITS", "NEAR", "LimitRow", "limit_rows", "plan_limits"]

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


def _figures(today: date) -> tuple[Any, Any]:
    """Per group: (group_id, lists, members, largest_list) and (group_id, sites, fullest_site)
    of the active lists it pays for today, from the counts per server and site
    (models.ListCount, kept by the sync) and the group's assignments — never every list.

    What a group covers, each list once: its servers' lists (their counts), the sites it has
    on other servers (their counts), and its own lists outside both (one each). A list also
    covered by its site or server is left out at the more specific level, so nothing counts
    twice; the cost follows servers, sites and assignments, not lists."""
    live = active_assignment(Assignment.__table__, today)
    count = ListCount
    # The servers each group pays for whole.
    servers = (sa.select(Assignment.group_id.label("group_id"),
                         Assignment.server_id.label("server_id"))
               .where(Assignment.object_type == "server", live).distinct()
               .subquery("servers"))
    # Every site each group pays for itself (with its server's, if that too is the group's).
    sites = (sa.select(Assignment.group_id.label("group_id"), Site.server_id.label("server_id"),
                       Site.name.label("site"))
             .join(Site, Site.id == Assignment.site_id)
             .where(Assignment.object_type == "site", live).distinct()
             .subquery("sites"))
    # Its own lists, active, in none of its servers or sites.
    lists = (sa.select(Assignment.group_id.label("group_id"),
                       MailingList.id.label("list_id"), MailingList.server_id.label("server_id"),
                       MailingList.site_name.label("site"), MailingList.members.label("members"))
             .join(MailingList, MailingList.id == Assignment.list_id)
             .where(Assignment.object_type == "list", live, MailingList.status == "active",
                    ~sa.exists().where(servers.c.group_id == Assignment.group_id,
                                       servers.c.server_id == MailingList.server_id),
                    ~sa.exists().where(sites.c.group_id == Assignment.group_id,
                                       sites.c.server_id == MailingList.server_id,
                                       sites.c.site == MailingList.site_name))
             .distinct().subquery("lists"))
    of_servers = (sa.select(servers.c.group_id, servers.c.server_id, count.site_name,
                            count.lists, count.members, count.largest)
                  .join(count, count.server_id == servers.c.server_id))
    of_sites = (sa.select(sites.c.group_id, sites.c.server_id, sites.c.site,
                          sa.func.coalesce(count.lists, 0).label("lists"),
                          sa.func.coalesce(count.members, 0).label("members"),
                          sa.func.coalesce(count.largest, 0).label("largest"))
                .outerjoin(count, sa.and_(count.server_id == sites.c.server_id,
                                          count.site_name == sites.c.site)))
    of_servers_q = of_servers.subquery("of_servers")
    of_sites_q = of_sites.subquery("of_sites")
    parts = sa.union_all(
        sa.select(*of_servers_q.c["group_id", "lists", "members", "largest"]),
        sa.select(*of_sites_q.c["group_id", "lists", "members", "largest"])
        .where(~sa.exists().where(servers.c.group_id == of_sites_q.c.group_id,
                                  servers.c.server_id == of_sites_q.c.server_id)),
        sa.select(lists.c.group_id, sa.literal(1).label("lists"),
                  lists.c.members.label("members"), lists.c.members.label("largest")),
    ).subquery("parts")
    per_group = (
        sa.select(parts.c.group_id, sa.func.sum(parts.c.lists).label("lists"),
                  sa.func.sum(parts.c.members).label("members"),
                  sa.func.max(parts.c.largest).label("largest_list"))
        .group_by(parts.c.group_id).subquery("per_group")
    )
    # Sites: (group, server, site) with the group's lists in it. A whole server's or site's
    # key has its full count ("full"); a site reached only by own lists counts those ("one").
    # The two kinds never meet on one key (own lists there are left out above). A site the
    # group has itself counts even while it holds no lists; no-site lists ("") are no site.
    keys = sa.union_all(
        sa.select(of_servers_q.c.group_id, of_servers_q.c.server_id,
                  of_servers_q.c.site_name.label("site"), of_servers_q.c.lists.label("full"),
                  sa.literal(0).label("one"))
        .where(of_servers_q.c.site_name != ""),
        sa.select(of_sites_q.c.group_id, of_sites_q.c.server_id, of_sites_q.c.site,
                  sa.case((of_sites_q.c.site != "", of_sites_q.c.lists), else_=0)
                  .label("full"), sa.literal(0).label("one")),
        sa.select(lists.c.group_id, lists.c.server_id, lists.c.site,
                  sa.literal(0).label("full"), sa.literal(1).label("one"))
        .where(lists.c.site != ""),
    ).subquery("keys")
    per_site = (
        sa.select(keys.c.group_id,
                  (sa.func.max(keys.c.full) + sa.func.sum(keys.c.one)).label("n"))
        .group_by(keys.c.group_id, keys.c.server_id, keys.c.site).subquery("per_site")
    )
    site_stats = (
        sa.select(per_site.c.group_id, sa.func.count().label("sites"),
                  sa.func.max(per_site.c.n).label("fullest_site"))
        .group_by(per_site.c.group_id).subquery("site_stats")
    )
    return per_group, site_stats


def plan_limits(session: Session, today: date) -> list[LimitRow]:
    """One row per (group, limit) at or over NEAR per cent, fullest first: one statement."""
    per_group, site_stats = _figures(today)
    return limit_rows(session, per_group, site_stats)


def limit_rows(session: Session, per_group: Any, site_stats: Any) -> list[LimitRow]:
    """The rows for figures ``per_group`` (group_id, lists, members, largest_list) and
    ``site_stats`` (group_id, sites, fullest_site): one statement. Apart from plan_limits so
    that tests can hand it the per-list figures it replaced, as the oracle."""
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
