"""The Plan limits report from the counts per server and site (models.ListCount) equals the
per-list statement it replaces, on every database, for every shape of assignment: whole
servers, sites and lists, one covered twice by the same group, given to another group below
a server's, ended, future, starting or ending today; inactive lists; an empty site. The
counts follow the lists through real syncs (created, changed, removed) and a server's
deletion, and the migration fills them from the lists there are."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from test_engine import FAST, add_server, lst, small
from test_migrations import bare_app, engine_of  # noqa: F401 (the migration test's fixture)

from lm_billing_plugin import downgrade, upgrade
from lm_billing_plugin.engine import batches as runner
from lm_billing_plugin.engine.rollup import rebuild_list_counts
from lm_billing_plugin.engine.servers import delete_server
from lm_billing_plugin.engine.store import active_assignment
from lm_billing_plugin.models import (
    Assignment,
    BillingGroup,
    Customer,
    HostingPlan,
    ListCount,
    MailingList,
    Server,
    Site,
    utcnow,
)
from lm_billing_plugin.reports import limits
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import HostSim

TODAY = date(2026, 6, 15)


def old_plan_limits(session: Any, today: date) -> list[limits.LimitRow]:
    """The statement before ListCount (main at 260e368): every covered list, one row each."""
    live = active_assignment(Assignment.__table__, today)
    cols = (Assignment.group_id.label("group_id"), MailingList.id.label("list_id"),
            MailingList.server_id.label("server_id"), MailingList.site_name.label("site"),
            MailingList.members.label("members"))
    active = MailingList.status == "active"
    covered = sa.union(
        sa.select(*cols).join(MailingList, MailingList.server_id == Assignment.server_id)
        .where(Assignment.object_type == "server", live, active),
        sa.select(*cols).join(Site, Site.id == Assignment.site_id)
        .join(MailingList, sa.and_(MailingList.server_id == Site.server_id,
                                   MailingList.site_name == Site.name))
        .where(Assignment.object_type == "site", live, active),
        sa.select(*cols).join(MailingList, MailingList.id == Assignment.list_id)
        .where(Assignment.object_type == "list", live, active),
    ).subquery("covered")
    per_group = (
        sa.select(covered.c.group_id, sa.func.count().label("lists"),
                  sa.func.sum(covered.c.members).label("members"),
                  sa.func.max(covered.c.members).label("largest_list"))
        .group_by(covered.c.group_id).subquery("per_group"))
    per_site = (
        sa.select(covered.c.group_id, covered.c.server_id, covered.c.site,
                  sa.func.count().label("n"))
        .where(covered.c.site != "")
        .group_by(covered.c.group_id, covered.c.server_id, covered.c.site).subquery())
    own_sites = (
        sa.select(Assignment.group_id.label("group_id"), Site.server_id.label("server_id"),
                  Site.name.label("site"), sa.literal(0).label("n"))
        .join(Site, Site.id == Assignment.site_id)
        .where(Assignment.object_type == "site", live))
    sites_all = sa.union_all(sa.select(per_site), own_sites).subquery()
    site_keys = (
        sa.select(sites_all.c.group_id, sa.func.max(sites_all.c.n).label("n"))
        .group_by(sites_all.c.group_id, sites_all.c.server_id, sites_all.c.site).subquery())
    site_stats = (
        sa.select(site_keys.c.group_id, sa.func.count().label("sites"),
                  sa.func.max(site_keys.c.n).label("fullest_site"))
        .group_by(site_keys.c.group_id).subquery("site_stats"))
    return limits.limit_rows(session, per_group, site_stats)


def everything_near(session: Any) -> None:
    """Every limit 1 on every plan: each figure of at least 1 is a row, so the report shows
    all five figures of every group that covers anything."""
    session.execute(sa.update(HostingPlan).values(
        max_members=1, max_members_per_list=1, max_lists=1, max_lists_per_site=1, max_sites=1))


def shapes(s: Any) -> None:
    """Three servers, sites a/b/c (c empty on server 2), lists in sites and in none, some
    removed; groups A (bill by list), B, C and D covering them in every way there is."""
    by_list = HostingPlan(name="By list", bill_by_list=True)
    plain = HostingPlan(name="Plain")
    s.add_all([by_list, plain])
    s.flush()
    groups = []
    for name, plan in (("A", by_list), ("B", plain), ("C", plain), ("D", plain)):
        customer = Customer(company=f"Co {name}")
        s.add(customer)
        s.flush()
        group = BillingGroup(customer_id=customer.id, name=name, plan_id=plan.id)
        s.add(group)
        s.flush()
        groups.append(group.id)
    a, b, c, d = groups
    servers, sites, lists = [], {}, {}
    for n in range(3):
        server = Server(name=f"srv{n}", host="127.0.0.1", comments="")
        s.add(server)
        s.flush()
        servers.append(server.id)
        for site in ("a", "b", "c"):
            row = Site(server_id=server.id, name=site)
            s.add(row)
            s.flush()
            sites[(n, site)] = row.id
        for i in range(6):
            row = MailingList(server_id=server.id, name=f"l{i}", site_name=("a", "b", "")[i % 3],
                              members=10 * (n + 1) + i,
                              status="removed" if i == 5 else "active")
            s.add(row)
            s.flush()
            lists[(n, i)] = row.id
    start = date(2020, 1, 1)

    def add(group: int, kind: str, n: int, site: str | None = None, i: int | None = None,
            start_date: date = start, end_date: date | None = None) -> None:
        s.add(Assignment(group_id=group, object_type=kind, server_id=servers[n],
                         site_id=sites[(n, site)] if site else None,
                         list_id=lists[(n, i)] if i is not None else None,
                         start_date=start_date, end_date=end_date))

    add(a, "server", 0)                           # A pays for server 0 ...
    add(a, "server", 0, start_date=date(2021, 1, 1))  # ... twice (overlapping terms)
    add(a, "site", 0, "a")                        # its own site under it: counts once
    add(a, "list", 0, i=1)                        # its own list under it: counts once
    add(b, "site", 0, "b")                        # B's site under A's server
    add(b, "list", 0, i=0)                        # B's list under A's server
    add(a, "site", 1, "a")                        # A's site on server 1
    add(a, "list", 1, i=0)                        # ... and a list in it: once
    add(a, "list", 1, i=1)                        # A's list in site b of server 1
    add(a, "list", 1, i=2)                        # A's list in no site
    add(a, "list", 1, i=5)                        # a removed list: does not count
    add(a, "site", 1, "c")                        # an empty site: a site, 0 lists
    add(c, "server", 2, end_date=TODAY)           # ended today (end is exclusive)
    add(c, "server", 1, start_date=TODAY + timedelta(days=1))  # starts tomorrow
    add(c, "site", 2, "b", start_date=TODAY)      # starts today
    add(c, "list", 2, i=0, end_date=date(2021, 1, 1))  # ended long ago
    add(d, "list", 2, i=4)                        # D: one list only
    add(d, "list", 2, i=2)                        # and one in no site
    s.flush()


def test_counts_equal_the_per_list_statement(any_db_app: Flask) -> None:
    app = any_db_app
    with app.app_context():
        s = get_state(app).session
        shapes(s)
        rebuild_list_counts(s)
        everything_near(s)
        for day in (TODAY, TODAY + timedelta(days=1), TODAY - timedelta(days=1),
                    date(2020, 6, 1)):
            want = old_plan_limits(s, day)
            assert want, day  # the comparison is of something
            assert limits.plan_limits(s, day) == want, day
        # The report's own figures, by hand (today): A covers server 0's 5 active lists,
        # site a of server 1 (lists 0 and 3) and lists 1, 2 of server 1: 9 lists.
        got = {(r.group, r.limit): r.value for r in limits.plan_limits(s, TODAY)}
        assert got[("A", "Max Lists")] == 9
        assert got[("A", "Max Sites")] == 5  # srv0 a, b; srv1 a, b, c (empty, its own)
        assert got[("A", "Max Lists Per Site")] == 2
        assert got[("A", "Max Members")] == 23  # bill by list: the largest, srv1 l3 (20 + 3)
        assert got[("B", "Max Lists")] == 3  # site b of server 0 (lists 1, 4) and list 0
        assert got[("C", "Max Lists")] == 2  # site b of server 2 only
        def c_lists(day: date) -> int:
            return next(r.value for r in limits.plan_limits(s, day)
                        if (r.group, r.limit) == ("C", "Max Lists"))

        assert c_lists(TODAY - timedelta(days=1)) == 5  # server 2, before its end
        assert c_lists(TODAY + timedelta(days=1)) == 7  # server 1 from tomorrow + site b
        assert got[("D", "Max Sites")] == 1 and got[("D", "Max Lists Per Site")] == 1
        s.commit()


def test_limits_read_no_list_rows(any_db_app: Flask) -> None:
    """Lists written without their counts are not seen: the report reads ListCount, not the
    lists (the sync keeps them equal; test below)."""
    app = any_db_app
    with app.app_context():
        s = get_state(app).session
        shapes(s)
        everything_near(s)
        only_own = {(r.group, r.limit): r.value for r in limits.plan_limits(s, TODAY)}
        assert only_own[("B", "Max Lists")] == 1  # its own list; site b has no counts yet
        rebuild_list_counts(s)
        assert limits.plan_limits(s, TODAY) == old_plan_limits(s, TODAY)
        s.commit()


@pytest.fixture
def sims() -> Iterator[Callable[..., HostSim]]:
    started: list[HostSim] = []

    def start(dataset: Any) -> HostSim:
        sim = HostSim(dataset).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


def counts() -> dict[tuple[int, str], tuple[int, int, int]]:
    s = get_state().session
    out = {(r.server_id, r.site_name): (r.lists, r.members, r.largest)
           for r in s.scalars(sa.select(ListCount))}
    s.commit()
    return out


def recounted() -> dict[tuple[int, str], tuple[int, int, int]]:
    s = get_state().session
    out = {(sid, site): (int(n), int(m), int(big)) for sid, site, n, m, big in s.execute(
        sa.select(MailingList.server_id, MailingList.site_name, sa.func.count(),
                  sa.func.sum(MailingList.members), sa.func.max(MailingList.members))
        .where(MailingList.status == "active")
        .group_by(MailingList.server_id, MailingList.site_name))}
    s.commit()
    return out


def test_syncs_keep_the_counts(make_app: Callable[..., Flask], db_url: str,
                               sims: Callable[..., HostSim]) -> None:
    app = make_app(db_url, **FAST)
    with app.app_context():
        one = sims(small(lst("a", members=5), lst("b", members=7), lst("c", site="s2")))
        two = sims(small(lst("x", site=""), lst("y")))
        sid1, sid2 = add_server("One", one), add_server("Two", two)
        assert all(o.ok for o in runner.sync_servers(None, actor="t").servers)
        assert counts() == recounted()
        assert counts()[(sid1, "s1")] == (2, 12, 7) and counts()[(sid2, "")] == (1, 10, 10)
        # Created, changed, moved to another site, removed: each written with its lists.
        one.add_list("d", site="s1", members=100)
        one.add_list("e", site="", members=1)  # a site of the server's with no row yet
        one.set_members("a", 50)
        two.remove_list("y")
        assert all(o.ok for o in runner.sync_servers(None, actor="t").servers)
        assert counts() == recounted()
        assert counts()[(sid1, "s1")] == (3, 157, 100) and counts()[(sid1, "")] == (1, 1, 1)
        assert counts()[(sid1, "s2")] == (1, 10, 10)  # untouched
        assert (sid2, "s1") not in counts()  # no active list left there: no row
        # An unchanged re-sync leaves them as they are; deleting a server takes its counts.
        assert all(o.ok for o in runner.sync_servers(None, actor="t").servers)
        assert counts() == recounted()
        assert delete_server(sid2, actor="t") == "erased"
        assert {k[0] for k in counts()} == {sid1}


def test_migration_fills_the_counts(bare_app: Flask) -> None:  # noqa: F811
    engine = engine_of(bare_app)
    upgrade(bare_app, "0008")
    with engine.begin() as conn:
        now = utcnow().replace(tzinfo=None)
        conn.execute(sa.text(
            "INSERT INTO lm_billing_server (id, name, host, port, comments, active, status, "
            "status_message, created_at, updated_at) VALUES (1, 's', 'h', 2021, '', :t, 'ok', "
            "'', :now, :now)"), {"t": True, "now": now})
        for i, (site, members, status) in enumerate(
                [("a", 3, "active"), ("a", 9, "active"), ("", 4, "active"),
                 ("b", 99, "removed")]):
            conn.execute(sa.text(
                "INSERT INTO lm_billing_list (id, server_id, name, site_name, descr, members,"
                " admin, status, first_seen_at, last_seen_at)"
                " VALUES (:i, 1, :n, :site, '', :m, '', :st, :now, :now)"),
                {"i": i + 1, "n": f"l{i}", "site": site, "m": members, "st": status,
                 "now": now})
    upgrade(bare_app, "head")
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT site_name, lists, members, largest FROM lm_billing_list_count"
            " ORDER BY site_name")).all()
    assert [tuple(r) for r in rows] == [("", 1, 4, 4), ("a", 2, 12, 9)]
    downgrade(bare_app, "0008")
    assert "lm_billing_list_count" not in sa.inspect(engine).get_table_names()
