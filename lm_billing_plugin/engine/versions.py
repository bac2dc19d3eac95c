"""Optimistic concurrency for the edit forms (servers, customers, hosting plans, billing
groups): the version a form carries is a digest of the row's *operator-owned* fields only.

Why a digest of chosen fields and not a version column or ``updated_at``: a sync or a
validation writes a server's inventory and status columns (``status``, ``status_message``,
``version``, ``hostname_reported``, ``logging_*``, ``*_at``, the lease) many times a minute,
and every such write bumps ``updated_at``. Were that the form's version, every edit made
while a sync runs would be refused although nobody touched what the operator typed. The
operator's fields and the sync's columns never overlap (the ORM writes only the columns it
changed), so both changes can be kept; only a change to a field the form shows is a
conflict. No schema change is needed, and the digest is the same on every database because
it is made of the values the row reads back, not of the clock.

The compare is made with the row locked (``lock_row``) in the transaction that then writes,
so two saves with the same loaded version cannot both pass: the second one waits for the
first one's commit, sees another digest and is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..i18n import lazy_gettext

__all__ = ["SERVER_OPERATOR_FIELDS", "ChangedMeanwhile", "check_version", "fields_version",
           "lock_row"]

# What an operator sets on a server (forms, API, CLI); everything else on the row is written
# by checks, validations and syncs. The password's ciphertext counts: another operator's new
# password is a change (rotate-keys re-encrypting in between is a rare, harmless refusal).
SERVER_OPERATOR_FIELDS = ("name", "host", "port", "comments", "password_encrypted", "active")

T = TypeVar("T")


class ChangedMeanwhile(ValueError):
    """The row's operator-owned fields changed after the form was loaded: nothing saved."""

    def __init__(self, kind: str, current_version: str) -> None:
        messages = {
            "server": lazy_gettext(
                "This server was changed by someone else since you opened it — review the "
                "current values and save again."),
            "customer": lazy_gettext(
                "This customer was changed by someone else since you opened it — review the "
                "current values and save again."),
            "plan": lazy_gettext(
                "This hosting plan was changed by someone else since you opened it — review "
                "the current values and save again."),
            "group": lazy_gettext(
                "This billing group was changed by someone else since you opened it — review "
                "the current values and save again."),
        }
        super().__init__(messages[kind])
        self.kind = kind
        self.current_version = current_version
        # CatalogError's shape, so catalog views can treat it like their other refusals.
        self.field: str | None = None


def _plain(value: Any) -> Any:
    # Decimal("10.00") and Decimal("10.0") are one price: normalise, and dates as ISO text.
    if hasattr(value, "normalize") and hasattr(value, "as_tuple"):
        return str(value.normalize())
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def fields_version(obj: Any, fields: Iterable[str]) -> str:
    """A short digest of ``obj``'s values of ``fields`` (the form's hidden version)."""
    values = [[name, _plain(getattr(obj, name, None))] for name in fields]
    canonical = json.dumps(values, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def lock_row(session: Session, model: type[T], row_id: int) -> T | None:
    """The row, held until the caller's commit or rollback: SELECT ... FOR UPDATE on
    PostgreSQL and MariaDB; SQLite locks the database, not rows, so there a no-op write takes
    the write lock first (a read that later upgrades to a write could fail as busy)."""
    table: Any = model
    if session.get_bind(mapper=table).dialect.name == "sqlite":
        session.execute(
            sa.update(table).where(table.id == row_id).values(id=table.id)
            .execution_options(synchronize_session=False)
        )
    row: T | None = session.execute(
        sa.select(table).where(table.id == row_id).with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    return row


def check_version(session: Session, kind: str, model: type[T], row_id: int,
                  fields: Iterable[str], expected: str | None) -> T | None:
    """Lock the row and compare its operator-owned fields with the version the form loaded.

    ``expected`` None means the caller has no form version to give (the CLI, the API, which
    checks its own If-Match): the row is not locked and not compared. The edit forms always
    pass a text; a POST without the hidden field passes "", which never matches. Returns
    the locked row (None when it is gone); raises ChangedMeanwhile (after a rollback, so
    nothing is held) when the fields changed."""
    if expected is None:
        return None
    fields = tuple(fields)
    row = lock_row(session, model, row_id)
    if row is None:
        return None
    current = fields_version(row, fields)
    if current != expected.strip():
        session.rollback()
        raise ChangedMeanwhile(kind, current)
    return row
