"""Issued invoices: store one whole inside the caller's transaction (number taken there), void
one (who, when, why), find, list and export them (streamed); carried credits between them."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import audit, signals
from ..i18n import M_
from ..models import (
    ChargeAssignment,
    Customer,
    Invoice,
    InvoiceLine,
    InvoiceUsage,
    invoice_active_key,
    utcnow,
)
from ..state import get_state
from .compute import CarriedCredit, InvoiceDraft, Period
from .numbers import next_invoice_number

__all__ = [
    "EXPORT_FIELDS",
    "AlreadyBilled",
    "ChargeTaken",
    "CustomerSnapshot",
    "InvoiceError",
    "active_invoice",
    "billed_charge_ids",
    "carried_credit",
    "export_csv",
    "export_rows",
    "find_invoice",
    "invoice_document",
    "invoice_lines",
    "invoice_usage",
    "issued_day",
    "line_document",
    "price_text",
    "store_invoice",
    "void_invoice",
]


class InvoiceError(ValueError):
    """An invoice request that cannot be done as asked; the message says what to do."""


class AlreadyBilled(Exception):
    """The period already has a non-void invoice for this customer (the active_key guard)."""

    def __init__(self, invoice_id: int, number: str) -> None:
        super().__init__(f"already billed: invoice {number}")
        self.invoice_id = invoice_id
        self.number = number


class ChargeTaken(Exception):
    """A one-time charge this draft bills was billed by another invoice meanwhile."""


@dataclass(frozen=True)
class CustomerSnapshot:
    """What an invoice copies from the customer at issue time (later edits never change it)."""

    customer_id: int
    company: str
    contact_name: str
    email: str
    additional_emails: str


def active_invoice(session: Session, customer_id: int, start: date, end: date
                   ) -> tuple[int, str] | None:
    """(id, number) of the customer's non-void invoice for exactly start..end, if any."""
    row = session.execute(
        sa.select(Invoice.id, Invoice.number)
        .where(Invoice.active_key == invoice_active_key(customer_id, start, end))
    ).one_or_none()
    return (row.id, row.number) if row is not None else None


def carried_credit(session: Session, customer_id: int, start: date
                   ) -> tuple[CarriedCredit | None, int | None]:
    """The credit the customer's latest non-void invoice before ``start`` carried over, unless
    another non-void invoice already used it; and that invoice's id."""
    prev = session.execute(
        sa.select(Invoice.id, Invoice.number, Invoice.carried_over)
        .where(Invoice.customer_id == customer_id, Invoice.status != "void",
               Invoice.period_end < start)
        .order_by(Invoice.period_end.desc(), Invoice.id.desc())
        .limit(1)
    ).one_or_none()
    if prev is None or not prev.carried_over or prev.carried_over <= 0:
        return None, None
    used = session.scalar(
        sa.select(Invoice.id).where(Invoice.carried_from_id == prev.id,
                                    Invoice.status != "void").limit(1)
    )
    if used is not None:
        return None, None
    return CarriedCredit(prev.number, Decimal(prev.carried_over)), int(prev.id)


def billed_charge_ids(session: Session, charge_assignment_ids: Sequence[int]) -> set[int]:
    """Which of these charge assignments a non-void invoice has billed (one-time charges)."""
    if not charge_assignment_ids:
        return set()
    rows = session.execute(
        sa.select(ChargeAssignment.id)
        .join(Invoice, Invoice.id == ChargeAssignment.invoice_id)
        .where(ChargeAssignment.id.in_(sorted(set(charge_assignment_ids))),
               Invoice.status != "void")
    ).scalars()
    return set(rows)


def store_invoice(
    session: Session,
    *,
    customer: CustomerSnapshot,
    period: Period,
    draft: InvoiceDraft,
    run_id: int | None,
    actor: str,
    carried_from_id: int | None,
) -> Invoice:
    """Write the invoice, its lines and usage, and mark its one-time charges billed, inside
    the session's open transaction (the caller commits; on any error it rolls back, which
    also gives the number back). Raises AlreadyBilled or ChargeTaken before writing; the
    active_key unique constraint catches a concurrent writer at the INSERT (IntegrityError,
    or on MariaDB possibly a deadlock: engine.store.is_conflict)."""
    existing = active_invoice(session, customer.customer_id, period.start, period.end)
    if existing is not None:
        raise AlreadyBilled(*existing)
    settings = get_state().settings
    now = utcnow()
    # The year of the billing day it is issued on (LM_BILLING_BILLING_TIMEZONE): an invoice
    # issued at 00:30 on 1 January in Berlin starts the new year's sequence, not UTC's old one.
    year = issued_day(now).year
    seq, number = next_invoice_number(session, year, settings.invoice_number_format)
    invoice = Invoice(
        number=number, year=year, seq=seq, customer_id=customer.customer_id, run_id=run_id,
        period_start=period.start, period_end=period.end, status="issued",
        active_key=invoice_active_key(customer.customer_id, period.start, period.end),
        currency=settings.currency, total=draft.total, carried_over=draft.carried_over,
        carried_from_id=carried_from_id if any(
            line.kind == "credit" and line.amount < 0 for line in draft.lines) else None,
        company=customer.company, contact_name=customer.contact_name, email=customer.email,
        additional_emails=customer.additional_emails, created_by=actor, created_at=now,
    )
    session.add(invoice)
    session.flush()
    session.execute(sa.insert(InvoiceLine), [
        {"invoice_id": invoice.id, "position": i, "group_name": line.group,
         "plan_name": line.plan[:200], "kind": line.kind, "description": line.description,
         "quantity": line.quantity,
         "unit_price": line.unit_price, "amount": line.amount}
        for i, line in enumerate(draft.lines, start=1)])
    if draft.usage:
        session.execute(sa.insert(InvoiceUsage), [
            {"invoice_id": invoice.id, "group_name": u.group, "server_name": u.server,
             "site_name": u.site, "list_name": u.list_name, "messages": u.messages,
             "recipients": u.recipients, "bytes": u.bytes, "units": u.units}
            for u in draft.usage])
    if draft.consumed_charges:
        wanted = sorted(set(draft.consumed_charges))
        void_ids = sa.select(Invoice.id).where(Invoice.status == "void")
        marked = session.execute(
            sa.update(ChargeAssignment)
            .where(ChargeAssignment.id.in_(wanted),
                   sa.or_(ChargeAssignment.invoice_id.is_(None),
                          ChargeAssignment.invoice_id.in_(void_ids)))
            .values(invoice_id=invoice.id)
            .execution_options(synchronize_session=False)
        )
        if marked.rowcount != len(wanted):  # type: ignore[attr-defined]
            raise ChargeTaken(f"invoice {number}: a one-time charge was billed meanwhile")
    audit.record(session, actor=actor, action="invoice_issue", object_type="customer",
                 object_id=customer.customer_id,
                 detail={"invoice": number, "invoice_id": invoice.id,
                         "start": period.start.isoformat(), "end": period.end.isoformat(),
                         "total": str(draft.total), "currency": settings.currency})
    return invoice


def issued_day(created_at: datetime) -> date:
    """The billing day (LM_BILLING_BILLING_TIMEZONE) an invoice was issued on: the day its
    year and its printed "Issued" date are; UTC outside an app."""
    from flask import has_app_context

    if has_app_context():
        return get_state().settings.billing_today(created_at)
    return created_at.date()


def find_invoice(session: Session, key: str | int) -> Invoice | None:
    """An invoice by its printed number, or by id when key is an int."""
    if isinstance(key, int):
        return session.get(Invoice, key)
    return session.scalar(sa.select(Invoice).where(Invoice.number == key))


def void_invoice(key: str | int, *, reason: str, actor: str) -> Invoice:
    """Void an invoice (kept, with who, when and why) and give its one-time charges back, so
    running the period again bills them. Commits. Raises InvoiceError."""
    session = get_state().session
    reason = reason.strip()
    if not reason:
        raise InvoiceError(M_("give the reason for voiding (it is kept with the invoice)"))
    try:
        invoice = find_invoice(session, key)
        if invoice is None:
            raise InvoiceError(M_("there is no invoice %(key)s; `flask lm-billing bills list` "
                                  "shows the numbers") % {"key": key})
        if invoice.status == "void":
            raise InvoiceError(M_("invoice %(number)s is already void (by %(who)s: %(reason)s)")
                               % {"number": invoice.number, "who": invoice.voided_by,
                                  "reason": invoice.void_reason})
        now = utcnow()
        invoice.status = "void"
        invoice.active_key = None
        invoice.void_reason = reason[:10_000]
        invoice.voided_by = actor
        invoice.voided_at = now
        session.execute(
            sa.update(ChargeAssignment).where(ChargeAssignment.invoice_id == invoice.id)
            .values(invoice_id=None).execution_options(synchronize_session=False))
        audit.record(session, actor=actor, action="invoice_void", object_type="customer",
                     object_id=invoice.customer_id,
                     detail={"invoice": invoice.number, "invoice_id": invoice.id,
                             "reason": reason[:500]}, at=now)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    signals.send(signals.bill_voided, invoice_id=invoice.id, number=invoice.number,
                 reason=invoice.void_reason, actor=actor)
    return invoice


def invoice_lines(session: Session, invoice_id: int) -> list[InvoiceLine]:
    return list(session.scalars(
        sa.select(InvoiceLine).where(InvoiceLine.invoice_id == invoice_id)
        .order_by(InvoiceLine.position)))


def invoice_usage(session: Session, invoice_id: int) -> list[InvoiceUsage]:
    return list(session.scalars(
        sa.select(InvoiceUsage).where(InvoiceUsage.invoice_id == invoice_id)
        .order_by(InvoiceUsage.group_name, InvoiceUsage.server_name, InvoiceUsage.site_name,
                  InvoiceUsage.list_name)))


def _money(value: Decimal) -> str:
    return f"{Decimal(value):.2f}"


def price_text(value: Decimal) -> str:
    """A unit price with 2 decimals, or more when it has them (a CPM of 0.0125)."""
    value = Decimal(value)
    exponent = value.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return f"{value.quantize(Decimal('0.01')) if exponent >= -2 else value.normalize():f}"


def line_document(group: str, kind: str, description: str, quantity: Decimal,
                  unit_price: Decimal, amount: Decimal) -> dict[str, str]:
    """One line as the JSON of `bills run` / `bills show` writes it (decimal strings)."""
    return {"group": group, "kind": kind, "description": description,
            "quantity": f"{Decimal(quantity):.3f}", "unit_price": price_text(unit_price),
            "amount": _money(amount)}


def invoice_document(invoice: Invoice, lines: Sequence[InvoiceLine]) -> dict[str, Any]:
    """An issued invoice in the JSON shape of the README."""
    return {
        "number": invoice.number, "customer": invoice.company,
        "start": invoice.period_start.isoformat(), "end": invoice.period_end.isoformat(),
        "currency": invoice.currency, "total": _money(invoice.total), "status": invoice.status,
        "lines": [line_document(li.group_name, li.kind, li.description, li.quantity,
                                li.unit_price, li.amount) for li in lines],
    }


# --- export ------------------------------------------------------------------------------

EXPORT_FIELDS: Final = ("number", "issued", "start", "end", "customer", "customer_type",
                        "group", "kind", "line", "quantity", "unit_price", "amount",
                        "invoice_total", "currency", "status")
_YIELD_PER: Final = 500


def export_rows(start: date, *, customer_type: str = "", fields: Sequence[str] = EXPORT_FIELDS
                ) -> Iterator[list[str]]:
    """One row per invoice line of every invoice whose period starts on or after ``start``
    (optionally only customers of ``customer_type``), header first, streamed from a
    server-side cursor (yield_per): a year of a large network never sits in memory."""
    unknown = [f for f in fields if f not in EXPORT_FIELDS]
    if unknown or not fields:
        raise InvoiceError(f"unknown export field(s) {unknown}; choose from "
                           f"{', '.join(EXPORT_FIELDS)}")
    session = get_state().session
    query = (
        sa.select(Invoice.number, Invoice.created_at, Invoice.period_start, Invoice.period_end,
                  Invoice.company, Customer.customer_type, InvoiceLine.group_name,
                  InvoiceLine.kind, InvoiceLine.description, InvoiceLine.quantity,
                  InvoiceLine.unit_price, InvoiceLine.amount, Invoice.total, Invoice.currency,
                  Invoice.status)
        .join(InvoiceLine, InvoiceLine.invoice_id == Invoice.id)
        .join(Customer, Customer.id == Invoice.customer_id)
        .where(Invoice.period_start >= start)
        .order_by(Invoice.year, Invoice.seq, InvoiceLine.position)
        .execution_options(yield_per=_YIELD_PER)
    )
    if customer_type:
        query = query.where(Customer.customer_type == customer_type)
    yield list(fields)
    result = session.execute(query)
    try:
        for row in result:
            created: datetime = row.created_at
            values = {
                "number": row.number, "issued": issued_day(created).isoformat(),
                "start": row.period_start.isoformat(), "end": row.period_end.isoformat(),
                "customer": row.company, "customer_type": row.customer_type or "",
                "group": row.group_name, "kind": row.kind, "line": row.description,
                "quantity": f"{Decimal(row.quantity):.3f}",
                "unit_price": price_text(row.unit_price),
                "amount": _money(row.amount), "invoice_total": _money(row.total),
                "currency": row.currency, "status": row.status,
            }
            yield [values[f] for f in fields]
    finally:
        result.close()
        session.commit()


def export_csv(start: date, *, customer_type: str = "", fields: Sequence[str] = EXPORT_FIELDS
               ) -> Iterator[str]:
    """export_rows as CSV text, one chunk per row (for a streamed response or stdout)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in export_rows(start, customer_type=customer_type, fields=fields):
        # Cells a spreadsheet would run as a formula are quoted with a leading apostrophe.
        writer.writerow(["'" + c if c[:1] in ("=", "+", "-", "@") and not _numeric(c) else c
                         for c in row])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def _numeric(cell: str) -> bool:
    try:
        Decimal(cell)
    except ArithmeticError:
        return False
    return True
