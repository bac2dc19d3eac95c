"""The engine's batches for pages, CLI and scheduler: validate and sync servers in parallel,
one short transaction per server; fixes.py fixes chosen problems, catalog.assignment assigns.

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
* Two runs never work on one server at once: each claims the server's lease (one
  conditional UPDATE); a second claimant reports "already running" and is skipped.

Most of the module is one thing, the batch worker (claim, fetch in parallel, store, fail),
whose steps share its state; the lease is in leases.py, what fixes.py shares in targets.py.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import signals
from ..models import (
    Batch,
    Run,
    Server,
    utcnow,
)
from ..settings import Settings
from ..sqlite import writing
from ..state import get_state
from ..tclport.client import ClientSettings
from ..tclport.errors import TclPortError
from .deletions import sweep_stale_delete_runs
from .digests import (
    billing_half,
    inputs_digest,
    inventory_digest,
    result_digest,
    rules_digest,
    with_drift,
)
from .inventory import Inventory, fetch_inventory
from .leases import (
    LeaseLost,
    claim_server,
    claim_servers,
    end_unfinished_runs,
    expire_leases,
    hold_lease,
    lease_owner,
    release_server,
    sweep_stale_batches,
)
from .parallel import handed_ahead, run_parallel
from .reconcile import (
    DATA_KINDS,
    DRIFT_KINDS,
    RULE_KINDS,
    SERVER_KINDS,
    BillingSnapshot,
    Changes,
    ListRow,
    SiteRow,
    apply_to_snapshot,
    reconcile,
)
from .servers import run_message, status_for_error
from .store import (
    BATCH,
    RUN,
    SERVER,
    apply_sync,
    confirm_problems,
    is_conflict,
    last_result,
    load_snapshot,
    new_row_ids,
    open_problems,
    record_problems,
)
from .targets import Target, audit_server, iso, server_columns, target_from_row

__all__ = [
    "BATCH_KINDS",
    "BatchResult",
    "ServerOutcome",
    "create_batch",
    "run_batch",
    "sync_servers",
    "validate_servers",
]

log = logging.getLogger("lm_billing_plugin.runner")

BATCH_KINDS: Final = ("validate", "sync")
# What a run judges from the server's side alone (the rest, the billing rules, reads only
# billing's snapshot).
SERVER_SIDE_KINDS: Final = DRIFT_KINDS + SERVER_KINDS + DATA_KINDS
_KIND_ORDER: Final = {kind: i for i, kind in enumerate(DRIFT_KINDS + RULE_KINDS + ("logging_off",))}


# --- results -------------------------------------------------------------------------------


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
            "validated_at": iso(self.validated_at),
            "synced_at": iso(self.synced_at),
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

    def as_record(self) -> dict[str, Any]:
        """Every field, JSON-ready: how a batch process hands its result back
        (:meth:`from_record` rebuilds an equal result)."""
        servers = []
        for s in self.servers:
            fields = dataclasses.asdict(s)
            fields["validated_at"] = iso(s.validated_at)
            fields["synced_at"] = iso(s.synced_at)
            servers.append(fields)
        return {"batch_id": self.batch_id, "kind": self.kind, "dry_run": self.dry_run,
                "servers": servers}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> BatchResult:
        servers = []
        for fields in record["servers"]:
            fields = dict(fields)
            for key in ("validated_at", "synced_at"):
                if fields[key] is not None:
                    fields[key] = datetime.fromisoformat(fields[key])
            servers.append(ServerOutcome(**fields))
        return cls(int(record["batch_id"]), str(record["kind"]), bool(record["dry_run"]),
                   servers)


# --- helpers -------------------------------------------------------------------------------


def _problem_dicts(found: Iterable[Any]) -> list[dict[str, Any]]:
    out = [p if isinstance(p, dict) else {"id": getattr(p, "id", None), "kind": p.kind,
                                          "object_name": p.object_name, "detail": p.detail}
           for p in found]
    out = [{"id": p["id"], "kind": p["kind"], "object": p["object_name"],
            "detail": p["detail"]} for p in out]
    out.sort(key=lambda p: (_KIND_ORDER.get(p["kind"], 99), p["object"]))
    return out


def _error_dict(exc: TclPortError) -> dict[str, str]:
    return {"code": exc.code, "message": exc.message}


def _fetcher(settings: Settings) -> Callable[[Target, float], Inventory]:
    client: ClientSettings = settings.client

    def fetch(target: Target, deadline: float) -> Inventory:
        assert target.password is not None
        # "This month's usage" is the billing month (LM_BILLING_BILLING_TIMEZONE).
        return fetch_inventory(target.host, target.port, target.password, name=target.name,
                               settings=client, deadline=deadline,
                               today=settings.billing_today())

    return fetch


# --- batches -------------------------------------------------------------------------------


@writing
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
    # then batches (and their never-started runs) that stopped moving, and delete runs that
    # did (so a killed one reads "interrupted" without waiting for another delete run; the
    # scheduler's batches come here too). Each commits.
    now = utcnow()
    expire_leases(session, now)
    sweep_stale_batches(session, now, state.settings.lease_seconds)
    sweep_stale_delete_runs(session, state.settings.lease_seconds)
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


@writing
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
        sa.select(Run.id.label("run_id"), *server_columns())
        .join(Server, Server.id == Run.server_id)
        .where(Run.batch_id == batch_id, Run.status == "queued")
        .order_by(Server.name)
    ).all()
    targets = [target_from_row(r, r.run_id) for r in rows]
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
    if not dry_run:
        _announce(kind, batch_id, actor, outcomes)
    return BatchResult(batch_id, kind, dry_run, outcomes)


def _announce(kind: str, batch_id: int, actor: str, outcomes: list[ServerOutcome]) -> None:
    """server_validated / server_synced for each server this batch worked on (skipped
    servers were not touched; a dry run changed nothing)."""
    signal = signals.server_synced if kind == "sync" else signals.server_validated
    for o in outcomes:
        if o.skipped_reason is not None:
            continue
        extra = {"changes": dict(o.changes)} if kind == "sync" else {}
        signals.send(signal, server_id=o.server_id, name=o.name, ok=o.ok, status=o.status,
                     run_id=o.run_id, batch_id=batch_id, problems_open=len(o.problems),
                     problems_new=o.new_problems, actor=actor, **extra)


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
        # Each fetched inventory's digest, computed in its fetch thread (see digests.py).
        self.digests: dict[int, str] = {}
        # The targets not yet started, in the order run_parallel starts them; and the ones a
        # store's commit already claimed (see _claim_ahead).
        self.unstarted: collections.deque[Target] = collections.deque()
        self.claimed_ahead: set[int] = set()
        # A store also claims the next server only on SQLite (one writer, no row locks), where
        # it saves a commit. On PostgreSQL and MariaDB the store holds its own server's row
        # lock: claiming another row then could wait on a second batch's store that in turn
        # claims ours — a deadlock, which would fail a store.
        self.claim_in_store = session.get_bind().dialect.name == "sqlite"
        self.started = 0
        self.total = 0

    def run(self, targets: list[Target]) -> list[ServerOutcome]:
        def overran(target: Target) -> ServerOutcome:
            # The worker overran even its grace: record it and stop waiting.
            return self._failed(target, TclPortError(
                target.name, "deadline", "TIMEOUT",
                "the server did not finish within its deadline (LM_BILLING_SERVER_DEADLINE)"))

        def fetch(target: Target, deadline: float) -> Inventory:
            inventory = self.fetch(target, deadline)
            # Computed in the worker thread: the store thread only compares it.
            self.digests[target.server_id] = inventory_digest(inventory)
            return inventory

        self.unstarted = collections.deque(targets)
        self.total = len(targets)
        return run_parallel(targets, fetch, workers=self.settings.max_parallel,
                            deadline_seconds=self.settings.server_deadline, start=self._start,
                            finish=self._finish, overran=overran)

    # -- start: claim ---------------------------------------------------------------------

    def _start(self, target: Target) -> ServerOutcome | None:
        """Claim the server; return an outcome when it must not be fetched."""
        session = self.session
        while self.unstarted and self.unstarted[0] is not target:
            self.unstarted.popleft()
        if self.started and target.server_id not in self.claimed_ahead:
            # The rest of what run_parallel hands ahead at the start: claimed together, one
            # commit (the first server had its own claim, so its fetch began at once).
            window = handed_ahead(self.settings.max_parallel, self.total) - self.started
            if window > 1:
                self.claimed_ahead |= self._claim_ahead(utcnow(), window, current=target)
                self.session.commit()
        self.started += 1
        if self.unstarted:
            self.unstarted.popleft()
        if target.server_id in self.claimed_ahead:
            # Claimed (and its run marked running) together with others, or by the previous
            # server's store commit.
            self.claimed_ahead.discard(target.server_id)
            return self._password_failure(target)
        now = utcnow()
        if not claim_server(session, target.server_id, self.owner,
                            self.settings.lease_seconds, now, run_id=target.run_id,
                            commit=False):
            holder = session.execute(
                sa.select(Server.lease_owner, Server.lease_expires_at)
                .where(Server.id == target.server_id)
            ).one()
            message = (f"already running (claimed by {holder.lease_owner} until "
                       f"{iso(holder.lease_expires_at)}); try again when it has finished")
            session.execute(
                sa.update(RUN).where(RUN.c.id == target.run_id)
                .values(status="skipped", finished_at=now, error_code="ALREADY_RUNNING",
                        error_message=run_message(target.name, message))
            )
            self._progress(failed=False)
            audit_server(session, self.actor, self._action(), target.server_id, now,
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
        return self._password_failure(target)

    def _password_failure(self, target: Target) -> ServerOutcome | None:
        if target.password_error is not None:
            err = TclPortError(target.name, "password", "PASSWORD", target.password_error)
            return self._failed(target, err)
        return None

    def _claim_ahead(self, now: datetime, count: int, *,
                     current: Target | None = None) -> set[int]:
        """Claim the next ``count`` servers run_parallel starts (from ``current``, the one
        being started, or the next unstarted) that are not claimed yet, in the caller's
        transaction, with one UPDATE for all: a store's, just before its commit, so that one
        commit stores a server and claims the next (one commit a server instead of two); or
        the start's, for the servers handed ahead at the beginning. They are fetched right
        after that commit, as with claims of their own; a taken server is left to
        :meth:`_start` (which records it as skipped). Returns the ids claimed; the caller
        marks them claimed only once its commit succeeded."""
        upcoming = list(itertools.islice(self.unstarted, count))
        if current is not None and (not upcoming or upcoming[0] is not current):
            upcoming = [current]
        wanted = [t for t in upcoming if t.server_id not in self.claimed_ahead]
        if not wanted:
            return set()
        claimed = claim_servers(self.session, [(t.server_id, t.run_id) for t in wanted],
                                self.owner, self.settings.lease_seconds, now)
        runs = sorted(t.run_id for t in wanted if t.server_id in claimed)
        if runs:
            self.session.execute(
                sa.update(RUN).where(RUN.c.id.in_(runs))
                .values(status="running", started_at=now, host=socket.gethostname(),
                        pid=os.getpid())
            )
        return claimed

    def _action(self) -> str:
        return "sync_dry_run" if self.dry_run else self.kind

    def _progress(self, *, failed: bool) -> None:
        table = BATCH
        self.session.execute(
            sa.update(table).where(table.c.id == self.batch_id)
            .values(done=table.c.done + 1, failed=table.c.failed + (1 if failed else 0))
        )

    # -- finish: store --------------------------------------------------------------------

    def _finish(self, target: Target, fut: Future[Inventory]) -> ServerOutcome:
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

    def _stored(self, target: Target, inv: Inventory) -> ServerOutcome:
        session = self.session
        sid = target.server_id
        now = utcnow()
        # Assignments in force and "this month" follow the billing zone.
        today = self.settings.billing_today()
        if not hold_lease(session, sid, self.owner):
            session.rollback()
            raise LeaseLost(target.name)
        snapshot = load_snapshot(session, sid, today=today)
        outcome = ServerOutcome(
            sid, target.name, ok=True, previous_status=target.previous_status,
            version=inv.server_info.version, validated_at=target.validated_at,
            synced_at=target.synced_at, run_id=target.run_id,
        )
        status = "ok" if inv.logging.counts_messages else "logging_off"
        outcome.status = status
        counts = {"created": 0, "updated": 0, "removed": 0}
        # What the run found, as (id, kind, object name, detail); id None on a dry run.
        shown: list[tuple[int | None, str, str, str]]
        new = 0
        inventory_key = self.digests.pop(sid, None)
        inputs = (inputs_digest(inventory_key, snapshot, today)
                  if inventory_key is not None and not self.dry_run else None)
        stored_digests = last_result(session, sid) if inputs is not None else (None, None)
        reused = self._reuse(sid, snapshot, inputs, stored_digests) if inputs is not None else None
        rules_kept = None
        if reused is None and inputs is not None and self.kind == "validate":
            rules_kept = self._reuse_rules(sid, snapshot, inputs, stored_digests)
        if reused is not None:
            # The server and billing are as the last confirming run left them, and so are
            # its problems: that result stands; only the run itself is recorded.
            shown, stored = reused
            if self.kind == "sync":
                counts = apply_sync(session, sid, Changes(), inv, now).as_dict()
            # (_reuse checked that the stored result digest is these rows'.)
            confirm_problems(session, sid, target.run_id, now, (stored, stored_digests[1]),
                             groups=snapshot.groups)
        elif rules_kept is not None:
            assert inputs is not None
            # The server changed, billing did not: its rule problems are the last confirming
            # run's (same snapshot, and the rows are as it left them), so only the server's
            # side (drift, values, logging) is compared, read and written.
            rec = reconcile(snapshot, inv, rules=False)
            unique = list({f.fingerprint: f for f in rec.problems}.values())
            found_ids: dict[str, int] = {}
            new, _open = record_problems(session, sid, target.run_id, unique, now,
                                         kinds=SERVER_SIDE_KINDS, ids=found_ids,
                                         caller_confirms=True)
            shown = [(found_ids.get(f.fingerprint), f.kind, f.object_name, f.detail)
                     for f in unique]
            shown.extend(rules_kept)
            kept_inputs = inputs if rec.changes.empty else with_drift(inputs)
            confirm_problems(session, sid, target.run_id, now,
                             (kept_inputs, result_digest(shown)), groups=snapshot.groups)
        else:
            rec = reconcile(snapshot, inv)
            if self.kind == "sync" and self.dry_run:
                counts = rec.changes.counts()
                after = reconcile(apply_to_snapshot(snapshot, rec.changes), inv, synced=True)
                shown = [(None, f.kind, f.object_name, f.detail) for f in after.problems]
                outcome.status = target.previous_status
                outcome.version = target.version
            else:
                after, left = rec, snapshot
                if self.kind == "sync":
                    counts = apply_sync(session, sid, rec.changes, inv, now).as_dict()
                    if not rec.changes.empty:
                        # Billing as the sync just left it, without reading it back: the
                        # same rows apply_sync wrote (new ones have no assignments, so their
                        # ids do not matter to the rules; they are fetched for the digest).
                        left = _with_ids(apply_to_snapshot(snapshot, rec.changes),
                                         *new_row_ids(session, sid, snapshot))
                        after = reconcile(left, inv, synced=True)
                ids: dict[str, int] = {}
                unique = list({f.fingerprint: f for f in after.problems}.values())
                # The result may be reused by any run when billing now matches the server;
                # with drift left (a validate), only by another validate.
                new_inputs: str | None = None
                if inventory_key is not None:
                    new_inputs = inputs_digest(inventory_key, left, today)
                    if not after.changes.empty:
                        new_inputs = with_drift(new_inputs) if self.kind == "validate" else None
                # (A problem found twice counts once, as record_problems stores it.)
                new, _open = record_problems(session, sid, target.run_id, unique, now,
                                             groups=after.judged_groups, ids=ids)
                shown = [(ids.get(f.fingerprint), f.kind, f.object_name, f.detail)
                         for f in unique]
                if new_inputs is not None:
                    confirm_problems(session, sid, target.run_id, now,
                                     (new_inputs, result_digest(shown)))
        if not self.dry_run:
            values: dict[str, Any] = {
                "version": inv.server_info.version,
                "hostname_reported": inv.server_info.hostname,
                "logging_mode": inv.logging.mode,
                "logging_label": inv.logging.label,
                "status": status,
                "status_message": "" if status == "ok" else next(
                    (detail for _id, kind, _o, detail in shown if kind == "logging_off"), ""),
                "validated_at": now,
                "checked_at": now,
            }
            if self.kind == "sync":
                values["synced_at"] = now
                outcome.synced_at = now
            outcome.validated_at = now
            # The lease goes back in the same UPDATE (hold_lease checked and locked it).
            session.execute(sa.update(SERVER)
                            .where(SERVER.c.id == sid, SERVER.c.lease_owner == self.owner)
                            .values(**values, lease_owner=None, lease_expires_at=None,
                                    lease_run_id=None))
        else:
            release_server(session, sid, self.owner, commit=False)
        run_status = "problems" if shown else "ok"
        session.execute(
            sa.update(RUN).where(RUN.c.id == target.run_id).values(
                status=run_status, finished_at=utcnow(), lists_seen=len(inv.lists),
                created=counts["created"], updated=counts["updated"],
                removed=counts["removed"], problems_open=len(shown), problems_new=new,
            )
        )
        self._progress(failed=False)
        audit_server(session, self.actor, self._action(), sid, now,
                      {"run_id": target.run_id, "status": run_status, "changes": counts,
                       "problems_open": len(shown), "problems_new": new})
        # record_problems knows each found problem's row id: no read-back.
        outcome.problems = _problem_dicts(
            {"id": pid, "kind": kind, "object_name": name, "detail": detail}
            for pid, kind, name, detail in shown)
        ahead = self._claim_ahead(utcnow(), 1) if self.claim_in_store else set()
        session.commit()
        self.claimed_ahead |= ahead
        outcome.changes = counts
        outcome.new_problems = new
        return outcome

    def _reuse(self, sid: int, snapshot: BillingSnapshot, inputs: str,
               stored: tuple[str | None, str | None]
               ) -> tuple[list[tuple[int | None, str, str, str]], str] | None:
        """The open problems the server's last confirming run left and its stored inputs
        digest, when its inputs were these (for a sync: with no drift left) and its problems
        are still exactly as it left them; else None. ``stored``: that run's digests."""
        stored_inputs, stored_result = stored
        if stored_result is None or stored_inputs is None:
            return None
        if stored_inputs != inputs and not (self.kind == "validate"
                                            and stored_inputs == with_drift(inputs)):
            return None
        rows: list[tuple[int | None, str, str, str]] = list(
            open_problems(self.session, sid, snapshot.groups))
        return (rows, stored_inputs) if result_digest(rows) == stored_result else None

    def _reuse_rules(self, sid: int, snapshot: BillingSnapshot, inputs: str,
                     stored: tuple[str | None, str | None]
                     ) -> list[tuple[int | None, str, str, str]] | None:
        """The open billing-rule problems the last confirming run left, when billing's
        snapshot is the one it judged and those rows are still exactly as it left them
        (the rules read nothing else, so they would find the same); else None."""
        stored_inputs, stored_result = stored
        if stored_result is None or stored_inputs is None:
            return None
        half = billing_half(inputs)
        if not half or billing_half(stored_inputs) != half:
            return None
        rows: list[tuple[int | None, str, str, str]] = [
            r for r in open_problems(self.session, sid, snapshot.groups) if r[1] in RULE_KINDS]
        return rows if rules_digest(rows) == billing_half(stored_result) else None

    def _failed(self, target: Target, exc: TclPortError) -> ServerOutcome:
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
        audit_server(session, self.actor, self._action(), target.server_id, now,
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


def _with_ids(snapshot: BillingSnapshot, sites: dict[str, int],
              lists: dict[str, int]) -> BillingSnapshot:
    """``snapshot`` (from apply_to_snapshot) with the new rows' real ids, by name."""
    return BillingSnapshot(
        snapshot.server_id, snapshot.server_name,
        tuple(SiteRow(sites.get(r.name, r.id), r.name, r.title, r.status) if r.id < 0 else r
              for r in snapshot.sites),
        tuple(ListRow(lists.get(r.name, r.id), r.name, r.site_name, r.descr, r.members,
                      r.admin, r.status) if r.id < 0 else r for r in snapshot.lists),
        snapshot.assignments, snapshot.groups, snapshot.elsewhere,
    )
