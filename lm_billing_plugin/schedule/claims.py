"""The schedule's database claim protocol: one TaskState row per task, claimed by ONE conditional
UPDATE with a lease, so exactly one process runs each due run; and the summary pages show."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..models import Batch, TaskRun, TaskState, utcnow
from ..settings import Settings
from ..state import get_state

log = logging.getLogger("lm_billing_plugin.scheduler")

TASK = "scheduled_validation"
ACTOR = "scheduler"


# --- Pure schedule arithmetic -------------------------------------------------------------


def tick_seconds(interval: float) -> float:
    """How often a process looks at the schedule: at most every second, at least five times
    per interval, so a due run starts well within its own interval."""
    return max(0.05, min(1.0, interval / 5.0))


def next_slot(due: datetime, now: datetime, interval: float) -> tuple[datetime, int]:
    """The first slot after ``now`` on the grid ``due + k*interval``, and how many slots
    between ``due`` (exclusive) and that one were missed (they are coalesced into this run)."""
    step_us = max(1, round(interval * 1_000_000))
    late_us = (now - due) // timedelta(microseconds=1)
    if late_us < 0:
        return due, 0
    slots = late_us // step_us + 1
    return due + timedelta(microseconds=slots * step_us), slots - 1


# --- Database operations (each in its own short transaction) -----------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """A run this process has claimed and must execute."""

    run_id: int
    owner: str
    scheduled_for: datetime
    missed: int
    kind: str

    @property
    def summary(self) -> dict[str, Any]:
        """The summary a run has before it has a result."""
        return {"kind": self.kind, "missed": self.missed}


@dataclass(frozen=True, slots=True)
class Finish:
    """The outcome of a run, kept until it is written. ``finished_at`` None: the database's
    clock when it is written (the run's start is on that clock too)."""

    claim: Claim
    status: str
    summary: dict[str, Any]
    error: str | None = None
    finished_at: datetime | None = None


def db_now(session: Session) -> datetime:
    """The database server's clock in UTC: every host compares leases and due times against
    the same clock, so a host whose clock runs ahead cannot take a live lease over. SQLite
    lives on one host, whose clock it is."""
    name = session.get_bind().dialect.name
    value: Any = None
    if name == "postgresql":
        value = session.scalar(sa.text("SELECT clock_timestamp() AT TIME ZONE 'UTC'"))
    elif name in ("mysql", "mariadb"):
        value = session.scalar(sa.text("SELECT UTC_TIMESTAMP(6)"))
    if not isinstance(value, datetime):
        # SQLite: begin the transaction first (BEGIN IMMEDIATE in a write block, which waits
        # for the write lock), so the time is read once this transaction's turn has come and
        # timestamps follow the order in which writers really held the database.
        session.connection()
        return utcnow()
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def ensure_task(session: Session, now: datetime) -> bool:
    """Create the task's row (first run due now) when it does not exist yet; True when it
    was created. Two processes may race here: the loser's commit fails with IntegrityError,
    which its caller treats as "exists"."""
    exists = session.scalar(sa.select(TaskState.name).where(TaskState.name == TASK))
    if exists is not None:
        return False
    session.add(TaskState(name=TASK, next_run_at=now))
    session.flush()
    return True


def reap_expired(session: Session, now: datetime) -> int | None:
    """Release a lease whose holder died (it stopped renewing) and mark its run interrupted.
    Returns the interrupted run's id."""
    row = session.execute(
        sa.select(
            TaskState.lease_owner, TaskState.lease_expires_at, TaskState.current_run_id
        ).where(TaskState.name == TASK)
    ).one_or_none()
    if row is None or row.lease_owner is None:
        return None
    if row.lease_expires_at is not None and row.lease_expires_at >= now:
        return None
    hit = session.execute(
        sa.update(TaskState)
        .where(
            TaskState.name == TASK,
            TaskState.lease_owner == row.lease_owner,
            TaskState.lease_expires_at < now,
        )
        .values(
            lease_owner=None,
            lease_expires_at=None,
            current_run_id=None,
            last_run_id=sa.func.coalesce(row.current_run_id, TaskState.last_run_id),
        )
        .execution_options(synchronize_session=False)
    )
    if _rowcount(hit) != 1:
        return None
    run_id: int | None = row.current_run_id
    if run_id is not None:
        session.execute(
            sa.update(TaskRun)
            .where(TaskRun.id == run_id, TaskRun.status == "running")
            .values(
                status="interrupted",
                finished_at=now,
                error_message=(
                    f"The process running it ({row.lease_owner}) stopped renewing its lease "
                    "(it crashed, was killed or lost the database); the schedule continues."
                ),
            )
            .execution_options(synchronize_session=False)
        )
    log.warning(
        "scheduled run %s of %s: lease expired at %s, marked interrupted",
        run_id,
        row.lease_owner,
        row.lease_expires_at,
    )
    return run_id


def try_claim(
    session: Session,
    *,
    owner: str,
    now: datetime,
    interval: float,
    lease_seconds: float,
    kind: str,
) -> Claim | None:
    """Claim the due run if there is one and nobody runs it: one conditional UPDATE that
    sets the lease and advances next_run_at past now. The caller commits."""
    row = session.execute(
        sa.select(TaskState.next_run_at, TaskState.lease_owner, TaskState.lease_expires_at).where(
            TaskState.name == TASK
        )
    ).one_or_none()
    if row is None:
        return None
    due = row.next_run_at
    step = timedelta(seconds=interval)
    if due - now > step:
        # The interval was shortened since this slot was set: do not wait out the old one.
        session.execute(
            sa.update(TaskState)
            .where(TaskState.name == TASK, TaskState.next_run_at == due)
            .values(next_run_at=now + step)
            .execution_options(synchronize_session=False)
        )
        return None
    if due > now:
        return None
    if row.lease_owner is not None and (
        row.lease_expires_at is None or row.lease_expires_at >= now
    ):
        return None
    upcoming, missed = next_slot(due, now, interval)
    hit = session.execute(
        sa.update(TaskState)
        .where(
            TaskState.name == TASK,
            TaskState.next_run_at == due,
            sa.or_(TaskState.lease_owner.is_(None), TaskState.lease_expires_at < now),
        )
        .values(
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            next_run_at=upcoming,
            current_run_id=None,
        )
        .execution_options(synchronize_session=False)
    )
    if _rowcount(hit) != 1:
        return None  # another process claimed it first
    run = TaskRun(
        task=TASK,
        scheduled_for=due,
        started_at=now,
        status="running",
        host=socket.gethostname()[:120],
        pid=os.getpid(),
        summary={"kind": kind, "missed": missed},
    )
    session.add(run)
    session.flush()
    session.execute(
        sa.update(TaskState)
        .where(TaskState.name == TASK, TaskState.lease_owner == owner)
        .values(current_run_id=run.id)
        .execution_options(synchronize_session=False)
    )
    return Claim(run_id=run.id, owner=owner, scheduled_for=due, missed=missed, kind=kind)


def renew_lease(session: Session, *, owner: str, now: datetime, lease_seconds: float) -> bool:
    """Heartbeat: push our lease's expiry forward. False when the lease is no longer ours."""
    hit = session.execute(
        sa.update(TaskState)
        .where(TaskState.name == TASK, TaskState.lease_owner == owner)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return _rowcount(hit) == 1


def write_finish(session: Session, finish: Finish) -> bool:
    """Record a run's outcome and release the lease. False when the lease had been taken
    over meanwhile (the outcome is recorded all the same: it is the truth)."""
    session.execute(
        sa.update(TaskRun)
        .where(TaskRun.id == finish.claim.run_id)
        .values(
            status=finish.status,
            finished_at=finish.finished_at or db_now(session),
            summary=finish.summary,
            error_message=finish.error,
        )
        .execution_options(synchronize_session=False)
    )
    hit = session.execute(
        sa.update(TaskState)
        .where(TaskState.name == TASK, TaskState.lease_owner == finish.claim.owner)
        .values(
            lease_owner=None,
            lease_expires_at=None,
            current_run_id=None,
            last_run_id=finish.claim.run_id,
        )
        .execution_options(synchronize_session=False)
    )
    return _rowcount(hit) == 1


def record_batch(session: Session, run_id: int, batch_id: int) -> None:
    session.execute(
        sa.update(TaskRun)
        .where(TaskRun.id == run_id)
        .values(batch_id=batch_id)
        .execution_options(synchronize_session=False)
    )


def request_run_now(session: Session, now: datetime | None = None) -> datetime:
    """Make the next run due at once ("Run now"). Only moves next_run_at; the scheduler
    process does the work. The caller commits."""
    now = now or db_now(session)
    if not ensure_task(session, now):
        session.execute(
            sa.update(TaskState)
            .where(TaskState.name == TASK)
            .values(next_run_at=now)
            .execution_options(synchronize_session=False)
        )
    return now


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


# --- What the pages show -------------------------------------------------------------------


def schedule_summary(session: Session, settings: Settings | None = None) -> dict[str, Any]:
    """The schedule at a glance, for the Background validation and Servers pages.

    Keys: ``enabled``, ``kind`` ("validate" or "sync"), ``interval`` (seconds),
    ``next_run_at`` (aware datetime or None), ``overdue`` (True when a run is due for longer
    than a scheduler would take to start it: no scheduler process seems to be running),
    ``running`` (None or {id, host, pid, started_at, scheduled_for, batch_id, done, total,
    failed}) and ``last_run`` (None or {id, status, started_at, finished_at, duration, error,
    summary}).
    """
    settings = settings or get_state().settings
    now = utcnow()
    state = session.get(TaskState, TASK)
    running: dict[str, Any] | None = None
    if state is not None and state.current_run_id is not None and state.lease_owner:
        run = session.get(TaskRun, state.current_run_id)
        if run is not None and run.status == "running":
            running = _run_dict(run)
            running["lease_expires_at"] = state.lease_expires_at
            batch = session.get(Batch, run.batch_id) if run.batch_id is not None else None
            running.update(
                done=batch.done if batch else 0,
                total=batch.total if batch else 0,
                failed=batch.failed if batch else 0,
            )
    last = session.scalars(
        sa.select(TaskRun)
        .where(TaskRun.task == TASK, TaskRun.finished_at.is_not(None))
        .order_by(TaskRun.finished_at.desc(), TaskRun.id.desc())
        .limit(1)
    ).first()
    next_run_at = state.next_run_at if state is not None else None
    grace = timedelta(seconds=max(60.0, 3 * tick_seconds(settings.validate_interval)))
    overdue = bool(
        settings.scheduler_enabled
        and next_run_at is not None
        and running is None
        and next_run_at < now - grace
    )
    return {
        "enabled": settings.scheduler_enabled,
        "kind": "sync" if settings.scheduled_sync else "validate",
        "interval": settings.validate_interval,
        "next_run_at": next_run_at,
        "overdue": overdue,
        "running": running,
        "last_run": _run_dict(last) if last is not None else None,
    }


def _run_dict(run: TaskRun) -> dict[str, Any]:
    duration = None
    if run.finished_at is not None:
        duration = (run.finished_at - run.started_at).total_seconds()
    return {
        "id": run.id,
        "status": run.status,
        "host": run.host,
        "pid": run.pid,
        "scheduled_for": run.scheduled_for,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration": duration,
        "batch_id": run.batch_id,
        "error": run.error_message,
        "summary": dict(run.summary or {}),
    }


__all__ = [
    "ACTOR",
    "TASK",
    "next_slot",
    "request_run_now",
    "schedule_summary",
    "tick_seconds",
]
