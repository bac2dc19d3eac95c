"""The audit log's one writer: every change pages, CLI, engine and scheduler make is recorded
through :func:`record`, so the entries share one shape (who, what, which object, when)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from .models import AuditEntry, utcnow

__all__ = ["record"]


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    object_type: str = "",
    object_id: int | None = None,
    server_id: int | None = None,
    detail: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """Add an audit entry to ``session`` (the caller commits it with the change it records).

    ``at`` defaults to now (UTC); ``detail`` is copied, so the caller may reuse its dict.
    """
    entry = AuditEntry(
        at=at or utcnow(),
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        server_id=server_id,
        detail=dict(detail) if detail else {},
    )
    session.add(entry)
    return entry
