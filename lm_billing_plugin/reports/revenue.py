"""The Revenue report: invoiced amounts per month, customer, hosting plan and server, and the
outstanding bills (issued, not sent); each section one grouped query, per currency.

Per customer and per month read invoice totals. Per hosting plan reads the invoice lines under
the plan each was billed under (InvoiceLine.plan_name, written at billing time: a later change
of the group's plan leaves past revenue with the old plan; lines of invoices issued before
0008 were filled from the plan term that covered their period). Per server splits each group's
lines over the servers its lists were on, in proportion to their message units on that invoice
(by list count when no units were counted); lines of a group with no usage on the invoice
(e.g. charges only) show as "not tied to a server".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..models import Invoice, InvoiceLine, InvoiceUsage
from .overview import REVENUE_STATUSES
from .periods import add_months

__all__ = ["OUTSTANDING_STATUSES", "Amount", "by_customer", "by_month", "by_plan", "by_server",
           "outstanding"]

CENT: Final = Decimal("0.01")
# Issued but not sent to the customer (a test copy may have gone to the operator).
OUTSTANDING_STATUSES: Final = ("issued", "test-sent")
NO_PLAN: Final = "(no hosting plan)"
NO_SERVER: Final = "(not tied to a server)"


@dataclass(frozen=True, slots=True)
class Amount:
    key: Any  # month (date), customer id, plan name or server name
    label: str
    currency: str
    amount: Decimal
    invoices: int


def _money(value: Any) -> Decimal:
    return Decimal(str(value or 0)).quantize(CENT)


def _in_range(first: date, last: date) -> Any:
    return sa.and_(Invoice.status.in_(REVENUE_STATUSES), Invoice.period_start >= first,
                   Invoice.period_start < add_months(last, 1))


def by_month(session: Session, first: date, last: date) -> list[Amount]:
    rows = session.execute(
        sa.select(Invoice.period_start, Invoice.currency, sa.func.sum(Invoice.total),
                  sa.func.count())
        .where(_in_range(first, last)).group_by(Invoice.period_start, Invoice.currency)
    ).all()
    folded: dict[tuple[date, str], list[Any]] = {}
    for start, currency, total, n in rows:  # a few rows per month: folded here, portably
        cell = folded.setdefault((start.replace(day=1), currency), [Decimal(0), 0])
        cell[0] += _money(total)
        cell[1] += int(n)
    return [Amount(m, m.strftime("%Y-%m"), c, v[0], v[1])
            for (m, c), v in sorted(folded.items())]


def by_customer(session: Session, first: date, last: date) -> list[Amount]:
    total = sa.func.sum(Invoice.total).label("amount")
    # The newest company name on the invoices (a snapshot per invoice) names the customer.
    rows = session.execute(
        sa.select(Invoice.customer_id, sa.func.max(Invoice.company), Invoice.currency, total,
                  sa.func.count())
        .where(_in_range(first, last)).group_by(Invoice.customer_id, Invoice.currency)
        .order_by(total.desc(), Invoice.customer_id)
    ).all()
    return [Amount(r[0], r[1], r[2], _money(r[3]), int(r[4])) for r in rows]


def by_plan(session: Session, first: date, last: date) -> list[Amount]:
    name = sa.case((InvoiceLine.plan_name == "", NO_PLAN),
                   else_=InvoiceLine.plan_name).label("plan")
    total = sa.func.sum(InvoiceLine.amount).label("amount")
    rows = session.execute(
        sa.select(name, Invoice.currency, total,
                  sa.func.count(sa.distinct(Invoice.id)))
        .select_from(InvoiceLine)
        .join(Invoice, Invoice.id == InvoiceLine.invoice_id)
        .where(_in_range(first, last))
        .group_by(name, Invoice.currency).order_by(total.desc(), name)
    ).all()
    return [Amount(r[0], r[0], r[1], _money(r[2]), int(r[3])) for r in rows]


def by_server(session: Session, first: date, last: date) -> list[Amount]:
    inv = sa.select(Invoice.id, Invoice.currency).where(_in_range(first, last)).subquery("inv")
    lines = (
        sa.select(InvoiceLine.invoice_id, InvoiceLine.group_name,
                  sa.func.sum(InvoiceLine.amount).label("amount"))
        .join(inv, inv.c.id == InvoiceLine.invoice_id)
        .group_by(InvoiceLine.invoice_id, InvoiceLine.group_name).subquery("lines")
    )
    per_server = (
        sa.select(InvoiceUsage.invoice_id, InvoiceUsage.group_name, InvoiceUsage.server_name,
                  sa.func.sum(InvoiceUsage.units).label("units"),
                  sa.func.count().label("n"))
        .join(inv, inv.c.id == InvoiceUsage.invoice_id)
        .group_by(InvoiceUsage.invoice_id, InvoiceUsage.group_name, InvoiceUsage.server_name)
        .subquery("per_server")
    )
    per_group = (
        sa.select(per_server.c.invoice_id, per_server.c.group_name,
                  sa.func.sum(per_server.c.units).label("units"),
                  sa.func.sum(per_server.c.n).label("n"))
        .group_by(per_server.c.invoice_id, per_server.c.group_name).subquery("per_group")
    )
    share = sa.case(
        (per_group.c.units > 0, lines.c.amount * per_server.c.units / per_group.c.units),
        else_=lines.c.amount * per_server.c.n / per_group.c.n,
    )
    server = sa.func.coalesce(per_server.c.server_name, NO_SERVER).label("server")
    amount = sa.func.sum(sa.case((per_group.c.n.is_(None), lines.c.amount), else_=share))
    rows = session.execute(
        sa.select(server, inv.c.currency, amount.label("amount"),
                  sa.func.count(sa.distinct(lines.c.invoice_id)))
        .select_from(lines)
        .join(inv, inv.c.id == lines.c.invoice_id)
        .outerjoin(per_group, sa.and_(per_group.c.invoice_id == lines.c.invoice_id,
                                      per_group.c.group_name == lines.c.group_name))
        .outerjoin(per_server, sa.and_(per_server.c.invoice_id == lines.c.invoice_id,
                                       per_server.c.group_name == lines.c.group_name))
        .group_by(server, inv.c.currency).order_by(sa.desc("amount"), server)
    ).all()
    return [Amount(r[0], r[0], r[1], _money(r[2]), int(r[3])) for r in rows]


@dataclass(frozen=True, slots=True)
class Outstanding:
    id: int
    number: str
    customer_id: int
    company: str
    period_start: date
    period_end: date
    currency: str
    total: Decimal
    status: str


def outstanding(session: Session, *, offset: int, limit: int
                ) -> tuple[list[Outstanding], int, dict[str, Decimal]]:
    """Issued bills not sent yet, oldest first: a page of them, how many, and the sum per
    currency (two statements)."""
    where = Invoice.status.in_(OUTSTANDING_STATUSES)
    rows = session.execute(
        sa.select(Invoice.id, Invoice.number, Invoice.customer_id, Invoice.company,
                  Invoice.period_start, Invoice.period_end, Invoice.currency, Invoice.total,
                  Invoice.status)
        .where(where).order_by(Invoice.period_start, Invoice.id).offset(offset).limit(limit)
    ).all()
    sums = session.execute(
        sa.select(Invoice.currency, sa.func.sum(Invoice.total), sa.func.count())
        .where(where).group_by(Invoice.currency)
    ).all()
    total = sum(int(n) for _c, _s, n in sums)
    return ([Outstanding(*r[:7], _money(r[7]), r[8]) for r in rows], total,
            {c: _money(s) for c, s, _n in sums})
