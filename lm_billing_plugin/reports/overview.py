"""The Overview's figures: servers by status, open problems by kind and server, the fleet's
last validation and sync, usage (from the roll-ups per server and month, engine.rollup) and
invoiced revenue per month; a fixed number of queries."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..models import Invoice, Problem, Server, UsageRollup
from .periods import last_months

__all__ = [
    "BUCKET_SLUGS",
    "REVENUE_STATUSES",
    "STATUS_BUCKETS",
    "Freshness",
    "MonthUsage",
    "bucket_condition",
    "fleet_freshness",
    "problems_by_kind",
    "problems_by_server",
    "revenue_by_month",
    "servers_by_status",
    "usage_by_month",
    "usage_by_server",
]

# What the overview groups Server.status into (the brief's five, and the rest of trouble).
STATUS_BUCKETS: Final = {
    "ok": "reachable",
    "host_denied": "refused",
    "auth_failed": "refused",
    "unreachable": "unreachable",
    "logging_off": "logging off",
    "unchecked": "not checked",
    "error": "other trouble",
    "interrupted": "other trouble",
}
BUCKET_ORDER: Final = ("reachable", "refused", "unreachable", "logging off", "not checked",
                       "other trouble")
# The Servers page's ?status= value of each bucket (a URL word: no spaces).
BUCKET_SLUGS: Final = {
    "reachable": "reachable",
    "refused": "refused",
    "unreachable": "unreachable",
    "logging off": "logging-off",
    "not checked": "not-checked",
    "other trouble": "other",
}


def bucket_condition(bucket: str) -> Any:
    """The WHERE of a bucket's servers: active ones whose status falls in it (the servers
    servers_by_status counts there). "other trouble" is every status the named buckets do not
    hold, so a status added later is never lost between the filters."""
    if bucket == "other trouble":
        named = sorted(code for code, b in STATUS_BUCKETS.items() if b != "other trouble")
        return sa.and_(Server.active.is_(True), Server.status.not_in(named))
    codes = sorted(code for code, b in STATUS_BUCKETS.items() if b == bucket)
    return sa.and_(Server.active.is_(True), Server.status.in_(codes))
# Invoices that count as invoiced: everything issued and not voided (a test copy sent is
# still an issued bill).
REVENUE_STATUSES: Final = ("issued", "sent", "test-sent")


def servers_by_status(session: Session) -> dict[str, dict[str, int]]:
    """Active servers per bucket, and per status code inside each bucket."""
    rows = session.execute(
        sa.select(Server.status, sa.func.count())
        .where(Server.active.is_(True)).group_by(Server.status)
    ).all()
    out: dict[str, dict[str, int]] = {b: {} for b in BUCKET_ORDER}
    for status, n in rows:
        out[STATUS_BUCKETS.get(status, "other trouble")][status] = int(n)
    return out


def problems_by_kind(session: Session) -> list[tuple[str, int]]:
    rows = session.execute(
        sa.select(Problem.kind, sa.func.count().label("n"))
        .where(Problem.status == "open").group_by(Problem.kind)
        .order_by(sa.desc("n"), Problem.kind)
    ).all()
    return [(kind, int(n)) for kind, n in rows]


def problems_by_server(session: Session, limit: int = 10) -> tuple[list[tuple[int, str, int]],
                                                                     int]:
    """The ``limit`` servers with the most open problems, and how many servers have any."""
    n = sa.func.count().label("n")
    rows = session.execute(
        sa.select(Server.id, Server.name, n, sa.func.count().over().label("servers"))
        .join(Problem, Problem.server_id == Server.id)
        .where(Problem.status == "open").group_by(Server.id, Server.name)
        .order_by(sa.desc("n"), Server.name).limit(limit)
    ).all()
    total = int(rows[0].servers) if rows else 0
    return [(r.id, r.name, int(r.n)) for r in rows], total


@dataclass(frozen=True, slots=True)
class Freshness:
    """When the active fleet was last validated and synced: newest, oldest, never."""

    servers: int
    last_validated: datetime | None
    oldest_validated: datetime | None
    never_validated: int
    last_synced: datetime | None
    oldest_synced: datetime | None
    never_synced: int


def fleet_freshness(session: Session) -> Freshness:
    never_v = sa.func.sum(sa.case((Server.validated_at.is_(None), 1), else_=0))
    never_s = sa.func.sum(sa.case((Server.synced_at.is_(None), 1), else_=0))
    row = session.execute(
        sa.select(sa.func.count(), sa.func.max(Server.validated_at),
                  sa.func.min(Server.validated_at), never_v, sa.func.max(Server.synced_at),
                  sa.func.min(Server.synced_at), never_s)
        .where(Server.active.is_(True))
    ).one()
    # MIN/MAX keep the column's type (UTCDateTime): the values come back aware.
    return Freshness(int(row[0] or 0), row[1], row[2], int(row[3] or 0), row[4], row[5],
                     int(row[6] or 0))


@dataclass(frozen=True, slots=True)
class MonthUsage:
    month: date
    messages: int
    recipients: int


def usage_by_month(session: Session, today: date, server_id: int | None = None,
                   months: int = 12) -> list[MonthUsage]:
    """Messages and recipients per month over the last ``months`` months (fleet, or one
    server), every month present (0 when nothing was logged)."""
    wanted = last_months(today, months)
    r = UsageRollup
    query = (
        sa.select(r.period, sa.func.sum(r.messages), sa.func.sum(r.recipients))
        .where(r.period >= wanted[0], r.period <= wanted[-1])
        .group_by(r.period)
    )
    if server_id is not None:
        query = query.where(r.server_id == server_id)
    got = {period: (int(m or 0), int(r or 0)) for period, m, r in session.execute(query)}
    return [MonthUsage(m, *got.get(m, (0, 0))) for m in wanted]


def usage_by_server(session: Session, today: date, months: int = 12
                    ) -> list[tuple[int, str, int, int]]:
    """Per active server: messages and recipients over the last ``months`` months."""
    wanted = last_months(today, months)
    r = UsageRollup
    messages = sa.func.coalesce(sa.func.sum(r.messages), 0).label("messages")
    rows = session.execute(
        sa.select(Server.id, Server.name, messages,
                  sa.func.coalesce(sa.func.sum(r.recipients), 0))
        .outerjoin(r, sa.and_(r.server_id == Server.id, r.period >= wanted[0],
                              r.period <= wanted[-1]))
        .where(Server.active.is_(True))
        .group_by(Server.id, Server.name).order_by(sa.desc("messages"), Server.name)
    ).all()
    return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows]


@dataclass
class MonthRevenue:
    month: date
    amounts: dict[str, Decimal] = field(default_factory=dict)  # currency -> total


def revenue_by_month(session: Session, today: date, months: int = 12) -> list[MonthRevenue]:
    """Totals of issued (not void) invoices per month of their period's start, per currency."""
    wanted = last_months(today, months)
    rows = session.execute(
        sa.select(Invoice.period_start, Invoice.currency, sa.func.sum(Invoice.total))
        .where(Invoice.status.in_(REVENUE_STATUSES), Invoice.period_start >= wanted[0])
        .group_by(Invoice.period_start, Invoice.currency)
    ).all()
    # Grouped by period start in SQL (portable), folded into months here: a handful of rows.
    folded: dict[date, dict[str, Decimal]] = defaultdict(dict)
    for start, currency, total in rows:
        month = start.replace(day=1)
        cents = Decimal(total or 0).quantize(Decimal("0.01"))
        folded[month][currency] = folded[month].get(currency, Decimal("0")) + cents
    return [MonthRevenue(m, dict(folded.get(m, {}))) for m in wanted]
