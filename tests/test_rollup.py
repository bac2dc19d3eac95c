"""Roll-ups of usage (lm_billing_usage_rollup) on every database: equal to the sums of the
Usage rows after a first sync, a re-sync with changes and a list removed (written in the same
transaction as them); the migration's backfill; the per-server report (roll-ups plus the few
rows whose size counts) equal to the per-list one it replaces."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from test_engine import FAST, add_server, lst, small
from test_migrations import bare_app, engine_of  # noqa: F401 (the migration test's fixture)
from test_reports import THIS, seed

from lm_billing_plugin import downgrade, upgrade
from lm_billing_plugin.engine import batches as runner
from lm_billing_plugin.engine.rollup import previous_select, rebuild_rollups, site_rollup_select
from lm_billing_plugin.engine.servers import delete_server
from lm_billing_plugin.models import (
    NO_PREVIOUS,
    HostingPlan,
    MailingList,
    Server,
    Usage,
    UsagePrevious,
    UsageRollup,
    UsageSiteRollup,
    usage_kb_per_recipient,
    utcnow,
)
from lm_billing_plugin.reports import usage as report
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import HostSim


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


def rollups_and_sums() -> tuple[dict[Any, tuple[int, ...]], dict[Any, tuple[int, ...]]]:
    s = get_state().session
    rolled = {(r.server_id, r.period): (r.lists, r.messages, r.recipients, r.bytes)
              for r in s.scalars(sa.select(UsageRollup))}
    summed = {
        (sid, period): (int(n), int(m), int(r), int(b))
        for sid, period, n, m, r, b in s.execute(
            sa.select(Usage.server_id, Usage.period, sa.func.count(),
                      sa.func.sum(Usage.messages), sa.func.sum(Usage.recipients),
                      sa.func.sum(Usage.bytes)).group_by(Usage.server_id, Usage.period))
    }
    s.commit()
    return rolled, summed


def previous_rows_agree() -> bool:
    """UsagePrevious equals what its definition computes from the Usage rows now."""
    s = get_state().session
    stored = {(r.server_id, r.period, r.previous): r.lists
              for r in s.scalars(sa.select(UsagePrevious))}
    computed = {(sid, _day(p), _day(prev)): int(n)
                for sid, p, prev, n in s.execute(previous_select())}
    s.commit()
    return stored == computed and all(n > 0 for n in stored.values())


def site_rollups_agree() -> bool:
    """The site roll-ups equal the sums of the Usage rows by the lists' sites now."""
    s = get_state().session
    stored = {(r.server_id, r.site_name, r.period): (r.lists, r.messages, r.recipients,
                                                     r.bytes)
              for r in s.scalars(sa.select(UsageSiteRollup))}
    computed = {(sid, site, _day(p)): (int(n), int(m), int(r), int(b))
                for sid, site, p, n, m, r, b in s.execute(site_rollup_select())}
    s.commit()
    return stored == computed


def _day(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def kb_columns_agree() -> bool:
    s = get_state().session
    rows = s.execute(sa.select(Usage.bytes, Usage.recipients, Usage.kb_per_recipient)).all()
    s.commit()
    return all(kb == usage_kb_per_recipient(b, r) for b, r, kb in rows)


def test_rollups_equal_the_usage_rows_through_syncs(make_app: Callable[..., Flask], db_url: str,
                                                    sims: Callable[..., HostSim]) -> None:
    app = make_app(db_url, **FAST)
    with app.app_context():
        today = utcnow().date()
        one = sims(small(lst("a"), lst("b"), lst("c")))
        two = sims(small(lst("x"), lst("y")))
        for sim, sends in ((one, {"a": (100, 2000), "b": (3, 900_000), "c": (0, 0)}),
                           (two, {"x": (7, 70), "y": (1, 1)})):
            for name, (recipients, size) in sends.items():
                if recipients:
                    sim.add_send(name, today, recipients, size)
        sid1, sid2 = add_server("One", one), add_server("Two", two)
        assert all(o.ok for o in runner.sync_servers(None, actor="t").servers)
        rolled, summed = rollups_and_sums()
        assert rolled == summed and len(rolled) == 2
        assert rolled[(sid1, today.replace(day=1))] == (2, 2, 103, 2000 * 100 + 900_000 * 3)
        assert kb_columns_agree() and previous_rows_agree() and site_rollups_agree()
        # Re-sync with changes: more sends, a new list with usage, a list removed.
        one.add_send("a", today, 10, 10)
        one.add_list("d", site="s1")
        one.add_send("d", today, 5, 5000)
        one.set_site("b", "s2")  # b's usage moves with it to site s2
        two.remove_list("y")
        assert all(o.ok for o in runner.sync_servers(None, actor="t").servers)
        s = get_state().session
        assert s.scalar(sa.select(MailingList.status).where(MailingList.name == "y")) == "removed"
        s.commit()
        rolled, summed = rollups_and_sums()
        assert rolled == summed
        assert rolled[(sid1, today.replace(day=1))][:3] == (3, 4, 118)
        assert kb_columns_agree() and previous_rows_agree() and site_rollups_agree()
        # An unchanged re-sync writes neither (test_engine: no usage statement at all).
        assert all(o.ok for o in runner.sync_servers(None, actor="t").servers)
        assert rollups_and_sums()[0] == rolled
        # Rebuilding from the rows changes nothing; deleting a server takes its roll-ups.
        rebuild_rollups(s)
        s.commit()
        assert rollups_and_sums()[0] == rolled
        s.execute(sa.delete(Usage).where(Usage.server_id == sid2))
        s.commit()
        rebuild_rollups(s, [sid2])
        s.commit()
        rolled, summed = rollups_and_sums()
        assert rolled == summed and {k[0] for k in rolled} == {sid1}
        assert previous_rows_agree() and site_rollups_agree()
        assert delete_server(sid1, actor="t") == "erased"
        assert rollups_and_sums() == ({}, {})
        assert previous_rows_agree() and s.scalar(sa.select(sa.func.count()).select_from(
            UsagePrevious)) == 0
        assert site_rollups_agree() and s.scalar(sa.select(sa.func.count()).select_from(
            UsageSiteRollup)) == 0


def test_a_sync_adding_a_months_rows_records_each_lists_previous_month(
        make_app: Callable[..., Flask], db_url: str, sims: Callable[..., HostSim]) -> None:
    """The rows a sync adds for this month name their list's previous month with a row (here
    last month, and none for a list new this month): what the range count of the Usage report
    reads (reports.usage._list_range_count). A list the sync moves to another site takes its
    earlier months' usage with it in the site roll-ups."""
    app = make_app(db_url, **FAST)
    with app.app_context():
        today = utcnow().date()
        this = today.replace(day=1)
        last = (this - timedelta(days=1)).replace(day=1)
        one = sims(small(lst("a"), lst("b")))
        for name in ("a", "b"):
            one.add_send(name, today, 5, 500)
        sid = add_server("One", one)
        assert all(o.ok for o in runner.sync_servers(None, actor="t").servers)
        s = get_state().session
        # What the syncs wrote is last month's now (rows moved back, roll-ups rebuilt).
        s.execute(sa.update(Usage).values(period=last))
        rebuild_rollups(s)
        s.commit()
        one.add_list("c")
        one.add_send("c", today, 1, 10)
        one.set_site("a", "s2")  # last month's usage of a moves to s2 with it
        assert all(o.ok for o in runner.sync_servers(None, actor="t").servers)
        assert previous_rows_agree() and site_rollups_agree()
        by_site = {(r.site_name, r.period): r.lists for r in s.scalars(
            sa.select(UsageSiteRollup).where(UsageSiteRollup.server_id == sid))}
        s.commit()
        assert by_site[("s2", last)] == 1
        stored = {(r.period, r.previous): r.lists for r in s.scalars(
            sa.select(UsagePrevious).where(UsagePrevious.server_id == sid))}
        s.commit()
        assert stored == {(last, NO_PREVIOUS): 2, (this, last): 2, (this, NO_PREVIOUS): 1}
        for first, want in ((last, 3), (this, 3)):
            q = report.UsageQuery("list", first, this, None, "name")
            assert report.usage_count(s, q) == want
        # An unchanged re-sync adds no row and leaves them.
        assert all(o.ok for o in runner.sync_servers(None, actor="t").servers)
        assert previous_rows_agree()


def test_migration_backfills_rollups_from_existing_usage(bare_app: Flask) -> None:  # noqa: F811
    engine = engine_of(bare_app)
    upgrade(bare_app, "0006")
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO lm_billing_server (id, name, host, port, comments, active, status, "
            "status_message, created_at, updated_at) VALUES (1, 's', 'h', 2021, '', :t, 'ok', "
            "'', :now, :now)"), {"t": True, "now": utcnow().replace(tzinfo=None)})
        conn.execute(sa.text(
            "INSERT INTO lm_billing_list (id, server_id, name, site_name, descr, members, admin,"
            " status, first_seen_at, last_seen_at) VALUES (:id, 1, :name, '', '', 0, '', "
            "'active', :now, :now)"),
            [{"id": i, "name": f"l{i}", "now": utcnow().replace(tzinfo=None)} for i in (1, 2)])
        figures = [(1, date(2026, 1, 1), 3, 10, 10 * 300 * 1024),
                   (2, date(2026, 1, 1), 1, 0, 5000), (1, date(2026, 2, 1), 2, 4, 100)]
        conn.execute(sa.text(
            "INSERT INTO lm_billing_usage (server_id, list_id, period, messages, recipients, "
            "bytes, updated_at) VALUES (1, :l, :p, :m, :r, :b, :now)"),
            [{"l": lid, "p": p, "m": m, "r": r, "b": b, "now": utcnow().replace(tzinfo=None)}
             for lid, p, m, r, b in figures])
    upgrade(bare_app)
    with engine.connect() as conn:
        rolled = {(p if isinstance(p, date) else date.fromisoformat(str(p)[:10])): tuple(rest)
                  for p, *rest in conn.execute(sa.text(
                      "SELECT period, lists, messages, recipients, bytes "
                      "FROM lm_billing_usage_rollup ORDER BY period"))}
        kbs = sorted(tuple(r) for r in conn.execute(sa.text(
            "SELECT list_id, period, kb_per_recipient FROM lm_billing_usage")))
    assert rolled == {date(2026, 1, 1): (2, 4, 10, 10 * 300 * 1024 + 5000),
                      date(2026, 2, 1): (1, 2, 4, 100)}
    assert [k[2] for k in kbs] == [300, 0, usage_kb_per_recipient(5000, 0)]
    with engine.connect() as conn:
        previous = {(_day(p), _day(prev)): n for p, prev, n in conn.execute(sa.text(
            "SELECT period, previous, lists FROM lm_billing_usage_previous"))}
    # List 1's February row follows its January one; January is both lists' first month.
    assert previous == {(date(2026, 1, 1), NO_PREVIOUS): 2,
                        (date(2026, 2, 1), date(2026, 1, 1)): 1}
    with engine.connect() as conn:
        sites = {(site, _day(p)): tuple(rest) for site, p, *rest in conn.execute(sa.text(
            "SELECT site_name, period, lists, messages, recipients, bytes "
            "FROM lm_billing_usage_site_rollup"))}
    assert sites == {("", date(2026, 1, 1)): (2, 4, 10, 10 * 300 * 1024 + 5000),
                     ("", date(2026, 2, 1)): (1, 2, 4, 100)}
    downgrade(bare_app, "0006")
    tables = sa.inspect(engine).get_table_names()
    assert "lm_billing_usage_rollup" not in tables
    assert "lm_billing_usage_previous" not in tables
    assert "lm_billing_usage_site_rollup" not in tables


def test_per_server_report_equals_the_per_list_sums(any_db_app: Flask) -> None:
    app = any_db_app
    ids = seed(app)["servers"]
    with app.app_context():
        s = get_state(app).session
        # A second Standard plan size, and rows around it: some count more units by size.
        s.execute(sa.update(Usage).where(Usage.list_id % 3 == 0).values(
            bytes=Usage.recipients * 1024 * 150, kb_per_recipient=150))
        s.add(HostingPlan(name="Tiny", max_message_size_kb=1))  # unused: its size reads more
        s.commit()
        rebuild_rollups(s)
        s.commit()
        for month in (THIS, THIS - timedelta(days=1)):
            first = month.replace(day=1)
            for server_id in (None, ids[1]):
                q = report.UsageQuery("server", first, THIS, server_id)
                by_server = {r.server_id: r for r in report.usage_rows(s, q)}
                by_list: dict[int, list[Any]] = {}
                for r in report.usage_rows(s, report.UsageQuery("list", first, THIS,
                                                               server_id)):
                    cell = by_list.setdefault(r.server_id or 0, [0, 0, 0, Decimal(0)])
                    cell[0] += r.messages
                    cell[1] += r.recipients
                    cell[2] += r.bytes
                    cell[3] += r.units
                assert {k: (v.messages, v.recipients, v.bytes, v.units)
                        for k, v in by_server.items()} == {
                    k: (v[0], v[1], v[2], v[3]) for k, v in by_list.items()}
                assert report.usage_count(s, q) == len(by_list)
        s.commit()
        assert s.scalar(sa.select(sa.func.count()).select_from(Server)) == 2
