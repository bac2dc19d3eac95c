"""What one hosting server has right now, read over TclPort into plain frozen dataclasses.
No database and no Flask here: the runner calls this in worker threads, one server at a time."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

from ..tclport.client import ClientSettings, StepCallback, TclPortClient
from ..tclport.errors import TIMEOUT, TclPortError, host_port
from ..tclport.records import ListRecord, LoggingState, ServerInfo, SiteRecord, UsageRecord

__all__ = ["Inventory", "fetch_inventory", "fetch_usage", "month_start"]

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

    @property
    def usage_available(self) -> bool:
        return self.usage_error is None


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
    """Read server info, logging, sites, every list (paged) and this month's usage.

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
    return Inventory(
        server_info=info,
        logging=state,
        sites=sites,
        lists=lists,
        usage=usage,
        period=period,
        fetched_at=fetched,
        usage_error=usage_error,
    )


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
