"""Delete Them (issue 12 §3): delete chosen memberships across hosting servers as a stored run.

An erasure request may name thousands of memberships on many servers, more than one request
should wait for, so the deletion is a **delete run** like the validation batches and send
runs: :func:`create_delete_run` checks the selection and stores the run with one
DeleteRunItem per (server, list, address), all ``pending``, and commits; then
:func:`run_delete_run` does the work (the pages in their background executor, the CLI in the
foreground) and :func:`delete_outcomes` reads it back for the progress page, the JSON and the
CSV.

The work, server by server in parallel (engine.lookups' worker pool: LM_BILLING_MAX_PARALLEL
servers at once, never two sessions on one server), in rounds of at most DELETE_CHUNK
memberships per server: each round is one TclPort session per server within the client's
deadline (LM_BILLING_SERVER_DEADLINE), so a server with thousands to delete never outlives its
deadline and the run moves at least once a deadline. As each server's round ends, in the
run's thread, its items get their outcome (``deleted``, ``not_found``: the server had no such
member, or ``failed`` with the code and what to do) and one audit entry each naming the actor,
and the run's counters and ``updated_at`` move — one short transaction. A server that cannot
be reached fails its own items (the rest of its items are not tried again); the others go on.

A run whose process stops stays ``running`` with nothing moving; once LM_BILLING_LEASE_SECONDS
passed without progress, :func:`sweep_stale_delete_runs` marks it ``interrupted`` and its
pending items ``interrupted``: the server may or may not have deleted them (search again).
The sweep runs where other stale work is swept: the next delete run (or a CLI
``find-member --delete``), the next validate or sync batch (the scheduler's too), and the
delete-run pages and API reads (a plain read; they write only when a run is stale).

No worker thread touches the database; results are plain dataclasses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import audit
from ..models import DeleteRun, DeleteRunItem, Server, utcnow
from ..state import get_state
from ..tclport.errors import TclPortError
from ..tclport.records import MAX_MATCHES
from .inventory import _DeadlineClient
from .lookups import (
    LookupInputError,
    Membership,
    ServerFailure,
    _in_parallel,
    _list_ids,
    _Server,
    _servers,
    check_email,
)

__all__ = [
    "DELETE_CHUNK",
    "DeleteResult",
    "Deletion",
    "create_delete_run",
    "delete_memberships",
    "delete_outcomes",
    "recent_delete_runs",
    "run_delete_run",
    "sweep_stale_delete_runs",
]

log = logging.getLogger("lm_billing_plugin.deletions")

# Memberships one server is asked to delete in one session (one round). Each is one short
# command, so a round ends well within LM_BILLING_SERVER_DEADLINE even on a slow link.
DELETE_CHUNK: Final = 100
INTERRUPTED_MESSAGE: Final = (
    "the delete run stopped (its process ended) before this server's answer was stored: the "
    "member may or may not have been deleted; search for the address again on Find Member"
)


@dataclass(frozen=True, slots=True)
class Deletion:
    """The outcome of deleting one membership: ``pending``, ``deleted``, ``not_found`` (the
    server had no such member any more), ``failed`` (``code`` and ``message`` say why and what
    to do) or ``interrupted`` (its run stopped before the answer was stored)."""

    server_id: int
    server: str
    list: str
    email: str
    list_id: int | None
    outcome: str
    code: str | None = None
    message: str | None = None
    at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"server": self.server, "server_id": self.server_id, "list": self.list,
                "list_id": self.list_id, "email": self.email, "outcome": self.outcome,
                "code": self.code, "message": self.message,
                "at": self.at.isoformat() if self.at else None}


@dataclass
class DeleteResult:
    """A delete run as stored: one :class:`Deletion` per membership, in the order asked."""

    deletions: list[Deletion]
    run_id: int = 0
    status: str = "finished"
    email: str = ""
    actor: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    servers: int = 0
    by_server: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, outcome: str) -> int:
        return sum(1 for d in self.deletions if d.outcome == outcome)

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def done(self) -> int:
        return sum(1 for d in self.deletions if d.outcome != "pending")

    @property
    def exit_code(self) -> int:
        """0 = every membership deleted (or already gone); 1 = some failed or were
        interrupted; 2 = all did."""
        bad = self.count("failed") + self.count("interrupted")
        if bad and bad == len(self.deletions):
            return 2
        return 1 if bad else 0

    def to_json(self) -> dict[str, Any]:
        return {"delete_run": self.run_id, "status": self.status, "finished": self.finished,
                "deleted": self.count("deleted"), "not_found": self.count("not_found"),
                "failed": self.count("failed"), "interrupted": self.count("interrupted"),
                "deletions": [d.to_json() for d in self.deletions]}


# --- creating a run --------------------------------------------------------------------------


def _selection(selection: Iterable[Membership]) -> list[Membership]:
    out: list[Membership] = []
    seen: set[tuple[int, str, str]] = set()
    for item in selection:
        if not item.list:
            raise LookupInputError("a membership to delete names no list")
        email = check_email(item.email)
        key = (item.server_id, item.list, email.lower())
        if key not in seen:  # one deletion per membership, however often it was chosen
            seen.add(key)
            out.append(Membership(item.server_id, item.list, email))
    if not out:
        raise LookupInputError("choose at least one membership to delete")
    per_server: dict[int, int] = {}
    for item in out:
        per_server[item.server_id] = per_server.get(item.server_id, 0) + 1
    most = max(per_server.values())
    if most > MAX_MATCHES:
        # The bound of a run: what Find Member can show, at most MAX_MATCHES per server.
        raise LookupInputError(
            f"{most:,} memberships on one server were chosen; Find Member finds at most "
            f"{MAX_MATCHES:,} per server, so search again and delete those")
    return out


def sweep_stale_delete_runs(session: Session, lease_seconds: float) -> int:
    """Mark ``interrupted`` every delete run that is still ``running`` but has not moved for
    ``lease_seconds`` (its process died), and its pending items; commit. Returns how many.

    A live run moves at least once per server deadline (each round of each server ends
    within it), which is shorter than the lease. A plain read first, then updates by primary
    key: a ranged UPDATE would take gap locks on MariaDB (as the bill runs' sweep says).
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=lease_seconds)
    stale = list(session.scalars(sa.select(DeleteRun.id).where(
        DeleteRun.status == "running", DeleteRun.updated_at < cutoff)))
    closed = 0
    for run_id in stale:
        # The UPDATE repeats the test, so a run that moved since the read is left alone.
        hit = session.execute(
            sa.update(DeleteRun)
            .where(DeleteRun.id == run_id, DeleteRun.status == "running",
                   DeleteRun.updated_at < cutoff)
            .values(status="interrupted", finished_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if hit:
            closed += 1
            session.execute(
                sa.update(DeleteRunItem)
                .where(DeleteRunItem.delete_run_id == run_id, DeleteRunItem.outcome == "pending")
                .values(outcome="interrupted", code="INTERRUPTED",
                        message=INTERRUPTED_MESSAGE, finished_at=now)
                .execution_options(synchronize_session=False))
    session.commit()
    if closed:
        log.warning("marked %d delete run(s) interrupted (their process stopped): %s",
                    closed, stale)
    return closed


def create_delete_run(selection: Iterable[Membership], *, actor: str, email: str = "") -> int:
    """Store a delete run of ``selection`` (duplicates dropped, order kept) with its items
    pending; commit and return its id. ``email`` is the address that was searched for (shown
    on the pages). Raises :class:`LookupInputError` for an empty selection, a bad address, or
    a server that is unknown or deactivated — then nothing is stored."""
    items = _selection(selection)
    state = get_state()
    session = state.session
    try:
        sweep_stale_delete_runs(session, state.settings.lease_seconds)
        wanted_ids = sorted({i.server_id for i in items})
        rows = session.execute(
            sa.select(Server.id, Server.name, Server.active).where(Server.id.in_(wanted_ids))
        ).all()
        known = {r.id: r for r in rows}
        missing = [sid for sid in wanted_ids if sid not in known]
        if missing:
            raise LookupInputError(
                f"no such server id(s): {missing}; search again (the server may have been "
                "deleted)")
        inactive = sorted(known[sid].name for sid in wanted_ids if not known[sid].active)
        if inactive:
            raise LookupInputError(
                f"server(s) {', '.join(repr(n) for n in inactive)} are deactivated; activate "
                "them before deleting members there")
        per_server: dict[int, set[str]] = {}
        for item in items:
            per_server.setdefault(item.server_id, set()).add(item.list)
        ids = _list_ids(session, per_server)
        now = utcnow()
        run = DeleteRun(email=(email or items[0].email)[:320], status="running",
                        total=len(items), servers=len(wanted_ids), actor=actor[:200],
                        created_at=now, updated_at=now)
        session.add(run)
        session.flush()
        run_id = int(run.id)
        session.execute(sa.insert(DeleteRunItem), [
            {"delete_run_id": run_id, "position": n, "server_id": item.server_id,
             "server_name": known[item.server_id].name, "list_name": item.list,
             "list_id": ids.get((item.server_id, item.list)), "email": item.email,
             "outcome": "pending"}
            for n, item in enumerate(items)])
        audit.record(session, actor=actor, action="delete_run", object_type="delete_run",
                     object_id=run_id,
                     detail={"email": run.email, "memberships": len(items),
                             "servers": len(wanted_ids)})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return run_id


# --- running it ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    id: int
    server_id: int
    list: str
    email: str
    list_id: int | None


def _delete_round(chunks: dict[int, list[_Item]]) -> Any:
    """A worker's job for one round: delete this round's items of its server, one command
    each, in one session (returns one answer per item: True deleted, False not there, or the
    TclPortError; after an error that ended the session, the rest repeat it, unasked)."""

    def work(server: _Server, client: _DeadlineClient) -> list[bool | TclPortError]:
        out: list[bool | TclPortError] = []
        for item in chunks[server.id]:
            if not client.connected:
                assert out and isinstance(out[-1], TclPortError)
                out.append(out[-1])
                continue
            try:
                out.append(client.delete_member(item.list, item.email))
            except TclPortError as exc:
                out.append(exc)
        return out

    return work


class _Recorder:
    """Stores each server's round as it ends (in the run's thread): outcomes, audit entries,
    counters; one commit per server and round."""

    def __init__(self, session: Session, run_id: int, actor: str,
                 chunks: dict[int, list[_Item]]) -> None:
        self.session = session
        self.run_id = run_id
        self.actor = actor
        self.chunks = chunks
        #: Servers whose session could not even start: the rest of their items are not tried.
        self.unreachable: dict[int, ServerFailure] = {}

    def __call__(self, server: _Server, answer: list[bool | TclPortError] | ServerFailure
                 ) -> None:
        items = self.chunks.get(server.id, [])
        outcomes: list[tuple[_Item, str, str | None, str | None]] = []
        if isinstance(answer, ServerFailure):
            self.unreachable[server.id] = answer
            outcomes = [(i, "failed", answer.code, answer.message) for i in items]
        else:
            for item, got in zip(items, answer, strict=True):
                if isinstance(got, TclPortError):
                    outcomes.append((item, "failed", got.code, got.message))
                else:
                    outcomes.append((item, "deleted" if got else "not_found", None, None))
        self.store(server.name, server.id, outcomes)

    def store(self, server_name: str, server_id: int,
              outcomes: Sequence[tuple[_Item, str, str | None, str | None]]) -> None:
        session = self.session
        now = utcnow()
        counts = {"deleted": 0, "not_found": 0, "failed": 0}
        try:
            for item, outcome, code, message in outcomes:
                session.execute(
                    sa.update(DeleteRunItem)
                    .where(DeleteRunItem.id == item.id, DeleteRunItem.outcome == "pending")
                    .values(outcome=outcome, code=code,
                            message=message or None, finished_at=now)
                    .execution_options(synchronize_session=False))
                counts[outcome] += 1
                audit.record(
                    session, actor=self.actor, action="delete_member", object_type="list",
                    object_id=item.list_id, server_id=server_id, at=now,
                    detail={"server": server_name, "list": item.list, "email": item.email,
                            "outcome": outcome, "code": code, "delete_run": self.run_id},
                )
            session.execute(
                sa.update(DeleteRun).where(DeleteRun.id == self.run_id)
                .values(deleted=DeleteRun.deleted + counts["deleted"],
                        not_found=DeleteRun.not_found + counts["not_found"],
                        failed=DeleteRun.failed + counts["failed"], updated_at=now)
                .execution_options(synchronize_session=False))
            session.commit()
        except BaseException:
            session.rollback()
            raise


def run_delete_run(run_id: int) -> DeleteResult:
    """Delete the run's pending memberships (see the module); the run ends ``finished`` (or
    ``failed`` when the database or a bug stops it: raised, its pending items stay pending).
    Call inside an app context; commits as it goes."""
    state = get_state()
    session = state.session
    run = session.get(DeleteRun, run_id)
    if run is None:
        session.rollback()
        raise LookupInputError(f"there is no delete run {run_id}")
    if run.finished_at is not None:
        session.rollback()
        raise LookupInputError(f"delete run {run_id} has finished already")
    actor = run.actor
    rows = session.execute(
        sa.select(DeleteRunItem.id, DeleteRunItem.server_id, DeleteRunItem.list_name,
                  DeleteRunItem.email, DeleteRunItem.list_id)
        .where(DeleteRunItem.delete_run_id == run_id, DeleteRunItem.outcome == "pending")
        .order_by(DeleteRunItem.position)).all()
    queue: dict[int, list[_Item]] = {}
    for row in rows:
        queue.setdefault(row.server_id, []).append(_Item(*row))
    servers = {s.id: s for s in _servers(session, Server.id.in_(sorted(queue)))}
    names: dict[int, str] = {
        sid: name for sid, name in session.execute(
            sa.select(DeleteRunItem.server_id, DeleteRunItem.server_name)
            .where(DeleteRunItem.delete_run_id == run_id).distinct())}
    session.commit()  # no transaction stays open during the network work
    recorder = _Recorder(session, run_id, actor, {})
    try:
        # A server erased since the run was stored cannot be asked; say so for its items.
        for sid in sorted(set(queue) - set(servers)):
            recorder.store(names.get(sid, f"server {sid}"), sid, [
                (i, "failed", "NO_SERVER", "the server was deleted from billing before its "
                 "memberships were deleted; nothing was asked") for i in queue.pop(sid)])
        while queue:
            chunks = {sid: items[:DELETE_CHUNK] for sid, items in queue.items()}
            recorder.chunks = chunks
            _in_parallel(state.settings, [servers[sid] for sid in sorted(chunks)],
                         _delete_round(chunks), on_done=recorder)
            for sid in list(queue):
                rest = queue[sid][DELETE_CHUNK:]
                failure = recorder.unreachable.get(sid)
                if rest and failure is not None:
                    recorder.store(servers[sid].name, sid, [
                        (i, "failed", failure.code,
                         f"not tried: {failure.message}") for i in rest])
                    rest = []
                if rest:
                    queue[sid] = rest
                else:
                    del queue[sid]
    except BaseException:
        session.rollback()
        log.exception("delete run %s stopped", run_id)
        session.execute(sa.update(DeleteRun).where(DeleteRun.id == run_id)
                        .values(status="failed", finished_at=utcnow(), updated_at=utcnow()))
        session.commit()
        raise
    now = utcnow()
    session.execute(sa.update(DeleteRun).where(DeleteRun.id == run_id, DeleteRun.status ==
                                               "running")
                    .values(status="finished", finished_at=now, updated_at=now))
    session.commit()
    return delete_outcomes(run_id)


def delete_outcomes(run_id: int) -> DeleteResult:
    """The run as it stands (pending items included), items in the order asked."""
    session = get_state().session
    run = session.get(DeleteRun, run_id)
    if run is None:
        session.rollback()
        raise LookupInputError(f"there is no delete run {run_id}")
    items = session.scalars(sa.select(DeleteRunItem)
                            .where(DeleteRunItem.delete_run_id == run_id)
                            .order_by(DeleteRunItem.position)).all()
    deletions = [Deletion(i.server_id, i.server_name, i.list_name, i.email, i.list_id,
                          i.outcome, i.code, i.message, i.finished_at) for i in items]
    by_server: dict[str, dict[str, int]] = {}
    for d in deletions:
        counts = by_server.setdefault(d.server, {"pending": 0, "deleted": 0, "not_found": 0,
                                                 "failed": 0, "interrupted": 0})
        counts[d.outcome] = counts.get(d.outcome, 0) + 1
    result = DeleteResult(deletions, run.id, run.status, run.email, run.actor, run.created_at,
                          run.updated_at, run.finished_at, run.servers, by_server)
    session.commit()
    return result


def recent_delete_runs(session: Session, limit: int = 20) -> list[DeleteRun]:
    """The latest delete runs, newest first (the Utilities page lists them, with their
    pages and CSVs: the record of each erasure request)."""
    rows = list(session.scalars(sa.select(DeleteRun).order_by(DeleteRun.id.desc())
                                .limit(limit)))
    session.commit()
    return rows


def delete_memberships(selection: Iterable[Membership], *, actor: str,
                       email: str = "") -> DeleteResult:
    """create_delete_run + run_delete_run in this thread (the CLI's way; the pages run it in
    the background). Billing's member counts change with the next sync (it reads the
    servers' counts). Raises :class:`LookupInputError` as create_delete_run does."""
    return run_delete_run(create_delete_run(selection, actor=actor, email=email))
