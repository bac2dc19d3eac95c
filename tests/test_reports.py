"""Billing: Reports on every database: Usage (each dimension, units, sorting, paging, CSV),
Revenue (month, customer, plan, server, outstanding) and Plan limits; set-based (a statement
count that does not grow with the rows)."""

from __future__ import annotations

import csv
import html
import io
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from _pages import count_statements
from flask import Flask

from lm_billing_plugin.engine.rollup import rebuild_list_counts, rebuild_rollups
from lm_billing_plugin.models import (
    Assignment,
    BillingGroup,
    Customer,
    HostingPlan,
    Invoice,
    InvoiceLine,
    InvoiceUsage,
    MailingList,
    Server,
    Site,
    Usage,
    invoice_active_key,
)
from lm_billing_plugin.reports.periods import add_months
from lm_billing_plugin.state import get_state

THIS = datetime.now(UTC).date().replace(day=1)
LAST = add_months(THIS, -1)


def seed(app: Flask, lists: int = 4, *, servers: int = 2) -> dict[str, Any]:
    """``servers`` servers with ``lists`` lists each (site s1/s2 alternating), usage this month
    and last; customer Acme pays for server 1 (plan Small: 5 lists, 100 KB units), Globex
    for one list of server 2 (plan Big); the rest is unowned."""
    with app.app_context():
        s = get_state(app).session
        small = HostingPlan(name="Small", max_lists=lists + 1, max_message_size_kb=100,
                            max_members=0, max_sites=2)
        big = HostingPlan(name="Big", max_members_per_list=1000)
        acme = Customer(company="=Acme", email="a@acme.example")
        globex = Customer(company="Globex")
        s.add_all([small, big, acme, globex])
        s.flush()
        ga = BillingGroup(customer_id=acme.id, name="Acme lists", plan_id=small.id)
        gg = BillingGroup(customer_id=globex.id, name="Globex list", plan_id=big.id)
        s.add_all([ga, gg])
        ids = []
        for n in range(1, servers + 1):
            server = Server(name=f"srv{n}", host="127.0.0.1", port=2021, comments="")
            s.add(server)
            s.flush()
            ids.append(server.id)
            s.add_all([Site(server_id=server.id, name="s1"), Site(server_id=server.id, name="s2")])
            s.execute(sa.insert(MailingList), [
                {"server_id": server.id, "name": f"list{i:05d}", "site_name": f"s{i % 2 + 1}",
                 "members": 950 if i == 0 else 10} for i in range(lists)])
        s.flush()
        list_rows = s.execute(sa.select(MailingList.id, MailingList.server_id)).all()
        usage = []
        for lid, sid in list_rows:
            usage.append({"server_id": sid, "list_id": lid, "period": THIS, "messages": 2,
                          "recipients": 10, "bytes": 10 * 300 * 1024})
            usage.append({"server_id": sid, "list_id": lid, "period": LAST, "messages": 1,
                          "recipients": 5, "bytes": 5 * 1024})
        s.execute(sa.insert(Usage), usage)
        rebuild_rollups(s)  # written directly: the roll-ups a sync would have written
        rebuild_list_counts(s)  # and the list counts
        first_of_two = s.scalar(sa.select(sa.func.min(MailingList.id))
                                .where(MailingList.server_id == ids[1]))
        s.add_all([
            Assignment(group_id=ga.id, object_type="server", server_id=ids[0],
                       start_date=date(2020, 1, 1)),
            Assignment(group_id=gg.id, object_type="list", server_id=ids[1],
                       list_id=first_of_two, start_date=date(2020, 1, 1)),
        ])
        s.flush()
        invoices = []
        for k, (customer, status, total, start) in enumerate([
            (acme, "sent", "100.00", LAST), (acme, "issued", "120.50", THIS),
            (globex, "issued", "30.00", THIS), (globex, "void", "999.00", LAST),
        ]):
            inv = Invoice(number=f"2026-{k + 1:04d}", year=2026, seq=k + 1,
                          customer_id=customer.id, period_start=start,
                          period_end=add_months(start, 1), status=status,
                          active_key=None if status == "void" else
                          invoice_active_key(customer.id, start, add_months(start, 1)),
                          currency="EUR", total=Decimal(total), company=customer.company)
            s.add(inv)
            s.flush()
            invoices.append(inv)
            group = "Acme lists" if customer is acme else "Globex list"
            s.add(InvoiceLine(invoice_id=inv.id, position=1, group_name=group, kind="plan",
                              plan_name="Small" if customer is acme else "Big",
                              description="plan", quantity=Decimal(1),
                              unit_price=Decimal(total), amount=Decimal(total)))
            server_name = "srv1" if customer is acme else "srv2"
            s.add(InvoiceUsage(invoice_id=inv.id, group_name=group, server_name=server_name,
                               list_name="list00000", units=Decimal(3)))
        s.commit()
        return {"servers": ids, "acme": acme.id, "globex": globex.id}


def get(app: Flask, url: str) -> Any:
    response = app.test_client().get(url)
    assert response.status_code == 200, response.get_data(as_text=True)[:2000]
    return response


def text(response: Any) -> str:
    return html.unescape(response.get_data(as_text=True))


def table_rows(page: str, table_id: str) -> list[list[str]]:
    body = page[page.index(f'id="{table_id}"'):]
    body = body[body.index("<tbody>"):body.index("</tbody>")]
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>",
                                                                   row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def test_usage_per_server_site_list_customer_and_group(any_db_app: Flask) -> None:
    app = any_db_app
    seed(app)
    month = THIS.strftime("%Y-%m")
    servers = table_rows(text(get(app, f"/billing/reports/usage?by=server&start={month}")),
                         "lmb-usage")
    # 4 lists x 2 messages, 10 recipients, 3,072,000 bytes this month, on each server.
    assert servers == [["srv1", "8", "40", "12,288,000", "120.0"],
                       ["srv2", "8", "40", "12,288,000", "40.0"]]
    # srv1 is Acme's (Small: 100 KB units: 3,072,000 B / 102,400 = 30 units per list); on
    # srv2 one list is Globex's (Big: no size limit), the rest unowned: recipients.
    sites = table_rows(text(get(app, f"/billing/reports/usage?by=site&start={month}&sort=name"
                                     "&dir=asc")), "lmb-usage")
    assert [r[:3] for r in sites] == [["srv1", "s1", "4"], ["srv2", "s1", "4"],
                                      ["srv1", "s2", "4"], ["srv2", "s2", "4"]]
    customers = table_rows(text(get(app, f"/billing/reports/usage?by=customer&start={month}")),
                           "lmb-usage")
    assert customers == [["=Acme", "8", "40", "12,288,000", "120.0"],
                         ["(no owner) assign owners", "6", "30", "9,216,000", "30.0"],
                         ["Globex", "2", "10", "3,072,000", "10.0"]]
    groups = table_rows(text(get(app, f"/billing/reports/usage?by=group&start={month}"
                                      "&sort=units&dir=asc")), "lmb-usage")
    assert [(r[0], r[1], r[-1]) for r in groups] == [
        ("Globex", "Globex list", "10.0"), ("(no owner) assign owners", "", "30.0"),
        ("=Acme", "Acme lists", "120.0")]
    # Two months: both are summed; the trend chart has a bar per month with its tooltip.
    page = text(get(app, f"/billing/reports/usage?by=server&start={LAST:%Y-%m}&end={month}"))
    assert table_rows(page, "lmb-usage")[0][:3] == ["srv1", "12", "60"]
    assert f"<title>{THIS:%Y-%m}: 16 messages, 80 recipients</title>" in page
    assert f"<title>{LAST:%Y-%m}: 8 messages, 40 recipients</title>" in page


def test_usage_pages_sorts_and_csv(make_app: Any) -> None:
    app = make_app(LM_BILLING_PAGE_SIZE=10)
    ids = seed(app, lists=30)["servers"]
    month = THIS.strftime("%Y-%m")
    url = f"/billing/reports/usage?by=list&start={month}&server={ids[0]}&sort=name&dir=desc"
    first = text(get(app, url))
    rows = table_rows(first, "lmb-usage")
    assert [r[2] for r in rows] == [f"list{i:05d}" for i in range(29, 19, -1)]
    assert "Page 1 of 3 (30 in all)" in first
    third = table_rows(text(get(app, url + "&page=3")), "lmb-usage")
    assert third[-1][2] == "list00000"
    assert table_rows(text(get(app, url + "&page=99")), "lmb-usage") == third  # clamped
    # Nonsense falls back to defaults instead of failing.
    junk = text(get(app, "/billing/reports/usage?by=planet&start=20x6&sort=evil&dir=up"
                         "&server=99999999999&page=-4"))
    assert "Usage by server," in junk
    csv_page = get(app, f"/billing/reports/usage?by=customer&start={month}&format=csv")
    assert csv_page.mimetype == "text/csv" and "attachment" in csv_page.headers[
        "Content-Disposition"]
    data = list(csv.reader(io.StringIO(csv_page.get_data(as_text=True))))
    assert data[0] == ["customer", "messages", "recipients", "bytes", "message units"]
    # A name that starts like a formula stays text in a spreadsheet.
    assert data[1][0] == "'=Acme" and data[1][1] == "60"


def test_revenue_per_month_customer_plan_server_and_outstanding(any_db_app: Flask) -> None:
    app = any_db_app
    ids = seed(app)
    page = text(get(app, f"/billing/reports/revenue?start={LAST:%Y-%m}&end={THIS:%Y-%m}"))
    # Void invoices are not revenue.
    assert f"<title>{THIS:%Y-%m}: EUR 150.50</title>" in page
    assert f"<title>{LAST:%Y-%m}: EUR 100.00</title>" in page
    assert table_rows(page, "lmb-rev-customers") == [["=Acme", "EUR", "220.50", "2"],
                                                     ["Globex", "EUR", "30.00", "1"]]
    assert table_rows(page, "lmb-rev-plans") == [["Small", "EUR", "220.50", "2"],
                                                 ["Big", "EUR", "30.00", "1"]]
    assert table_rows(page, "lmb-rev-servers") == [["srv1", "EUR", "220.50", "2"],
                                                   ["srv2", "EUR", "30.00", "1"]]
    outstanding = table_rows(page, "lmb-outstanding")
    assert [(r[0], r[1], r[-1]) for r in outstanding] == [
        ("2026-0002", "=Acme", "EUR 120.50"), ("2026-0003", "Globex", "EUR 30.00")]
    assert "EUR 150.50 waiting to be sent." in page
    assert f'href="/billing/customers/{ids["acme"]}"' in page


def test_plan_limits_over_and_near(any_db_app: Flask) -> None:
    app = any_db_app
    seed(app, lists=4)  # Acme: 4 lists of 5 allowed (80 %: not listed), 2 sites of 2 (100 %)
    page = text(get(app, "/billing/reports/limits"))
    rows = table_rows(page, "lmb-limits")
    # Globex's one list has 950 members of 1,000 per list: near. Acme: Max Sites reached.
    assert [(r[0], r[3], r[4], r[5], r[6], r[7]) for r in rows] == [
        ("=Acme", "Max Sites", "2", "2", "100 %", "near"),
        ("Globex", "Max Members Per List", "950", "1,000", "95 %", "near"),
    ]
    with app.app_context():
        s = get_state(app).session
        s.execute(sa.update(HostingPlan).where(HostingPlan.name == "Small").values(max_lists=3))
        s.commit()
    rows = table_rows(text(get(app, "/billing/reports/limits")), "lmb-limits")
    assert rows[0][:7] == ["=Acme", "Acme lists", "Small", "Max Lists", "4", "3", "133 %"]
    assert rows[0][7].startswith("over")


@pytest.mark.parametrize("url", [
    "/billing/reports/usage?by=list&start={m}",
    "/billing/reports/usage?by=group&start={m}&format=csv",
    "/billing/reports/revenue",
    "/billing/reports/limits",
    "/billing/overview",
])
def test_statement_count_does_not_grow_with_the_rows(make_app: Any, url: str,
                                                     tmp_path: Any) -> None:
    counts = []
    for n, lists in enumerate((10, 1000)):
        app = make_app(f"sqlite:///{tmp_path / f'{n}.sqlite'}")
        seed(app, lists=lists)
        client = app.test_client()
        target = url.format(m=THIS.strftime("%Y-%m"))
        client.get(target)  # warm: first-request set-up is not the report's
        with count_statements(app) as statements:
            response = client.get(target)
            assert response.status_code == 200
            response.get_data()
        counts.append(len(statements))
    assert counts[0] == counts[1], counts
    assert counts[0] <= 12  # a fixed handful: one per figure
