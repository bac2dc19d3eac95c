"""Billing's side of reconciliation in the database: load one server's snapshot in a fixed few
queries, apply a sync in bulk, upsert problems by fingerprint (the run lease is in leases.py).

Every function takes the caller's session and does set-based work; the statement count does
not grow with a server's number of lists. None of them commits.

One module on purpose: every statement that reads or writes one server's inventory and
problems, so the fixed statement count and the "no commit here" rule are checked in one place.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..models import (
    ELLIPSIS,
    MAX_TEXT_BYTES,
    Assignment,
    Batch,
    BillingGroup,
    Customer,
    HostingPlan,
    MailingList,
    Problem,
    ProblemRun,
    Run,
    Server,
    Site,
    Usage,
    bounded_text,
    confirmed_sighting,
    usage_kb_per_recipient,
)
from .inventory import Inventory
from .reconcile import (
    DRIFT_KINDS,
    RULE_KINDS,
    AssignmentRow,
    BillingSnapshot,
    Changes,
    Found,
    GroupCounts,
    GroupRow,
    ListRow,
    PlanLimits,
    SiteRow,
    rule_problems,
)
from .rollup import (
    rebuild_site_rollups,
    write_list_counts,
    write_previous,
    write_rollup,
    write_site_rollups,
)

__all__ = [
    "ELLIPSIS",
    "MAX_TEXT_BYTES",
    "ChangeCounts",
    "ProblemCounts",
    "active_assignment",
    "apply_sync",
    "bounded_text",
    "close_values",
    "confirm_problems",
    "is_conflict",
    "last_result",
    "load_snapshot",
    "new_row_ids",
    "open_drift_problems",
    "open_problems",
    "record_problems",
    "rejudge_rules",
]

log = logging.getLogger("lm_billing_plugin.store")

# Core tables: bulk statements go through Core (executemany), not the ORM unit of work.
SERVER = cast(sa.Table, Server.__table__)
SITE = cast(sa.Table, Site.__table__)
LIST = cast(sa.Table, MailingList.__table__)
USAGE = cast(sa.Table, Usage.__table__)
ASSIGNMENT = cast(sa.Table, Assignment.__table__)
GROUP = cast(sa.Table, BillingGroup.__table__)
CUSTOMER = cast(sa.Table, Customer.__table__)
PLAN = cast(sa.Table, HostingPlan.__table__)
PROBLEM = cast(sa.Table, Problem.__table__)
PROBLEM_RUN = cast(sa.Table, ProblemRun.__table__)
RUN = cast(sa.Table, Run.__table__)
BATCH = cast(sa.Table, Batch.__table__)

# MariaDB/MySQL error numbers PyMySQL raises as OperationalError although they are about the
# data, not the connection: a failed CHECK constraint (4025 on MariaDB, 3819 on MySQL) and a
# deadlock between two writers (1213), which one retry settles like a unique-key clash.
_MYSQL_CONFLICTS = frozenset({4025, 3819, 1213})
# PostgreSQL's deadlock and serialization failures (SQLSTATE), raised as OperationalError.
_PG_CONFLICTS = frozenset({"40P01", "40001"})


def is_conflict(exc: BaseException) -> bool:
    """Whether a database error means "the data clashed" (a unique key, a CHECK constraint,
    a deadlock with another writer) rather than "the database is broken or gone".

    PyMySQL raises a failed CHECK constraint and a deadlock as OperationalError, so catching
    IntegrityError alone would miss them on MariaDB.
    """
    if isinstance(exc, sa.exc.IntegrityError):
        return True
    if not isinstance(exc, sa.exc.OperationalError):
        return False
    orig = exc.orig
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_CONFLICTS:
        return True
    return getattr(orig, "sqlstate", None) in _PG_CONFLICTS


@dataclass(frozen=True, slots=True)
class ChangeCounts:
    """What apply_sync wrote: created/updated/removed sites+lists and usage rows written."""

    created: int = 0
    updated: int = 0
    removed: int = 0
    usage: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "removed": self.removed}


ProblemCounts = tuple[int, int]


def active_assignment(table: Any, today: date) -> sa.ColumnElement[bool]:
    """An assignment covers ``today``: started, and not ended (``end_date`` is exclusive:
    the first day it no longer covers)."""
    return sa.and_(
        table.c.start_date <= today,
        sa.or_(table.c.end_date.is_(None), table.c.end_date > today),
    )


# --- snapshot ------------------------------------------------------------------------------


def load_snapshot(
    session: Session, server_id: int, *, today: date | None = None
) -> BillingSnapshot:
    """Billing's view of one server in at most six queries, whatever its size.

    Server name; its sites; its lists; assignments active ``today`` on it; the groups involved
    (those assignments' groups and groups with open group-wide problems) with customer and
    plan; and those groups' counts on other servers (one aggregate query).
    """
    today = today or datetime.now(UTC).date()
    name = session.execute(sa.select(SERVER.c.name).where(SERVER.c.id == server_id)).scalar_one()
    sites = tuple(
        SiteRow(r.id, r.name, r.title, r.status)
        for r in session.execute(
            sa.select(SITE.c.id, SITE.c.name, SITE.c.title, SITE.c.status).where(
                SITE.c.server_id == server_id
            )
        )
    )
    # Rows fetched at once and unpacked as tuples: per-row attribute access was most of it.
    lists = tuple(
        ListRow(*r)
        for r in session.execute(
            sa.select(
                LIST.c.id, LIST.c.name, LIST.c.site_name, LIST.c.descr, LIST.c.members,
                LIST.c.admin, LIST.c.status,
            ).where(LIST.c.server_id == server_id)
        ).all()
    )
    assignments = tuple(
        AssignmentRow(r.id, r.group_id, r.object_type, r.site_id, r.list_id)
        for r in session.execute(
            sa.select(
                ASSIGNMENT.c.id, ASSIGNMENT.c.group_id, ASSIGNMENT.c.object_type,
                ASSIGNMENT.c.site_id, ASSIGNMENT.c.list_id,
            ).where(ASSIGNMENT.c.server_id == server_id, active_assignment(ASSIGNMENT, today))
        )
    )
    involved = {a.group_id for a in assignments}
    with_problems = sa.select(PROBLEM.c.group_id).where(
        PROBLEM.c.server_id.is_(None), PROBLEM.c.status == "open",
        PROBLEM.c.group_id.is_not(None),
    )
    group_filter: sa.ColumnElement[bool] = GROUP.c.id.in_(with_problems)
    if involved:
        group_filter = sa.or_(GROUP.c.id.in_(sorted(involved)), group_filter)
    groups: dict[int, GroupRow] = {}
    for r in session.execute(
        sa.select(
            GROUP.c.id, GROUP.c.name, CUSTOMER.c.id.label("customer_id"), CUSTOMER.c.company,
            CUSTOMER.c.is_active, PLAN.c.id.label("plan_id"), PLAN.c.name.label("plan_name"),
            PLAN.c.max_members, PLAN.c.max_members_per_list, PLAN.c.max_lists,
            PLAN.c.max_lists_per_site, PLAN.c.max_sites,
        )
        .select_from(GROUP.join(CUSTOMER, GROUP.c.customer_id == CUSTOMER.c.id)
                     .outerjoin(PLAN, GROUP.c.plan_id == PLAN.c.id))
        .where(group_filter)
    ):
        plan = None
        if r.plan_id is not None:
            plan = PlanLimits(r.plan_id, r.plan_name, r.max_members, r.max_members_per_list,
                              r.max_lists, r.max_lists_per_site, r.max_sites)
        groups[r.id] = GroupRow(r.id, r.name, r.customer_id, r.company, bool(r.is_active), plan)
    elsewhere = _elsewhere(session, server_id, sorted(groups), today) if groups else {}
    return BillingSnapshot(server_id, name, sites, lists, assignments, groups, elsewhere)


def _elsewhere(
    session: Session, server_id: int, group_ids: Sequence[int], today: date
) -> dict[int, GroupCounts]:
    """Each group's lists, members and sites on servers other than ``server_id``, with the
    same most-specific-owner rule as reconcile.owners, in one query."""
    a1, a2, a3 = ASSIGNMENT.alias("a1"), ASSIGNMENT.alias("a2"), ASSIGNMENT.alias("a3")
    s2 = SITE.alias("s2")
    list_owner = (
        sa.select(sa.func.min(a1.c.group_id))
        .where(a1.c.list_id == LIST.c.id, active_assignment(a1, today))
        .scalar_subquery()
    )
    site_owner = (
        sa.select(sa.func.min(a2.c.group_id))
        .select_from(a2.join(s2, a2.c.site_id == s2.c.id))
        .where(
            s2.c.server_id == LIST.c.server_id, s2.c.name == LIST.c.site_name,
            LIST.c.site_name != "", active_assignment(a2, today),
        )
        .scalar_subquery()
    )
    server_owner = (
        sa.select(sa.func.min(a3.c.group_id))
        .where(a3.c.object_type == "server", a3.c.server_id == LIST.c.server_id,
               active_assignment(a3, today))
        .scalar_subquery()
    )
    # Only servers where one of these groups holds an assignment can have lists it owns.
    servers = sa.select(ASSIGNMENT.c.server_id).where(
        ASSIGNMENT.c.group_id.in_(group_ids), active_assignment(ASSIGNMENT, today)
    )
    per_list = (
        sa.select(
            sa.func.coalesce(list_owner, site_owner, server_owner).label("owner"),
            LIST.c.server_id, LIST.c.site_name, LIST.c.members,
        )
        .where(LIST.c.status == "active", LIST.c.server_id != server_id,
               LIST.c.server_id.in_(servers))
        .subquery("per_list")
    )
    per_site = (
        sa.select(
            per_list.c.owner, per_list.c.server_id, per_list.c.site_name,
            sa.func.count().label("n"), sa.func.sum(per_list.c.members).label("m"),
        )
        .where(per_list.c.owner.in_(group_ids))
        .group_by(per_list.c.owner, per_list.c.server_id, per_list.c.site_name)
        .subquery("per_site")
    )
    query = sa.select(
        per_site.c.owner,
        sa.func.sum(per_site.c.n),
        sa.func.sum(per_site.c.m),
        sa.func.sum(sa.case((per_site.c.site_name != "", 1), else_=0)),
    ).group_by(per_site.c.owner)
    return {
        int(owner): GroupCounts(int(n or 0), int(m or 0), int(s or 0))
        for owner, n, m, s in session.execute(query)
    }


# --- applying a sync -----------------------------------------------------------------------


def apply_sync(
    session: Session,
    server_id: int,
    changes: Changes,
    inventory: Inventory,
    now: datetime,
    *,
    with_usage: bool = True,
) -> ChangeCounts:
    """Write ``changes`` in bulk (one executemany per kind of write) and this month's usage.

    New sites and lists are created unassigned; removed ones are marked ``removed`` with
    ``removed_at`` and never deleted. Rows that did not change are not written, so a second
    sync of an unchanged server writes no list rows. An active row's "last seen" is its
    server's Validated time; ``last_seen_at`` is the last time billing wrote it after seeing it.
    Does not commit.
    """
    if changes.create_sites:
        session.execute(
            SITE.insert(),
            [{"server_id": server_id, "name": s.name, "title": s.title, "status": "active",
              "first_seen_at": now, "last_seen_at": now} for s in changes.create_sites],
        )
    site_updates = [
        {"b_id": sid, "b_title": rec.title}
        for sid, rec in changes.reactivate_sites + changes.update_sites
    ]
    if site_updates:
        session.execute(
            SITE.update().where(SITE.c.id == sa.bindparam("b_id")).values(
                title=sa.bindparam("b_title"), status="active", removed_at=None,
                last_seen_at=now,
            ),
            site_updates,
        )
    if changes.remove_sites:
        session.execute(
            SITE.update().where(SITE.c.id == sa.bindparam("b_id")).values(
                status="removed", removed_at=now
            ),
            [{"b_id": sid} for sid, _name in changes.remove_sites],
        )
    if changes.create_lists:
        session.execute(
            LIST.insert(),
            [{"server_id": server_id, "name": r.name, "site_name": r.site, "descr": r.descr,
              "created": r.created, "members": r.members, "admin": r.admin,
              "status": "active", "first_seen_at": now, "last_seen_at": now}
             for r in changes.create_lists],
        )
    list_updates = [
        {"b_id": lid, "b_site": r.site, "b_descr": r.descr, "b_members": r.members,
         "b_admin": r.admin}
        for lid, r in changes.reactivate_lists + changes.update_lists
    ]
    moved = False
    if list_updates:
        # A list moved to another site takes its usage of every month with it (the site
        # roll-ups count a list's rows where it is now): read the sites before the write.
        sites = {r["b_id"]: r["b_site"] for r in list_updates}
        ids = list(sites)
        for i in range(0, len(ids), 500):  # bounded IN lists
            moved = moved or any(sites[lid] != site for lid, site in session.execute(
                sa.select(LIST.c.id, LIST.c.site_name).where(LIST.c.id.in_(ids[i:i + 500]))))
        session.execute(
            LIST.update().where(LIST.c.id == sa.bindparam("b_id")).values(
                site_name=sa.bindparam("b_site"), descr=sa.bindparam("b_descr"),
                members=sa.bindparam("b_members"), admin=sa.bindparam("b_admin"),
                status="active", removed_at=None, last_seen_at=now,
            ),
            list_updates,
        )
    if changes.remove_lists:
        session.execute(
            LIST.update().where(LIST.c.id == sa.bindparam("b_id")).values(
                status="removed", removed_at=now
            ),
            [{"b_id": lid} for lid, _name in changes.remove_lists],
        )
    if changes.create_lists or list_updates or changes.remove_lists:
        # The Plan limits report's counts, from the lists as just written (same transaction).
        write_list_counts(session, server_id)
    usage = 0
    if with_usage and inventory.usage_available and inventory.usage:
        usage = _store_usage(session, server_id, inventory, now)
    if moved:
        rebuild_site_rollups(session, [server_id])
    return ChangeCounts(changes.created, changes.updated, changes.removed, usage)


def _store_usage(session: Session, server_id: int, inventory: Inventory, now: datetime) -> int:
    """Upsert this period's usage rows (two reads, at most one insert and one update)."""
    ids: dict[str, int] = {}
    site_of: dict[int, str] = {}
    for lid, name, site in session.execute(
            sa.select(LIST.c.id, LIST.c.name, LIST.c.site_name)
            .where(LIST.c.server_id == server_id)):
        ids[name] = lid
        site_of[lid] = site
    existing = {
        r.list_id: r
        for r in session.execute(
            sa.select(USAGE.c.id, USAGE.c.list_id, USAGE.c.messages, USAGE.c.recipients,
                      USAGE.c.bytes)
            .where(USAGE.c.server_id == server_id, USAGE.c.period == inventory.period)
        )
    }
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    # Every Usage row of this server and month after the write: its roll-up (engine.rollup).
    figures = {lid: (r.messages, r.recipients, r.bytes) for lid, r in existing.items()}
    unknown = 0
    for rec in inventory.usage:
        lid = ids.get(rec.list)
        if lid is None:
            unknown += 1
            continue
        row = existing.get(lid)
        kb = usage_kb_per_recipient(rec.bytes, rec.recipients)
        if row is None:
            inserts.append({"server_id": server_id, "list_id": lid, "period": inventory.period,
                            "messages": rec.messages, "recipients": rec.recipients,
                            "bytes": rec.bytes, "kb_per_recipient": kb, "updated_at": now})
        elif (row.messages, row.recipients, row.bytes) != (rec.messages, rec.recipients,
                                                           rec.bytes):
            updates.append({"b_id": row.id, "b_messages": rec.messages,
                            "b_recipients": rec.recipients, "b_bytes": rec.bytes, "b_kb": kb})
        figures[lid] = (rec.messages, rec.recipients, rec.bytes)
    if unknown:
        log.warning("server %s: usage of %d list(s) unknown to billing was not stored",
                    server_id, unknown)
    if inserts:
        session.execute(USAGE.insert(), inserts)
        # New rows of this month: they, and any later rows of their lists, have a new
        # previous month (the range count of reports.usage).
        write_previous(session, server_id, inventory.period)
    if updates:
        session.execute(
            USAGE.update().where(USAGE.c.id == sa.bindparam("b_id")).values(
                messages=sa.bindparam("b_messages"), recipients=sa.bindparam("b_recipients"),
                bytes=sa.bindparam("b_bytes"), kb_per_recipient=sa.bindparam("b_kb"),
                updated_at=now,
            ),
            updates,
        )
    if inserts or updates:
        write_rollup(session, server_id, inventory.period, figures.values(), now)
        write_site_rollups(session, server_id, inventory.period,
                           ((site_of[lid], *f) for lid, f in figures.items()))
    return len(inserts) + len(updates)


# --- problems ------------------------------------------------------------------------------


def close_values(status: Any) -> list[tuple[Any, Any]]:
    """SET clauses that close problems as ``status``, freezing each one's "last seen" at its
    last sighting (its server's ProblemRun, when that came later than the row was written).

    In this order: MariaDB evaluates SET left to right with the new values, and the
    sighting depends on the old status and last seen.
    """
    return [
        (PROBLEM.c.last_run_id, confirmed_sighting("run_id")),
        (PROBLEM.c.last_seen_at, confirmed_sighting("seen_at")),
        (PROBLEM.c.status, status),
    ]


def _bounded(f: Found) -> Found:
    detail, name = bounded_text(f.detail), bounded_text(f.object_name)
    if detail is f.detail and name is f.object_name:
        return f
    return replace(f, detail=detail, object_name=name)


def record_problems(
    session: Session,
    server_id: int,
    run_id: int | None,
    found: Iterable[Found],
    now: datetime,
    *,
    groups: Collection[int] = (),
    kinds: Collection[str] | None = None,
    fixed: Collection[str] = (),
    ids: dict[str, int] | None = None,
    digests: tuple[str | None, str | None] = (None, None),
    caller_confirms: bool = False,
) -> ProblemCounts:
    """Upsert the problems a run found; resolve the ones it judged and did not find again.

    A problem is one row per fingerprint: found again it keeps its row (``detail``/``data``
    refresh, a resolved or fixed one reopens). The run's scope is this server's problems plus
    the group-wide problems of ``groups``, restricted to ``kinds`` (None = every kind): only
    those can be resolved; a run that could not judge a kind leaves its problems alone.
    Fingerprints in ``fixed`` close as ``fixed`` instead of ``resolved``. Returns ``(new,
    open)``: rows created or reopened, and found. ``ids``, when given, receives each found
    problem's row id by fingerprint (so the caller need not read the rows back).

    Only new, changed and closed rows are written: a run that judged every kind records
    itself in the server's ProblemRun row (one row, with ``digests``: the inventory's and the
    result's, see :func:`unchanged_result`), which is every still-open problem's "last seen";
    group-wide problems found again (few) move their own. ``caller_confirms`` (with
    ``kinds``): the caller records this run in the server's ProblemRun row (it knows the
    other kinds' problems still stand), so rows found again need no write either. Does not
    commit.
    """
    found = list({f.fingerprint: _bounded(f) for f in found}.values())
    scope = PROBLEM.c.server_id == server_id
    group_scope: sa.ColumnElement[bool] | None = None
    if groups:
        group_scope = sa.and_(PROBLEM.c.server_id.is_(None),
                              PROBLEM.c.group_id.in_(sorted(groups)))
        scope = sa.or_(scope, group_scope)
    # ``data`` is read as its stored JSON text and compared with the text this run would
    # store: decoding every open problem's JSON was most of a re-validate's time. (A row
    # written with other spacing or key order only costs one needless refresh.)
    judged = set(kinds) if kinds is not None else None
    read_scope = scope
    if judged is not None and all(f.kind in judged for f in found):
        # Only rows of the judged kinds can be found (a fingerprint holds its kind) or closed:
        # a drift-only run need not read a server's thousand unassigned_list rows.
        read_scope = sa.and_(scope, PROBLEM.c.kind.in_(sorted(judged)))
    existing = {
        r.fingerprint: r
        for r in session.execute(
            sa.select(PROBLEM.c.id, PROBLEM.c.fingerprint, PROBLEM.c.kind, PROBLEM.c.status,
                      PROBLEM.c.detail, sa.cast(PROBLEM.c.data, sa.Text).label("data"),
                      PROBLEM.c.server_id, PROBLEM.c.group_id).where(read_scope)
        ).all()
    }
    fixed_set = set(fixed)
    seen = {f.fingerprint for f in found}
    inserts: list[dict[str, Any]] = []
    refresh: list[dict[str, Any]] = []
    new = 0
    encode = _json_text()
    for f in found:
        row = existing.get(f.fingerprint)
        if row is None:
            inserts.append({
                "fingerprint": f.fingerprint,
                "server_id": server_id if f.server_scoped else None,
                "group_id": f.group_id, "kind": f.kind, "object_type": f.object_type,
                "object_name": f.object_name, "detail": f.detail, "data": dict(f.data),
                "status": "open", "first_seen_at": now, "last_seen_at": now,
                "first_run_id": run_id, "last_run_id": run_id,
            })
            new += 1
            continue
        reopened = row.status != "open"
        if reopened:
            new += 1
        if reopened or row.detail != f.detail or row.data != encode(f.data):
            refresh.append({"b_id": row.id, "b_detail": f.detail, "b_data": dict(f.data),
                            "b_group": f.group_id})
    closing = [
        {"b_id": row.id, "b_status": "fixed" if fp in fixed_set else "resolved"}
        for fp, row in existing.items()
        if row.status == "open" and fp not in seen and (judged is None or row.kind in judged)
    ]
    if closing:
        session.execute(
            PROBLEM.update().where(PROBLEM.c.id == sa.bindparam("b_id"))
            .ordered_values(*close_values(sa.bindparam("b_status")),
                            (PROBLEM.c.closed_at, now)),
            closing,
        )
    if refresh:
        session.execute(
            PROBLEM.update().where(PROBLEM.c.id == sa.bindparam("b_id")).values(
                detail=sa.bindparam("b_detail"), data=sa.bindparam("b_data"),
                group_id=sa.bindparam("b_group"), status="open", closed_at=None,
                last_seen_at=now, last_run_id=run_id,
            ),
            refresh,
        )
    if judged is not None:
        # A run that judged only some kinds cannot speak for the server's other problems:
        # it moves last seen on the rows of its kinds it found again, one statement.
        if len(seen) > len(inserts) and not caller_confirms:
            session.execute(
                PROBLEM.update().where(scope, PROBLEM.c.status == "open",
                                       PROBLEM.c.kind.in_(sorted(judged)))
                .values(last_seen_at=now, last_run_id=run_id)
            )
    else:
        regroup = any(not f.server_scoped and f.fingerprint in existing for f in found)
        confirm_problems(session, server_id, run_id, now, digests,
                         groups=groups if regroup else ())
    if inserts:
        session.execute(PROBLEM.insert(), inserts)
    if ids is not None:
        ids.update((fp, existing[fp].id) for fp in seen if fp in existing)
        if inserts:
            ids.update(_new_ids(session, run_id, [row["fingerprint"] for row in inserts]))
    return new, len(found)


def _json_text() -> Callable[[Mapping[str, Any]], str]:
    """``json.dumps`` of a problem's data, remembered per distinct value: a server's
    thousand ``unassigned_list`` rows carry a handful of distinct ``{"site": ...}`` values,
    and encoding each row's anew was a tenth of a 1 %-changed re-validate. The key holds each
    value's type, so ``True`` and ``1`` (equal, and hashed alike) stay apart."""
    seen: dict[tuple[Any, ...], str] = {}
    dumps = json.dumps

    def encode(data: Mapping[str, Any]) -> str:
        try:
            key = tuple((k, type(v), v) for k, v in data.items())
            text = seen.get(key)
        except TypeError:  # an unhashable value (a list, a nested dict): no memo
            return dumps(dict(data))
        if text is None:
            text = seen[key] = dumps(dict(data))
        return text

    return encode


def confirm_problems(session: Session, server_id: int, run_id: int | None, now: datetime,
                     digests: tuple[str | None, str | None], *,
                     groups: Collection[int] = ()) -> None:
    """Record ``run_id`` as the run that last judged (and found) every open problem of the
    server: its ProblemRun row, and "last seen" of the open group-wide problems of ``groups``
    (a handful of rows). ``digests``: (inputs, result), or None when unknown. Does not commit.
    """
    if groups:
        session.execute(
            PROBLEM.update().where(PROBLEM.c.server_id.is_(None),
                                   PROBLEM.c.group_id.in_(sorted(groups)),
                                   PROBLEM.c.status == "open")
            .values(last_seen_at=now, last_run_id=run_id)
        )
    values = {"run_id": run_id, "seen_at": now, "inventory_digest": digests[0],
              "result_digest": digests[1]}
    done = session.execute(
        PROBLEM_RUN.update().where(PROBLEM_RUN.c.server_id == server_id).values(**values))
    if done.rowcount != 1:  # type: ignore[attr-defined]
        session.execute(PROBLEM_RUN.insert().values(server_id=server_id, **values))


def last_result(session: Session, server_id: int) -> tuple[str | None, str | None]:
    """(inputs digest, result digest) the server's last confirming run stored."""
    row = session.execute(
        sa.select(PROBLEM_RUN.c.inventory_digest, PROBLEM_RUN.c.result_digest)
        .where(PROBLEM_RUN.c.server_id == server_id)
    ).one_or_none()
    return (None, None) if row is None else (row.inventory_digest, row.result_digest)


def open_problems(session: Session, server_id: int,
                  groups: Collection[int] = ()) -> list[tuple[int, str, str, str]]:
    """(id, kind, object name, detail) of the server's open problems and the open group-wide
    problems of ``groups`` (one indexed query)."""
    scope = PROBLEM.c.server_id == server_id
    if groups:
        scope = sa.or_(scope, sa.and_(PROBLEM.c.server_id.is_(None),
                                      PROBLEM.c.group_id.in_(sorted(groups))))
    return [
        (r[0], r[1], r[2], r[3])
        for r in session.execute(
            sa.select(PROBLEM.c.id, PROBLEM.c.kind, PROBLEM.c.object_name, PROBLEM.c.detail)
            .where(scope, PROBLEM.c.status == "open")
        ).all()
    ]


def new_row_ids(session: Session, server_id: int, snapshot: BillingSnapshot
                ) -> tuple[dict[str, int], dict[str, int]]:
    """Ids (by name) of the sites and lists a sync just created on the server: those above
    the snapshot's highest id (two indexed queries)."""
    top_site = max((r.id for r in snapshot.sites), default=0)
    top_list = max((r.id for r in snapshot.lists), default=0)
    sites = {r.name: r.id for r in session.execute(
        sa.select(SITE.c.id, SITE.c.name).where(SITE.c.server_id == server_id,
                                                SITE.c.id > top_site))}
    lists = {r.name: r.id for r in session.execute(
        sa.select(LIST.c.id, LIST.c.name).where(LIST.c.server_id == server_id,
                                                LIST.c.id > top_list))}
    return sites, lists


def _new_ids(session: Session, run_id: int | None,
             fingerprints: Sequence[str]) -> Iterable[tuple[str, int]]:
    """Row ids of problems this run just inserted: by first run (one indexed query), or by
    fingerprint in chunks when there is no run."""
    if run_id is not None:
        query = sa.select(PROBLEM.c.fingerprint, PROBLEM.c.id).where(
            PROBLEM.c.first_run_id == run_id)
        return [(r.fingerprint, r.id) for r in session.execute(query)]
    out: list[tuple[str, int]] = []
    for start in range(0, len(fingerprints), 500):
        chunk = list(fingerprints[start:start + 500])
        out.extend((r.fingerprint, r.id) for r in session.execute(
            sa.select(PROBLEM.c.fingerprint, PROBLEM.c.id)
            .where(PROBLEM.c.fingerprint.in_(chunk))))
    return out


def open_drift_problems(session: Session, server_id: int) -> list[tuple[str, str]]:
    """(kind, object name) of the server's open drift problems (the gate's question)."""
    return [
        (r.kind, r.object_name)
        for r in session.execute(
            sa.select(PROBLEM.c.kind, PROBLEM.c.object_name)
            .where(PROBLEM.c.server_id == server_id, PROBLEM.c.status == "open",
                   PROBLEM.c.kind.in_(DRIFT_KINDS))
            .order_by(PROBLEM.c.id)
        )
    ]


def rejudge_rules(
    session: Session,
    server_id: int,
    *,
    list_ids: Collection[int] = (),
    site_ids: Collection[int] = (),
    whole_server: bool = False,
    group_ids: Collection[int] = (),
    today: date | None = None,
    now: datetime | None = None,
) -> ProblemCounts:
    """Judge the billing rules again for exactly what an assignment change touched, in the
    caller's transaction: the lists (``list_ids``, the lists of ``site_ids``, or every list
    with ``whole_server``), their sites, and the group-wide rules of ``group_ids`` (the
    groups that gained or lost them).

    Billing rules judge billing's own rows only, so the answer is what the next validation
    would say; without this an assigned list kept its "has no owner" problem until then.
    Problems of other objects are left alone (they were not touched). Opens (or reopens)
    what is found, resolves the open ones in scope that are no longer found. Returns
    ``(opened, resolved)``. Does not commit: the caller commits it with the assignment, so
    a failure rolls both back. ``today`` is the billing day the assignments in force are read
    for (the callers pass ``settings.billing_today()``, as a validation does).
    """
    now = now or datetime.now(UTC)
    snapshot = load_snapshot(session, server_id, today=today or now.date())
    wanted_sites = set(site_ids)
    site_names = {s.name for s in snapshot.sites if s.id in wanted_sites}
    if whole_server:
        touched = list(snapshot.lists)
        site_names |= {s.name for s in snapshot.sites}
    else:
        wanted_lists = set(list_ids)
        touched = [r for r in snapshot.lists
                   if r.id in wanted_lists or (r.site_name and r.site_name in site_names)]
    list_names = {r.name for r in touched}
    site_names |= {r.site_name for r in touched if r.site_name}
    groups = set(group_ids)

    def in_scope(object_type: str, object_name: str, on_server: bool,
                 group_id: int | None) -> bool:
        if not on_server:
            return group_id in groups
        if object_type == "list":
            return object_name in list_names
        return object_type == "site" and object_name in site_names

    found = {f.fingerprint: f for f in rule_problems(snapshot)
             if in_scope(f.object_type, f.object_name, f.server_scoped, f.group_id)}
    columns = (PROBLEM.c.id, PROBLEM.c.fingerprint, PROBLEM.c.status, PROBLEM.c.detail,
               PROBLEM.c.data, PROBLEM.c.object_type, PROBLEM.c.object_name,
               PROBLEM.c.server_id, PROBLEM.c.group_id)
    # The open rule problems of this server (bounded: one indexed query) and of the groups.
    scope = PROBLEM.c.server_id == server_id
    if groups:
        scope = sa.or_(scope, sa.and_(PROBLEM.c.server_id.is_(None),
                                      PROBLEM.c.group_id.in_(sorted(groups))))
    existing = {r.fingerprint: r for r in session.execute(
        sa.select(*columns).where(scope, PROBLEM.c.status == "open",
                                  PROBLEM.c.kind.in_(RULE_KINDS))).all()}
    # Closed rows of what was found again reopen (one row per fingerprint, ever).
    unknown = sorted(fp for fp in found if fp not in existing)
    for start in range(0, len(unknown), 500):
        existing.update((r.fingerprint, r) for r in session.execute(
            sa.select(*columns).where(PROBLEM.c.fingerprint.in_(unknown[start:start + 500]))))
    inserts: list[dict[str, Any]] = []
    refresh: list[dict[str, Any]] = []
    for fp, f in found.items():
        row = existing.get(fp)
        if row is None:
            inserts.append({
                "fingerprint": fp, "server_id": server_id if f.server_scoped else None,
                "group_id": f.group_id, "kind": f.kind, "object_type": f.object_type,
                "object_name": f.object_name, "detail": f.detail, "data": dict(f.data),
                "status": "open", "first_seen_at": now, "last_seen_at": now,
                "first_run_id": None, "last_run_id": None,
            })
        elif row.status != "open" or row.detail != f.detail or row.data != dict(f.data):
            refresh.append({"b_id": row.id, "b_detail": f.detail, "b_data": dict(f.data),
                            "b_group": f.group_id, "b_reopen": row.status != "open"})
    closing = [
        {"b_id": row.id} for fp, row in existing.items()
        if row.status == "open" and fp not in found
        and in_scope(row.object_type, row.object_name, row.server_id is not None,
                     row.group_id)
    ]
    if closing:
        session.execute(
            PROBLEM.update().where(PROBLEM.c.id == sa.bindparam("b_id"))
            .ordered_values(*close_values("resolved"), (PROBLEM.c.closed_at, now)),
            closing,
        )
    reopened = sum(1 for r in refresh if r["b_reopen"])
    if refresh:
        session.execute(
            PROBLEM.update().where(PROBLEM.c.id == sa.bindparam("b_id")).values(
                detail=sa.bindparam("b_detail"), data=sa.bindparam("b_data"),
                group_id=sa.bindparam("b_group"), status="open", closed_at=None,
                last_seen_at=now,
            ),
            [{k: v for k, v in r.items() if k != "b_reopen"} for r in refresh],
        )
    if inserts:
        session.execute(PROBLEM.insert(), inserts)
    return len(inserts) + reopened, len(closing)
