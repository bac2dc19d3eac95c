"""What batches and fixes share about one server's run: its plain values for a worker thread
(:class:`Target`, read with :func:`server_columns`), the audit record and the ISO timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from .. import audit
from ..models import Server
from ..secrets import SecretsError
from .servers import tclport_password

__all__ = ["Target", "audit_server", "iso", "server_columns", "target_from_row"]


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class Target:
    """Plain values of one server for a worker thread (no ORM object crosses threads)."""

    server_id: int
    name: str
    host: str
    port: int
    password: str | None = field(repr=False)
    password_error: str | None
    previous_status: str
    version: str | None
    validated_at: datetime | None
    synced_at: datetime | None
    run_id: int


def server_columns() -> list[Any]:
    """The Server columns :func:`target_from_row` reads."""
    return [Server.id, Server.name, Server.host, Server.port, Server.password_encrypted,
            Server.status, Server.version, Server.validated_at, Server.synced_at]


def target_from_row(row: Any, run_id: int) -> Target:
    """A :class:`Target` from a row of :func:`server_columns`; a password that cannot be
    decrypted becomes ``password_error`` (the run then fails without a connection)."""
    password: str | None = None
    error: str | None = None
    try:
        password = tclport_password(row.password_encrypted)
    except SecretsError as exc:
        error = str(exc)
    return Target(row.id, row.name, row.host, row.port, password, error, row.status,
                  row.version, row.validated_at, row.synced_at, run_id)


def audit_server(session: Session, actor: str, action: str, server_id: int, at: datetime,
                 detail: dict[str, Any]) -> None:
    """Record an engine action on one server in the audit log."""
    audit.record(session, actor=actor, action=action, object_type="server",
                 object_id=server_id, server_id=server_id, detail=detail, at=at)
