"""The engine's services for pages, CLI and scheduler: validate, sync and fix servers in
parallel batches, assign and unassign billing objects behind the validate-and-sync gate.

Call inside an app context. The network part runs in worker threads that never touch the
database; the database part runs in the calling thread, one short transaction per server,
and no transaction is open while the workers talk to servers.

Semantics (the README's "Validate, sync and fix" section says the same to users):

* **validate** reads everything a server has, judges every problem kind, records the run and
  its problems, and changes no billing data except the server's Validated time, Version,
  status, Enable Logging state and reported host name. Validated moves only when the server
  was reached and fully read; a failed read records the failure on the run and as the
  server's status and leaves the server's problems alone (nothing could be judged).
* **sync** = validate, then apply all drift in the same short transaction (create unknown
  sites and lists unassigned, update changed lists, mark missing ones removed), store this
  month's usage and set Synced. Problems are then judged on billing as it is after the sync:
  new lists show as ``unassigned_list`` until an owner is assigned. **dry run** computes the
  same and writes no billing data, no problems and no server fields (only the batch and run
  records and the audit entry, so the request itself is on record).
* **fix** applies chosen problems only: drift as sync would (on a fresh read of the server),
  ``logging_off`` through ``logging_set lists`` only with ``enable_logging=True``; billing-rule
  problems are not auto-fixable and the result names the action that solves them. Fixing a
  problem again changes nothing (it reports "already fixed").
* **the gate**: assign/unassign are refused (``GateError``) while the server was never
  validated or has open drift problems.
* Two runs never work on one server at once: each claims the server's lease (one
  conditional UPDATE); a second claimant reports "already running" and is skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import audit
from ..models import (
    Batch,
    BillingGroup,
    MailingList,
    Problem,
    Run,
    Server,
    Site,
    utcnow,
)
from ..secrets import SecretsError
from ..settings import Settings
from ..state import get_state
from ..tclport.client import ClientSettings
from ..tclport.errors import TclPortError
from .checks import LoggingReport
from .checks import enable_logging as _enable_logging_call
from .inventory import Inventory, fetch_inventory
from .reconcile import (
    DRIFT_KINDS,
    RULE_KINDS,
    Found,
    apply_to_snapshot,
    reconcile,
)
from .servers import run_message, status_for_error, tclport_password
from .store import (
    ASSIGNMENT,
    BATCH,
    RUN,
    SERVER,
    apply_sync,
    claim_server,
    end_unfinished_runs,
    expire_leases,
    hold_lease,
    is_conflict,
    lease_owner,
    load_snapshot,
    open_drift_problems,
    record_problems,
    release_server,
    sweep_stale_batches,
)

__all__ = [
    "BATCH_KINDS",
    "AssignmentError",
    "BatchResult",
    "FixItem",
    "FixResult",
    "GateError",
    "ServerOutcome",
    "assign",
    "check_gate",
    "create_batch",
    "fix_problems",
    "run_batch",
    "sync_servers",
    "unassign",
    "validate_servers",
]

log = logging.getLogger("lm_billing_plugin.runner")

BATCH_KINDS: Final = ("validate", "sync")
# How long past its own deadline a worker may take before the runner stops waiting for it
# (the client's deadline normally ends it first; this only guards against surprises).
_GRACE: Final = 5.0
_KIND_ORDER: Final = {kind: i for i, kind in enumerate(DRIFT_KINDS + RULE_KINDS + ("logging_off",))}

# What each billing-rule problem needs from a person.
RULE_ACTIONS: Final = {
    "unassigned_list": "Assign an owner: assign the list (or its site or server) to a "
    "billing group.",
    "over_max_lists": "Change the billing group's hosting plan, or move some of its lists to "
    "another group.",
    "over_max_members": "Change the billing group's hosting plan, or move some of its lists "
    "to another group.",
    "over_max_members_per_list": "Change the billing group's hosting plan, or move the list "
    "to a group whose plan permits its members.",
    "over_max_lists_per_site": "Change the billing group's hosting plan, or move lists of "
    "this site to another group.",
    "over_max_sites": "Change the billing group's hosting plan, or move some sites to "
    "another group.",
    "inactive_customer_has_lists": "Unassign the group's lists (or move them to a placeholder "
    "customer), or make the customer active again.",
}
ENABLE_LOGGING_HINT: Final = (
    "Enabling logging changes the hosting server's own settings, so it is done only on "
    "request: use \"Enable logging on this server\" (or `fix --enable-logging`)."
)


class GateError(Exception):
    """An assignment change refused by the validate-and-sync gate; the message says what to do."""

    def __init__(self, message: str, *, server_id: int | None = None,
                 server_name: str | None = None) -> None:
        super().__init__(message)
        self.server_id = server_id
        self.server_name = server_name


class LeaseLost(RuntimeError):
    """This run outlived its lease and another run took the server over: store nothing."""


class AssignmentError(ValueError):
    """An assignment request that names something that does not fit (wrong server, removed
    list, unknown group ...); the message says which."""


# --- results -------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass
class ServerOutcome:
    """What one server's validate or sync came to.

    ``ok``: the server was reached, fully read and (unless dry run) its result stored.
    ``problems``: the open problems this run found (``id`` None on a dry run).
    ``skipped_reason``: "already running" when another run held the server.
    """

    server_id: int
    name: str
    ok: bool = False
    status: str = "unchecked"
    previous_status: str = "unchecked"
    version: str | None = None
    validated_at: datetime | None = None
    synced_at: datetime | None = None
    error: dict[str, str] | None = None
    changes: dict[str, int] = field(
        default_factory=lambda: {"created": 0, "updated": 0, "removed": 0}
    )
    problems: list[dict[str, Any]] = field(default_factory=list)
    new_problems: int = 0
    skipped_reason: str | None = None
    run_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "version": self.version,
            "validated_at": _iso(self.validated_at),
            "synced_at": _iso(self.synced_at),
            "error": self.error,
            "changes": dict(self.changes),
            "problems": [dict(p) for p in self.problems],
        }


@dataclass
class BatchResult:
    """A finished batch: one outcome per server, in server-name order."""

    batch_id: int
    kind: str
    dry_run: bool
    servers: list[ServerOutcome]

    @property
    def exit_code(self) -> int:
        """0 = every server ok and no open problems; 1 = done but problems are open (or a
        server was skipped because another run had it); 2 = a server could not be read."""
        if any(not s.ok and s.skipped_reason is None for s in self.servers):
            return 2
        if any(s.problems or s.skipped_reason for s in self.servers):
            return 1
        return 0

    def to_json(self) -> dict[str, Any]:
        return {"servers": [s.to_json() for s in self.servers]}


FIX_OUTCOMES: Final = ("fixed", "already_fixed", "gone", "not_fixable", "needs_confirmation",
                       "failed", "not_found")


@dataclass
class FixItem:
    """One chosen problem and what fixing it did; ``action`` says what a person must do."""

    problem_id: int
    kind: str | None
    object: str | None
    server: str | None
    outcome: str  # one of FIX_OUTCOMES
    message: str
    action: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.problem_id, "kind": self.kind, "object": self.object,
                "server": self.server, "outcome": self.outcome, "message": self.message,
                "action": self.action}


@dataclass
class FixResult:
    """Outcome of fix_problems: one item per chosen problem, and the changes per server."""

    items: list[FixItem]
    changes: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 = everything chosen is fixed (now or before); 1 = some need a person;
        2 = a server could not be reached or a fix failed."""
        if any(i.outcome in ("failed", "not_found") for i in self.items):
            return 2
        if any(i.outcome in ("not_fixable", "needs_confirmation") for i in self.items):
            return 1
        return 0

    @property
    def fixed(self) -> list[FixItem]:
        """Problems this call fixed."""
        return [i for i in self.items if i.outcome == "fixed"]

    @property
    def skipped(self) -> list[FixItem]:
        """Problems left as they are: fixed before, gone, or needing a person."""
        return [i for i in self.items
                if i.outcome in ("already_fixed", "gone", "not_fixable", "needs_confirmation")]

    @property
    def failed(self) -> list[FixItem]:
        """Problems that could not be fixed now (server unreachable, busy, unknown id)."""
        return [i for i in self.items if i.outcome in ("failed", "not_found")]

    @staticmethod
    def _line(item: FixItem) -> str:
        what = f"{item.kind} {item.object!r}" if item.kind else f"problem {item.problem_id}"
        where = f" on server {item.server!r}" if item.server else ""
        action = f" {item.action}" if item.action else ""
        return f"{what}{where}: {item.message}.{action}"

    @property
    def messages(self) -> list[str]:
        """One line per problem that was not a failure (what happened, what to do next)."""
        return [self._line(i) for i in self.items if i.outcome not in ("failed", "not_found")]

    @property
    def errors(self) -> list[str]:
        """One line per failed problem, with what to do."""
        return [self._line(i) for i in self.failed]

    def to_json(self) -> dict[str, Any]:
        return {"problems": [i.to_json() for i in self.items],
                "changes": {k: dict(v) for k, v in self.changes.items()}}


# --- helpers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
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


def _server_columns() -> list[Any]:
    return [Server.id, Server.name, Server.host, Server.port, Server.password_encrypted,
            Server.status, Server.version, Server.validated_at, Server.synced_at]


def _target(row: Any, run_id: int) -> _Target:
    password: str | None = None
    error: str | None = None
    try:
        password = tclport_password(row.password_encrypted)
    except SecretsError as exc:
        error = str(exc)
    return _Target(row.id, row.name, row.host, row.port, password, error, row.status,
                   row.version, row.validated_at, row.synced_at, run_id)


def _audit_server(session: Session, actor: str, action: str, server_id: int, at: datetime,
                  detail: dict[str, Any]) -> None:
    """Record an engine action on one server in the audit log."""
    audit.record(session, actor=actor, action=action, object_type="server",
                 object_id=server_id, server_id=server_id, detail=detail, at=at)


def _problem_dicts(found: Iterable[Any]) -> list[dict[str, Any]]:
    out = [{"id": getattr(p, "id", None), "kind": p.kind, "object": p.object_name,
            "detail": p.detail} for p in found]
    out.sort(key=lambda p: (_KIND_ORDER.get(p["kind"], 99), p["object"]))
    return out


def _error_dict(exc: TclPortError) -> dict[str, str]:
    return {"code": exc.code, "message": exc.message}


def _fetcher(settings: Settings) -> Callable[[_Target, float], Inventory]:
    client: ClientSettings = settings.client

    def fetch(target: _Target, deadline: float) -> Inventory:
        assert target.password is not None
        return fetch_inventory(target.host, target.port, target.password, name=target.name,
                               settings=client, deadline=deadline)

    return fetch


# --- batches -------------------------------------------------------------------------------


def create_batch(kind: str, server_ids: Sequence[int] | None, *, actor: str,
                 dry_run: bool = False) -> int:
    """Queue a validate or sync of ``server_ids`` (None = every active server).

    Creates the Batch (status ``queued``, ``total`` servers) and one queued Run per server,
    commits, and returns the batch id; :func:`run_batch` executes it (pages may do that in a
    background thread and poll ``Batch.done``/``failed``/``status``). Unknown ids raise
    ``LookupError``.
    """
    if kind not in BATCH_KINDS:
        raise ValueError(f"batch kind must be one of {BATCH_KINDS}, not {kind!r}")
    if dry_run and kind != "sync":
        raise ValueError("only a sync can be a dry run")
    state = get_state()
    session = state.session
    # The next batch cleans up after a process that died mid-batch: expired server leases,
    # then batches (and their never-started runs) that stopped moving. Both commit.
    now = utcnow()
    expire_leases(session, now)
    sweep_stale_batches(session, now, state.settings.lease_seconds)
    query = sa.select(Server.id).order_by(Server.name)
    if server_ids is None:
        query = query.where(Server.active.is_(True))
    else:
        wanted = sorted(set(server_ids))
        query = query.where(Server.id.in_(wanted))
    ids = list(session.execute(query).scalars())
    if server_ids is not None and len(ids) != len(set(server_ids)):
        missing = sorted(set(server_ids) - set(ids))
        session.rollback()
        raise LookupError(f"no such server id(s): {missing}")
    now = utcnow()
    batch = Batch(kind=kind, status="queued", total=len(ids), done=0, failed=0,
                  dry_run=dry_run, triggered_by=actor, host=socket.gethostname(),
                  pid=os.getpid(), started_at=now)
    session.add(batch)
    session.flush()
    if ids:
        session.execute(
            sa.insert(RUN),
            [{"batch_id": batch.id, "server_id": sid, "kind": kind, "status": "queued",
              "triggered_by": actor, "host": socket.gethostname(), "pid": os.getpid(),
              "started_at": now} for sid in ids],
        )
    batch_id = batch.id
    session.commit()
    return batch_id


def run_batch(batch_id: int) -> BatchResult:
    """Execute a queued batch: servers in parallel (LM_BILLING_MAX_PARALLEL), each within its
    own deadline (LM_BILLING_SERVER_DEADLINE); Batch.done/failed move as servers finish and
    Batch.status becomes ``finished``. Raises RuntimeError if the batch is not queued.
    """
    state = get_state()
    settings = state.settings
    session = state.session
    session.commit()  # no transaction of the caller stays open across the network work
    now = utcnow()
    started = session.execute(
        sa.update(BATCH)
        .where(BATCH.c.id == batch_id, BATCH.c.status == "queued")
        .values(status="running", started_at=now, host=socket.gethostname(), pid=os.getpid())
    )
    if started.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise RuntimeError(f"batch {batch_id} is not queued (already run, or no such batch)")
    batch = session.execute(
        sa.select(Batch.kind, Batch.dry_run, Batch.triggered_by).where(Batch.id == batch_id)
    ).one()
    kind, dry_run, actor = batch.kind, bool(batch.dry_run), batch.triggered_by
    rows = session.execute(
        sa.select(Run.id.label("run_id"), *_server_columns())
        .join(Server, Server.id == Run.server_id)
        .where(Run.batch_id == batch_id, Run.status == "queued")
        .order_by(Server.name)
    ).all()
    targets = [_target(r, r.run_id) for r in rows]
    session.commit()
    worker = _BatchWorker(session, settings, batch_id, kind, dry_run, actor)
    try:
        outcomes = worker.run(targets)
    except BaseException as exc:
        session.rollback()
        log.exception("batch %s stopped: %s", batch_id, type(exc).__name__)
        # Close what is left of the batch, so no page waits for runs nobody will finish,
        # and give back the servers this batch still holds. Best effort: the database may
        # be what failed (then the stale-batch sweep closes it later).
        with contextlib.suppress(Exception):
            now = utcnow()
            end_unfinished_runs(
                session, RUN.c.batch_id == batch_id, now, status="failed", code="BATCH_FAILED",
                message=f"the batch stopped before finishing this server ({type(exc).__name__}"
                "); run it again, and see the billing server's log if it repeats")
            session.execute(
                sa.update(SERVER).where(SERVER.c.lease_owner == worker.owner)
                .values(lease_owner=None, lease_expires_at=None, lease_run_id=None)
            )
            session.execute(
                sa.update(BATCH).where(BATCH.c.id == batch_id)
                .values(status="failed", finished_at=now)
            )
            session.commit()
        raise
    session.execute(
        sa.update(BATCH).where(BATCH.c.id == batch_id)
        .values(status="finished", finished_at=utcnow())
    )
    session.commit()
    order = {t.server_id: i for i, t in enumerate(targets)}
    outcomes.sort(key=lambda o: order.get(o.server_id, 0))
    return BatchResult(batch_id, kind, dry_run, outcomes)


def validate_servers(server_ids: Sequence[int] | None, *, actor: str) -> BatchResult:
    """Validate ``server_ids`` (None = all active servers) now: create_batch + run_batch."""
    return run_batch(create_batch("validate", server_ids, actor=actor))


def sync_servers(server_ids: Sequence[int] | None, *, actor: str,
                 dry_run: bool = False) -> BatchResult:
    """Sync ``server_ids`` (None = all active servers) now; ``dry_run`` writes nothing."""
    return run_batch(create_batch("sync", server_ids, actor=actor, dry_run=dry_run))


class _BatchWorker:
    """Runs one batch: claims, parallel fetches, and the per-server database work."""

    def __init__(self, session: Session, settings: Settings, batch_id: int, kind: str,
                 dry_run: bool, actor: str) -> None:
        self.session = session
        self.settings = settings
        self.batch_id = batch_id
        self.kind = kind
        self.dry_run = dry_run
        self.actor = actor
        self.owner = lease_owner()
        self.fetch = _fetcher(settings)

    def run(self, targets: list[_Target]) -> list[ServerOutcome]:
        outcomes: list[ServerOutcome] = []
        pending = list(reversed(targets))
        running: dict[Future[Inventory], tuple[_Target, float]] = {}
        workers = max(1, min(self.settings.max_parallel, len(targets)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lm-billing-fetch")
        try:
            while pending or running:
                while pending and len(running) < workers:
                    target = pending.pop()
                    early = self._start(target)
                    if early is not None:
                        outcomes.append(early)
                        continue
                    deadline = time.monotonic() + self.settings.server_deadline
                    running[pool.submit(self.fetch, target, deadline)] = (target, deadline)
                if not running:
                    continue
                soonest = min(d for _t, d in running.values()) + _GRACE
                done, _ = wait(list(running), timeout=max(0.0, soonest - time.monotonic()),
                               return_when=FIRST_COMPLETED)
                for fut in done:
                    target, _deadline = running.pop(fut)
                    outcomes.append(self._finish(target, fut))
                for fut, (target, deadline) in list(running.items()):
                    if fut not in done and time.monotonic() > deadline + _GRACE:
                        # The worker overran even its grace: record it and stop waiting.
                        running.pop(fut)
                        err = TclPortError(target.name, "deadline", "TIMEOUT",
                                           "the server did not finish within its deadline "
                                           "(LM_BILLING_SERVER_DEADLINE)")
                        outcomes.append(self._failed(target, err))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return outcomes

    # -- start: claim ---------------------------------------------------------------------

    def _start(self, target: _Target) -> ServerOutcome | None:
        """Claim the server; return an outcome when it must not be fetched."""
        session = self.session
        now = utcnow()
        if not claim_server(session, target.server_id, self.owner,
                            self.settings.lease_seconds, now, run_id=target.run_id,
                            commit=False):
            holder = session.execute(
                sa.select(Server.lease_owner, Server.lease_expires_at)
                .where(Server.id == target.server_id)
            ).one()
            message = (f"already running (claimed by {holder.lease_owner} until "
                       f"{_iso(holder.lease_expires_at)}); try again when it has finished")
            session.execute(
                sa.update(RUN).where(RUN.c.id == target.run_id)
                .values(status="skipped", finished_at=now, error_code="ALREADY_RUNNING",
                        error_message=run_message(target.name, message))
            )
            self._progress(failed=False)
            _audit_server(session, self.actor, self._action(), target.server_id, now,
                          {"run_id": target.run_id, "status": "skipped"})
            session.commit()
            return ServerOutcome(
                target.server_id, target.name, ok=False, status=target.previous_status,
                previous_status=target.previous_status, version=target.version,
                validated_at=target.validated_at, synced_at=target.synced_at,
                skipped_reason="already running", run_id=target.run_id,
            )
        session.execute(
            sa.update(RUN).where(RUN.c.id == target.run_id)
            .values(status="running", started_at=now, host=socket.gethostname(),
                    pid=os.getpid())
        )
        session.commit()
        if target.password_error is not None:
            err = TclPortError(target.name, "password", "PASSWORD", target.password_error)
            return self._failed(target, err)
        return None

    def _action(self) -> str:
        return "sync_dry_run" if self.dry_run else self.kind

    def _progress(self, *, failed: bool) -> None:
        table = BATCH
        self.session.execute(
            sa.update(table).where(table.c.id == self.batch_id)
            .values(done=table.c.done + 1, failed=table.c.failed + (1 if failed else 0))
        )

    # -- finish: store --------------------------------------------------------------------

    def _finish(self, target: _Target, fut: Future[Inventory]) -> ServerOutcome:
        try:
            inventory = fut.result()
        except TclPortError as exc:
            return self._failed(target, exc)
        except Exception as exc:
            log.exception("server %s: reading it failed unexpectedly", target.name)
            return self._failed(target, TclPortError(
                target.name, "fetch", "INTERNAL",
                f"reading the server failed unexpectedly ({type(exc).__name__}: {exc}); "
                "see the billing server's log"))
        verb = "sync" if self.kind == "sync" else "validate"
        try:
            try:
                return self._stored(target, inventory)
            except sa.exc.DBAPIError as exc:
                if not is_conflict(exc):
                    raise
                # Another process recorded the same group-wide problem a moment ago (same
                # fingerprint; on MariaDB possibly as a deadlock): nothing of ours was kept,
                # so judge again against its row.
                self.session.rollback()
                log.info("server %s: a problem row appeared concurrently; retrying once",
                         target.name)
                return self._stored(target, inventory)
        except LeaseLost:
            self.session.rollback()
            return self._failed(target, TclPortError(
                target.name, "store", "LEASE_LOST",
                "this run took longer than LM_BILLING_LEASE_SECONDS and another run took the "
                f"server over; nothing of this run was stored. {verb.capitalize()} it again "
                "(raise LM_BILLING_LEASE_SECONDS if this server is slow)."))
        except Exception as exc:
            self.session.rollback()
            if isinstance(exc, sa.exc.DBAPIError) and is_conflict(exc):
                log.warning("server %s: storing the result clashed twice with another run",
                            target.name)
                message = (
                    "another run was storing the same billing problems at the same moment, "
                    f"twice; nothing was changed for this server. {verb.capitalize()} it again "
                    "when the other run has finished.")
            else:
                log.exception("server %s: storing the result failed; nothing was changed",
                              target.name)
                message = (
                    f"billing could not store the result ({type(exc).__name__}); nothing was "
                    f"changed for this server. {verb.capitalize()} it again; see the billing "
                    "server's log if it repeats.")
            return self._failed(target, TclPortError(target.name, "store", "STORE", message))

    def _stored(self, target: _Target, inv: Inventory) -> ServerOutcome:
        session = self.session
        sid = target.server_id
        now = utcnow()
        if not hold_lease(session, sid, self.owner):
            session.rollback()
            raise LeaseLost(target.name)
        snapshot = load_snapshot(session, sid)
        rec = reconcile(snapshot, inv)
        outcome = ServerOutcome(
            sid, target.name, ok=True, previous_status=target.previous_status,
            version=inv.server_info.version, validated_at=target.validated_at,
            synced_at=target.synced_at, run_id=target.run_id,
        )
        status = "ok" if inv.logging.counts_messages else "logging_off"
        outcome.status = status
        counts = {"created": 0, "updated": 0, "removed": 0}
        found: list[Found]
        new = 0
        if self.kind == "sync" and self.dry_run:
            counts = rec.changes.counts()
            after = reconcile(apply_to_snapshot(snapshot, rec.changes), inv)
            found = after.problems
            outcome.status = target.previous_status
            outcome.version = target.version
        else:
            after = rec
            if self.kind == "sync":
                counts = apply_sync(session, sid, rec.changes, inv, now).as_dict()
                if not rec.changes.empty:
                    after = reconcile(load_snapshot(session, sid), inv)
            found = after.problems
            new, _open = record_problems(session, sid, target.run_id, found, now,
                                         groups=after.judged_groups)
            values: dict[str, Any] = {
                "version": inv.server_info.version,
                "hostname_reported": inv.server_info.hostname,
                "logging_mode": inv.logging.mode,
                "logging_label": inv.logging.label,
                "status": status,
                "status_message": "" if status == "ok" else next(
                    (f.detail for f in found if f.kind == "logging_off"), ""),
                "validated_at": now,
                "checked_at": now,
            }
            if self.kind == "sync":
                values["synced_at"] = now
                outcome.synced_at = now
            outcome.validated_at = now
            session.execute(sa.update(SERVER)
                            .where(SERVER.c.id == sid).values(**values))
        run_status = "problems" if found else "ok"
        session.execute(
            sa.update(RUN).where(RUN.c.id == target.run_id).values(
                status=run_status, finished_at=utcnow(), lists_seen=len(inv.lists),
                created=counts["created"], updated=counts["updated"],
                removed=counts["removed"], problems_open=len(found), problems_new=new,
            )
        )
        release_server(session, sid, self.owner, commit=False)
        self._progress(failed=False)
        _audit_server(session, self.actor, self._action(), sid, now,
                      {"run_id": target.run_id, "status": run_status, "changes": counts,
                       "problems_open": len(found), "problems_new": new})
        if self.kind == "sync" and self.dry_run:
            outcome.problems = _problem_dicts(found)
        else:
            # Read back in the same transaction: the ids of the rows just written.
            outcome.problems = _problem_dicts(session.execute(
                sa.select(Problem.id, Problem.kind, Problem.object_name, Problem.detail)
                .where(Problem.last_run_id == target.run_id, Problem.status == "open")
            ).all())
        session.commit()
        outcome.changes = counts
        outcome.new_problems = new
        return outcome

    def _failed(self, target: _Target, exc: TclPortError) -> ServerOutcome:
        session = self.session
        now = utcnow()
        status = status_for_error(exc.code)
        # A run that lost its lease must not touch the server: another run owns it now.
        if not self.dry_run and exc.code != "LEASE_LOST":
            session.execute(
                sa.update(SERVER).where(SERVER.c.id == target.server_id)
                .values(status=status, status_message=exc.message, checked_at=now)
            )
        session.execute(
            sa.update(RUN).where(RUN.c.id == target.run_id)
            .values(status="failed", finished_at=now, error_code=exc.code[:40],
                    error_message=run_message(target.name, exc.message))
        )
        release_server(session, target.server_id, self.owner, commit=False)
        self._progress(failed=True)
        _audit_server(session, self.actor, self._action(), target.server_id, now,
                      {"run_id": target.run_id, "status": "failed", "error": exc.code})
        session.commit()
        log.info("server %s: %s failed: %s", target.name, self.kind, exc.code)
        return ServerOutcome(
            target.server_id, target.name, ok=False,
            status=target.previous_status if self.dry_run else status,
            previous_status=target.previous_status, version=target.version,
            validated_at=target.validated_at, synced_at=target.synced_at,
            error=_error_dict(exc), run_id=target.run_id,
        )


# --- fix -----------------------------------------------------------------------------------


@dataclass
class _FixPlan:
    target: _Target
    drift: list[Any] = field(default_factory=list)  # problem rows
    logging: list[Any] = field(default_factory=list)


def _fix_work(settings: Settings, target: _Target, want_logging: bool,
              deadline: float) -> tuple[LoggingReport | None, Inventory | TclPortError]:
    """Worker thread: switch logging on if asked, then read the server afresh."""
    assert target.password is not None
    report = None
    if want_logging:
        report = _enable_logging_call(target.host, target.port, target.password,
                                      name=target.name, settings=settings.client)
    try:
        inv = fetch_inventory(target.host, target.port, target.password, name=target.name,
                              settings=settings.client, deadline=deadline)
    except TclPortError as exc:
        return report, exc
    return report, inv


def fix_problems(problem_ids: Sequence[int], *, actor: str,
                 enable_logging: bool = False) -> FixResult:
    """Fix the chosen problems only (see the module docstring); idempotent.

    Drift problems are applied as sync would, on a fresh read of their server (the server's
    other problems are re-judged by that read). ``logging_off`` switches the server's
    Enable Logging through TclPort only when ``enable_logging`` is True. Billing-rule problems
    are reported as ``not_fixable`` with the action that solves them.
    """
    state = get_state()
    settings = state.settings
    session = state.session
    session.commit()
    ids = sorted(set(problem_ids))
    rows = session.execute(
        sa.select(Problem.id, Problem.kind, Problem.object_type, Problem.object_name,
                  Problem.status, Problem.fingerprint, Problem.server_id, Problem.closed_at,
                  Server.name.label("server_name"))
        .outerjoin(Server, Server.id == Problem.server_id)
        .where(Problem.id.in_(ids))
    ).all() if ids else []
    session.commit()
    by_id = {r.id: r for r in rows}
    items: dict[int, FixItem] = {}
    plans: dict[int, list[Any]] = {}
    for pid in ids:
        row = by_id.get(pid)
        if row is None:
            items[pid] = FixItem(pid, None, None, None, "not_found",
                                 f"there is no problem {pid}; reload the Errors page")
            continue
        base = (pid, row.kind, row.object_name, row.server_name)
        if row.status != "open":
            items[pid] = FixItem(*base, "already_fixed",
                                 f"already {row.status} ({_iso(row.closed_at)}); nothing to do")
        elif row.kind in RULE_ACTIONS:
            items[pid] = FixItem(*base, "not_fixable",
                                 "a billing rule: fixing it needs a decision, not a sync",
                                 RULE_ACTIONS[row.kind])
        elif row.kind == "logging_off" and not enable_logging:
            items[pid] = FixItem(*base, "needs_confirmation", ENABLE_LOGGING_HINT,
                                 "Enable logging on this server")
        elif row.server_id is None:
            items[pid] = FixItem(*base, "not_fixable", "this problem belongs to no server")
        else:
            plans.setdefault(row.server_id, []).append(row)
    changes: dict[str, dict[str, int]] = {}
    if plans:
        _fix_servers(session, settings, actor, plans, items, changes)
    return FixResult([items[pid] for pid in ids], changes)


def _fix_servers(session: Session, settings: Settings, actor: str,
                 plans: dict[int, list[Any]], items: dict[int, FixItem],
                 changes: dict[str, dict[str, int]]) -> None:
    owner = lease_owner()
    now = utcnow()
    servers = session.execute(
        sa.select(*_server_columns()).where(Server.id.in_(sorted(plans)))
    ).all()
    runs: dict[int, int] = {}
    for srv in servers:
        run = Run(server_id=srv.id, kind="fix", status="running", triggered_by=actor,
                  host=socket.gethostname(), pid=os.getpid(), started_at=now)
        session.add(run)
        session.flush()
        runs[srv.id] = run.id
    session.commit()
    targets: list[_Target] = []
    for srv in servers:
        target = _target(srv, runs[srv.id])
        problems = plans[srv.id]
        if not claim_server(session, srv.id, owner, settings.lease_seconds, utcnow(),
                            run_id=target.run_id):
            _fix_failed(session, target, problems, items, actor, "ALREADY_RUNNING",
                        "already running: another run has this server; try again when it "
                        "has finished", release=None)
            continue
        if target.password_error is not None:
            _fix_failed(session, target, problems, items, actor, "PASSWORD",
                        target.password_error, release=owner)
            continue
        targets.append(target)
    if not targets:
        return
    workers = max(1, min(settings.max_parallel, len(targets)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lm-billing-fix") as pool:
        futures = {
            pool.submit(
                _fix_work, settings, t,
                any(p.kind == "logging_off" for p in plans[t.server_id]),
                time.monotonic() + settings.server_deadline,
            ): t
            for t in targets
        }
        for fut in futures:
            target = futures[fut]
            problems = plans[target.server_id]
            try:
                report, result = fut.result()
            except Exception as exc:
                log.exception("server %s: fix failed unexpectedly", target.name)
                _fix_failed(session, target, problems, items, actor, "INTERNAL",
                            f"fixing failed unexpectedly ({type(exc).__name__}: {exc}); see "
                            "the billing server's log, then fix the problems again",
                            release=owner)
                continue
            try:
                _fix_store(session, target, owner, actor, problems, report, result, items,
                           changes)
            except LeaseLost:
                session.rollback()
                _fix_failed(session, target, problems, items, actor, "LEASE_LOST",
                            "this fix took longer than LM_BILLING_LEASE_SECONDS and another "
                            "run took the server over; nothing was stored. Validate the "
                            "server, then fix what is still open", release=None)
            except Exception as exc:
                session.rollback()
                if isinstance(exc, sa.exc.DBAPIError) and is_conflict(exc):
                    message = ("another run was storing the same billing problems at the same "
                               "moment; nothing was changed. Fix the problems again when it "
                               "has finished")
                else:
                    log.exception("server %s: storing the fix failed", target.name)
                    message = (f"billing could not store the fix ({type(exc).__name__}); "
                               "nothing was changed. Fix the problems again; see the billing "
                               "server's log if it repeats")
                _fix_failed(session, target, problems, items, actor, "STORE", message,
                            release=owner)


def _fix_failed(session: Session, target: _Target, problems: list[Any],
                items: dict[int, FixItem], actor: str, code: str, message: str, *,
                release: str | None) -> None:
    now = utcnow()
    for p in problems:
        items[p.id] = FixItem(p.id, p.kind, p.object_name, target.name, "failed", message)
    session.execute(
        sa.update(RUN).where(RUN.c.id == target.run_id)
        .values(status="skipped" if code == "ALREADY_RUNNING" else "failed", finished_at=now,
                error_code=code, error_message=run_message(target.name, message))
    )
    if release is not None:
        release_server(session, target.server_id, release, commit=False)
    _audit_server(session, actor, "fix", target.server_id, now,
                  {"run_id": target.run_id, "problem_ids": [p.id for p in problems],
                   "status": "failed", "error": code})
    session.commit()


def _fix_store(session: Session, target: _Target, owner: str, actor: str,
               problems: list[Any], report: LoggingReport | None,
               result: Inventory | TclPortError, items: dict[int, FixItem],
               changes: dict[str, dict[str, int]]) -> None:
    sid = target.server_id
    now = utcnow()
    logging_rows = [p for p in problems if p.kind == "logging_off"]
    drift_rows = [p for p in problems if p.kind in DRIFT_KINDS]
    if report is not None:
        _audit_server(session, actor, "enable_logging", sid, now,
                      {"ok": report.ok, "changed": report.changed, "mode": report.mode,
                       "code": report.code})
        for p in logging_rows:
            if not report.ok:
                items[p.id] = FixItem(p.id, p.kind, p.object_name, target.name, "failed",
                                      report.message)
    if isinstance(result, TclPortError):
        message = result.message
        for p in drift_rows + [p for p in logging_rows if p.id not in items]:
            items[p.id] = FixItem(p.id, p.kind, p.object_name, target.name, "failed", message)
        status = status_for_error(result.code)
        session.execute(
            sa.update(SERVER).where(SERVER.c.id == sid)
            .values(status=status, status_message=message, checked_at=now)
        )
        session.execute(
            sa.update(RUN).where(RUN.c.id == target.run_id)
            .values(status="failed", finished_at=now, error_code=result.code[:40],
                    error_message=run_message(target.name, message))
        )
        release_server(session, sid, owner, commit=False)
        _audit_server(session, actor, "fix", sid, now,
                      {"run_id": target.run_id, "status": "failed",
                       "problem_ids": [p.id for p in problems], "error": result.code})
        session.commit()
        return
    inv = result
    if not hold_lease(session, sid, owner):
        session.rollback()
        raise LeaseLost(target.name)
    snapshot = load_snapshot(session, sid)
    rec = reconcile(snapshot, inv)
    present = {f.fingerprint: f for f in rec.problems}
    chosen = [p for p in drift_rows if p.fingerprint in present]
    keys = {(p.object_type, p.object_name) for p in chosen}
    subset = rec.changes.select(keys)
    counts = apply_sync(session, sid, subset, inv, now, with_usage=False).as_dict()
    after = reconcile(load_snapshot(session, sid), inv) if not subset.empty else rec
    fixed_fps = {p.fingerprint for p in chosen}
    if report is not None and report.ok:
        fixed_fps |= {p.fingerprint for p in logging_rows}
    new, _open = record_problems(session, sid, target.run_id, after.problems, now,
                                 groups=after.judged_groups, fixed=fixed_fps)
    still = {f.fingerprint for f in after.problems}
    for p in drift_rows:
        if p.fingerprint in still:
            items[p.id] = FixItem(p.id, p.kind, p.object_name, target.name, "failed",
                                  "the change could not be applied; validate the server and "
                                  "try again")
        elif p.fingerprint in present:
            items[p.id] = FixItem(p.id, p.kind, p.object_name, target.name, "fixed",
                                  _fixed_message(p.kind), RULE_ACTIONS["unassigned_list"]
                                  if p.kind == "unknown_list" else None)
        else:
            items[p.id] = FixItem(p.id, p.kind, p.object_name, target.name, "gone",
                                  "the server and billing no longer differ here; closed as "
                                  "resolved")
    for p in logging_rows:
        if p.id in items:
            continue
        if p.fingerprint in still:
            items[p.id] = FixItem(p.id, p.kind, p.object_name, target.name, "failed",
                                  "Enable Logging is still off on the server")
        else:
            items[p.id] = FixItem(p.id, p.kind, p.object_name, target.name, "fixed",
                                  "Enable Logging is now \"Yes, Log All Messages that "
                                  "ListManager Sends to Mailing Lists\"")
    status = "ok" if inv.logging.counts_messages else "logging_off"
    session.execute(
        sa.update(SERVER).where(SERVER.c.id == sid).values(
            version=inv.server_info.version, hostname_reported=inv.server_info.hostname,
            logging_mode=inv.logging.mode, logging_label=inv.logging.label, status=status,
            status_message="" if status == "ok" else next(
                (f.detail for f in after.problems if f.kind == "logging_off"), ""),
            checked_at=now,
        )
    )
    session.execute(
        sa.update(RUN).where(RUN.c.id == target.run_id).values(
            status="problems" if after.problems else "ok", finished_at=utcnow(),
            lists_seen=len(inv.lists), created=counts["created"], updated=counts["updated"],
            removed=counts["removed"], problems_open=len(after.problems), problems_new=new,
        )
    )
    release_server(session, sid, owner, commit=False)
    _audit_server(session, actor, "fix", sid, now,
                  {"run_id": target.run_id, "changes": counts,
                   "problems": {str(p.id): items[p.id].outcome for p in problems}})
    session.commit()
    changes[target.name] = counts


def _fixed_message(kind: str) -> str:
    return {
        "unknown_site": "the site was added to billing",
        "unknown_list": "the list was added to billing, unassigned",
        "missing_site": "the site was marked removed (its history is kept)",
        "missing_list": "the list was marked removed (its history and assignments are kept)",
        "changed_list": "billing now holds the server's values",
    }.get(kind, "fixed")


# --- the gate and assignments -----------------------------------------------------------------


def check_gate(session: Session, server_id: int) -> None:
    """Raise GateError unless the server was validated and has no open drift problems."""
    row = session.execute(
        sa.select(Server.name, Server.validated_at).where(Server.id == server_id)
    ).one_or_none()
    if row is None:
        raise AssignmentError(f"there is no server {server_id}")
    if row.validated_at is None:
        raise GateError(
            f"Validate and sync server {row.name!r} first: it was never validated, so billing "
            "does not know what it holds.", server_id=server_id, server_name=row.name)
    drift = open_drift_problems(session, server_id)
    if drift:
        shown = ", ".join(f"{kind} {name!r}" for kind, name in drift[:3])
        more = f" and {len(drift) - 3} more" if len(drift) > 3 else ""
        raise GateError(
            f"Validate and sync server {row.name!r} first: it has {len(drift)} open drift "
            f"problem(s) ({shown}{more}); sync it, or fix them on the Errors page.",
            server_id=server_id, server_name=row.name)


def assign(group_id: int, *, server_id: int, site_ids: Iterable[int] = (),
           list_ids: Iterable[int] = (), whole_server: bool = False, actor: str,
           start: date | None = None) -> int:
    """Assign sites, lists or the whole server to a billing group from ``start`` (today).

    Another group's active assignment of the same object ends on ``start`` (end dates are
    exclusive: the first day not covered). Assigning what the group already has is a no-op.
    Returns the number of assignments created. Raises GateError (see check_gate) and
    AssignmentError (unknown group, objects not on this server or removed).
    """
    session = get_state().session
    start = start or utcnow().date()
    site_set = sorted(set(site_ids))
    list_set = sorted(set(list_ids))
    try:
        check_gate(session, server_id)
        if session.get(BillingGroup, group_id) is None:
            raise AssignmentError(f"there is no billing group {group_id}")
        wanted: list[tuple[str, int | None, int | None]] = []
        if whole_server:
            wanted.append(("server", None, None))
        if site_set:
            found = session.execute(
                sa.select(Site.id, Site.status).where(Site.id.in_(site_set),
                                                      Site.server_id == server_id)
            ).all()
            _check_objects("site", site_set, found)
            wanted += [("site", sid, None) for sid in site_set]
        if list_set:
            found = session.execute(
                sa.select(MailingList.id, MailingList.status)
                .where(MailingList.id.in_(list_set), MailingList.server_id == server_id)
            ).all()
            _check_objects("list", list_set, found)
            wanted += [("list", None, lid) for lid in list_set]
        if not wanted:
            raise AssignmentError("choose lists, sites or the whole server to assign")
        table = ASSIGNMENT
        current = session.execute(
            sa.select(table.c.id, table.c.group_id, table.c.object_type, table.c.site_id,
                      table.c.list_id)
            .where(table.c.server_id == server_id,
                   sa.or_(table.c.end_date.is_(None), table.c.end_date > start))
        ).all()
        wanted_set = set(wanted)
        have: set[tuple[str, int | None, int | None]] = set()
        end_ids: list[int] = []
        for a in current:
            key = (a.object_type, a.site_id, a.list_id)
            if key not in wanted_set:
                continue
            if a.group_id == group_id:
                have.add(key)
            else:
                end_ids.append(a.id)
        create = [k for k in wanted if k not in have]
        if end_ids:
            session.execute(sa.update(table).where(table.c.id.in_(end_ids))
                            .values(end_date=start))
        if create:
            session.execute(sa.insert(table), [
                {"group_id": group_id, "object_type": t, "server_id": server_id,
                 "site_id": s, "list_id": li, "start_date": start, "end_date": None,
                 "created_at": utcnow()} for t, s, li in create])
        audit.record(session, actor=actor, action="assign", object_type="group",
                     object_id=group_id, server_id=server_id,
                     detail={"whole_server": whole_server, "site_ids": site_set,
                             "list_ids": list_set, "start": start.isoformat(),
                             "created": len(create), "ended": sorted(end_ids)})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return len(create)


def _check_objects(what: str, wanted: Sequence[int], found: Sequence[Any]) -> None:
    ids = {r.id for r in found}
    missing = [i for i in wanted if i not in ids]
    if missing:
        raise AssignmentError(f"{what}(s) {missing} are not on this server")
    removed = [r.id for r in found if r.status != "active"]
    if removed:
        raise AssignmentError(
            f"{what}(s) {removed} were removed from the server; only active {what}s can be "
            "assigned")


def unassign(assignment_ids: Sequence[int], *, actor: str, end: date | None = None) -> int:
    """End the given assignments on ``end`` (today; exclusive: the first day not covered).

    History is kept (no delete). Returns how many were ended; already ended ones are left
    alone. Raises GateError for a server that needs validating or syncing first.
    """
    session = get_state().session
    end = end or utcnow().date()
    table = ASSIGNMENT
    try:
        rows = session.execute(
            sa.select(table.c.id, table.c.server_id, table.c.end_date, table.c.start_date)
            .where(table.c.id.in_(sorted(set(assignment_ids))))
        ).all()
        missing = sorted(set(assignment_ids) - {r.id for r in rows})
        if missing:
            raise AssignmentError(f"there is no assignment {missing}")
        for server_id in sorted({r.server_id for r in rows}):
            check_gate(session, server_id)
        ending = [r.id for r in rows if r.end_date is None or r.end_date > end]
        if ending:
            session.execute(
                sa.update(table).where(table.c.id.in_(ending))
                .values(end_date=sa.case((table.c.start_date > end, table.c.start_date),
                                         else_=end))
            )
        for server_id in sorted({r.server_id for r in rows}):
            audit.record(session, actor=actor, action="unassign", object_type="assignment",
                         server_id=server_id,
                         detail={"assignment_ids": sorted(r.id for r in rows
                                                          if r.server_id == server_id),
                                 "end": end.isoformat(), "ended": len(ending)})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return len(ending)
