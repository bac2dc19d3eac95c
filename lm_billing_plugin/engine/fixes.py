"""Fix chosen problems: drift applied as sync would on a fresh read of the server, logging_off
only on request; billing-rule problems get the action a person must take. Idempotent.

Semantics (the README's "Validate, sync and fix" section says the same to users):

* **fix** applies chosen problems only: drift as sync would (on a fresh read of the server),
  ``logging_off`` through ``logging_set lists`` only with ``enable_logging=True``; billing-rule
  problems are not auto-fixable and the result names the action that solves them. Fixing a
  problem again changes nothing (it reports "already fixed").
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import signals
from ..i18n import M_
from ..models import (
    Problem,
    Run,
    Server,
    utcnow,
)
from ..settings import Settings
from ..sqlite import writing
from ..state import get_state
from ..tclport.errors import TclPortError
from .checks import LoggingReport
from .checks import enable_logging as _enable_logging_call
from .inventory import Inventory, fetch_inventory
from .leases import LeaseLost, claim_server, hold_lease, lease_owner, release_server
from .reconcile import (
    DRIFT_KINDS,
    reconcile,
)
from .servers import run_message, status_for_error
from .store import (
    RUN,
    SERVER,
    apply_sync,
    is_conflict,
    load_snapshot,
    record_problems,
)
from .targets import Target, audit_server, iso, server_columns, target_from_row

__all__ = ["ENABLE_LOGGING_HINT", "FIX_OUTCOMES", "RULE_ACTIONS", "FixItem", "FixResult",
           "fix_problems"]

# Problem ids per look-up statement (fix_problems): below every backend's parameter limit.
_ID_CHUNK: Final = 900
# "Fix all that match this filter" (the Errors page, the API) fixes at most this many per
# request: the fix runs inside it, and one click must not hold a web worker for minutes.
FIX_ALL_LIMIT: Final = 1000
# The runner's logger name, kept so hosts' logging config still reaches fix messages.
log = logging.getLogger("lm_billing_plugin.runner")

# What each billing-rule problem needs from a person.
RULE_ACTIONS: Final = {
    "unassigned_list": M_("Assign an owner: assign the list (or its site or server) to a "
        "billing group."),
    "over_max_lists": M_("Change the billing group's hosting plan, or move some of its lists to "
        "another group."),
    "over_max_members": M_("Change the billing group's hosting plan, or move some of its lists "
        "to another group."),
    "over_max_members_per_list": M_("Change the billing group's hosting plan, or move the list "
        "to a group whose plan permits its members."),
    "over_max_lists_per_site": M_("Change the billing group's hosting plan, or move lists of "
        "this site to another group."),
    "over_max_sites": M_("Change the billing group's hosting plan, or move some sites to "
        "another group."),
    "inactive_customer_has_lists": M_("Unassign the group's lists (or move them to a placeholder "
        "customer), or make the customer active again."),
}
# What an invalid_field problem needs: only the hosting server can change what it sends.
INVALID_FIELD_ACTION: Final = M_(
    "Correct the value on the hosting server (shorten it, or remove the NUL character), then "
    "validate the server again."
)
ENABLE_LOGGING_HINT: Final = M_(
    "Enabling logging changes the hosting server's own settings, so it is done only on "
    "request: use \"Enable logging on this server\" (or `fix --enable-logging`)."
)


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


# --- fix -----------------------------------------------------------------------------------


def _fix_work(settings: Settings, target: Target, want_logging: bool,
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


@writing
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
    query = (
        sa.select(Problem.id, Problem.kind, Problem.object_type, Problem.object_name,
                  Problem.status, Problem.fingerprint, Problem.server_id, Problem.closed_at,
                  Server.name.label("server_name"))
        .outerjoin(Server, Server.id == Problem.server_id)
    )
    # In chunks: `fix --all` on a big fleet names every open problem (100,000 and more), and
    # one IN list that long exceeds PostgreSQL's 65,535 bind parameters (and old SQLite's 999).
    rows = [r for start in range(0, len(ids), _ID_CHUNK)
            for r in session.execute(query.where(Problem.id.in_(ids[start:start + _ID_CHUNK])))]
    session.commit()
    by_id = {r.id: r for r in rows}
    items: dict[int, FixItem] = {}
    plans: dict[int, list[Any]] = {}
    for pid in ids:
        row = by_id.get(pid)
        if row is None:
            items[pid] = FixItem(pid, None, None, None, "not_found",
                                 M_("there is no problem %(id)s; reload the Errors page")
                                 % {"id": pid})
            continue
        base = (pid, row.kind, row.object_name, row.server_name)
        if row.status != "open":
            items[pid] = FixItem(*base, "already_fixed",
                                 _already(row.status, iso(row.closed_at)))
        elif row.kind in RULE_ACTIONS:
            items[pid] = FixItem(*base, "not_fixable",
                                 M_("a billing rule: fixing it needs a decision, not a sync"),
                                 RULE_ACTIONS[row.kind])
        elif row.kind == "invalid_field":
            items[pid] = FixItem(*base, "not_fixable",
                                 M_("the hosting server sent a value billing cannot store"),
                                 INVALID_FIELD_ACTION)
        elif row.kind == "logging_off" and not enable_logging:
            items[pid] = FixItem(*base, "needs_confirmation", ENABLE_LOGGING_HINT,
                                 M_("Enable logging on this server"))
        elif row.server_id is None:
            items[pid] = FixItem(*base, "not_fixable", M_("this problem belongs to no server"))
        else:
            plans.setdefault(row.server_id, []).append(row)
    changes: dict[str, dict[str, int]] = {}
    if plans:
        _fix_servers(session, settings, actor, plans, items, changes)
    fixed = [pid for pid in ids if items[pid].outcome == "fixed"]
    for server_id in sorted({by_id[pid].server_id for pid in fixed
                             if by_id[pid].kind == "logging_off"}):
        signals.send(signals.logging_enabled, server_id=server_id, actor=actor)
    if fixed:
        signals.send(signals.problems_fixed, problem_ids=fixed, changes=changes, actor=actor)
    return FixResult([items[pid] for pid in ids], changes)


def _fix_servers(session: Session, settings: Settings, actor: str,
                 plans: dict[int, list[Any]], items: dict[int, FixItem],
                 changes: dict[str, dict[str, int]]) -> None:
    owner = lease_owner()
    now = utcnow()
    servers = session.execute(
        sa.select(*server_columns()).where(Server.id.in_(sorted(plans)))
    ).all()
    runs: dict[int, int] = {}
    for srv in servers:
        run = Run(server_id=srv.id, kind="fix", status="running", triggered_by=actor,
                  host=socket.gethostname(), pid=os.getpid(), started_at=now)
        session.add(run)
        session.flush()
        runs[srv.id] = run.id
    session.commit()
    targets: list[Target] = []
    for srv in servers:
        target = target_from_row(srv, runs[srv.id])
        problems = plans[srv.id]
        if not claim_server(session, srv.id, owner, settings.lease_seconds, utcnow(),
                            run_id=target.run_id):
            _fix_failed(session, target, problems, items, actor, "ALREADY_RUNNING",
                        M_("already running: another run has this server; try again when it "
                           "has finished"), release=None)
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
                            M_("fixing failed unexpectedly (%(error)s); see the billing server's "
                               "log, then fix the problems again")
                            % {"error": f"{type(exc).__name__}: {exc}"},
                            release=owner)
                continue
            try:
                _fix_store(session, target, owner, actor, problems, report, result, items,
                           changes)
            except LeaseLost:
                session.rollback()
                _fix_failed(session, target, problems, items, actor, "LEASE_LOST",
                            M_("this fix took longer than LM_BILLING_LEASE_SECONDS and another "
                               "run took the server over; nothing was stored. Validate the "
                               "server, then fix what is still open"), release=None)
            except Exception as exc:
                session.rollback()
                if isinstance(exc, sa.exc.DBAPIError) and is_conflict(exc):
                    message = M_("another run was storing the same billing problems at the same "
                               "moment; nothing was changed. Fix the problems again when it "
                               "has finished")
                else:
                    log.exception("server %s: storing the fix failed", target.name)
                    message = M_("billing could not store the fix (%(error)s); nothing was "
                               "changed. Fix the problems again; see the billing server's log "
                               "if it repeats") % {"error": type(exc).__name__}
                _fix_failed(session, target, problems, items, actor, "STORE", message,
                            release=owner)


def _fix_failed(session: Session, target: Target, problems: list[Any],
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
    audit_server(session, actor, "fix", target.server_id, now,
                  {"run_id": target.run_id, "problem_ids": [p.id for p in problems],
                   "status": "failed", "error": code})
    session.commit()


def _fix_store(session: Session, target: Target, owner: str, actor: str,
               problems: list[Any], report: LoggingReport | None,
               result: Inventory | TclPortError, items: dict[int, FixItem],
               changes: dict[str, dict[str, int]]) -> None:
    sid = target.server_id
    now = utcnow()
    logging_rows = [p for p in problems if p.kind == "logging_off"]
    drift_rows = [p for p in problems if p.kind in DRIFT_KINDS]
    if report is not None:
        audit_server(session, actor, "enable_logging", sid, now,
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
        audit_server(session, actor, "fix", sid, now,
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
                                  M_("the change could not be applied; validate the server and "
                                     "try again"))
        elif p.fingerprint in present:
            items[p.id] = FixItem(p.id, p.kind, p.object_name, target.name, "fixed",
                                  _fixed_message(p.kind), RULE_ACTIONS["unassigned_list"]
                                  if p.kind == "unknown_list" else None)
        else:
            items[p.id] = FixItem(p.id, p.kind, p.object_name, target.name, "gone",
                                  M_("the server and billing no longer differ here; closed as "
                                     "resolved"))
    for p in logging_rows:
        if p.id in items:
            continue
        if p.fingerprint in still:
            items[p.id] = FixItem(p.id, p.kind, p.object_name, target.name, "failed",
                                  M_("Enable Logging is still off on the server"))
        else:
            items[p.id] = FixItem(p.id, p.kind, p.object_name, target.name, "fixed",
                                  M_("Enable Logging is now \"Yes, Log All Messages that "
                                     "ListManager Sends to Mailing Lists\""))
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
    audit_server(session, actor, "fix", sid, now,
                  {"run_id": target.run_id, "changes": counts,
                   "problems": {str(p.id): items[p.id].outcome for p in problems}})
    session.commit()
    changes[target.name] = counts


def _already(status: str, closed_at: str | None) -> str:
    # One template per status, so a page can say the status word in its own language.
    if status == "fixed":
        return M_("already fixed (%(closed_at)s); nothing to do") % {"closed_at": closed_at}
    if status == "resolved":
        return M_("already resolved (%(closed_at)s); nothing to do") % {"closed_at": closed_at}
    return M_("already %(status)s (%(closed_at)s); nothing to do") % {
        "status": status, "closed_at": closed_at}


def _fixed_message(kind: str) -> str:
    return {
        "unknown_site": M_("the site was added to billing"),
        "unknown_list": M_("the list was added to billing, unassigned"),
        "missing_site": M_("the site was marked removed (its history is kept)"),
        "missing_list": M_("the list was marked removed (its history and assignments are kept)"),
        "changed_list": M_("billing now holds the server's values"),
    }.get(kind, M_("fixed"))
