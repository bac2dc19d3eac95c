"""What one hosting server has right now, read over TclPort into plain frozen dataclasses, with
every field screened against billing's columns. No database session and no Flask here."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from dataclasses import field as _field
from datetime import UTC, date, datetime
from typing import Final

import sqlalchemy as sa

from ..i18n import M_, N_
from ..models import MailingList, Server, Site
from ..tclport.client import ClientSettings, TclPortClient
from ..tclport.connection import StepCallback
from ..tclport.errors import TIMEOUT, TclPortError, host_port
from ..tclport.records import ListRecord, LoggingState, ServerInfo, SiteRecord, UsageRecord

__all__ = ["Inventory", "Rejected", "fetch_inventory", "fetch_usage", "month_start", "screen"]

log = logging.getLogger("lm_billing_plugin.inventory")


def month_start(day: date) -> date:
    """The first day of ``day``'s month: the billing period usage is stored under."""
    return day.replace(day=1)


@dataclass(frozen=True, slots=True)
class Inventory:
    """Everything one server reported in one session.

    ``usage`` covers ``period`` (first day of the current month) up to the fetch day. When
    the server does not log mailings (``usage`` answered ``LOGGING_OFF``) ``usage`` is empty
    and ``usage_error`` holds the server's message; the ``logging_off`` problem reports it.
    """

    server_info: ServerInfo
    logging: LoggingState
    sites: tuple[SiteRecord, ...]
    lists: tuple[ListRecord, ...]
    usage: tuple[UsageRecord, ...]
    period: date
    fetched_at: datetime
    usage_error: str | None = None
    #: Values billing cannot store, found by :func:`screen`; their objects are left out.
    rejected: tuple[Rejected, ...] = ()

    @property
    def usage_available(self) -> bool:
        return self.usage_error is None


# --- screening: every field against the column that will hold it ----------------------------

# MariaDB's TEXT holds 65,535 bytes, the smallest of the three databases' unbounded text types;
# one rule everywhere means a server that validates on SQLite validates on MariaDB too.
TEXT_BYTES: Final = 65_535
_INT_MAX: Final = {"SmallInteger": 2**15 - 1, "Integer": 2**31 - 1, "BigInteger": 2**63 - 1}


@dataclass(frozen=True, slots=True)
class Rejected:
    """One value a server sent that billing's tables cannot hold, found before storing.

    ``object_type`` server, site or list; ``name`` the object's name as sent (the server's
    fields carry ""); ``what`` the field as people call it ("list name"); ``problem`` what is
    wrong ("of 300 characters (limit 255)"). A rejected site or list is left out of the
    inventory (never created, and not reported missing); a rejected server field is kept empty.
    """

    object_type: str
    name: str
    field: str
    what: str
    problem: str
    data: dict[str, int | str] = _field(default_factory=dict)


def _column(table: type, name: str) -> sa.Column[object]:
    column = getattr(table, "__table__").c[name]  # noqa: B009 - mapped classes hide __table__
    assert isinstance(column, sa.Column)
    return column


def _text_problem(value: str, column: sa.Column[object]) -> tuple[str, dict[str, int | str]] | None:
    """Why ``value`` does not fit ``column`` (None = it fits): the limit is the column's own."""
    if "\x00" in value:
        # PostgreSQL refuses NUL in any text; the others would store a name no page shows.
        return N_("containing a NUL character (\\x00)"), {"reason": "nul"}
    length = getattr(column.type, "length", None)
    if length is not None:
        if len(value) > length:
            return (M_("of %(length)s characters (limit %(limit)s)") % {
                        "length": f"{len(value):,}", "limit": f"{length:,}"},
                    {"reason": "length", "length": len(value), "limit": length})
        return None
    size = len(value.encode("utf-8"))
    if size > TEXT_BYTES:
        return (M_("of %(length)s bytes (limit %(limit)s)") % {
                    "length": f"{size:,}", "limit": f"{TEXT_BYTES:,}"},
                {"reason": "bytes", "length": size, "limit": TEXT_BYTES})
    return None


def _int_problem(value: int, column: sa.Column[object]) -> tuple[str, dict[str, int | str]] | None:
    limit = next((v for k, v in _INT_MAX.items() if type(column.type).__name__ == k),
                 _INT_MAX["Integer"])
    if value > limit:
        return (M_("of %(value)s (limit %(limit)s)") % {"value": f"{value:,}",
                                                          "limit": f"{limit:,}"},
                {"reason": "number", "value": value, "limit": limit})
    return None


# (field, words, column) per record type (the words are marked: a page says them in the
# viewer's language inside the invalid_field problem sentence); the columns are where
# store.py writes the values.
_LIST_FIELDS: Final = (
    ("name", N_("list name"), _column(MailingList, "name")),
    ("site", N_("site name"), _column(MailingList, "site_name")),
    ("admin", N_("list administrator"), _column(MailingList, "admin")),
    ("descr", N_("list description"), _column(MailingList, "descr")),
)
_LIST_MEMBERS: Final = _column(MailingList, "members")
_SITE_FIELDS: Final = (
    ("name", N_("site name"), _column(Site, "name")),
    ("title", N_("site title"), _column(Site, "title")),
)
_SERVER_FIELDS: Final = (
    ("version", N_("version"), _column(Server, "version")),
    ("hostname", N_("host name"), _column(Server, "hostname_reported")),
)
_LOGGING_FIELDS: Final = (
    ("mode", N_("Enable Logging mode"), _column(Server, "logging_mode")),
    ("label", N_("Enable Logging label"), _column(Server, "logging_label")),
)


def _screen_record(
    object_type: str, name: str, values: Iterable[tuple[str, str, str, sa.Column[object]]],
) -> list[Rejected]:
    out = []
    for fname, words, value, column in values:
        found = _text_problem(value, column)
        if found is not None:
            out.append(Rejected(object_type, name, fname, words, *found))
    return out


def screen(inventory: Inventory) -> Inventory:
    """``inventory`` without the values billing's columns cannot hold, each one reported.

    The limits are the models' own column lengths (and 32-bit counts for Integer columns), so
    SQLite, PostgreSQL and MariaDB accept and refuse the same values: a site or list with any
    such field is left out (and reported, not taken for missing); a server field (version,
    host name, Enable Logging mode or label) is kept empty. Everything else is stored.
    """
    rejected: list[Rejected] = []
    sites = []
    for site in inventory.sites:
        bad = _screen_record("site", site.name, (
            (f, w, getattr(site, f), c) for f, w, c in _SITE_FIELDS))
        rejected.extend(bad)
        if not bad:
            sites.append(site)
    lists = []
    for rec in inventory.lists:
        bad = _screen_record("list", rec.name, (
            (f, w, getattr(rec, f), c) for f, w, c in _LIST_FIELDS))
        too_big = _int_problem(rec.members, _LIST_MEMBERS)
        if too_big is not None:
            bad.append(Rejected("list", rec.name, "members", N_("member count"), *too_big))
        rejected.extend(bad)
        if not bad:
            lists.append(rec)
    info, logging_state = inventory.server_info, inventory.logging
    bad = _screen_record("server", "", (
        (f, w, getattr(info, f), c) for f, w, c in _SERVER_FIELDS))
    cleared = {r.field for r in bad}
    if cleared:
        info = replace(info, version="" if "version" in cleared else info.version,
                       hostname="" if "hostname" in cleared else info.hostname)
    rejected.extend(bad)
    bad = _screen_record("server", "", (
        (f, w, getattr(logging_state, f), c) for f, w, c in _LOGGING_FIELDS))
    cleared = {r.field for r in bad}
    if cleared:
        logging_state = replace(logging_state,
                                mode="" if "mode" in cleared else logging_state.mode,
                                label="" if "label" in cleared else logging_state.label)
    rejected.extend(bad)
    if not rejected:
        return inventory
    log.info("%d value(s) billing cannot store were left out: %s", len(rejected),
             ", ".join(sorted({f"{r.object_type} {r.field}" for r in rejected})))
    return replace(inventory, server_info=info, logging=logging_state, sites=tuple(sites),
                   lists=tuple(lists), rejected=tuple(rejected))


class _DeadlineClient(TclPortClient):
    """A client whose every step is capped by one overall deadline (``time.monotonic()``).

    The plain client gives each command its own operation timeout; a server's validation
    makes many calls (one per page of lists), so the remaining time is re-imposed before each.
    """

    def __init__(
        self, host: str, port: int, password: str, *, name: str | None,
        settings: ClientSettings, deadline: float,
    ) -> None:
        super().__init__(host, port, password, name=name, settings=settings)
        self._base = settings
        self._deadline = deadline

    def _cap(self, phase: str) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0.0:
            self._abort()
            raise TclPortError(
                self.label, phase, TIMEOUT,
                f"{host_port(self.host, self.port)} did not finish within this server's "
                "deadline (LM_BILLING_SERVER_DEADLINE); check the server's load and network, "
                "or raise the deadline.",
                detail="server deadline reached",
            )
        base = self._base
        self.settings = replace(
            base,
            connect_timeout=min(base.connect_timeout, remaining),
            read_timeout=min(base.read_timeout, remaining),
            operation_timeout=min(base.operation_timeout, remaining),
        )

    def connect(self, on_step: StepCallback | None = None) -> _DeadlineClient:
        self._cap("connect")
        super().connect(on_step)
        return self

    def call(self, command: str, *args: str) -> str:
        self._cap(f"command:{command}")
        return super().call(command, *args)


def fetch_inventory(
    host: str,
    port: int,
    password: str,
    *,
    name: str | None,
    settings: ClientSettings,
    deadline: float,
    today: date | None = None,
) -> Inventory:
    """Read server info, logging, sites, every list (paged) and this month's usage, screened
    (:func:`screen`) so that whatever is left can be stored on every database.

    ``deadline`` is a ``time.monotonic()`` instant: no step starts after it and no socket
    wait runs past it. Raises :class:`TclPortError` on any failure (the socket is closed).
    """
    day = today or datetime.now(UTC).date()
    period = month_start(day)
    client = _DeadlineClient(
        host, port, password, name=name, settings=settings, deadline=deadline
    )
    try:
        client.connect()
        info = client.server_info()
        state = client.logging()
        sites = tuple(client.sites())
        lists = tuple(client.lists())
        usage: tuple[UsageRecord, ...] = ()
        usage_error: str | None = None
        try:
            usage = tuple(client.usage(period, day))
        except TclPortError as exc:
            # Only "logging is off" is an expected answer; anything else fails the read.
            if exc.code != "LOGGING_OFF":
                raise
            usage_error = exc.message
        fetched = datetime.now(UTC)
    finally:
        client.close()
    log.debug("%s: %d sites, %d lists, %d usage rows", client.label, len(sites), len(lists),
              len(usage))
    return screen(Inventory(
        server_info=info,
        logging=state,
        sites=sites,
        lists=lists,
        usage=usage,
        period=period,
        fetched_at=fetched,
        usage_error=usage_error,
    ))


def fetch_usage(
    host: str,
    port: int,
    password: str,
    *,
    name: str | None,
    settings: ClientSettings,
    deadline: float,
    start: date,
    end: date,
) -> tuple[UsageRecord, ...]:
    """One ``usage FROM TO`` for exactly start..end (a bill run's period), within ``deadline``
    (a ``time.monotonic()`` instant). Raises :class:`TclPortError` on any failure, including
    LOGGING_OFF: a period whose sending log is off cannot be billed from it."""
    client = _DeadlineClient(
        host, port, password, name=name, settings=settings, deadline=deadline
    )
    try:
        client.connect()
        usage = tuple(client.usage(start, end))
    finally:
        client.close()
    log.debug("%s: %d usage rows for %s..%s", client.label, len(usage), start, end)
    return usage
