"""Months as the reports count them: usage is stored per list and month (first day), invoices
by their period; a report's range is whole months, from its first to its last (inclusive)."""

from __future__ import annotations

import re
from datetime import date

__all__ = ["add_months", "last_months", "month_label", "months_between", "parse_month"]

_MONTH = re.compile(r"(\d{4})-(\d{2})")


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def months_between(first: date, last: date) -> list[date]:
    """Every month from ``first`` to ``last`` (inclusive), first days."""
    out = []
    month = first.replace(day=1)
    while month <= last:
        out.append(month)
        month = add_months(month, 1)
    return out


def last_months(today: date, count: int = 12) -> list[date]:
    """The ``count`` months ending with this one, oldest first."""
    this = today.replace(day=1)
    return [add_months(this, -i) for i in range(count - 1, -1, -1)]


def parse_month(text: str | None) -> date | None:
    """``YYYY-MM`` (what <input type=month> sends) or ``YYYY-MM-DD`` as that month's first
    day; None for anything else (the caller falls back to its default)."""
    match = _MONTH.fullmatch((text or "").strip()[:7])
    if not match:
        return None
    year, month = int(match.group(1)), int(match.group(2))
    if not (1900 <= year <= 9999 and 1 <= month <= 12):
        return None
    return date(year, month, 1)


def month_label(month: date) -> str:
    return month.strftime("%Y-%m")
