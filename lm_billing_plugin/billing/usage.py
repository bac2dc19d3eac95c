"""A bill run's usage: one ``usage FROM TO`` per server involved, all servers in parallel with the
client's deadlines (engine.parallel), no database session open while the workers talk."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import date

import sqlalchemy as sa

from ..engine.inventory import fetch_usage
from ..engine.parallel import run_parallel
from ..engine.servers import tclport_password
from ..models import Server
from ..secrets import SecretsError
from ..state import get_state
from ..tclport.errors import TclPortError
from ..tclport.records import UsageRecord

__all__ = ["ServerUsage", "fetch_period_usage"]

log = logging.getLogger("lm_billing_plugin.billing.usage")


@dataclass(frozen=True)
class _Target:
    """Plain values of one server for a worker thread (no ORM object crosses threads)."""

    server_id: int
    name: str
    host: str
    port: int
    password: str | None = field(repr=False)
    password_error: str | None


@dataclass(frozen=True)
class ServerUsage:
    """One server's usage for the period (by list name), or the error that stopped the read."""

    server_id: int
    name: str
    usage: dict[str, UsageRecord] = field(default_factory=dict)
    error: TclPortError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _targets(server_ids: Sequence[int]) -> list[_Target]:
    session = get_state().session
    rows = session.execute(
        sa.select(Server.id, Server.name, Server.host, Server.port, Server.password_encrypted)
        .where(Server.id.in_(sorted(set(server_ids))))
        .order_by(Server.name)
    ).all()
    session.commit()  # nothing stays open while the workers talk to the servers
    targets = []
    for row in rows:
        password: str | None = None
        error: str | None = None
        try:
            password = tclport_password(row.password_encrypted)
        except SecretsError as exc:
            error = str(exc)
        targets.append(_Target(row.id, row.name, row.host, row.port, password, error))
    return targets


def fetch_period_usage(server_ids: Sequence[int], start: date, end: date
                       ) -> dict[int, ServerUsage]:
    """Each server's ``usage start end``, read in parallel (LM_BILLING_MAX_PARALLEL), each
    within LM_BILLING_SERVER_DEADLINE. Never raises for a server: its error is in the result.
    Call inside an app context; the calling thread's session is committed first."""
    settings = get_state().settings
    client = settings.client

    def fetch(target: _Target, deadline: float) -> tuple[UsageRecord, ...]:
        assert target.password is not None
        return fetch_usage(target.host, target.port, target.password, name=target.name,
                           settings=client, deadline=deadline, start=start, end=end)

    def begin(target: _Target) -> ServerUsage | None:
        if target.password_error is None:
            return None
        return ServerUsage(target.server_id, target.name, error=TclPortError(
            target.name, "password", "PASSWORD", target.password_error))

    def finish(target: _Target, fut: Future[tuple[UsageRecord, ...]]) -> ServerUsage:
        try:
            rows = fut.result()
        except TclPortError as exc:
            return ServerUsage(target.server_id, target.name, error=exc)
        except Exception as exc:
            log.exception("server %s: reading usage failed unexpectedly", target.name)
            return ServerUsage(target.server_id, target.name, error=TclPortError(
                target.name, "command:usage", "INTERNAL",
                f"reading the usage failed unexpectedly ({type(exc).__name__}: {exc}); see "
                "the billing server's log, then run the bills again"))
        return ServerUsage(target.server_id, target.name, {r.list: r for r in rows})

    def overran(target: _Target) -> ServerUsage:
        return ServerUsage(target.server_id, target.name, error=TclPortError(
            target.name, "deadline", "TIMEOUT",
            "the server did not answer `usage` within its deadline "
            "(LM_BILLING_SERVER_DEADLINE); check its load, or raise the deadline, then run "
            "the bills again"))

    outcomes = run_parallel(
        _targets(server_ids), fetch, workers=settings.max_parallel,
        deadline_seconds=settings.server_deadline, start=begin, finish=finish,
        overran=overran, thread_name_prefix="lm-billing-usage")
    return {o.server_id: o for o in outcomes}
