"""Roll-ups of usage: one row per server and month with the sums of its Usage rows
(models.UsageRollup), written in the transaction that writes those rows, so the Overview and
the fleet- and server-level reports read a row per server instead of one per list.

``write_rollup`` is engine.store's: a sync has just read every Usage row of the server and
month, so it writes the totals it knows (one statement). ``rebuild_rollups`` recomputes them
set-based from Usage, for writers that insert Usage rows directly (tests, benchmarks, imports).

The same for lists: ``rebuild_list_counts`` keeps models.ListCount (active lists, members and
the largest list per server and site, what the Plan limits report reads) equal to a server's
lists; engine.store calls ``write_list_counts`` (the same, writing only the rows that
differ, by key) in the transaction of the sync that wrote them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import date, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session

from ..models import ListCount, MailingList, Usage, UsageRollup, utcnow

__all__ = ["list_count_select", "rebuild_list_counts", "rebuild_rollups", "rollup_select",
           "write_list_counts", "write_rollup"]

ROLLUP = cast(sa.Table, UsageRollup.__table__)
USAGE = cast(sa.Table, Usage.__table__)
_SUMS = ("lists", "messages", "recipients", "bytes", "updated_at")


def write_rollup(session: Session, server_id: int, period: date,
                 figures: Iterable[tuple[int, int, int]], now: datetime) -> None:
    """Set the (server, period) row to the totals of ``figures`` — (messages, recipients,
    bytes) of EVERY Usage row of that server and month, as they are after this write."""
    rows = list(figures)
    values: dict[str, Any] = {
        "server_id": server_id, "period": period, "lists": len(rows),
        "messages": sum(r[0] for r in rows), "recipients": sum(r[1] for r in rows),
        "bytes": sum(r[2] for r in rows), "updated_at": now,
    }
    name = session.get_bind().dialect.name
    stmt: Any
    if name in ("mysql", "mariadb"):
        stmt = mysql.insert(ROLLUP).values(values)
        stmt = stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in _SUMS})
    elif name in ("postgresql", "sqlite"):
        stmt = (postgresql if name == "postgresql" else sqlite).insert(ROLLUP).values(values)
        stmt = stmt.on_conflict_do_update(index_elements=["server_id", "period"],
                                          set_={c: stmt.excluded[c] for c in _SUMS})
    else:  # portable fallback: the server's lease keeps a second writer away
        session.execute(ROLLUP.delete().where(ROLLUP.c.server_id == server_id,
                                              ROLLUP.c.period == period))
        stmt = ROLLUP.insert().values(values)
    session.execute(stmt)


def rollup_select(usage: Any = USAGE) -> sa.Select[Any]:
    """(server_id, period, lists, messages, recipients, bytes) per server and month of
    ``usage`` (the table, or a table clause naming its columns, as the migration does)."""
    return (
        sa.select(usage.c.server_id, usage.c.period, sa.func.count().label("lists"),
                  sa.func.coalesce(sa.func.sum(usage.c.messages), 0).label("messages"),
                  sa.func.coalesce(sa.func.sum(usage.c.recipients), 0).label("recipients"),
                  sa.func.coalesce(sa.func.sum(usage.c.bytes), 0).label("bytes"))
        .group_by(usage.c.server_id, usage.c.period)
    )


def rebuild_rollups(session: Session, server_ids: Collection[int] | None = None,
                    *, now: datetime | None = None) -> None:
    """Recompute the roll-ups (of ``server_ids``, or all) from Usage: two statements. Does
    not commit."""
    delete = ROLLUP.delete()
    select = rollup_select()
    if server_ids is not None:
        delete = delete.where(ROLLUP.c.server_id.in_(list(server_ids)))
        select = select.where(USAGE.c.server_id.in_(list(server_ids)))
    stamp = now or utcnow()
    select = select.add_columns(sa.literal(stamp, ROLLUP.c.updated_at.type).label("updated_at"))
    session.execute(delete)
    session.execute(ROLLUP.insert().from_select(
        ["server_id", "period", "lists", "messages", "recipients", "bytes", "updated_at"],
        select))


# --- counts of active lists per server and site (models.ListCount) ------------------------

COUNT = cast(sa.Table, ListCount.__table__)
LIST = cast(sa.Table, MailingList.__table__)


def list_count_select(lists: Any = LIST) -> sa.Select[Any]:
    """(server_id, site_name, lists, members, largest) per server and site of the active
    ``lists`` (the table, or a table clause naming its columns, as the migration does)."""
    return (
        sa.select(lists.c.server_id, lists.c.site_name, sa.func.count().label("lists"),
                  sa.func.coalesce(sa.func.sum(lists.c.members), 0).label("members"),
                  sa.func.coalesce(sa.func.max(lists.c.members), 0).label("largest"))
        .where(lists.c.status == "active")
        .group_by(lists.c.server_id, lists.c.site_name)
    )


def rebuild_list_counts(session: Session, server_ids: Collection[int] | None = None) -> None:
    """Recompute the list counts (of ``server_ids``, or all) from the lists: two statements,
    a grouped read of those servers' lists. engine.store calls it for the server whose lists
    a sync has just written, in that transaction; direct writers (tests, benchmarks) call it
    themselves. Does not commit."""
    delete = COUNT.delete()
    select = list_count_select()
    if server_ids is not None:
        delete = delete.where(COUNT.c.server_id.in_(list(server_ids)))
        select = select.where(LIST.c.server_id.in_(list(server_ids)))
    session.execute(delete)
    session.execute(COUNT.insert().from_select(
        ["server_id", "site_name", "lists", "members", "largest"], select))


def write_list_counts(session: Session, server_id: int) -> None:
    """Set the server's list counts to those of its lists as they are in this transaction
    (engine.store, after writing them). Two plain reads (no locking read), then only the rows
    that differ, each by its key: no range of the table is locked, so syncs of other servers
    writing theirs at the same time never wait for this one (MariaDB's gap locks)."""
    now = {site: (int(n), int(m), int(big)) for site, n, m, big in session.execute(
        list_count_select().where(LIST.c.server_id == server_id)
        .with_only_columns(LIST.c.site_name, sa.func.count(),
                           sa.func.coalesce(sa.func.sum(LIST.c.members), 0),
                           sa.func.coalesce(sa.func.max(LIST.c.members), 0)))}
    was = {site: (n, m, big) for site, n, m, big in session.execute(
        sa.select(COUNT.c.site_name, COUNT.c.lists, COUNT.c.members, COUNT.c.largest)
        .where(COUNT.c.server_id == server_id))}
    gone = [{"b_site": site} for site in was if site not in now]
    if gone:
        session.execute(COUNT.delete().where(COUNT.c.server_id == server_id,
                                             COUNT.c.site_name == sa.bindparam("b_site")), gone)
    changed = [{"b_site": site, "b_lists": v[0], "b_members": v[1], "b_largest": v[2]}
               for site, v in now.items() if site in was and was[site] != v]
    if changed:
        session.execute(
            COUNT.update().where(COUNT.c.server_id == server_id,
                                 COUNT.c.site_name == sa.bindparam("b_site"))
            .values(lists=sa.bindparam("b_lists"), members=sa.bindparam("b_members"),
                    largest=sa.bindparam("b_largest")), changed)
    new = [{"server_id": server_id, "site_name": site, "lists": v[0], "members": v[1],
            "largest": v[2]} for site, v in now.items() if site not in was]
    if new:
        session.execute(COUNT.insert(), new)
