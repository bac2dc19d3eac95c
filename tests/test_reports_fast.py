"""The fast paths of the Usage report equal the per-row statement they stand in for, on every
database: per list for one month (a page through the (period, column, list_id) index, the
count from the roll-ups) and per customer / group (the roll-ups corrected by the lists a site
or list assignment gives another owner, and by the rows whose size adds units)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from test_reports import LAST, THIS, seed

from lm_billing_plugin.models import Assignment, BillingGroup, MailingList, Site
from lm_billing_plugin.reports import usage as report
from lm_billing_plugin.reports.periods import add_months
from lm_billing_plugin.state import get_state


def _figures(row: report.UsageRow) -> tuple[Any, ...]:
    return (row.key, row.server, row.site, row.list, row.owner, row.group, row.messages,
            row.recipients, row.bytes, row.units)


PER_ROW = report._per_row  # kept: tests replace the module's to prove it unused


def _slow(session: Any, q: report.UsageQuery) -> list[tuple[Any, ...]]:
    """The per-row statement (the definition the fast paths must meet)."""
    rows = session.execute(PER_ROW(q, with_total=False)).all()
    return [_figures(report._row(r, q.by)) for r in rows]


def _paged(session: Any, q: report.UsageQuery, size: int) -> tuple[list[tuple[Any, ...]], int]:
    out: list[tuple[Any, ...]] = []
    total = -1
    for offset in range(0, 200, size):
        rows, total = report.usage_page(session, q, offset=offset, limit=size)
        out += [_figures(r) for r in rows]
        if len(rows) < size:
            break
    return out, total


def _more_owners(app: Flask, ids: dict[str, Any]) -> None:
    """Below server level too: Acme's site s1 of server 2, and one list of Acme's server 1
    given to Globex (a list's own assignment wins over its server's)."""
    with app.app_context():
        s = get_state(app).session
        acme_group = s.scalar(sa.select(BillingGroup.id).where(
            BillingGroup.customer_id == ids["acme"]))
        globex_group = s.scalar(sa.select(BillingGroup.id).where(
            BillingGroup.customer_id == ids["globex"]))
        site = s.scalar(sa.select(Site.id).where(Site.server_id == ids["servers"][1],
                                                  Site.name == "s1"))
        moved = s.scalar(sa.select(sa.func.max(MailingList.id)).where(
            MailingList.server_id == ids["servers"][0]))
        s.add_all([
            Assignment(group_id=acme_group, object_type="site", server_id=ids["servers"][1],
                       site_id=site, start_date=date(2020, 1, 1)),
            Assignment(group_id=globex_group, object_type="list",
                       server_id=ids["servers"][0], list_id=moved,
                       start_date=date(2020, 1, 1)),
            # Ended before the report's months: it changes nothing.
            Assignment(group_id=globex_group, object_type="server",
                       server_id=ids["servers"][2], start_date=date(2020, 1, 1),
                       end_date=date(2021, 1, 1)),
        ])
        s.commit()


@pytest.mark.parametrize("by", ["site", "list", "customer", "group"])
def test_fast_paths_equal_the_per_row_statement(any_db_app: Flask, by: str) -> None:
    app = any_db_app
    ids = seed(app, lists=7, servers=3)
    _more_owners(app, ids)
    with app.app_context():
        session = get_state(app).session
        for first, last in ((THIS, THIS), (LAST, LAST), (LAST, THIS)):
            for server_id in (None, ids["servers"][1]):
                for sort in report.SORTS:
                    # Both directions for two sorts: the rest only change the column.
                    for descending in ((True, False) if sort in ("name", "messages")
                                       else (True,)):
                        q = report.UsageQuery(by, first, last, server_id, sort, descending)
                        want = _slow(session, q)
                        got, total = _paged(session, q, size=4)
                        where = (by, first, last, server_id, sort, descending)
                        assert total == len(want) == report.usage_count(session, q), where
                        if by == "list" and first == last and sort == "units":
                            # Units, then list id (see test_units_per_list_...).
                            assert got == _by_units(want, descending), where
                        else:
                            assert got == want, where
                        if by != "list":
                            streamed = [_figures(r) for r in report.usage_rows(session, q)]
                            assert streamed == want, where
        session.commit()


def test_an_owner_whose_lists_all_moved_away_is_not_a_row(any_db_app: Flask) -> None:
    """Every list of Acme's server given to Globex: Acme has no usage left, so no row (the
    roll-up part and the moved rows net to zero there)."""
    app = any_db_app
    ids = seed(app, lists=3, servers=2)
    with app.app_context():
        s = get_state(app).session
        globex_group = s.scalar(sa.select(BillingGroup.id).where(
            BillingGroup.customer_id == ids["globex"]))
        for lid in s.scalars(sa.select(MailingList.id).where(
                MailingList.server_id == ids["servers"][0])):
            s.add(Assignment(group_id=globex_group, object_type="list",
                             server_id=ids["servers"][0], list_id=lid,
                             start_date=date(2020, 1, 1)))
        s.commit()
        q = report.UsageQuery("customer", THIS, THIS)
        rows, total = report.usage_page(s, q, offset=0, limit=50)
        assert [r.owner for r in rows] == ["Globex", report.UNOWNED]
        assert [_figures(r) for r in rows] == _slow(s, q) and total == 2
        s.commit()


@pytest.mark.parametrize("sort", ["messages", "name"])
def test_a_page_past_the_end_shows_the_last_one(make_app: Any, sort: str) -> None:
    """The per-list pages of one month know their count without rows (from the roll-ups): a
    page past the end is clamped to the last page, not shown empty."""
    from test_reports import get, table_rows, text

    app = make_app(LM_BILLING_PAGE_SIZE=10)
    seed(app, lists=12)  # 24 lists with usage: 3 pages
    url = f"/billing/reports/usage?by=list&start={THIS:%Y-%m}&sort={sort}"
    last = table_rows(text(get(app, url + "&page=3")), "lmb-usage")
    assert len(last) == 4
    page = text(get(app, url + "&page=99"))
    assert table_rows(page, "lmb-usage") == last and "Page 3 of 3 (24 in all)" in page


def _by_units(rows: list[tuple[Any, ...]], descending: bool) -> list[tuple[Any, ...]]:
    """The per-row statement's rows in the fast path's order: units, then list id."""
    return sorted(rows, key=lambda r: (r[9], r[0][2]), reverse=descending)


def _check_units(session: Any, server_ids: list[Any], where: str) -> None:
    for server_id in (None, *server_ids):
        for descending in (True, False):
            q = report.UsageQuery("list", THIS, THIS, server_id, "units", descending)
            want = _by_units(_slow(session, q), descending)
            for size in (1, 3, 4, 50):
                got, total = _paged(session, q, size=size)
                assert total == len(want), (where, server_id, descending, size)
                assert got == want, (where, server_id, descending, size)


def _mixed_sizes(app: Flask) -> None:
    """This month's rows made different: some far over 100 KB per recipient (heavy), some
    under, some with no recipients but bytes, ties in recipients and in units."""
    from lm_billing_plugin.models import Usage, usage_kb_per_recipient

    with app.app_context():
        s = get_state(app).session
        rows = s.execute(sa.select(Usage.id, Usage.list_id).where(Usage.period == THIS)
                         .order_by(Usage.id)).all()
        for n, (uid, _lid) in enumerate(rows):
            recipients = (0, 7, 7, 12, 30, 3)[n % 6]
            kb = (150, 500, 20, 1, 200, 99)[n % 6]
            sent = max(recipients, 1) * kb * 1024 + (n % 5) * 999
            s.execute(sa.update(Usage).where(Usage.id == uid).values(
                recipients=recipients, bytes=sent,
                kb_per_recipient=usage_kb_per_recipient(sent, recipients)))
        s.commit()


def test_units_per_list_equal_the_per_row_statement(any_db_app: Flask) -> None:
    """Sorted by message units (one month): every page equals the per-row statement, in
    (units, list id) order, on every database — and stays equal after each edit that moves
    units (a plan's size and method, an assignment given, ended, a size plan removed), since
    the fast path stores nothing that those edits would have to recompute."""
    from lm_billing_plugin.models import HostingPlan

    app = any_db_app
    ids = seed(app, lists=7, servers=3)
    _more_owners(app, ids)
    _mixed_sizes(app)
    servers = [ids["servers"][0], ids["servers"][1]]
    with app.app_context():
        s = get_state(app).session
        _check_units(s, servers, "seeded")
        small = s.scalar(sa.select(HostingPlan).where(HostingPlan.name == "Small"))
        big = s.scalar(sa.select(HostingPlan).where(HostingPlan.name == "Big"))
        assert small is not None and big is not None
        # A smaller size makes more rows heavy (the smallest size is read per statement).
        small.max_message_size_kb = 10
        s.commit()
        _check_units(s, servers, "Small at 10 KB")
        # Globex's plan gains a size: its list's units change.
        big.max_message_size_kb = 50
        s.commit()
        _check_units(s, servers, "Big at 50 KB")
        # A bandwidth plan counts recipients, whatever its size.
        small.billing_method = "bandwidth"
        s.commit()
        _check_units(s, servers, "Small by bandwidth")
        small.billing_method = "standard"
        # Server 3 gets an owner (Acme's Small); server 1's ends yesterday.
        acme_group = s.scalar(sa.select(BillingGroup.id).where(
            BillingGroup.customer_id == ids["acme"]))
        s.add(Assignment(group_id=acme_group, object_type="server",
                         server_id=ids["servers"][2], start_date=date(2021, 1, 1)))
        ended = s.scalar(sa.select(Assignment).where(
            Assignment.object_type == "server", Assignment.server_id == ids["servers"][0]))
        assert ended is not None
        ended.end_date = date.today()
        s.commit()
        _check_units(s, [*servers, ids["servers"][2]], "assignments changed")
        # No Standard plan with a size left: every row's units are its recipients.
        small.max_message_size_kb = 0
        big.max_message_size_kb = 0
        s.commit()
        assert report.smallest_size(s) is None
        _check_units(s, servers, "no size")
        s.commit()


def test_units_page_reads_the_kb_and_recipients_indexes(make_app: Any) -> None:
    """EXPLAIN on SQLite: the light rows walk (period, recipients, list_id), the heavy ones
    the kb index; the month is never scanned or sorted as a whole."""
    app = make_app()
    seed(app, lists=7, servers=3)
    with app.app_context():
        s = get_state(app).session
        q = report.UsageQuery("list", THIS, THIS, None, "units", True)
        stmt = report._units_candidates(s, q, offset=0, limit=50)
        sql = str(stmt.compile(s.get_bind(), compile_kwargs={"literal_binds": True}))
        plan = " | ".join(str(r[-1]) for r in s.execute(sa.text("EXPLAIN QUERY PLAN " + sql)))
        assert "ix_lm_billing_usage_period_recipients" in plan, plan
        assert "ix_lm_billing_usage_kb_period" in plan, plan
        assert "SCAN lm_billing_usage" not in plan.replace(
            "SCAN lm_billing_usage USING", ""), plan
        s.commit()


def test_a_range_by_name_counts_each_list_once(any_db_app: Flask) -> None:
    """A range of months sorted by name (the name index walked, EXISTS over the range): lists
    with rows in one month only, in several, with a gap, in none; each is one row, counted
    once (models.UsagePrevious), and the pages equal the per-row statement (both directions,
    with and without a server, pages past the middle read from the other end)."""
    from lm_billing_plugin.engine.rollup import rebuild_rollups
    from lm_billing_plugin.models import Usage

    app = any_db_app
    ids = seed(app, lists=7, servers=3)
    _more_owners(app, ids)
    before = add_months(LAST, -1)
    with app.app_context():
        s = get_state(app).session
        lists = list(s.scalars(sa.select(MailingList.id).order_by(MailingList.id)))
        s.execute(sa.delete(Usage).where(Usage.list_id.in_(lists[0::3]), Usage.period == THIS))
        s.execute(sa.delete(Usage).where(Usage.list_id.in_(lists[1::5]), Usage.period == LAST))
        s.execute(sa.delete(Usage).where(Usage.list_id.in_(lists[2::7])))
        # A month before: some lists with a row then and this month but not last (a gap).
        server_of = {lid: sid for lid, sid in s.execute(
            sa.select(MailingList.id, MailingList.server_id))}
        s.add_all([Usage(server_id=server_of[lid], list_id=lid, period=before, messages=lid,
                         recipients=2 * lid, bytes=100 * lid) for lid in lists[1::2]])
        s.flush()
        rebuild_rollups(s)  # written directly: what a sync would have kept
        s.commit()
        months = (before, LAST, THIS)
        for i, first in enumerate(months):
            for last in months[i + 1:]:
                with_rows = set(s.scalars(sa.select(Usage.list_id).where(
                    Usage.period >= first, Usage.period <= last)))
                assert 0 < len(with_rows) < len(lists)
                for server_id in (None, ids["servers"][1]):
                    for descending in (False, True):
                        q = report.UsageQuery("list", first, last, server_id, "name",
                                              descending)
                        want = _slow(s, q)
                        for size in (1, 4, 50):
                            got, total = _paged(s, q, size=size)
                            assert got == want and total == len(want), (
                                first, last, server_id, descending, size)
                        assert report.usage_count(s, q) == len(want)
                        # Deep and past-the-end pages (read from the other end).
                        for offset, limit in ((len(want) - 3, 5), (len(want) - 1, 1),
                                              (len(want) // 2, 3), (len(want), 5)):
                            rows, total = report.usage_page(s, q, offset=offset, limit=limit)
                            assert [_figures(r) for r in rows] == want[offset:offset + limit]
                            assert total == len(want)
                    # By a figure the rows come from the grouped statement; the count is the
                    # same lists'.
                    q = report.UsageQuery("list", first, last, server_id, "messages")
                    assert report.usage_count(s, q) == len(_slow(s, q))
                q = report.UsageQuery("list", first, last, None, "name")
                assert len(_slow(s, q)) == len(with_rows)
        s.commit()


@pytest.mark.parametrize("sort", ["messages", "recipients", "bytes", "units"])
def test_a_range_by_a_figure_merges_the_months_indexes(
        any_db_app: Flask, sort: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A range of months sorted by a figure: the months' (period, figure, list_id) indexes
    merged (threshold algorithm) give the same pages as the grouped statement — figures that
    vary from month to month, ties, lists in one month only, both directions, with and
    without a server, deep pages — without it; and where the bound does not close within
    the budget, the grouped statement answers with the same rows."""
    from lm_billing_plugin.engine.rollup import rebuild_rollups
    from lm_billing_plugin.models import Usage, usage_kb_per_recipient

    app = any_db_app
    ids = seed(app, lists=9, servers=3)
    before = add_months(LAST, -1)
    with app.app_context():
        s = get_state(app).session
        lists = list(s.scalars(sa.select(MailingList.id).order_by(MailingList.id)))
        server_of = {lid: sid for lid, sid in s.execute(
            sa.select(MailingList.id, MailingList.server_id))}
        # Figures that disagree between months (a list big last month is small this one),
        # ties (every fifth list sends the same), and lists only in one month.
        for lid in lists:
            for n, month in enumerate((before, LAST, THIS)):
                s.execute(sa.delete(Usage).where(Usage.list_id == lid, Usage.period == month))
                if (lid + n) % 4 == 0:
                    continue
                value = 7 if lid % 5 == 0 else ((lid * 37 + n * 101) % 53) * (n + 1)
                recipients = value * 3 % 41
                # Some rows whose size counts more units than recipients (150 KB each under
                # the 100 KB plan of server 1's owner; no recipients: all bytes count).
                size = recipients * 150 * 1024 + 1 if lid % 6 == 0 else value * 1000
                s.add(Usage(server_id=server_of[lid], list_id=lid, period=month,
                            messages=value, recipients=recipients, bytes=size,
                            kb_per_recipient=usage_kb_per_recipient(size, recipients)))
        s.flush()
        rebuild_rollups(s)
        s.commit()
        ranges = ((before, THIS), (LAST, THIS), (before, LAST))
        wants = {}
        for first, last in ranges:
            for server_id in (None, ids["servers"][1]):
                for descending in (True, False):
                    q = report.UsageQuery("list", first, last, server_id, sort, descending)
                    wants[q] = _slow(s, q)

        def refuse(*args: Any, **kw: Any) -> Any:
            raise AssertionError("the grouped statement was used")

        monkeypatch.setattr(report, "_per_row", refuse)
        # One index row a month in the first round: pages close the bound after several.
        monkeypatch.setattr(report, "RANGE_FIRST_CHUNK", 1)
        for q, want in wants.items():
            assert len(want) > 5, q
            for size in (1, 4, 50):
                got, total = _paged(s, q, size=size)
                assert got == want and total == len(want), (q, size)
            for offset, limit in ((len(want) - 3, 5), (len(want) // 2, 3), (len(want), 5)):
                rows, total = report.usage_page(s, q, offset=offset, limit=limit)
                assert [_figures(r) for r in rows] == want[offset:offset + limit], (q, offset)
        # Many ties (three values a month, different by month): the bound is decided by list
        # ids against the cursors'.
        tied = {THIS: Usage.list_id % 3, LAST: (Usage.list_id + 1) % 3}
        value = sa.case(*[(Usage.period == p, v) for p, v in tied.items()],
                        else_=(Usage.list_id * 2) % 3)
        s.execute(sa.update(Usage).values(messages=value, recipients=value, bytes=value * 10,
                                          kb_per_recipient=0))
        s.commit()
        for q in wants:
            want = _slow(s, q)
            for size in (1, 4):
                got, total = _paged(s, q, size=size)
                assert got == want and total == len(want), (q, size)
        # Where a list's figures are alike from month to month, the first page closes after
        # a few rows of each month's index, not all of them.
        s.execute(sa.update(Usage).values(messages=Usage.list_id * 10,
                                          recipients=Usage.list_id * 3, bytes=Usage.list_id,
                                          kb_per_recipient=0))
        s.commit()
        q = report.UsageQuery("list", before, THIS, None, sort)
        want = _slow(s, q)[:1]
        monkeypatch.setattr(report, "RANGE_ROWS_BUDGET", 20)
        rows, _total = report.usage_page(s, q, offset=0, limit=1)
        assert [_figures(r) for r in rows] == want
        s.execute(sa.update(Usage).values(messages=Usage.list_id * 37 % 11))
        # A budget too small to close the bound: the grouped statement, the same rows.
        monkeypatch.setattr(report, "_per_row", PER_ROW)
        monkeypatch.setattr(report, "RANGE_ROWS_BUDGET", 1)
        wants = {q: _slow(s, q) for q in wants}
        for q, want in wants.items():
            got, total = _paged(s, q, size=4)
            assert got == want and total == len(want), q
        s.commit()


@pytest.mark.parametrize("sort", ["name", "messages", "units"])
def test_a_deep_page_is_read_from_the_other_end(make_app: Any, sort: str) -> None:
    """Past the middle, a one-month per-list page is the reversed order's page with the
    smaller offset (the last page costs what the first does), turned round: the same rows as
    walking from the front, in both directions."""
    app = make_app()
    seed(app, lists=12)  # 24 rows this month
    with app.app_context():
        s = get_state(app).session
        seen: list[tuple[Any, ...]] = []

        def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
            seen.append(tuple(parameters or ()))

        sa.event.listen(s.get_bind(), "before_cursor_execute", grab)
        try:
            for descending in (True, False):
                q = report.UsageQuery("list", THIS, THIS, None, sort, descending)
                whole, total = report.usage_page(s, q, offset=0, limit=24)
                assert total == 24 and len(whole) == 24
                for offset, limit in ((20, 5), (19, 5), (15, 10), (12, 5), (23, 1), (11, 2)):
                    rows, _ = report.usage_page(s, q, offset=offset, limit=limit)
                    assert [_figures(r) for r in rows] == [
                        _figures(r) for r in whole[offset:offset + limit]], (offset, limit)
                # The last page (offset 20 of 24) asks for the reversed order's first 4 rows:
                # no statement carries the offset 20.
                seen.clear()
                report.usage_page(s, q, offset=20, limit=5)
                params = [p for st in seen for p in st]
                assert 20 not in params and 4 in params, params
                # A page before the middle is read from the front.
                seen.clear()
                report.usage_page(s, q, offset=5, limit=5)
                assert 5 in [p for st in seen for p in st]
        finally:
            sa.event.remove(s.get_bind(), "before_cursor_execute", grab)
        s.commit()


@pytest.mark.parametrize(("figure", "list_id", "cursors", "desc", "closed"), [
    # Descending: a list not met yet sums at most the cursors' figures (5 + 3 = 8).
    (9, 1, [(5, 100), (3, 40)], True, True),
    (7, 999, [(5, 100), (3, 40)], True, False),
    # ... and to tie 8 it is in both months after both cursors: an id below 40.
    (8, 40, [(5, 100), (3, 40)], True, True),
    (8, 39, [(5, 100), (3, 40)], True, False),
    # A month at 0 does not bind it (it may have no row there): below 100, not below 40.
    (5, 100, [(5, 100), (0, 40)], True, True),
    (5, 50, [(5, 100), (0, 40)], True, False),
    # All at 0: its one row may be in the month whose cursor id is largest.
    (0, 100, [(0, 100), (0, 40)], True, True),
    (0, 50, [(0, 100), (0, 40)], True, False),
    # Ascending: at least the smallest cursor's figure (3), tying it only there: above 40.
    (2, 999, [(5, 100), (3, 40)], False, True),
    (3, 40, [(5, 100), (3, 40)], False, True),
    (3, 41, [(5, 100), (3, 40)], False, False),
    (3, 41, [(3, 100), (3, 40)], False, False),
    (3, 40, [(3, 100), (3, 40)], False, True),
    (4, 1, [(5, 100), (3, 40)], False, False),
])
def test_the_bound_of_the_index_merge(figure: int, list_id: int,
                                      cursors: list[tuple[int, int]], desc: bool,
                                      closed: bool) -> None:
    """report._closed on the cases its docstring argues: the page's last list (figure, id)
    against what a list the cursors have not reached could be."""
    assert report._closed(figure, list_id, cursors, desc) is closed
