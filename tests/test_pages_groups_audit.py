"""The Billing Groups page (every group with its customer, today's plan and what it holds;
sorted, paged, filtered, one statement for the rows) and the Audit log page (who did what to
which subject, when; filters with field errors for bad input, paging, newest first, times in
the viewer's zone, the CSV of what the filter shows), and both in the menu."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import UTC, date, datetime

import pytest
from _pages import count_statements, plain, text_of
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin import audit
from lm_billing_plugin.models import (
    Assignment,
    BillingGroup,
    Customer,
    GroupPlan,
    HostingPlan,
    MailingList,
    Server,
    Site,
)
from lm_billing_plugin.state import get_state


def _fleet(app: Flask, groups: int = 3, tag: str = "") -> dict[str, int]:
    """Customers with groups: the first holds two lists, a site and a whole server on the
    plan "Gold"; the others hold nothing, on "Silver" or no plan."""
    with app.app_context():
        s = get_state(app).session
        server = Server(name=f"Lists{tag}", host="127.0.0.1")
        gold, silver = HostingPlan(name=f"Gold{tag}"), HostingPlan(name=f"Silver{tag}")
        s.add_all([server, gold, silver])
        s.flush()
        site = Site(server_id=server.id, name="s1")
        lists = [MailingList(server_id=server.id, name=n, site_name="s1") for n in ("a", "b")]
        s.add_all([site, *lists])
        ids: dict[str, int] = {"server": server.id}
        for i in range(groups):
            customer = Customer(company=f"Customer {i:02d}{tag}")
            s.add(customer)
            s.flush()
            group = BillingGroup(customer_id=customer.id, name=f"Group {i:02d}",
                                 plan_id=(gold.id if i == 0 else silver.id if i % 2 else None))
            s.add(group)
            s.flush()
            ids[f"group{i}"], ids[f"customer{i}"] = group.id, customer.id
        s.flush()
        g0 = ids["group0"]
        s.add_all([
            *(Assignment(group_id=g0, object_type="list", server_id=server.id, list_id=x.id,
                         start_date=date(2020, 1, 1)) for x in lists),
            Assignment(group_id=g0, object_type="site", server_id=server.id, site_id=site.id,
                       start_date=date(2020, 1, 1)),
            Assignment(group_id=g0, object_type="server", server_id=server.id,
                       start_date=date(2020, 1, 1)),
            # Ended: not held today.
            Assignment(group_id=ids["group1"], object_type="server", server_id=server.id,
                       start_date=date(2020, 1, 1), end_date=date(2021, 1, 1)),
        ])
        # Group 1's history says Gold until 2021, then Silver: today is Silver.
        s.add_all([GroupPlan(group_id=ids["group1"], plan_id=gold.id,
                             start_date=date(2020, 1, 1), end_date=date(2020, 12, 31)),
                   GroupPlan(group_id=ids["group1"], plan_id=silver.id,
                             start_date=date(2021, 1, 1))])
        s.commit()
        return ids


def _rows(text: str) -> list[list[str]]:
    body = text[text.index("<tbody>"):text.index("</tbody>")]
    out = []
    for row in re.findall(r"(?s)<tr>(.*?)</tr>", body):
        cells = re.findall(r"(?s)<t[dh][^>]*>(.*?)</t[dh]>", row)
        out.append([re.sub(r"<[^>]+>", "", c).strip() for c in cells])
    return out


def test_groups_page_shows_customer_plan_and_counts(any_db_app: Flask) -> None:
    app = any_db_app
    ids = _fleet(app)
    client = app.test_client()
    text = text_of(client.get("/billing/groups"))
    assert _rows(text) == [
        ["Customer 00", "Group 00", "Gold", "2", "1", "1"],
        ["Customer 01", "Group 01", "Silver", "0", "0", "0"],
        ["Customer 02", "Group 02", "no plan today", "0", "0", "0"],
    ]
    # Each row links to its customer and to the group on the customer's page.
    assert f'href="/billing/customers/{ids["customer0"]}"' in text
    assert f'href="/billing/customers/{ids["customer0"]}#lmb-group-{ids["group0"]}"' in text
    by_lists = _rows(text_of(client.get("/billing/groups?sort=lists&dir=desc")))
    assert by_lists[0][1] == "Group 00"
    by_group = _rows(text_of(client.get("/billing/groups?sort=group&dir=desc")))
    assert [r[1] for r in by_group] == ["Group 02", "Group 01", "Group 00"]
    assert [r[1] for r in _rows(text_of(client.get("/billing/groups?plan=silv")))] == [
        "Group 01"]
    assert [r[1] for r in _rows(text_of(client.get("/billing/groups?customer=MER%2001")))] == [
        "Group 01"]
    assert "No billing group matches this filter." in plain(
        client.get("/billing/groups?customer=nobody"))


def test_groups_page_pages_and_keeps_its_statement_count(make_app: Callable[..., Flask]) -> None:
    app = make_app(LM_BILLING_PAGE_SIZE=2)
    _fleet(app, groups=5)
    client = app.test_client()
    first = text_of(client.get("/billing/groups?customer=customer"))
    assert "Page 1 of 3 (5 in all)" in first and "customer=customer" in first
    last = _rows(text_of(client.get("/billing/groups?page=99")))  # past the end: last page
    assert [r[1] for r in last] == ["Group 04"]
    # Junk sort keys, directions and pages fall back to defaults.
    assert client.get("/billing/groups?sort=x&dir=y&page=z").status_code == 200
    with count_statements(app) as few:
        client.get("/billing/groups")
    _fleet(app, groups=40, tag=" more")
    with count_statements(app) as many:
        client.get("/billing/groups")
    assert len(many) == len(few)


def _entries(app: Flask) -> dict[str, int]:
    ids = _fleet(app, groups=2)
    with app.app_context():
        s = get_state(app).session
        for at, actor, action, kind, object_id, server_id in [
            (datetime(2026, 3, 1, 10, 0, tzinfo=UTC), "alice", "validate", "server", ids["server"],
             ids["server"]),
            (datetime(2026, 3, 2, 23, 30, tzinfo=UTC), "bob", "assign", "group", ids["group0"],
             ids["server"]),
            (datetime(2026, 3, 3, 8, 0, tzinfo=UTC), "alice", "customer_update", "customer",
             ids["customer1"], None),
            (datetime(2026, 3, 4, 9, 0, tzinfo=UTC), "=cmd()", "plan_create", "plan",
             999_999, None),
        ]:
            audit.record(s, actor=actor, action=action, object_type=kind, object_id=object_id,
                         server_id=server_id, at=at, detail={"note": "x"})
        s.commit()
    return ids


def test_audit_log_lists_newest_first_with_subjects(any_db_app: Flask) -> None:
    app = any_db_app
    ids = _entries(app)
    client = app.test_client()
    text = text_of(client.get("/billing/audit"))
    rows = _rows(text)
    assert [r[1] for r in rows] == ["=cmd()", "alice", "bob", "alice"]
    assert rows[1][2:] == ["changed the customer", "Customer Customer 01", ""]
    assert rows[2][2:] == ["assigned", "Billing Group Group 00", "Lists"]
    assert rows[3][2] == "validated" and rows[0][3] == "Hosting Plan #999999"
    assert f'href="/billing/customers/{ids["customer1"]}"' in text
    assert '<time datetime="2026-03-02T23:30:00Z">2026-03-02 23:30 UTC</time>' in text
    subject = _rows(text_of(client.get("/billing/audit?subject=group+00")))
    assert [r[2] for r in subject] == ["assigned"]
    server = _rows(text_of(client.get("/billing/audit?subject=lists&kind=server")))
    assert [r[2] for r in server] == ["validated"]
    assert [r[1] for r in _rows(text_of(client.get("/billing/audit?actor=ALI")))] == [
        "alice", "alice"]
    assert [r[2] for r in _rows(text_of(client.get("/billing/audit?action=customer_update")))] == [
        "changed the customer"]
    dated = _rows(text_of(client.get("/billing/audit?start=2026-03-02&end=2026-03-03")))
    assert [r[2] for r in dated] == ["changed the customer", "assigned"]
    assert "No entry matches this filter." in plain(client.get("/billing/audit?actor=zed"))


def test_audit_dates_are_days_of_the_viewers_zone(make_app: Callable[..., Flask]) -> None:
    app = make_app(LM_BILLING_TIMEZONE="Europe/Berlin")
    _entries(app)
    client = app.test_client()
    # 2026-03-02 23:30 UTC is 2026-03-03 00:30 in Berlin: it belongs to the 3rd there.
    third = _rows(text_of(client.get("/billing/audit?start=2026-03-03&end=2026-03-03")))
    assert [r[2] for r in third] == ["changed the customer", "assigned"]
    assert "2026-03-03 00:30 CET" in text_of(client.get("/billing/audit"))


@pytest.mark.parametrize(("query", "field", "message"), [
    ("start=2026-13-01", "start", "Not a valid date value."),
    ("end=yesterday", "end", "Not a valid date value."),
    ("start=2026-03-05&end=2026-03-01", "end", "The end date is before the start date."),
    ("kind=secrets", "kind", "Not a valid choice."),
    ("action=drop_tables", "action", "Not a valid choice."),
    ("actor=" + "x" * 201, "actor", "Field cannot be longer than 200 characters."),
])
def test_bad_filter_input_is_a_field_error(app: Flask, client: FlaskClient, query: str,
                                           field: str, message: str) -> None:
    for url in (f"/billing/audit?{query}", f"/billing/audit.csv?{query}"):
        response = client.get(url)
        assert response.status_code == 200 and response.mimetype == "text/html"
        text = plain(response)
        assert re.search(rf'id="{field}-error">\s*<li>{re.escape(message)}', text), text
        assert 'id="lmb-audit"' not in text


def test_audit_csv_is_what_the_filter_shows(app: Flask, client: FlaskClient) -> None:
    _entries(app)
    response = client.get("/billing/audit.csv?actor=a")
    assert response.mimetype == "text/csv" and response.is_streamed
    assert "billing-audit.csv" in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0][:4] == ["When (UTC)", "Who", "Action", "Action code"]
    assert [(r[1], r[3]) for r in rows[1:]] == [("alice", "customer_update"),
                                                ("alice", "validate")]
    assert rows[1][0] == "2026-03-03T08:00:00Z" and rows[1][5] == "Customer 01"
    everything = list(csv.reader(io.StringIO(
        client.get("/billing/audit.csv").get_data(as_text=True))))
    assert everything[1][1] == "'=cmd()"  # a formula is kept as text
    page = text_of(client.get("/billing/audit?actor=a"))
    assert 'href="/billing/audit.csv?actor=a"' in page and "Download these 2 entries" in page


def test_menu_has_the_new_pages_and_assign_for_editors_only(
    make_app: Callable[..., Flask],
) -> None:
    editor = make_app().test_client()
    menu = text_of(editor.get("/billing/overview"))
    for label, url in (("Billing Groups", "/billing/groups"), ("Audit log", "/billing/audit"),
                       ("Assign Lists to Customers", "/billing/assign")):
        assert f'href="{url}"' in menu and label in menu
    viewer = make_app(permission_check=lambda user, action: action == "view").test_client()
    seen = text_of(viewer.get("/billing/overview"))
    assert 'href="/billing/groups"' in seen and 'href="/billing/audit"' in seen
    assert 'href="/billing/assign"' not in seen
    assert viewer.get("/billing/audit").status_code == 200
    assert viewer.get("/billing/groups").status_code == 200
