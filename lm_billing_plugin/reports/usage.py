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
from dataclasses import dataclass
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
    UsageRollup,
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


def _owner_joins(stmt: sa.Select[Any], day: date) -> tuple[sa.Select[Any], Any]:
    """LEFT JOIN the list's own, its site's and its server's assignment in force on ``day``;
    returns the statement and the paying group's id (the most specific one that exists).
    Three index lookups per row instead of expanding every assignment into its lists."""
    by_list, by_site, by_server = aliased(Assignment), aliased(Assignment), aliased(Assignment)
    site = aliased(Site)
    stmt = (
        stmt.outerjoin(by_list, sa.and_(by_list.object_type == "list",
                                        by_list.list_id == MailingList.id, _live(by_list, day)))
        .outerjoin(site, sa.and_(site.server_id == MailingList.server_id,
                                 site.name == MailingList.site_name))
        .outerjoin(by_site, sa.and_(by_site.object_type == "site", by_site.site_id == site.id,
                                    _live(by_site, day)))
        .outerjoin(by_server, sa.and_(by_server.object_type == "server",
                                      by_server.server_id == MailingList.server_id,
                                      _live(by_server, day)))
    )
    return stmt, sa.func.coalesce(by_list.group_id, by_site.group_id, by_server.group_id)


def _per_server(q: UsageQuery, smallest: int | None, *, with_total: bool) -> sa.Select[Any]:
    """By server, from the roll-ups (a row per server and month, engine.rollup): messages,
    recipients and bytes summed; units = recipients plus what sizes add over them. Sizes add
    only on lists of a Standard plan with a Max Message Size whose bytes per recipient exceed
    it: Usage rows with kb_per_recipient >= ``smallest`` such size, read through that index
    alone (the month is checked on those rows, not looked up: a month holds every list)."""
    r = UsageRollup
    totals = (
        sa.select(r.server_id, sa.func.sum(r.messages).label("messages"),
                  sa.func.sum(r.recipients).label("recipients"),
                  sa.func.sum(r.bytes).label("bytes"))
        .where(r.period >= q.first, r.period <= q.last)
        .group_by(r.server_id)
    )
    if q.server_id is not None:
        totals = totals.where(r.server_id == q.server_id)
    totals_q = totals.subquery("totals")
    units: Any = sa.cast(totals_q.c.recipients, sa.Numeric(24, 6))
    stmt: sa.Select[Any] = cast("sa.Select[Any]", (
        sa.select(Server.id.label("server_id"), Server.name.label("server"))
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
        base = cast("sa.Select[Any]", (
            sa.select(server,
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
            .group_by(server)
        )
        if q.server_id is not None:
            heavy = heavy.where(server == q.server_id)
        extra_q = heavy.subquery("extra")
        stmt = stmt.outerjoin(extra_q, extra_q.c.server_id == totals_q.c.server_id)
        units = units + sa.func.coalesce(extra_q.c.extra, 0)
    extra = [sa.func.count().over().label("total")] if with_total else []
    stmt = stmt.add_columns(
        totals_q.c.messages.label("messages"), totals_q.c.recipients.label("recipients"),
        totals_q.c.bytes.label("bytes"), units.label("units"), *extra)
    sort_by: Any = {"name": Server.name, "messages": totals_q.c.messages,
                    "recipients": totals_q.c.recipients, "bytes": totals_q.c.bytes,
                    "units": units}[q.sort]
    order = sort_by.desc() if q.descending else sort_by.asc()
    return stmt.order_by(order, Server.id, Server.name)


def smallest_size(session: Session) -> int | None:
    """The smallest Max Message Size (KB) of a Standard plan: below it no size counts."""
    return session.scalar(
        sa.select(sa.func.min(HostingPlan.max_message_size_kb))
        .where(HostingPlan.billing_method == "standard", HostingPlan.max_message_size_kb > 0))


def _grouped(session: Session, q: UsageQuery, *, with_total: bool) -> sa.Select[Any]:
    """One row per group of ``q.by`` with its sums (and the number of groups, for paging).
    By server it reads the smallest plan size first (one more, small, statement)."""
    if q.by == "server":
        return _per_server(q, smallest_size(session), with_total=with_total)
    plan = aliased(HostingPlan)
    kb = plan.max_message_size_kb
    # Units per list and month, as billing counts them (see the module docstring).
    per_size = sa.cast(Usage.bytes, sa.Numeric(24, 6)) / (kb * 1024)
    units = sa.case(
        (sa.and_(kb > 0, plan.billing_method == "standard", per_size > Usage.recipients),
         per_size),
        else_=sa.cast(Usage.recipients, sa.Numeric(24, 6)),
    )
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
    # The group's own columns break ties, so paging is stable.
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
    """One page of rows and the number of rows in all: one statement."""
    rows = session.execute(_grouped(session, q, with_total=True)
                           .offset(offset).limit(limit)).all()
    total = int(rows[0].total) if rows else 0
    return [_row(r, q.by) for r in rows], total


def usage_count(session: Session, q: UsageQuery) -> int:
    """How many rows the report has (for a page number past the end)."""
    inner = _grouped(session, q, with_total=False).order_by(None).subquery("grouped")
    return int(session.scalar(sa.select(sa.func.count()).select_from(inner)) or 0)


def usage_rows(session: Session, q: UsageQuery) -> Iterator[UsageRow]:
    """Every row, streamed (for the CSV): one statement, fetched in chunks."""
    result = session.execute(_grouped(session, q, with_total=False)
                             .execution_options(yield_per=2000))
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
