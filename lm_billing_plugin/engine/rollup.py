"""Roll-ups of usage: one row per server and month with the sums of its Usage rows
(models.UsageRollup), written in the transaction that writes those rows, so the Overview and
the fleet- and server-level reports read a row per server instead of one per list.

``write_rollup`` is engine.store's: a sync has just read every Usage row of the server and
month, so it writes the totals it knows (one statement). ``rebuild_rollups`` recomputes them
set-based from Usage, for writers that insert Usage rows directly (tests, benchmarks, imports).

``write_site_rollups`` does the same per site (models.UsageSiteRollup: a list's rows count in
the site it is in now), from the figures the sync knows; ``rebuild_site_rollups`` redoes a
server's months when a sync moved one of its lists to another site.

``write_previous`` keeps models.UsagePrevious (per server and month, how many lists had
their previous usage in which month: the count of lists with usage in a range) equal to a
server's Usage rows from a month on; engine.store calls it when a sync adds Usage rows,
``rebuild_rollups`` rebuilds it with the roll-ups.

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

from ..models import (
    NO_PREVIOUS,
    ListCount,
    MailingList,
    Usage,
    UsagePrevious,
    UsageRollup,
    UsageSiteRollup,
    utcnow,
)

__all__ = ["list_count_select", "previous_select", "rebuild_list_counts", "rebuild_rollups",
           "rebuild_site_rollups", "rollup_select", "site_rollup_select", "write_list_counts",
           "write_previous", "write_rollup", "write_site_rollups"]

ROLLUP = cast(sa.Table, UsageRollup.__table__)
USAGE = cast(sa.Table, Usage.__table__)
LIST = cast(sa.Table, MailingList.__table__)
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


SITE_ROLLUP = cast(sa.Table, UsageSiteRollup.__table__)
_SITE_COLUMNS = ["server_id", "site_name", "period", "lists", "messages", "recipients", "bytes"]


def site_rollup_select(usage: Any = USAGE, lists: Any = None,
                       server_ids: Collection[int] | None = None) -> sa.Select[Any]:
    """(server_id, site_name, period, lists, messages, recipients, bytes) per server, site
    (the list's site now) and month of ``usage`` (table clauses as the migration does)."""
    lists = LIST if lists is None else lists
    stmt = (
        sa.select(usage.c.server_id, lists.c.site_name, usage.c.period,
                  sa.func.count().label("lists"),
                  sa.func.coalesce(sa.func.sum(usage.c.messages), 0).label("messages"),
                  sa.func.coalesce(sa.func.sum(usage.c.recipients), 0).label("recipients"),
                  sa.func.coalesce(sa.func.sum(usage.c.bytes), 0).label("bytes"))
        .select_from(usage).join(lists, lists.c.id == usage.c.list_id)
        .group_by(usage.c.server_id, lists.c.site_name, usage.c.period)
    )
    if server_ids is not None:
        stmt = stmt.where(usage.c.server_id.in_(list(server_ids)))
    return stmt


def write_site_rollups(session: Session, server_id: int, period: date,
                       figures: Iterable[tuple[str, int, int, int]]) -> None:
    """Set the server's (site, ``period``) rows to the totals of ``figures`` — (site,
    messages, recipients, bytes) of EVERY Usage row of that server and month, as they are
    after this write. Only the rows that differ are written, each by its key (as
    write_list_counts: no range of the table is locked)."""
    now: dict[str, list[int]] = {}
    for site, messages, recipients, size in figures:
        totals = now.setdefault(site, [0, 0, 0, 0])
        totals[0] += 1
        totals[1] += messages
        totals[2] += recipients
        totals[3] += size
    t = SITE_ROLLUP
    was = {site: [n, m, r, b] for site, n, m, r, b in session.execute(
        sa.select(t.c.site_name, t.c.lists, t.c.messages, t.c.recipients, t.c.bytes)
        .where(t.c.server_id == server_id, t.c.period == period))}
    key = (t.c.server_id == server_id, t.c.period == period,
           t.c.site_name == sa.bindparam("b_site"))
    gone = [{"b_site": site} for site in was if site not in now]
    if gone:
        session.execute(t.delete().where(*key), gone)
    changed = [{"b_site": site, "b_lists": v[0], "b_messages": v[1], "b_recipients": v[2],
                "b_bytes": v[3]} for site, v in now.items() if site in was and was[site] != v]
    if changed:
        session.execute(t.update().where(*key).values(
            lists=sa.bindparam("b_lists"), messages=sa.bindparam("b_messages"),
            recipients=sa.bindparam("b_recipients"), bytes=sa.bindparam("b_bytes")), changed)
    new = [{"server_id": server_id, "site_name": site, "period": period, "lists": v[0],
            "messages": v[1], "recipients": v[2], "bytes": v[3]}
           for site, v in now.items() if site not in was]
    if new:
        session.execute(t.insert(), new)


def rebuild_site_rollups(session: Session, server_ids: Collection[int] | None = None) -> None:
    """Recompute the site roll-ups (of ``server_ids``, or all) from Usage and the lists' sites
    now: two statements. Does not commit."""
    delete = SITE_ROLLUP.delete()
    if server_ids is not None:
        delete = delete.where(SITE_ROLLUP.c.server_id.in_(list(server_ids)))
    session.execute(delete)
    session.execute(SITE_ROLLUP.insert().from_select(
        _SITE_COLUMNS, site_rollup_select(server_ids=server_ids)))


def previous_select(usage: Any = USAGE, *, since: date | None = None,
                    server_ids: Collection[int] | None = None) -> sa.Select[Any]:
    """(server_id, period, previous, lists) of ``usage`` (the table, or a table clause naming
    its columns, as the migration does) of ``server_ids`` (or all) from month ``since`` on
    (or all months): each row's list's previous month with a row, one probe of the
    (list_id, period) key per row."""
    earlier = usage.alias("earlier")
    previous = sa.func.coalesce(
        sa.select(sa.func.max(earlier.c.period))
        .where(earlier.c.list_id == usage.c.list_id, earlier.c.period < usage.c.period)
        .scalar_subquery(),
        sa.literal(NO_PREVIOUS, sa.Date()),
    )
    rows = sa.select(usage.c.server_id.label("server_id"), usage.c.period.label("period"),
                     previous.label("previous"))
    if since is not None:
        rows = rows.where(usage.c.period >= since)
    if server_ids is not None:
        rows = rows.where(usage.c.server_id.in_(list(server_ids)))
    each = rows.subquery("each")
    return (sa.select(each.c.server_id, each.c.period, each.c.previous,
                      sa.func.count().label("lists"))
            .group_by(each.c.server_id, each.c.period, each.c.previous))


PREVIOUS = cast(sa.Table, UsagePrevious.__table__)
_PREVIOUS_COLUMNS = ["server_id", "period", "previous", "lists"]


def write_previous(session: Session, server_id: int, since: date) -> None:
    """Set the server's UsagePrevious rows of month ``since`` and later to those of its Usage
    rows as they are in this transaction (engine.store, after adding rows of month ``since``:
    only they and the rows after them can have a new previous month). Two plain reads (the
    probes are those rows', not the server's history), then only the rows that differ, each
    by its key: as write_list_counts, no range of the table is locked."""
    now = {(p, prev): int(n) for _sid, p, prev, n in session.execute(
        previous_select(since=since, server_ids=[server_id]))}
    was = {(p, prev): n for p, prev, n in session.execute(
        sa.select(PREVIOUS.c.period, PREVIOUS.c.previous, PREVIOUS.c.lists)
        .where(PREVIOUS.c.server_id == server_id, PREVIOUS.c.period >= since))}
    key = (PREVIOUS.c.server_id == server_id, PREVIOUS.c.period == sa.bindparam("b_period"),
           PREVIOUS.c.previous == sa.bindparam("b_previous"))
    gone = [{"b_period": p, "b_previous": prev} for p, prev in was if (p, prev) not in now]
    if gone:
        session.execute(PREVIOUS.delete().where(*key), gone)
    changed = [{"b_period": p, "b_previous": prev, "b_lists": n}
               for (p, prev), n in now.items() if (p, prev) in was and was[(p, prev)] != n]
    if changed:
        session.execute(PREVIOUS.update().where(*key).values(lists=sa.bindparam("b_lists")),
                        changed)
    new = [{"server_id": server_id, "period": p, "previous": prev, "lists": n}
           for (p, prev), n in now.items() if (p, prev) not in was]
    if new:
        session.execute(PREVIOUS.insert(), new)


def rebuild_rollups(session: Session, server_ids: Collection[int] | None = None,
                    *, now: datetime | None = None) -> None:
    """Recompute the roll-ups, the site roll-ups and the UsagePrevious rows (of
    ``server_ids``, or all) from Usage: six statements. Does not commit."""
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
    delete = PREVIOUS.delete()
    if server_ids is not None:
        delete = delete.where(PREVIOUS.c.server_id.in_(list(server_ids)))
    session.execute(delete)
    session.execute(PREVIOUS.insert().from_select(
        _PREVIOUS_COLUMNS, previous_select(server_ids=server_ids)))
    rebuild_site_rollups(session, server_ids)


# --- counts of active lists per server and site (models.ListCount) ------------------------

COUNT = cast(sa.Table, ListCount.__table__)


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
