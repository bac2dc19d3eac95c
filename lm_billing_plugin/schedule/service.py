"""The scheduler service: an APScheduler ticker in each process that claims due runs (claims.py)
and does their work; one cohesive thing, the per-process lifecycle of start, tick, run, stop.

How it fits together
--------------------
* ``TaskState`` (one row per task) is the single source of truth: ``next_run_at`` says when
  the next run is due, ``lease_owner``/``lease_expires_at`` say who runs it now.
* Every process that takes part runs a light **ticker** (an APScheduler interval job, memory
  job store, ``coalesce=True``, ``max_instances=1``) every ``tick_seconds``. A tick reads the
  row and, when a run is due and nobody holds a live lease, claims it with ONE conditional
  UPDATE (compare-and-set on the ``next_run_at`` it read): the UPDATE sets the lease and moves
  ``next_run_at`` to the first slot after now, so runs missed while every process was down
  coalesce into one. Only the process whose UPDATE hit a row runs the work.
* While a run works, a heartbeat renews its lease, so a run longer than the interval never
  overlaps itself. A process that dies mid-run stops renewing; once its lease has expired the
  next tick anywhere marks that run ``interrupted`` and the schedule goes on.
* A failure during the run (the database going away included) fails that run with a logged
  error; if even that cannot be written, the outcome is kept and written by a later tick.
  A run that failed outright is announced like one that found trouble (``notify``).

Nothing starts at import time or in ``init_app``: ``install_autostart`` only arranges a lazy
start on the first request of a serving process (see ``should_autostart``).
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..engine import batch_process, batches
from ..engine.batches import BatchResult
from ..engine.leases import lease_owner as owner_id
from ..models import TaskState, utcnow
from ..sqlite import writes
from ..state import get_state
from .claims import (
    ACTOR,
    TASK,
    Claim,
    Finish,
    db_now,
    ensure_task,
    reap_expired,
    record_batch,
    renew_lease,
    tick_seconds,
    try_claim,
    write_finish,
)
from .notify import Failure, notify_outage, notify_run

log = logging.getLogger("lm_billing_plugin.scheduler")
# APScheduler logs every tick at INFO (and a WARNING whenever a slow tick makes it skip the
# next one, which is harmless for a ticker); with a tick every second that would flood a
# host's log. Our APScheduler instances log here, quiet unless a host lowers the level. The
# scheduler's own messages (claims, runs, failures) go to "lm_billing_plugin.scheduler".
TICKER_LOGGER = "lm_billing_plugin.scheduler.ticker"
if logging.getLogger(TICKER_LOGGER).level == logging.NOTSET:
    logging.getLogger(TICKER_LOGGER).setLevel(logging.ERROR)

SERVICE_EXTRA = "scheduler.service"
# Internal seam: a callable(WorkRequest) -> result that replaces the runner call. Tests use it
# to make runs slow or failing on purpose; hosts have no reason to set it.
WORK_EXTRA = "scheduler.work"
# How often a failing tick is logged again while the database stays unreachable.
ERROR_LOG_EVERY = 60.0


# --- The work of one run -------------------------------------------------------------------


@dataclass
class WorkRequest:
    """What a run asks the engine to do; ``record_batch(batch_id)`` links the engine's batch
    (its progress: done/total) to the run as soon as it exists."""

    kind: str
    run_id: int
    record_batch: Callable[[int], None]


Work = Callable[[WorkRequest], BatchResult]


def default_work(request: WorkRequest) -> BatchResult:
    """Validate (or sync) every server through the engine, as the "scheduler" actor."""
    batch_id = batches.create_batch(request.kind, None, actor=ACTOR, dry_run=False)
    request.record_batch(batch_id)
    return batch_process.run_queued(batch_id)


def summarize(result: BatchResult, missed: int, kind: str) -> tuple[str, dict[str, Any]]:
    """A run's status and the summary stored with it. "failed" when not one server could be
    read (the run watched nothing); a server another run held is skipped, not failed."""
    servers = result.servers
    failed = [s for s in servers if not s.ok and s.skipped_reason is None]
    problems_open = sum(len(s.problems) for s in servers)
    changes = [
        {
            "server_id": s.server_id,
            "server": s.name,
            "previous": s.previous_status,
            "status": s.status,
        }
        for s in servers
        if s.previous_status != s.status
    ]
    summary: dict[str, Any] = {
        "kind": kind,
        "missed": missed,
        "batch_id": result.batch_id,
        "servers": len(servers),
        "ok": sum(1 for s in servers if s.ok),
        "failed": len(failed),
        "failed_servers": [s.name for s in failed][:50],
        "problems_open": problems_open,
        "problems_new": sum(s.new_problems for s in servers),
        "status_changes": changes[:200],
    }
    skipped = len(servers) - summary["ok"] - len(failed)
    if servers and len(failed) == len(servers):
        status = "failed"
    elif failed or skipped or problems_open:
        status = "problems"
    else:
        status = "ok"
    return status, summary


# --- One process's scheduler -----------------------------------------------------------------


@dataclass
class _LocalRun:
    claim: Claim
    thread: threading.Thread | None = None
    stop_heartbeat: threading.Event = field(default_factory=threading.Event)


class SchedulerService:
    """The ticker of one process: claims due runs and executes them in a worker thread.

    ``tick()`` is what the APScheduler job calls; it never raises. ``run_due()`` is one
    synchronous tick (for cron). ``start(blocking=...)`` drives ``tick`` with APScheduler.
    """

    def __init__(
        self, app: Flask, *, work: Work | None = None, first_run_delay: float = 0.0
    ) -> None:
        state = get_state(app)
        # Not the extension object: one service per app and process, whose ticker and run
        # threads must push this app's context themselves.
        self.app = app
        self.settings = state.settings
        with app.app_context():
            self.engine: Engine = state.engine
        self.work: Work = work or state.extras.get(WORK_EXTRA) or default_work
        self.owner = owner_id()
        self.kind = "sync" if self.settings.scheduled_sync else "validate"
        self._lock = threading.Lock()
        # Held while a tick runs: a tick that began before stop() may still claim a run, and
        # wait_idle() must see that run.
        self._ticking = threading.Lock()
        self._local: _LocalRun | None = None
        self._pending: Finish | None = None
        self._scheduler: Any = None
        self._error_logged_at: float | None = None
        # Since when ticks fail (monotonic), and whether that outage has been announced.
        self._failing_since: float | None = None
        self._outage_announced = False
        self._stopping = threading.Event()
        self._task_ensured = False
        # On a database without a schedule yet, the first run is due this many seconds on
        # (autostart: one interval, so a fresh deploy does not validate at its first page).
        self.first_run_delay = first_run_delay
        # The run this process executed last and its status (for `run-due`'s report).
        self.last_run: tuple[int, str] | None = None

    # -- ticking --

    @property
    def tick_seconds(self) -> float:
        return tick_seconds(self.settings.validate_interval)

    def tick(self, *, synchronous: bool = False) -> str:
        """Look at the schedule once. Returns what happened: "disabled", "stopping", "busy"
        (a run of ours is going on), "idle" (nothing due, or someone else runs it),
        "ran"/"started" (we claimed a run) or "error" (logged; the next tick retries)."""
        # Every transaction of a tick may write (claims, leases): SQLite's lock at BEGIN.
        with self._ticking, writes():
            return self._tick(synchronous)

    def _tick(self, synchronous: bool) -> str:
        if not self.settings.scheduler_enabled:
            return "disabled"
        if self._stopping.is_set():
            return "stopping"
        with self._lock:
            if self._local is not None:
                return "busy"
        try:
            if self._pending is not None:
                with Session(self.engine) as session, session.begin():
                    write_finish(session, self._pending)
                log.warning(
                    "scheduled run %s: outcome %s recorded late",
                    self._pending.claim.run_id,
                    self._pending.status,
                )
                self._pending = None
            if not self._task_ensured:
                try:
                    with Session(self.engine) as session, session.begin():
                        first_due = db_now(session) + timedelta(seconds=self.first_run_delay)
                        ensure_task(session, first_due)
                except sa.exc.IntegrityError:
                    pass  # another process created the row at the same moment
                self._task_ensured = True
            with Session(self.engine) as session, session.begin():
                now = db_now(session)
                reap_expired(session, now)
                claim = try_claim(
                    session,
                    owner=self.owner,
                    now=now,
                    interval=self.settings.validate_interval,
                    lease_seconds=self.settings.lease_seconds,
                    kind=self.kind,
                )
        except Exception as exc:
            self._log_tick_error(exc)
            return "error"
        self._tick_ok()
        if claim is None:
            return "idle"
        log.info(
            "scheduled %s run %s claimed by %s (slot %s%s)",
            claim.kind,
            claim.run_id,
            self.owner,
            claim.scheduled_for.isoformat(),
            f", {claim.missed} missed slot(s) coalesced" if claim.missed else "",
        )
        local = _LocalRun(claim=claim)
        with self._lock:
            self._local = local
        if synchronous:
            self._execute(local)
            return "ran"
        local.thread = threading.Thread(
            target=self._execute, args=(local,), name="lm-billing-scheduled-run", daemon=True
        )
        local.thread.start()
        return "started"

    def _log_tick_error(self, exc: Exception) -> None:
        if _is_lock_contention(exc):
            # SQLite: another process is writing the schedule right now; try next tick.
            log.debug("schedule busy (database locked); next tick retries")
            return
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if self._error_logged_at is None or now - self._error_logged_at >= ERROR_LOG_EVERY:
            log.error(
                "scheduler tick failed: %s. Scheduled validation waits until the database is "
                "reachable and upgraded (`flask lm-billing db upgrade`); it retries every "
                "%.1f s.",
                short_error(exc),
                self.tick_seconds,
                exc_info=not isinstance(exc, sa.exc.OperationalError),
            )
            self._error_logged_at = now
        # A whole interval without the database: a run was surely due and none can start,
        # anywhere this process is the only scheduler. Say so once per outage (per process:
        # without the database, processes cannot agree on who sends it).
        if (
            not self._outage_announced
            and now - self._failing_since >= self.settings.validate_interval
        ):
            self._outage_announced = True
            where = f"{socket.gethostname()} (pid {os.getpid()})"
            notify_outage(
                self.app,
                kind=self.kind,
                failure=Failure(
                    f"the scheduler on {where} cannot reach the database: {short_error(exc)}",
                    "Check that the database is up and reachable from that host, and that "
                    "`flask lm-billing db upgrade` has run. That process cannot start a "
                    f"scheduled run until then; its log (logger {log.name}) has the details.",
                ),
            )

    def _tick_ok(self) -> None:
        if self._error_logged_at is not None:
            log.warning("scheduler: database reachable again, schedule resumed")
            self._error_logged_at = None
        self._failing_since = None
        self._outage_announced = False

    # -- one run --

    def _execute(self, local: _LocalRun) -> None:
        with writes():
            self._execute_run(local)

    def _execute_run(self, local: _LocalRun) -> None:
        claim = local.claim
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(local,), name="lm-billing-lease", daemon=True
        )
        heartbeat.start()
        result: BatchResult | None = None
        crash: Exception | None = None
        try:
            request = WorkRequest(
                kind=claim.kind, run_id=claim.run_id, record_batch=self._record_batch(claim)
            )
            with self.app.app_context():
                result = self.work(request)
            status, summary = summarize(result, claim.missed, claim.kind)
            finish = Finish(claim, status, summary)
        except Exception as exc:
            log.error(
                "scheduled %s run %s failed: %s",
                claim.kind,
                claim.run_id,
                short_error(exc),
                exc_info=True,
            )
            crash = exc
            error = (
                f"The scheduled {claim.kind} failed: {short_error(exc)}. "
                "The next run is scheduled as usual; if this repeats, check the database "
                "and the log of the scheduler process."
            )[:4000]
            finish = Finish(claim, "failed", claim.summary, error)
        finally:
            local.stop_heartbeat.set()
            heartbeat.join(timeout=5)
        try:
            with Session(self.engine) as session, session.begin():
                # Renew once more in the finishing transaction: the last heartbeat may be
                # nearly a lease old on a loaded machine, and another ticker must not take the
                # schedule over between the work's end and this write.
                renew_lease(session, owner=claim.owner, now=db_now(session),
                            lease_seconds=self.settings.lease_seconds)
                if not write_finish(session, finish):
                    log.warning(
                        "scheduled run %s finished after its lease was taken over; it ran "
                        "longer than LM_BILLING_LEASE_SECONDS without a heartbeat",
                        claim.run_id,
                    )
        except Exception as exc:
            log.error(
                "scheduled run %s: could not record its outcome (%s): %s; kept, and written "
                "when the database is back",
                claim.run_id,
                finish.status,
                short_error(exc),
            )
            self._pending = replace(finish, finished_at=utcnow())
        with self._lock:
            self._local = None
            self.last_run = (claim.run_id, finish.status)
        log.info("scheduled %s run %s: %s", claim.kind, claim.run_id, finish.status)
        notify_run(
            self.app,
            run_id=claim.run_id,
            status=finish.status,
            summary=finish.summary,
            result=result,
            failure=failure_of(claim.kind, crash, finish.status, finish.summary),
        )

    def _record_batch(self, claim: Claim) -> Callable[[int], None]:
        def record(batch_id: int) -> None:
            with Session(self.engine) as session, session.begin():
                record_batch(session, claim.run_id, batch_id)

        return record

    def _heartbeat(self, local: _LocalRun) -> None:
        with writes():
            self._beat(local)

    def _beat(self, local: _LocalRun) -> None:
        every = max(0.05, self.settings.lease_seconds / 3.0)
        while not local.stop_heartbeat.wait(every):
            try:
                with Session(self.engine) as session, session.begin():
                    mine = renew_lease(
                        session,
                        owner=local.claim.owner,
                        now=db_now(session),
                        lease_seconds=self.settings.lease_seconds,
                    )
                if not mine:
                    log.error(
                        "scheduled run %s lost its lease (another process took it over as "
                        "expired); raise LM_BILLING_LEASE_SECONDS if the database is slow",
                        local.claim.run_id,
                    )
                    return
            except Exception as exc:
                log.warning(
                    "scheduled run %s: lease heartbeat failed: %s",
                    local.claim.run_id,
                    short_error(exc),
                )

    # -- cron: one tick --

    def run_due(self) -> str:
        """One synchronous tick (for cron): claim and run the due run if there is one.
        Returns the tick's outcome; ``last_run`` then holds the run's id and status."""
        return self.tick(synchronous=True)

    def next_run_at(self) -> datetime | None:
        with Session(self.engine) as session:
            return session.scalar(sa.select(TaskState.next_run_at).where(TaskState.name == TASK))

    # -- driving the ticker --

    def start(self, *, blocking: bool) -> None:
        """Run the ticker with APScheduler: ``BlockingScheduler`` (returns after ``stop()``) or
        ``BackgroundScheduler`` (returns at once; stopped at interpreter exit)."""
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.memory import MemoryJobStore
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.schedulers.blocking import BlockingScheduler

        class _QuietExecutor(ThreadPoolExecutor):  # type: ignore[misc]
            def start(self, scheduler: Any, alias: str) -> None:
                super().start(scheduler, alias)
                self._logger = logging.getLogger(TICKER_LOGGER)

        cls = BlockingScheduler if blocking else BackgroundScheduler
        scheduler = cls(
            timezone=UTC,
            logger=logging.getLogger(TICKER_LOGGER),
            # This process's ticker only: the schedule itself lives in the database.
            jobstores={"default": MemoryJobStore()},
            executors={"default": _QuietExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.tick_seconds,
            # Jitter spreads the processes' ticks, so they do not all read the schedule at
            # the same instant (and which of them claims a run varies).
            jitter=self.tick_seconds / 2,
            id="lm_billing_ticker",
            name="lm-billing schedule ticker",
            next_run_time=datetime.now(UTC),
        )
        self._scheduler = scheduler
        log.info(
            "scheduler %s started (%s every %.0f s, tick %.2f s)",
            self.owner,
            self.kind,
            self.settings.validate_interval,
            self.tick_seconds,
        )
        if not blocking:
            atexit.register(self.shutdown, abandon=True)
        scheduler.start()

    def stop(self) -> None:
        """Stop ticking (safe from a signal handler); a run of ours keeps going."""
        self._stopping.set()
        scheduler = self._scheduler
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)

    @property
    def running_run(self) -> Claim | None:
        with self._lock:
            return self._local.claim if self._local is not None else None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for a tick in flight and a run of ours to finish; True when none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._ticking.acquire(timeout=-1 if timeout is None else timeout):
            return False
        self._ticking.release()
        with self._lock:
            local = self._local
        if local is None or local.thread is None:
            return local is None
        local.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not local.thread.is_alive()

    def shutdown(self, *, abandon: bool) -> None:
        """Stop ticking; with ``abandon`` a run still going on is marked interrupted and its
        lease released at once, so another process need not wait for the lease to expire."""
        self.stop()
        with self._lock:
            local = self._local
        if local is None or not abandon:
            return
        local.stop_heartbeat.set()
        finish = Finish(
            local.claim,
            "interrupted",
            local.claim.summary,
            "The scheduler process was stopped during the run; the next run is scheduled as usual.",
        )
        try:
            with Session(self.engine) as session, session.begin():
                write_finish(session, finish)
            log.warning("scheduled run %s abandoned at shutdown", local.claim.run_id)
        except Exception as exc:
            log.error(
                "scheduled run %s: could not record the interruption: %s",
                local.claim.run_id,
                short_error(exc),
            )


def short_error(exc: BaseException) -> str:
    """An exception in one line for logs and the run's message: a database error without the
    SQL statement and its parameters (they say nothing to an operator and may be long)."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        return f"{type(exc).__name__}: {exc.orig}".strip()
    return f"{type(exc).__name__}: {exc}".strip()


def failure_of(
    kind: str, crash: Exception | None, status: str, summary: dict[str, Any]
) -> Failure | None:
    """What to tell people when a run failed outright, so billing watched nothing: it
    stopped with an error (the database going away included), or no server could be read."""
    where = f"{socket.gethostname()} (pid {os.getpid()})"
    log_hint = f"the log of the scheduler process on {where} (logger {log.name})"
    if crash is not None:
        if isinstance(crash, sa.exc.SQLAlchemyError):
            advice = (
                f"Check that the database is up and reachable from {where}, and that "
                f"`flask lm-billing db upgrade` has run; {log_hint} has the details."
            )
        else:
            advice = (
                f"Read the error and its traceback in {log_hint}; if it repeats, report it "
                "with that traceback to whoever maintains the billing plugin."
            )
        return Failure(f"the {kind} stopped with an error: {short_error(crash)}", advice)
    if status == "failed":
        count = summary.get("servers", 0)
        return Failure(
            "the only server could not be read"
            if count == 1
            else f"none of the {count} servers could be read",
            f"If every server is unreachable, check the network from {where} to the hosting "
            "servers (DNS, firewall, the TclPort port). Otherwise open Billing > Servers and "
            "run each server's connection check: it says what to change (TCLPORT Hosts, "
            "password, logging).",
        )
    return None


def _is_lock_contention(exc: Exception) -> bool:
    return isinstance(exc, sa.exc.OperationalError) and "database is locked" in str(exc)


__all__ = [
    "SERVICE_EXTRA",
    "WORK_EXTRA",
    "SchedulerService",
    "WorkRequest",
    "default_work",
]
