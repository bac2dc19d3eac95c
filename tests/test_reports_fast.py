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
from lm_billing_plugin.state import get_state


def _figures(row: report.UsageRow) -> tuple[Any, ...]:
    return (row.key, row.server, row.site, row.list, row.owner, row.group, row.messages,
            row.recipients, row.bytes, row.units)


def _slow(session: Any, q: report.UsageQuery) -> list[tuple[Any, ...]]:
    """The per-row statement (the definition the fast paths must meet)."""
    rows = session.execute(report._grouped(session, q, with_total=False)).all()
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


@pytest.mark.parametrize("by", ["list", "customer", "group"])
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
                        if by == "list" and first == last and sort in (
                                "messages", "recipients", "bytes"):
                            # Ties are broken by list id here: the same rows, in an order
                            # the sort column agrees with.
                            assert sorted(got, key=repr) == sorted(want, key=repr), where
                            column = {"messages": 6, "recipients": 7, "bytes": 8}[sort]
                            values = [row[column] for row in got]
                            assert values == sorted(values, reverse=descending), where
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
