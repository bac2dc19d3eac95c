"""Assign and unassign sites, lists or whole servers to billing groups, behind the gate:
no assignment change on a server that was never validated or has open drift problems."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import audit, signals
from ..engine.store import (
    ASSIGNMENT,
    open_drift_problems,
    rejudge_rules,
)
from ..i18n import M_
from ..models import (
    BillingGroup,
    MailingList,
    Server,
    Site,
    utcnow,
)
from ..state import get_state

__all__ = ["AssignmentError", "GateError", "assign", "check_gate", "unassign"]


class GateError(Exception):
    """An assignment change refused by the validate-and-sync gate; the message says what to do."""

    def __init__(self, message: str, *, server_id: int | None = None,
                 server_name: str | None = None) -> None:
        super().__init__(message)
        self.server_id = server_id
        self.server_name = server_name


class AssignmentError(ValueError):
    """An assignment request that names something that does not fit (wrong server, removed
    list, unknown group ...); the message says which."""


# --- the gate and assignments -----------------------------------------------------------------


def check_gate(session: Session, server_id: int) -> None:
    """Raise GateError unless the server was validated and has no open drift problems."""
    row = session.execute(
        sa.select(Server.name, Server.validated_at).where(Server.id == server_id)
    ).one_or_none()
    if row is None:
        raise AssignmentError(M_("there is no server %(server)s") % {"server": server_id})
    if row.validated_at is None:
        raise GateError(
            M_("Validate and sync server %(server)s first: it was never validated, so "
               "billing does not know what it holds.") % {"server": repr(row.name)},
            server_id=server_id, server_name=row.name)
    drift = open_drift_problems(session, server_id)
    if drift:
        shown = ", ".join(f"{kind} {name!r}" for kind, name in drift[:3])
        more = f" and {len(drift) - 3} more" if len(drift) > 3 else ""
        raise GateError(
            M_("Validate and sync server %(server)s first: it has %(count)s open drift "
               "problem(s) (%(shown)s); sync it, or fix them on the Errors page.")
            % {"server": repr(row.name), "count": len(drift), "shown": shown + more},
            server_id=server_id, server_name=row.name)


def assign(group_id: int, *, server_id: int, site_ids: Iterable[int] = (),
           list_ids: Iterable[int] = (), whole_server: bool = False, actor: str,
           start: date | None = None, end: date | None = None, is_free: bool = False) -> int:
    """Assign sites, lists or the whole server to a billing group from ``start`` (today)
    until ``end`` (exclusive: the first day not covered; None = open); ``is_free`` marks
    the new assignments "Is Free" (they cost nothing).

    Another group's active assignment of the same object ends on ``start`` (end dates are
    exclusive: the first day not covered). Assigning what the group already has is a no-op;
    with a different "Is Free" its assignment ends on ``start`` and a new one begins.
    Returns the number of assignments created. Raises GateError (see check_gate) and
    AssignmentError (unknown group, objects not on this server or removed).
    """
    session = get_state().session
    start = start or get_state().settings.billing_today()
    site_set = sorted(set(site_ids))
    list_set = sorted(set(list_ids))
    try:
        if end is not None and end <= start:
            raise AssignmentError(M_("the End Date must be after the Start Date (it is the "
                                     "first day no longer billed)"))
        check_gate(session, server_id)
        if session.get(BillingGroup, group_id) is None:
            raise AssignmentError(M_("there is no billing group %(group)s") % {"group": group_id})
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
            raise AssignmentError(M_("choose lists, sites or the whole server to assign"))
        table = ASSIGNMENT
        current = session.execute(
            sa.select(table.c.id, table.c.group_id, table.c.object_type, table.c.site_id,
                      table.c.list_id, table.c.is_free)
            .where(table.c.server_id == server_id,
                   sa.or_(table.c.end_date.is_(None), table.c.end_date > start))
        ).all()
        wanted_set = set(wanted)
        have: set[tuple[str, int | None, int | None]] = set()
        end_ids: list[int] = []
        losing: set[int] = set()
        for a in current:
            key = (a.object_type, a.site_id, a.list_id)
            if key not in wanted_set:
                continue
            if a.group_id == group_id and bool(a.is_free) == is_free:
                have.add(key)
            else:
                end_ids.append(a.id)
                losing.add(a.group_id)
        create = [k for k in wanted if k not in have]
        if end_ids:
            session.execute(sa.update(table).where(table.c.id.in_(end_ids))
                            .values(end_date=start))
        if create:
            session.execute(sa.insert(table), [
                {"group_id": group_id, "object_type": t, "server_id": server_id,
                 "site_id": s, "list_id": li, "start_date": start, "end_date": end,
                 "is_free": is_free, "created_at": utcnow()} for t, s, li in create])
        # The problems this change settles (or causes) change with it, in this transaction.
        rejudge_rules(session, server_id, list_ids=list_set, site_ids=site_set,
                      whole_server=whole_server, group_ids={group_id} | losing,
                      today=get_state().settings.billing_today())
        audit.record(session, actor=actor, action="assign", object_type="group",
                     object_id=group_id, server_id=server_id,
                     detail={"whole_server": whole_server, "site_ids": site_set,
                             "list_ids": list_set, "start": start.isoformat(),
                             "end": end.isoformat() if end else None, "is_free": is_free,
                             "created": len(create), "ended": sorted(end_ids)})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    signals.send(signals.assigned, group_id=group_id, server_id=server_id, created=len(create),
                 site_ids=site_set, list_ids=list_set, whole_server=whole_server, start=start,
                 actor=actor)
    return len(create)


# Whole sentences per kind of object (a page says them in the viewer's language, where the
# word for "list" or "site" and its grammar belong to the sentence).
_NOT_ON_SERVER: Final = {
    "site": M_("site(s) %(ids)s are not on this server"),
    "list": M_("list(s) %(ids)s are not on this server"),
}
_REMOVED: Final = {
    "site": M_("site(s) %(ids)s were removed from the server; only active sites can be "
               "assigned"),
    "list": M_("list(s) %(ids)s were removed from the server; only active lists can be "
               "assigned"),
}


def _check_objects(what: str, wanted: Sequence[int], found: Sequence[Any]) -> None:
    ids = {r.id for r in found}
    missing = [i for i in wanted if i not in ids]
    if missing:
        raise AssignmentError(_NOT_ON_SERVER[what] % {"ids": missing})
    removed = [r.id for r in found if r.status != "active"]
    if removed:
        raise AssignmentError(_REMOVED[what] % {"ids": removed})


def unassign(assignment_ids: Sequence[int], *, actor: str, end: date | None = None) -> int:
    """End the given assignments on ``end`` (today; exclusive: the first day not covered).

    History is kept (no delete). Returns how many were ended; already ended ones are left
    alone. Raises GateError for a server that needs validating or syncing first.
    """
    session = get_state().session
    end = end or get_state().settings.billing_today()
    table = ASSIGNMENT
    try:
        rows = session.execute(
            sa.select(table.c.id, table.c.server_id, table.c.end_date, table.c.start_date,
                      table.c.group_id, table.c.object_type, table.c.site_id, table.c.list_id)
            .where(table.c.id.in_(sorted(set(assignment_ids))))
        ).all()
        missing = sorted(set(assignment_ids) - {r.id for r in rows})
        if missing:
            raise AssignmentError(M_("there is no assignment %(ids)s") % {"ids": missing})
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
            # Reopen what the ended assignments settled ("has no owner" ...), in this
            # transaction.
            mine = [r for r in rows if r.server_id == server_id and r.id in ending]
            if mine:
                rejudge_rules(session, server_id,
                              list_ids={r.list_id for r in mine if r.list_id is not None},
                              site_ids={r.site_id for r in mine if r.site_id is not None},
                              whole_server=any(r.object_type == "server" for r in mine),
                              group_ids={r.group_id for r in mine},
                              today=get_state().settings.billing_today())
            audit.record(session, actor=actor, action="unassign", object_type="assignment",
                         server_id=server_id,
                         detail={"assignment_ids": sorted(r.id for r in rows
                                                          if r.server_id == server_id),
                                 "end": end.isoformat(), "ended": len(ending)})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    signals.send(signals.unassigned, assignment_ids=sorted({r.id for r in rows}),
                 ended=len(ending), end=end, actor=actor)
    return len(ending)
