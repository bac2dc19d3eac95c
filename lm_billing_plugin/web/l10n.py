"""Times, dates and numbers on the pages: in the viewer's time zone (named) and formatted by
Babel for the request's locale; the words themselves come from i18n.py."""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from babel import numbers
from flask import g, has_request_context
from flask_babel import get_locale

from ..state import get_state


def viewer_timezone() -> tzinfo:
    """The zone the current viewer reads times in: the host's ``@billing.timezone_selector``
    when it names one, else ``LM_BILLING_TIMEZONE``. Asked once per request."""
    if has_request_context() and "lmb_viewer_zone" in g:
        return g.lmb_viewer_zone  # type: ignore[no-any-return]
    state = get_state()
    zone: tzinfo = state.settings.timezone
    select = state.extension.timezone_select
    if select is not None and has_request_context():
        chosen = select()
        if isinstance(chosen, tzinfo):
            zone = chosen
        elif chosen:
            zone = ZoneInfo(str(chosen))
    if has_request_context():
        g.lmb_viewer_zone = zone
    return zone


def locale_name() -> str:
    locale = get_locale()
    return str(locale) if locale is not None else get_state().settings.default_locale


def as_utc(value: datetime) -> datetime:
    # The database keeps naive UTC (models.utcnow); a zone-aware value is converted.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def format_time(value: datetime) -> str:
    """``2026-12-01 14:05 CET``: the viewer's wall clock with its zone named, the same shape
    in every language so a time can be read and compared at a glance."""
    local = as_utc(value).astimezone(viewer_timezone())
    return f"{local:%Y-%m-%d %H:%M} {local.tzname() or ''}".rstrip()


def iso_utc(value: datetime) -> str:
    """For ``<time datetime>``: UTC, marked Z."""
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_number(value: Any, pattern: str | None = None) -> str:
    """A count or amount for the locale: 1,234 (en), 1.234 (de); ``pattern`` is a CLDR
    number pattern such as ``#,##0.0``."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return "" if value is None else str(value)
    return _formatted(value, pattern, locale_name())


@functools.lru_cache(maxsize=8192)
def _formatted(value: Any, pattern: str | None, locale: str) -> str:
    # Babel takes ~0.1 ms a number; the Errors page shows a count for each of 200 servers,
    # mostly the same few small counts. Equal values (1, 1.0, Decimal("1.00")) share an entry:
    # Babel formats them alike, by the pattern's digits, not the value's.
    return str(numbers.format_decimal(value, format=pattern, locale=locale))


def format_money(value: Any) -> str:
    """An amount with two decimals for the locale: 1,234.50 (en), 1.234,50 (de)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return "" if value is None else str(value)
    return str(numbers.format_decimal(value, format="#,##0.00", locale=locale_name()))


def format_currency(amount: Decimal | int | None, currency: str | None = None) -> str:
    """An amount in the currency, formatted by Babel (LM_BILLING_CURRENCY by default): the
    ``lmb_money`` filter of the pages and of the invoices sent by e-mail or as PDF."""
    code = currency or get_state().settings.currency
    # Amounts are cents whatever the currency (billing-cycle.md §2): 12.34 JPY is shown as
    # ¥12.34, not rounded to the yen's no decimals (the lines would not add up to the total).
    return str(numbers.format_currency(Decimal(amount or 0), code, locale=locale_name(),
                                       currency_digits=False))


def format_unit_price(amount: Decimal | int | None, currency: str | None = None) -> str:
    """A line's unit price in the currency with the decimals it has, at least the currency's
    (an Overage CPM of 0.0125 is $0.0125, not $0.01; 30.0000 is $30.00): the
    ``lmb_unit_price`` filter of the invoice page, PDF and e-mail."""
    code = currency or get_state().settings.currency
    return str(numbers.format_currency(Decimal(amount or 0).normalize(), code,
                                       locale=locale_name(), currency_digits=False,
                                       decimal_quantization=False))


def billing_day(moment: datetime) -> date:
    """The billing day (LM_BILLING_BILLING_TIMEZONE) a moment falls on: the ``lmb_billing_day``
    filter, for an invoice's Issued day (billing.invoices.issued_day, whose year numbers it)."""
    return get_state().settings.billing_today(moment)


def format_day(value: date) -> str:
    """A date as ISO (YYYY-MM-DD) in every language: the forms take dates that way."""
    return value.isoformat()


def template_context() -> dict[str, Any]:
    return {
        "lmb_time": format_time,
        "lmb_iso_utc": iso_utc,
        "lmb_number": format_number,
        "lmb_money": format_money,
        "lmb_locale": lambda: locale_name().replace("_", "-"),
    }
