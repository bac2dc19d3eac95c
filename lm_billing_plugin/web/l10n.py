"""Times, dates and numbers on the pages: in the viewer's time zone (named) and formatted by
Babel for the request's locale; the words themselves come from i18n.py."""

from __future__ import annotations

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
    return str(numbers.format_decimal(value, format=pattern, locale=locale_name()))


def format_money(value: Any) -> str:
    """An amount with two decimals for the locale: 1,234.50 (en), 1.234,50 (de)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return "" if value is None else str(value)
    return str(numbers.format_decimal(value, format="#,##0.00", locale=locale_name()))


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
