"""The Usage report: messages, recipients, bytes and message units per server, site, list,
customer or billing group over whole months; one grouped query per page, one for the trend.
Per server and the trend read the roll-ups (engine.rollup: a row per server and month), not
every list's row; the per-list dimensions read Usage through its index by month.

Owners (customer, group) and the plan that sizes message units are those of the assignment in
force on the report's last day, the most specific one winning (a list's own over its site's
over its server's), as billing decides who pays. A message unit is what billing counts against
a Standard plan: per list and month, the recipients, or the bytes sent divided by the plan's
Max Message Size when that is larger; lists without such a plan count their recipients.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from typing import Any, Final, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from ..models import (
    Assignment,
    BillingGroup,
    Customer,
    HostingPlan,
    MailingList,
    Server,
    Site,
    Usage,
    UsagePrevious,
    UsageRollup,
    UsageSiteRollup,
)
from .periods import add_months

__all__ = ["DIMENSIONS", "SORTS", "UsageQuery", "UsageRow", "usage_count", "usage_page",
           "usage_rows", "usage_trend"]

DIMENSIONS: Final = ("server", "site", "list", "customer", "group")
SORTS: Final = ("name", "messages", "recipients", "bytes", "units")
UNOWNED: Final = "(no owner)"


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """What to report: months ``first``..``last`` (first days, inclusive), grouped ``by``."""

    by: str
    first: date
    last: date
    server_id: int | None = None
    sort: str = "messages"
    descending: bool = True



@dataclass(frozen=True, slots=True)
class UsageRow:
    key: tuple[Any, ...]
    server_id: int | None
    server: str
    site: str
    list: str
    list_id: int | None
    owner_id: int | None  # customer id (by customer or group)
    owner: str
    group: str
    messages: int
    recipients: int
    bytes: int
    units: Decimal


def _last_day(month: date) -> date:
    from datetime import timedelta

    return add_months(month, 1) - timedelta(days=1)


def _live(a: Any, day: date) -> Any:
    # engine.store.active_assignment's rule (end date exclusive), on an alias.
    return sa.and_(a.start_date <= day, sa.or_(a.end_date.is_(None), a.end_date > day))


def _owner_joins(stmt: sa.Select[Any], day: date, lists: Any = None
                 ) -> tuple[sa.Select[Any], Any]:
    """LEFT JOIN the list's own, its site's and its server's assignment in force on ``day``;
    returns the statement and the paying group's id (the most specific one that exists).
    Three index lookups per row instead of expanding every assignment into its lists.
    ``lists``: where the list's id, server_id and site_name come from (default the lists'
    table; a page subquery's columns keep the table out of a statement)."""
    lists = MailingList if lists is None else lists
    by_list, by_site, by_server = aliased(Assignment), aliased(Assignment), aliased(Assignment)
    site = aliased(Site)
    stmt = (
        stmt.outerjoin(by_list, sa.and_(by_list.object_type == "list",
                                        by_list.list_id == lists.id, _live(by_list, day)))
        .outerjoin(site, sa.and_(site.server_id == lists.server_id,
                                 site.name == lists.site_name))
        .outerjoin(by_site, sa.and_(by_site.object_type == "site", by_site.site_id == site.id,
                                    _live(by_site, day)))
        .outerjoin(by_server, sa.and_(by_server.object_type == "server",
                                      by_server.server_id == lists.server_id,
                                      _live(by_server, day)))
    )
    return stmt, sa.func.coalesce(by_list.group_id, by_site.group_id, by_server.group_id)


def _per_server(q: UsageQuery, smallest: int | None, *, with_total: bool) -> sa.Select[Any]:
    """By server (or by site: the site roll-ups, grouped by server and site), from the
    roll-ups (a row per server and month, engine.rollup): messages, recipients and bytes
    summed; units = recipients plus what sizes add over them. Sizes add only on lists of a
    Standard plan with a Max Message Size whose bytes per recipient exceed it: Usage rows
    with kb_per_recipient >= ``smallest`` such size, read through that index alone (the
    month is checked on those rows, not looked up: a month holds every list)."""
    by_site = q.by == "site"
    r: Any = UsageSiteRollup if by_site else UsageRollup
    keys = [r.server_id, r.site_name] if by_site else [r.server_id]
    totals = (
        sa.select(*keys, sa.func.sum(r.messages).label("messages"),
                  sa.func.sum(r.recipients).label("recipients"),
                  sa.func.sum(r.bytes).label("bytes"))
        .where(r.period >= q.first, r.period <= q.last)
        .group_by(*keys)
    )
    if q.server_id is not None:
        totals = totals.where(r.server_id == q.server_id)
    totals_q = totals.subquery("totals")
    units: Any = sa.cast(totals_q.c.recipients, sa.Numeric(24, 6))
    names: list[Any] = [Server.id.label("server_id"), Server.name.label("server")]
    if by_site:
        names.append(totals_q.c.site_name.label("site"))
    stmt: sa.Select[Any] = cast("sa.Select[Any]", (
        sa.select(*names)
        .select_from(totals_q)
        .join(Server, Server.id == totals_q.c.server_id)
    ))
    if smallest is not None:
        plan = aliased(HostingPlan)
        kb = plan.max_message_size_kb
        per_size = sa.cast(Usage.bytes, sa.Numeric(24, 6)) / (kb * 1024)
        # COALESCE: no index by month or server here (SQLite's planner, without statistics,
        # would walk every row of the month or every list in server order instead).
        month = sa.func.coalesce(Usage.period, Usage.period)
        server = sa.func.coalesce(Usage.server_id, 0).label("server_id")
        heavy_keys: list[Any] = [server]
        if by_site:
            heavy_keys.append(MailingList.site_name.label("site_name"))
        base = cast("sa.Select[Any]", (
            sa.select(*heavy_keys,
                      sa.func.sum(per_size - sa.cast(Usage.recipients, sa.Numeric(24, 6)))
                      .label("extra"))
            .select_from(Usage)
            .join(MailingList, MailingList.id == Usage.list_id)
        ))
        heavy, group_id = _owner_joins(base, _last_day(q.last))
        heavy = (
            heavy.join(BillingGroup, BillingGroup.id == group_id)
            .join(plan, plan.id == BillingGroup.plan_id)
            .where(Usage.kb_per_recipient >= smallest, month >= q.first, month <= q.last,
                   kb > 0, plan.billing_method == "standard", per_size > Usage.recipients)
            .group_by(*(server, MailingList.site_name) if by_site else (server,))
        )
        if q.server_id is not None:
            heavy = heavy.where(server == q.server_id)
        extra_q = heavy.subquery("extra")
        joined = extra_q.c.server_id == totals_q.c.server_id
        if by_site:
            joined = sa.and_(joined, extra_q.c.site_name == totals_q.c.site_name)
        stmt = stmt.outerjoin(extra_q, joined)
        units = units + sa.func.coalesce(extra_q.c.extra, 0)
    extra = [sa.func.count().over().label("total")] if with_total else []
    stmt = stmt.add_columns(
        totals_q.c.messages.label("messages"), totals_q.c.recipients.label("recipients"),
        totals_q.c.bytes.label("bytes"), units.label("units"), *extra)
    sort_by: Any = {"name": totals_q.c.site_name if by_site else Server.name,
                    "messages": totals_q.c.messages, "recipients": totals_q.c.recipients,
                    "bytes": totals_q.c.bytes, "units": units}[q.sort]
    order = sort_by.desc() if q.descending else sort_by.asc()
    # As the per-row statement: the group's own columns break ties.
    ties = [Server.id, Server.name] + ([totals_q.c.site_name] if by_site else [])
    return stmt.order_by(order, *ties)


def smallest_size(session: Session) -> int | None:
    """The smallest Max Message Size (KB) of a Standard plan: below it no size counts."""
    return session.scalar(
        sa.select(sa.func.min(HostingPlan.max_message_size_kb))
        .where(HostingPlan.billing_method == "standard", HostingPlan.max_message_size_kb > 0))


def _grouped(session: Session, q: UsageQuery, *, with_total: bool) -> sa.Select[Any]:
    """One row per group of ``q.by`` with its sums (and the number of groups, for paging).
    By server and by site from the roll-ups (reading the smallest plan size first: one
    more, small, statement); else _per_row."""
    if q.by in ("server", "site"):
        return _per_server(q, smallest_size(session), with_total=with_total)
    return _per_row(q, with_total=with_total)


def _per_row(q: UsageQuery, *, with_total: bool) -> sa.Select[Any]:
    """One row per group of ``q.by``, summed from the Usage rows of the range themselves (the
    definition the roll-ups and the index paths stand in for)."""
    plan = aliased(HostingPlan)
    # Units per list and month, as billing counts them (see the module docstring).
    units = _units_of(Usage, plan)
    sums = [
        sa.func.sum(Usage.messages).label("messages"),
        sa.func.sum(Usage.recipients).label("recipients"),
        sa.func.sum(Usage.bytes).label("bytes"),
        sa.func.sum(units).label("units"),
    ]
    named: dict[str, list[tuple[str, Any]]] = {
        "server": [("server_id", Server.id), ("server", Server.name)],
        "site": [("server_id", Server.id), ("server", Server.name),
                 ("site", MailingList.site_name)],
        "list": [("server_id", Server.id), ("server", Server.name),
                 ("site", MailingList.site_name), ("list_id", MailingList.id),
                 ("list", MailingList.name)],
        "customer": [("owner_id", Customer.id), ("owner", Customer.company)],
        "group": [("owner_id", Customer.id), ("owner", Customer.company),
                  ("group_id", BillingGroup.id), ("group", BillingGroup.name)],
    }
    if q.by not in named:
        raise ValueError(f"unknown dimension {q.by!r}; one of {DIMENSIONS}")
    columns = [column for _label, column in named[q.by]]
    keys = [column.label(label) for label, column in named[q.by]]
    name = columns[-1]
    extra = [sa.func.count().over().label("total")] if with_total else []
    stmt, group_id = _owner_joins(
        sa.select(*keys, *sums, *extra)
        .select_from(Usage)
        .join(MailingList, MailingList.id == Usage.list_id)
        .join(Server, Server.id == Usage.server_id),
        _last_day(q.last),
    )
    stmt = (
        stmt.outerjoin(BillingGroup, BillingGroup.id == group_id)
        .outerjoin(Customer, Customer.id == BillingGroup.customer_id)
        .outerjoin(plan, plan.id == BillingGroup.plan_id)
        .where(Usage.period >= q.first, Usage.period <= q.last)
        .group_by(*columns)
    )
    if q.server_id is not None:
        stmt = stmt.where(Usage.server_id == q.server_id)
    sort_by: Any = {"name": name, "messages": sums[0], "recipients": sums[1],
                    "bytes": sums[2], "units": sums[3]}[q.sort]
    order = sort_by.desc() if q.descending else sort_by.asc()
    if q.by == "list" and q.sort in _RANGE_FIGURES:
        # Per list by a figure, ties end on list id in the same direction, as the pages
        # through the months' indexes (_list_month_page, _list_range_figure_page) order them.
        return stmt.order_by(order, MailingList.id.desc() if q.descending
                             else MailingList.id.asc())
    # The group's own columns break ties, so paging is stable.
    return stmt.order_by(order, *columns)


# --- Per list, one month: through the index ----------------------------------------------
#
# A month holds one Usage row per list, so "per list" for one month is those rows themselves:
# sorted by messages, recipients or bytes, a page is the first rows of the index (period,
# column, list_id) — the month's rows are never sorted, whatever the fleet's size — and only
# that page's rows are joined to their names, owners and plans. The number of rows comes
# from the roll-ups (their ``lists`` is the count of the month's Usage rows per server). Ties
# are broken by list id (the index's last column). Sorted by name, the page is the first
# lists of the (name, server_id) index that have a row in the month. Sorted by message
# units, the page is merged from the few rows whose size can count (their units computed)
# and the recipients index (see _units_candidates). Ranges of months sorted by name walk the
# name index too (_list_range_page); by messages, recipients or bytes they merge the months'
# indexes (_list_range_figure_page); by units, the grouped statement.

_INDEXED_SORTS: Final = ("messages", "recipients", "bytes", "name", "units")


def _list_by_index(q: UsageQuery) -> bool:
    return q.by == "list" and q.first == q.last and q.sort in _INDEXED_SORTS


def _list_range_by_name(q: UsageQuery) -> bool:
    return q.by == "list" and q.first != q.last and q.sort == "name"


def _units_of(usage: Any, plan: Any) -> Any:
    """A row's message units under its paying group's ``plan`` (see the module docstring)."""
    kb = plan.max_message_size_kb
    per_size = sa.cast(usage.bytes, sa.Numeric(24, 6)) / (kb * 1024)
    return sa.case(
        (sa.and_(kb > 0, plan.billing_method == "standard", per_size > usage.recipients),
         per_size),
        else_=sa.cast(usage.recipients, sa.Numeric(24, 6)),
    )


def _units_candidates(session: Session, q: UsageQuery, *, offset: int, limit: int
                      ) -> sa.Select[Any]:
    """The page of one month's rows sorted by message units (ties by list id), exactly, with
    neither a sort of the month nor every row's plan.

    A row counts more units than recipients only under a Standard plan with a Max Message
    Size of N KB whose bytes per recipient exceed N, so only where ``kb_per_recipient`` (a
    figure of the row alone) reaches the smallest such N: the "heavy" rows, one range of the
    (kb_per_recipient, period) index. Every other row's units are its recipients. The page is
    therefore among the heavy rows (their units computed under their owner's plan today) and
    the first ``offset + limit`` light rows in (recipients, list_id) order — the
    (period, recipients, list_id) index walked, heavy rows skipped. Nothing is stored that an
    edit of a plan or an assignment could leave stale: the owners and the smallest size are
    read by this statement. Its cost follows the page's depth and the heavy rows, not lists.
    """
    smallest = smallest_size(session)
    desc = q.descending
    if smallest is None:
        # No Standard plan with a size: every row's units are its recipients.
        light = (sa.select(Usage.id.label("id"), Usage.list_id.label("list_id"),
                           sa.cast(Usage.recipients, sa.Numeric(24, 6)).label("units"))
                 .where(Usage.period == q.first))
        if q.server_id is not None:
            light = light.where(Usage.server_id == q.server_id)
        order = ([Usage.recipients.desc(), Usage.list_id.desc()] if desc
                 else [Usage.recipients.asc(), Usage.list_id.asc()])
        return cast("sa.Select[Any]", light.order_by(*order).offset(offset).limit(limit))
    # Light rows, in the index's order; the COALESCE keeps planners off the kb index (whose
    # light range is nearly the whole table) so they walk (period, recipients, list_id).
    light_q = (
        sa.select(Usage.id.label("id"), Usage.list_id.label("list_id"),
                  sa.cast(Usage.recipients, sa.Numeric(24, 6)).label("units"))
        .where(Usage.period == q.first,
               sa.func.coalesce(Usage.kb_per_recipient, 0) < smallest)
        .order_by(*([Usage.recipients.desc(), Usage.list_id.desc()] if desc
                    else [Usage.recipients.asc(), Usage.list_id.asc()]))
        .limit(offset + limit)
    )
    # Heavy rows, read through the kb index (the month checked on them, as per server).
    plan = aliased(HostingPlan)
    month = sa.func.coalesce(Usage.period, Usage.period)
    heavy, group_id = _owner_joins(cast("sa.Select[Any]", (
        sa.select(Usage.id.label("id"), Usage.list_id.label("list_id"))
        .select_from(Usage).join(MailingList, MailingList.id == Usage.list_id))),
        _last_day(q.last))
    heavy_q = (
        heavy.outerjoin(BillingGroup, BillingGroup.id == group_id)
        .outerjoin(plan, plan.id == BillingGroup.plan_id)
        .add_columns(_units_of(Usage, plan).label("units"))
        .where(Usage.kb_per_recipient >= smallest, month == q.first)
    )
    if q.server_id is not None:
        light_q = light_q.where(Usage.server_id == q.server_id)
        heavy_q = heavy_q.where(sa.func.coalesce(Usage.server_id, 0) == q.server_id)
    light_s = light_q.subquery("light")
    heavy_s = heavy_q.subquery("heavy")
    both = sa.union_all(
        sa.select(light_s.c.id, light_s.c.list_id, light_s.c.units),
        sa.select(heavy_s.c.id, heavy_s.c.list_id, heavy_s.c.units),
    ).subquery("candidates")
    order = ([both.c.units.desc(), both.c.list_id.desc()] if desc
             else [both.c.units.asc(), both.c.list_id.asc()])
    return (sa.select(both.c.id.label("id"), both.c.list_id.label("list_id"),
                      both.c.units.label("units"))
            .order_by(*order).offset(offset).limit(limit))


def _list_month_count(session: Session, q: UsageQuery) -> int:
    r = UsageRollup
    stmt = sa.select(sa.func.coalesce(sa.func.sum(r.lists), 0)).where(r.period == q.first)
    if q.server_id is not None:
        stmt = stmt.where(r.server_id == q.server_id)
    return int(session.scalar(stmt) or 0)


def _nearer_end(total: int, offset: int, limit: int) -> tuple[bool, int, int]:
    """Where to read a page of ``total`` rows from: (flip, offset, limit). A page past the
    middle is the same rows of the reversed order (every order here is a total one: ties end
    on a unique key) at the smaller offset, to be turned round (flip). The last page then
    costs what the first does; the middle one is the dearest (OFFSET total/2)."""
    flip = offset > 0 and offset > total - offset - limit
    if flip:
        return True, max(0, total - offset - limit), min(limit, total - offset)
    return False, offset, limit


def _list_month_page(session: Session, q: UsageQuery, *, offset: int, limit: int
                     ) -> tuple[list[UsageRow], int]:
    # A deep page is read from the other end (_nearer_end): the count comes first (from the
    # roll-ups).
    total = _list_month_count(session, q)
    if offset >= total or limit <= 0:
        return [], total  # past the end (the page clamps to the last one): nothing to walk
    flip, offset, limit = _nearer_end(total, offset, limit)
    desc = q.descending != flip
    # The servers of one name: ascending in the grouped statement's order, whichever way
    # names go.
    server_dir = "desc" if flip else "asc"
    order: list[Any]
    if q.sort == "name":
        # By the list's name, as the grouped statement orders it (name, then server: a name
        # is unique on its server): the lists' index ix_lm_billing_list_name_server (or, for
        # one server, its (server_id, name) key) in that order, kept to the lists with a row
        # this month (EXISTS on the (list_id, period) key) — the month is never sorted.
        name = MailingList.name.desc() if desc else MailingList.name.asc()
        order = [name, getattr(MailingList.server_id, server_dir)()]
        row_of_list = (sa.select(Usage.id)
                       .where(Usage.list_id == MailingList.id, Usage.period == q.first)
                       .correlate(MailingList))
        picked = (
            sa.select(row_of_list.scalar_subquery().label("id"),
                      MailingList.name.label("name"), MailingList.server_id.label("server_id"))
            .select_from(MailingList)
            .where(row_of_list.exists())
            .order_by(*order).offset(offset).limit(limit)
        )
        if q.server_id is not None:
            picked = picked.where(MailingList.server_id == q.server_id)
    elif q.sort == "units":
        picked = _units_candidates(session, replace(q, descending=desc), offset=offset,
                                   limit=limit)
    else:
        column = getattr(Usage, q.sort)
        order = [column.desc(), Usage.list_id.desc()] if desc else [
            column.asc(), Usage.list_id.asc()]
        picked = (
            sa.select(Usage.id).where(Usage.period == q.first)
            .order_by(*order).offset(offset).limit(limit)
        )
        if q.server_id is not None:
            picked = picked.where(Usage.server_id == q.server_id)
    page_q = picked.subquery("page")
    if q.sort == "name":
        # The page's own columns: ordering by the list's would make the planner walk every
        # list in name order to join the page, instead of the page's rows.
        order = [page_q.c.name.desc() if desc else page_q.c.name.asc(),
                 getattr(page_q.c.server_id, server_dir)()]
    elif q.sort == "units":
        order = ([page_q.c.units.desc(), page_q.c.list_id.desc()] if desc
                 else [page_q.c.units.asc(), page_q.c.list_id.asc()])
    plan = aliased(HostingPlan)
    units = _units_of(Usage, plan)
    stmt, group_id = _owner_joins(
        sa.select(Server.id.label("server_id"), Server.name.label("server"),
                  MailingList.site_name.label("site"), MailingList.id.label("list_id"),
                  MailingList.name.label("list"), Usage.messages.label("messages"),
                  Usage.recipients.label("recipients"), Usage.bytes.label("bytes"),
                  units.label("units"))
        .select_from(page_q)
        .join(Usage, Usage.id == page_q.c.id)
        .join(MailingList, MailingList.id == Usage.list_id)
        .join(Server, Server.id == Usage.server_id),
        _last_day(q.last),
    )
    stmt = (stmt.outerjoin(BillingGroup, BillingGroup.id == group_id)
            .outerjoin(plan, plan.id == BillingGroup.plan_id)
            .order_by(*order))
    rows = list(session.execute(stmt).all())
    if flip:
        rows.reverse()
    return [_row(r, q.by) for r in rows], total


# --- Per list, a range of months, by name: the name index walked -----------------------
#
# As for one month: the page is the first lists of the (name, server_id) index (or, for one
# server, its (server_id, name) key) with a Usage row in the range (EXISTS on the
# (list_id, period) key, now a range of it), and only the page's lists' rows are summed. The
# number of rows is the number of lists with a row in the range: a list can have rows in
# several months, so the roll-ups cannot give it; models.UsagePrevious does (a few rows per
# server and month).


def _list_range_count(session: Session, q: UsageQuery) -> int:
    # Lists with a row in the range: each is counted once, at its first month in the range —
    # the range's rows whose list's previous month with a row lies before the range (or has
    # none). UsagePrevious holds how many rows of each server and month have which previous
    # month, so this reads at most months² rows per server, whatever the lists.
    p = UsagePrevious
    stmt = sa.select(sa.func.coalesce(sa.func.sum(p.lists), 0)).where(
        p.period >= q.first, p.period <= q.last, p.previous < q.first)
    if q.server_id is not None:
        stmt = stmt.where(p.server_id == q.server_id)
    return int(session.scalar(stmt) or 0)


def _list_range_page(session: Session, q: UsageQuery, *, offset: int, limit: int
                     ) -> tuple[list[UsageRow], int]:
    # The count first (cheap), so that a page past the middle is read from the other end.
    total = _list_range_count(session, q)
    if offset >= total or limit <= 0:
        return [], total
    flip, offset, limit = _nearer_end(total, offset, limit)
    desc = q.descending != flip
    server_dir = "desc" if flip else "asc"
    in_range = (sa.select(Usage.id)
                .where(Usage.list_id == MailingList.id, Usage.period >= q.first,
                       Usage.period <= q.last)
                .correlate(MailingList))
    name = MailingList.name.desc() if desc else MailingList.name.asc()
    picked = (
        _page_lists()
        .where(in_range.exists())
        .order_by(name, getattr(MailingList.server_id, server_dir)())
        .offset(offset).limit(limit)
    )
    if q.server_id is not None:
        picked = picked.where(MailingList.server_id == q.server_id)
    page_q = picked.subquery("page")
    rows = _range_sums(session, q, page_q, [
        page_q.c.name.desc() if desc else page_q.c.name.asc(),
        getattr(page_q.c.server_id, server_dir)()])
    if flip:
        rows.reverse()
    return [_row(r, q.by) for r in rows], total


def _page_lists() -> sa.Select[Any]:
    """The columns of a page's lists that _range_sums reads (id, name, server_id,
    site_name)."""
    return cast("sa.Select[Any]", sa.select(
        MailingList.id.label("id"), MailingList.name.label("name"),
        MailingList.server_id.label("server_id"), MailingList.site_name.label("site_name")))


def _range_sums(session: Session, q: UsageQuery, page_q: Any, order: list[Any]) -> list[Any]:
    """The range's sums of the lists of ``page_q`` (id, name, server_id, site_name), with
    their names and owners, in ``order``."""
    plan = aliased(HostingPlan)
    sums = [
        sa.func.sum(Usage.messages).label("messages"),
        sa.func.sum(Usage.recipients).label("recipients"),
        sa.func.sum(Usage.bytes).label("bytes"),
        sa.func.sum(_units_of(Usage, plan)).label("units"),
    ]
    # Only the page's columns name the list: with the lists' table in this statement, SQLite
    # (no statistics) would scan it and probe the page, instead of the page's 50 rows.
    columns = [Server.id, Server.name, page_q.c.site_name, page_q.c.id, page_q.c.name,
               page_q.c.server_id]
    stmt, group_id = _owner_joins(
        sa.select(Server.id.label("server_id"), Server.name.label("server"),
                  page_q.c.site_name.label("site"), page_q.c.id.label("list_id"),
                  page_q.c.name.label("list"), *sums)
        .select_from(page_q)
        .join(Usage, sa.and_(Usage.list_id == page_q.c.id, Usage.period >= q.first,
                             Usage.period <= q.last))
        .join(Server, Server.id == page_q.c.server_id),
        _last_day(q.last), page_q.c,
    )
    stmt = (stmt.outerjoin(BillingGroup, BillingGroup.id == group_id)
            .outerjoin(plan, plan.id == BillingGroup.plan_id)
            .group_by(*columns)
            .order_by(*order))
    return list(session.execute(stmt).all())


# --- Per list, a range of months, by a figure: the months' indexes merged ----------------
#
# The page is the first lists by the sum of their rows over the range. Each month's rows are
# read in the order of that month's (period, figure, list_id) index, all months alike, a
# chunk at a time (Fagin's threshold algorithm): each list met is summed over the range (its
# (list_id, period) key), and a list not met yet can sum at most the figures the cursors
# stand at (descending; ascending: at least the smallest of them). Once the page's lists
# beat that bound, no other list can enter the page: the cost follows how deep the page's
# lists lie in the months' indexes — where a list's figures are alike from month to month,
# about the page's depth — not the fleet. Ties end on list id, as for one month. Where the
# bound does not close within ROUND_BUDGET rows (figures that vary wildly between months,
# or a page deep in a long tie), the grouped statement answers: the same rows, exactly.

_RANGE_FIGURES: Final = ("messages", "recipients", "bytes", "units")
RANGE_MONTHS_MAX: Final = 24  # longer ranges: the grouped statement
RANGE_ROWS_BUDGET: Final = 200_000  # index rows read, over all months, before giving up
RANGE_FIRST_CHUNK: Final = 64  # index rows a month in the first round (then doubled)
RANGE_HEAVY_MAX: Final = 20_000  # rows whose size can count units (their lists summed first)
_SUM_CHUNK: Final = 500  # lists summed per statement


def _list_range_by_figure(q: UsageQuery) -> bool:
    return q.by == "list" and q.first != q.last and q.sort in _RANGE_FIGURES


def _months_of(q: UsageQuery) -> list[date]:
    months: list[date] = []
    month = q.first
    while month <= q.last and len(months) <= RANGE_MONTHS_MAX:
        months.append(month)
        month = add_months(month, 1)
    return months


def _top_lists(session: Session, q: UsageQuery, want: int, desc: bool, figure: str,
               known: dict[int, Any]) -> list[int] | None:
    """The ids of the first ``want`` lists of the range by the sum of ``figure`` (ties on
    list id, the same direction), or None when the bound does not close within the budget.
    ``known``: lists whose sums are given (and count as met), not the sum of ``figure``."""
    months = _months_of(q)
    if len(months) > RANGE_MONTHS_MAX:
        return None
    column = getattr(Usage, figure)
    order = ([column.desc(), Usage.list_id.desc()] if desc
             else [column.asc(), Usage.list_id.asc()])
    depth = {m: 0 for m in months}
    # Where each month's cursor stands: (figure, list id) of the last row read (absent:
    # the month is read to its end).
    at: dict[date, tuple[int, int]] = {}
    sums: dict[int, Any] = dict(known)
    chunk, read = max(want, RANGE_FIRST_CHUNK), 0
    while True:
        met: list[int] = []
        for m in months:
            if m not in depth:
                continue
            stmt = (sa.select(Usage.list_id, column).where(Usage.period == m)
                    .order_by(*order).offset(depth[m]).limit(chunk))
            if q.server_id is not None:
                stmt = stmt.where(Usage.server_id == q.server_id)
            rows = session.execute(stmt).all()
            read += len(rows)
            depth[m] += len(rows)
            if rows:
                at[m] = (int(rows[-1][1] or 0), int(rows[-1][0]))
            if len(rows) < chunk:
                del depth[m]
                at.pop(m, None)
            met += [lid for lid, _v in rows if lid not in sums]
        new = list(dict.fromkeys(met))
        for i in range(0, len(new), _SUM_CHUNK):
            part = new[i:i + _SUM_CHUNK]
            got = dict.fromkeys(part, 0)
            got.update({lid: int(total or 0) for lid, total in session.execute(
                sa.select(Usage.list_id, sa.func.sum(column))
                .where(Usage.list_id.in_(part), Usage.period >= q.first,
                       Usage.period <= q.last)
                .group_by(Usage.list_id))})
            sums.update(got)
        ranked = sorted(sums, key=lambda lid: (sums[lid], lid), reverse=desc)
        if not depth:
            return ranked[:want]  # every month read to its end: exact
        if len(ranked) >= want and _closed(sums[ranked[want - 1]], ranked[want - 1],
                                           list(at.values()), desc):
            return ranked[:want]
        if read >= RANGE_ROWS_BUDGET:
            return None
        chunk *= 2


def _closed(figure: int, list_id: int, cursors: list[tuple[int, int]], desc: bool) -> bool:
    """Whether no list the cursors have not reached can come before (``figure``,
    ``list_id``), the page's last list.

    Descending, such a list sums at most the cursors' figures (``bound``); to tie it, it
    stands at each cursor's figure in every month where it has a row — after the cursor's
    row, so with a smaller id — and has a row in every month whose cursor stands above 0:
    its id is below the smallest id of those cursors (when all stand at 0: below the
    largest cursor id, the list having a row in one month at least).
    Ascending, it sums at least the smallest cursor's figure (``bound``), and ties it only
    with a row in one month whose cursor stands there (and none elsewhere, unless the bound is
    0): its id is above the smallest id of those cursors."""
    if desc:
        bound = sum(f for f, _id in cursors)
        above = [i for f, i in cursors if f > 0]
        below = min(above) if above else max(i for _f, i in cursors)
        return figure > bound or (figure == bound and list_id >= below)
    bound = min(f for f, _id in cursors)
    return figure < bound or (figure == bound
                              and list_id <= min(i for f, i in cursors if f == bound))


def _heavy_units(session: Session, q: UsageQuery) -> dict[int, Any] | None:
    """By message units: the range's units of every list with a row whose size can count
    (kb_per_recipient reaching the smallest Standard plan's size, the kb index), computed
    under the owner in force on the report's last day; every other list's units are its
    recipients, so the recipients indexes bound them. None when more than RANGE_HEAVY_MAX
    rows are heavy (the grouped statement then)."""
    smallest = smallest_size(session)
    if smallest is None:
        return {}
    month = sa.func.coalesce(Usage.period, Usage.period)  # the kb index, not the month's
    # The heavy rows through the kb index; no DISTINCT (SQLite would walk the (list_id,
    # period) key of every row for it): their lists are deduplicated here.
    found = (sa.select(Usage.list_id)
             .where(Usage.kb_per_recipient >= smallest, month >= q.first, month <= q.last)
             .limit(RANGE_HEAVY_MAX + 1))
    if q.server_id is not None:
        found = found.where(sa.func.coalesce(Usage.server_id, 0) == q.server_id)
    rows = list(session.scalars(found))
    if len(rows) > RANGE_HEAVY_MAX:
        return None
    heavy = list(dict.fromkeys(rows))
    plan = aliased(HostingPlan)
    units: dict[int, Any] = {}
    for i in range(0, len(heavy), _SUM_CHUNK):
        part = heavy[i:i + _SUM_CHUNK]
        stmt, group_id = _owner_joins(cast("sa.Select[Any]", (
            sa.select(Usage.list_id).select_from(Usage)
            .join(MailingList, MailingList.id == Usage.list_id))), _last_day(q.last))
        stmt = (stmt.outerjoin(BillingGroup, BillingGroup.id == group_id)
                .outerjoin(plan, plan.id == BillingGroup.plan_id)
                .add_columns(sa.func.sum(_units_of(Usage, plan)))
                .where(Usage.list_id.in_(part), Usage.period >= q.first,
                       Usage.period <= q.last)
                .group_by(Usage.list_id))
        units.update({lid: Decimal(total or 0) for lid, total in session.execute(stmt)})
    return units


def _list_range_figure_page(session: Session, q: UsageQuery, *, offset: int, limit: int
                            ) -> tuple[list[UsageRow], int] | None:
    total = _list_range_count(session, q)
    if offset >= total or limit <= 0:
        return [], total
    flip, offset, limit = _nearer_end(total, offset, limit)
    desc = q.descending != flip
    figure, known = q.sort, {}
    if q.sort == "units":
        heavy = _heavy_units(session, q)
        if heavy is None:
            return None
        figure, known = "recipients", heavy
    top = _top_lists(session, q, offset + limit, desc, figure, known)
    if top is None:
        return None
    ids = top[offset:offset + limit]
    if flip:
        ids.reverse()
    if not ids:
        return [], total
    page_q = _page_lists().where(MailingList.id.in_(ids)).subquery("page")
    place = {lid: i for i, lid in enumerate(ids)}
    rows = sorted(_range_sums(session, q, page_q, [page_q.c.id]),
                  key=lambda r: place[r.list_id])
    return [_row(r, q.by) for r in rows], total


# --- Per customer and per group: from the roll-ups ---------------------------------------
#
# Most lists are paid for by their server's assignment (or by nobody), so an owner's sums are
# its servers' roll-ups (a row per server and month), corrected by the few rows that are
# different: the usage of lists a list or site assignment gives to another owner (moved from
# the server's owner to theirs: rows of those lists only, found from the assignments), and
# the message units sizes add (the rows whose kb_per_recipient reaches the smallest Standard
# plan's Max Message Size, as per server). One statement: the parts UNION ALL, grouped by
# owner; its cost follows servers, assignments below server level and heavy rows, not lists.


def _owners_from_rollups(session: Session, q: UsageQuery, *, with_total: bool
                         ) -> sa.Select[Any]:
    day = _last_day(q.last)
    r = UsageRollup
    by_server = aliased(Assignment)
    num = sa.Numeric(24, 6)
    # 1. Each server's months, to the group its server assignment names (NULL: nobody).
    servers: sa.Select[Any] = cast("sa.Select[Any]", (
        sa.select(by_server.group_id.label("group_id"), r.messages.label("messages"),
                  r.recipients.label("recipients"), r.bytes.label("bytes"),
                  sa.cast(r.recipients, num).label("units"), r.lists.label("n"))
        .select_from(r)
        .outerjoin(by_server, sa.and_(by_server.object_type == "server",
                                      by_server.server_id == r.server_id,
                                      _live(by_server, day)))
        .where(r.period >= q.first, r.period <= q.last)
    ))
    # 2. Lists a list or site assignment gives their own owner: their rows leave the server's
    # owner (negative) and go to theirs.
    own = aliased(Assignment)
    site = aliased(Site)
    listed = sa.select(own.list_id.label("list_id")).where(
        own.object_type == "list", _live(own, day), own.list_id.is_not(None))
    in_sites = (
        sa.select(MailingList.id.label("list_id"))
        .select_from(own)
        .join(site, site.id == own.site_id)
        .join(MailingList, sa.and_(MailingList.server_id == site.server_id,
                                   MailingList.site_name == site.name))
        .where(own.object_type == "site", _live(own, day))
    )
    specific = sa.union(listed, in_sites).subquery("specific")
    moved_base: sa.Select[Any] = cast("sa.Select[Any]", (
        sa.select(Usage.messages, Usage.recipients, Usage.bytes, Usage.server_id)
        .select_from(specific)
        .join(Usage, Usage.list_id == specific.c.list_id)
        .join(MailingList, MailingList.id == Usage.list_id)
        .where(Usage.period >= q.first, Usage.period <= q.last)
    ))
    server_of = aliased(Assignment)
    away: sa.Select[Any] = cast("sa.Select[Any]", (
        moved_base.outerjoin(server_of, sa.and_(server_of.object_type == "server",
                                                server_of.server_id == Usage.server_id,
                                                _live(server_of, day)))
        .with_only_columns(
            server_of.group_id.label("group_id"), (-Usage.messages).label("messages"),
            (-Usage.recipients).label("recipients"), (-Usage.bytes).label("bytes"),
            (-sa.cast(Usage.recipients, num)).label("units"), sa.literal(-1).label("n"))
    ))
    to_stmt, to_group = _owner_joins(moved_base, day)
    to = to_stmt.with_only_columns(
        to_group.label("group_id"), Usage.messages.label("messages"),
        Usage.recipients.label("recipients"), Usage.bytes.label("bytes"),
        sa.cast(Usage.recipients, num).label("units"), sa.literal(1).label("n"))
    parts: list[sa.Select[Any]] = [servers, away, to]
    # 3. What sizes add to the units, on the rows where they can.
    smallest = smallest_size(session)
    if smallest is not None:
        plan = aliased(HostingPlan)
        kb = plan.max_message_size_kb
        per_size = sa.cast(Usage.bytes, num) / (kb * 1024)
        month = sa.func.coalesce(Usage.period, Usage.period)  # see _per_server
        heavy, heavy_group = _owner_joins(
            sa.select(Usage.id).select_from(Usage)
            .join(MailingList, MailingList.id == Usage.list_id), day)
        heavy = (
            heavy.join(BillingGroup, BillingGroup.id == heavy_group)
            .join(plan, plan.id == BillingGroup.plan_id)
            .where(Usage.kb_per_recipient >= smallest, month >= q.first, month <= q.last,
                   kb > 0, plan.billing_method == "standard", per_size > Usage.recipients)
            .with_only_columns(
                heavy_group.label("group_id"), sa.literal(0).label("messages"),
                sa.literal(0).label("recipients"), sa.literal(0).label("bytes"),
                (per_size - sa.cast(Usage.recipients, num)).label("units"),
                sa.literal(0).label("n"))
        )
        parts.append(heavy)
    if q.server_id is not None:
        parts[0] = parts[0].where(r.server_id == q.server_id)
        parts[1:] = [p.where(Usage.server_id == q.server_id) for p in parts[1:]]
    pieces = sa.union_all(*parts).subquery("pieces")
    sums = [
        sa.func.sum(pieces.c.messages).label("messages"),
        sa.func.sum(pieces.c.recipients).label("recipients"),
        sa.func.sum(pieces.c.bytes).label("bytes"),
        sa.func.sum(pieces.c.units).label("units"),
    ]
    if q.by == "customer":
        named = [("owner_id", Customer.id), ("owner", Customer.company)]
    else:
        named = [("owner_id", Customer.id), ("owner", Customer.company),
                 ("group_id", BillingGroup.id), ("group", BillingGroup.name)]
    columns = [column for _label, column in named]
    extra = [sa.func.count().over().label("total")] if with_total else []
    stmt: sa.Select[Any] = cast("sa.Select[Any]", (
        sa.select(*[c.label(label) for label, c in named], *sums, *extra)
        .select_from(pieces)
        .outerjoin(BillingGroup, BillingGroup.id == pieces.c.group_id)
        .outerjoin(Customer, Customer.id == BillingGroup.customer_id)
        .group_by(*columns)
        # n counts an owner's Usage rows (a server's roll-up counts its lists, a moved list
        # -1 there and +1 at its owner): an owner left with none is not a row, as in the
        # per-row statement.
        .having(sa.func.sum(pieces.c.n) > 0)
    ))
    sort_by: Any = {"name": columns[-1], "messages": sums[0], "recipients": sums[1],
                    "bytes": sums[2], "units": sums[3]}[q.sort]
    order = sort_by.desc() if q.descending else sort_by.asc()
    return stmt.order_by(order, *columns)


def _row(r: Any, by: str) -> UsageRow:
    m = r._mapping
    owner = m.get("owner")
    return UsageRow(
        key=tuple(m.get(k) for k in ("server_id", "site", "list_id", "owner_id", "group_id")),
        server_id=m.get("server_id"), server=m.get("server") or "", site=m.get("site") or "",
        list=m.get("list") or "", list_id=m.get("list_id"), owner_id=m.get("owner_id"),
        owner=owner if owner is not None else (UNOWNED if by in ("customer", "group") else ""),
        group=m.get("group") or "", messages=int(m["messages"] or 0),
        recipients=int(m["recipients"] or 0), bytes=int(m["bytes"] or 0),
        units=Decimal(m["units"] or 0).quantize(Decimal("0.001")),
    )


def usage_page(session: Session, q: UsageQuery, *, offset: int, limit: int
               ) -> tuple[list[UsageRow], int]:
    """One page of rows and the number of rows in all: one statement (two or three per list,
    for one month, or a range by name: the count, then the page through an index)."""
    if _list_by_index(q):
        return _list_month_page(session, q, offset=offset, limit=limit)
    if _list_range_by_name(q):
        return _list_range_page(session, q, offset=offset, limit=limit)
    if _list_range_by_figure(q):
        merged = _list_range_figure_page(session, q, offset=offset, limit=limit)
        if merged is not None:
            return merged
    if q.by in ("customer", "group"):
        stmt = _owners_from_rollups(session, q, with_total=True)
    else:
        stmt = _grouped(session, q, with_total=True)
    rows = session.execute(stmt.offset(offset).limit(limit)).all()
    total = int(rows[0].total) if rows else 0
    return [_row(r, q.by) for r in rows], total


def usage_count(session: Session, q: UsageQuery) -> int:
    """How many rows the report has (for a page number past the end)."""
    if _list_by_index(q):
        return _list_month_count(session, q)
    if q.by == "list":  # a range of months, sorted by a figure: the same lists
        return _list_range_count(session, q)
    grouped = (_owners_from_rollups(session, q, with_total=False)
               if q.by in ("customer", "group") else _grouped(session, q, with_total=False))
    inner = grouped.order_by(None).subquery("grouped")
    return int(session.scalar(sa.select(sa.func.count()).select_from(inner)) or 0)


def usage_rows(session: Session, q: UsageQuery) -> Iterator[UsageRow]:
    """Every row, streamed (for the CSV): one statement, fetched in chunks."""
    stmt = (_owners_from_rollups(session, q, with_total=False)
            if q.by in ("customer", "group") else _grouped(session, q, with_total=False))
    result = session.execute(stmt.execution_options(yield_per=2000))
    for r in result:
        yield _row(r, q.by)


def usage_trend(session: Session, q: UsageQuery, months: list[date]
                ) -> dict[date, tuple[int, int]]:
    """Messages and recipients per month over ``months`` (same server filter), from the
    roll-ups."""
    r = UsageRollup
    stmt = (
        sa.select(r.period, sa.func.sum(r.messages), sa.func.sum(r.recipients))
        .where(r.period >= months[0], r.period <= months[-1])
        .group_by(r.period)
    )
    if q.server_id is not None:
        stmt = stmt.where(r.server_id == q.server_id)
    return {p: (int(m or 0), int(r or 0)) for p, m, r in session.execute(stmt)}
