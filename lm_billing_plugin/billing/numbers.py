"""Gapless invoice numbers: one sequence per year, taken inside the transaction that stores
the invoice, so a rolled-back invoice gives its number back and two runs never share one."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..models import InvoiceSequence

DEFAULT_NUMBER_FORMAT = "{year}-{seq:05d}"  # LM_BILLING_INVOICE_NUMBER_FORMAT


def format_number(year: int, seq: int, fmt: str = DEFAULT_NUMBER_FORMAT) -> str:
    """The printed invoice number; fmt may use {year} and {seq} (str.format syntax)."""
    return fmt.format(year=year, seq=seq)


def take_number(session: Session, year: int) -> int:
    """Bump and return the year's sequence inside the session's open transaction.

    The UPDATE locks the year's row (PostgreSQL, MariaDB) or takes the database's write
    lock (SQLite) until the caller commits or rolls back, so a concurrent taker waits and
    then continues from the committed value: numbers stay distinct and consecutive.
    """
    bump = (
        sa.update(InvoiceSequence)
        .where(InvoiceSequence.year == year)
        .values(last_seq=InvoiceSequence.last_seq + 1)
    )
    if session.execute(bump).rowcount == 0:  # type: ignore[attr-defined]
        try:
            with session.begin_nested():
                session.add(InvoiceSequence(year=year, last_seq=1))
            return 1
        except sa.exc.IntegrityError:
            # Another transaction created the year's row first (and has committed): bump it.
            session.execute(bump)
    seq = session.scalar(sa.select(InvoiceSequence.last_seq).where(InvoiceSequence.year == year))
    assert seq is not None
    return seq


def next_invoice_number(
    session: Session, year: int, fmt: str = DEFAULT_NUMBER_FORMAT
) -> tuple[int, str]:
    """(seq, printed number) of the next invoice of year, taken in the session's transaction."""
    seq = take_number(session, year)
    return seq, format_number(year, seq, fmt)


__all__ = ["DEFAULT_NUMBER_FORMAT", "format_number", "next_invoice_number", "take_number"]
