"""The per-server run lease: claim, hold and release a server for one run, and clean up after
a process that died holding one (its run and batch end as ``interrupted``).

A claim or release is ONE conditional UPDATE on the server row, so two processes never run
the same server at once; only claim/release/expire/sweep commit by themselves.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .store import BATCH, RUN, SERVER

__all__ = [
    "INTERRUPTED_MESSAGE",
    "STALE_BATCH_MESSAGE",
    "LeaseLost",
    "claim_server",
    "claim_servers",
    "end_unfinished_runs",
    "expire_leases",
    "hold_lease",
    "lease_owner",
    "release_server",
    "sweep_stale_batches",
]

# The logger store.py used before the lease code moved here, so log filters keep working.
log = logging.getLogger("lm_billing_plugin.store")

INTERRUPTED_MESSAGE = (
    "the process running this stopped before finishing (its lease expired); run it again"
)
STALE_BATCH_MESSAGE = (
    "the process running this batch stopped before reaching this server (nothing progressed "
    "for LM_BILLING_LEASE_SECONDS); run it again"
)


class LeaseLost(RuntimeError):
    """This run outlived its lease and another run took the server over: store nothing."""


def lease_owner() -> str:
    """This process's name in leases (servers and the schedule): host, pid and a random part
    (pids are reused, and one process may hold several leases)."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def claim_server(
    session: Session,
    server_id: int,
    owner: str,
    lease_seconds: float,
    now: datetime,
    *,
    run_id: int | None = None,
    commit: bool = True,
) -> bool:
    """Claim the server for one run with ONE conditional UPDATE; commit. False = taken.

    The claim succeeds when the server has no lease or its lease expired; in the second case
    the run that held it is marked ``interrupted`` (its process died or hung). With
    ``commit=False`` the caller commits (to record more in the same short transaction).
    """
    previous = session.execute(
        sa.select(SERVER.c.lease_owner, SERVER.c.lease_expires_at, SERVER.c.lease_run_id)
        .where(SERVER.c.id == server_id)
    ).one_or_none()
    result = session.execute(
        SERVER.update()
        .where(SERVER.c.id == server_id,
               sa.or_(SERVER.c.lease_owner.is_(None), SERVER.c.lease_expires_at < now))
        .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds),
                lease_run_id=run_id)
    )
    claimed = bool(result.rowcount == 1)  # type: ignore[attr-defined]
    if claimed and previous is not None and previous.lease_owner is not None:
        if previous.lease_run_id is not None:
            _interrupt_runs(session, [previous.lease_run_id], now)
        log.warning("server %s: lease of %s expired; its run is marked interrupted",
                    server_id, previous.lease_owner)
    if commit:
        session.commit()
    return claimed


def claim_servers(
    session: Session,
    runs: Sequence[tuple[int, int | None]],
    owner: str,
    lease_seconds: float,
    now: datetime,
) -> set[int]:
    """Claim several servers, each for its run (``runs``: (server id, run id) pairs), with ONE
    conditional UPDATE; returns the ids claimed (the others are held by a live lease). Like
    :func:`claim_server`, a claim over an expired lease marks that lease's run interrupted.
    Does not commit: the caller commits (three statements more, whatever the count).
    """
    ids = sorted({sid for sid, _run in runs})
    if not ids:
        return set()
    previous = {
        r.id: r for r in session.execute(
            sa.select(SERVER.c.id, SERVER.c.lease_owner, SERVER.c.lease_run_id)
            .where(SERVER.c.id.in_(ids), SERVER.c.lease_owner.is_not(None)))
    }
    run_of = {sid: run for sid, run in runs}
    session.execute(
        SERVER.update()
        .where(SERVER.c.id.in_(ids),
               sa.or_(SERVER.c.lease_owner.is_(None), SERVER.c.lease_expires_at < now))
        .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds),
                lease_run_id=sa.case(run_of, value=SERVER.c.id, else_=None))
    )
    # The owner names this batch worker alone, so its rows are the ones just claimed.
    claimed = set(session.execute(
        sa.select(SERVER.c.id).where(SERVER.c.id.in_(ids), SERVER.c.lease_owner == owner)
    ).scalars())
    expired = [previous[sid] for sid in sorted(claimed) if sid in previous]
    if expired:
        stale = [r.lease_run_id for r in expired if r.lease_run_id is not None]
        if stale:
            _interrupt_runs(session, stale, now)
        for r in expired:
            log.warning("server %s: lease of %s expired; its run is marked interrupted",
                        r.id, r.lease_owner)
    return claimed


def hold_lease(session: Session, server_id: int, owner: str) -> bool:
    """Check (and row-lock, on PostgreSQL and MariaDB) that ``owner`` still holds the lease.

    The first statement of a run's write transaction: a run whose lease was taken over (it
    outlived its lease) must not write. Does not commit.
    """
    result = session.execute(
        SERVER.update()
        .where(SERVER.c.id == server_id, SERVER.c.lease_owner == owner)
        .values(lease_owner=owner)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release_server(session: Session, server_id: int, owner: str, *, commit: bool = True) -> bool:
    """Give the lease back (only if ``owner`` still holds it)."""
    result = session.execute(
        SERVER.update()
        .where(SERVER.c.id == server_id, SERVER.c.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None, lease_run_id=None)
    )
    released = bool(result.rowcount == 1)  # type: ignore[attr-defined]
    if commit:
        session.commit()
    return released


def _naming_server(message: str) -> sa.ScalarSelect[Any]:
    """``server '<name>': <message>`` for each run row an UPDATE touches (set-based)."""
    return (
        sa.select(sa.literal("server '") + SERVER.c.name + sa.literal("': " + message))
        .where(SERVER.c.id == RUN.c.server_id)
        .scalar_subquery()
    )


def end_unfinished_runs(
    session: Session, where: sa.ColumnElement[bool], now: datetime, *, status: str, code: str,
    message: str,
) -> int:
    """End the queued or running runs matching ``where`` as ``status`` with ``code`` and
    ``message`` (prefixed by each run's server name). Returns how many; does not commit."""
    result = session.execute(
        RUN.update()
        .where(where, RUN.c.status.in_(("running", "queued")))
        .values(status=status, finished_at=now, error_code=code,
                error_message=_naming_server(message))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _interrupt_runs(session: Session, run_ids: Sequence[int], now: datetime) -> None:
    end_unfinished_runs(session, RUN.c.id.in_(list(run_ids)), now, status="interrupted",
                        code="INTERRUPTED", message=INTERRUPTED_MESSAGE)
    # A batch whose every run has ended, one of them interrupted, will never be finished by
    # its (dead) process: close it, so the progress page stops waiting.
    batches = sa.select(RUN.c.batch_id).where(RUN.c.id.in_(list(run_ids)),
                                              RUN.c.batch_id.is_not(None))
    unfinished = sa.select(RUN.c.id).where(RUN.c.batch_id == BATCH.c.id,
                                           RUN.c.status.in_(("running", "queued")))
    session.execute(
        BATCH.update()
        .where(BATCH.c.id.in_(batches), BATCH.c.status.in_(("running", "queued")),
               ~sa.exists(unfinished))
        .values(status="interrupted", finished_at=now)
    )


def expire_leases(session: Session, now: datetime) -> int:
    """Free every expired lease and mark its run interrupted; commit. Returns how many.

    Claimants do this for their own server; pages and the scheduler may call it to clean up
    after a crashed process without waiting for the next run of each server.
    """
    rows = session.execute(
        sa.select(SERVER.c.id, SERVER.c.lease_owner, SERVER.c.lease_run_id)
        .where(SERVER.c.lease_owner.is_not(None), SERVER.c.lease_expires_at < now)
    ).all()
    freed = 0
    for row in rows:
        result = session.execute(
            SERVER.update()
            .where(SERVER.c.id == row.id, SERVER.c.lease_owner == row.lease_owner,
                   SERVER.c.lease_expires_at < now)
            .values(lease_owner=None, lease_expires_at=None, lease_run_id=None,
                    status="interrupted", status_message=INTERRUPTED_MESSAGE)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            freed += 1
            if row.lease_run_id is not None:
                _interrupt_runs(session, [row.lease_run_id], now)
    session.commit()
    return freed


def sweep_stale_batches(session: Session, now: datetime, lease_seconds: float) -> int:
    """Close the batches whose process died: mark them and their unfinished runs
    ``interrupted``; commit. Returns how many batches were closed.

    A batch is stale when it is still queued or running and nothing of it moved for
    ``lease_seconds``: neither the batch's start nor any of its runs' start (a claim) or
    finish. A live batch moves at least once per LM_BILLING_SERVER_DEADLINE (each server ends
    within it), which is shorter than the lease. Runs it never started have no lease, so the
    lease sweep alone would leave them ``queued`` forever.
    """
    cutoff = now - timedelta(seconds=lease_seconds)
    # A run another process ended as interrupted (its lease expired) is clean-up, not
    # progress: the next batch ends the dead batch's claimed run "now" just before this sweep.
    moved = sa.select(RUN.c.id).where(
        RUN.c.batch_id == BATCH.c.id,
        sa.or_(RUN.c.started_at >= cutoff,
               sa.and_(RUN.c.finished_at >= cutoff,
                       sa.func.coalesce(RUN.c.error_code, "") != "INTERRUPTED")),
    )
    stale_filter = sa.and_(
        BATCH.c.status.in_(("queued", "running")), BATCH.c.started_at < cutoff, ~sa.exists(moved)
    )
    stale = list(session.execute(sa.select(BATCH.c.id).where(stale_filter)).scalars())
    if not stale:
        session.commit()
        return 0
    # The UPDATE repeats the test, so a batch that moved since the SELECT is left alone.
    closed = session.execute(
        BATCH.update().where(BATCH.c.id.in_(stale), stale_filter)
        .values(status="interrupted", finished_at=now)
    ).rowcount  # type: ignore[attr-defined]
    end_unfinished_runs(
        session,
        RUN.c.batch_id.in_(sa.select(BATCH.c.id).where(
            BATCH.c.id.in_(stale), BATCH.c.status == "interrupted", BATCH.c.finished_at == now)),
        now, status="interrupted", code="INTERRUPTED", message=STALE_BATCH_MESSAGE,
    )
    session.commit()
    if closed:
        log.warning("closed %d batch(es) whose process stopped: %s", closed, stale)
    return int(closed)
