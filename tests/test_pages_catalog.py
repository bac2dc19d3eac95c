"""Customers, billing groups, hosting plans and assignment pages: every form with its field
errors, audit, deactivation, escaping, and bulk assignment through the validate-and-sync gate
against a simulated hosting server."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _login_host import USER_HEADER, login_host_app
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin.engine import batches
from lm_billing_plugin.models import (
    Assignment,
    AuditEntry,
    BillingGroup,
    Customer,
    HostingPlan,
    MailingList,
    Server,
    Site,
)
from lm_billing_plugin.state import get_state
from lm_billing_plugin.tclport.records import ListRecord, SiteRecord
from lm_billing_plugin.testing.simulator import Dataset, HostSim

PLAN_NUMBERS = [
    *("max_members", "max_members_per_list", "max_lists", "max_lists_per_site", "max_sites"),
    *("monthly_price", "overage_cpm", "included_messages", "max_message_size_kb"),
    *("monthly_price_per_server", "cost_per_gb", "included_gb"),
]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = login_host_app(f"sqlite:///{tmp_path / 'billing.sqlite'}", LM_BILLING_PAGE_SIZE=5)
    yield app
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_" + USER_HEADER.upper().replace("-", "_")] = "operator"
    return client


def token(client: FlaskClient) -> str:
    page = client.get("/billing/customers/new")
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.get_data(True))
    assert match
    return match.group(1)


def post(client: FlaskClient, url: str, data: dict[str, Any]) -> Any:
    """POST with a CSRF token; to an edit page, with the version it shows (as a browser)."""
    form = {**data, "csrf_token": token(client)}
    if url.endswith("/edit"):
        page = client.get(url).get_data(True)
        match = re.search(r'name="loaded_version" type="hidden" value="([^"]+)"', page)
        assert match, f"no loaded_version on {url}"
        form.setdefault("loaded_version", match.group(1))
    return client.post(url, data=form)


def text(response: Any) -> str:
    return html.unescape(response.get_data(as_text=True))


def field_error(response: Any, field_id: str) -> str:
    """The error list rendered right after the field (the macro's <ul id=FIELD-error>)."""
    body = response.get_data(as_text=True)
    match = re.search(rf'<ul class="lmb-errors" id="{field_id}-error">(.*?)</ul>', body, re.S)
    assert match, f"no error shown next to {field_id}"
    return html.unescape(re.sub(r"<[^>]+>", " ", match.group(1))).strip()


def rows(app: Flask, model: Any, *where: Any) -> list[Any]:
    with app.app_context():
        session = get_state(app).session
        found = list(session.scalars(sa.select(model).where(*where)))
        session.expunge_all()
        return found


def plan_form(name: str = "Gold", **values: str) -> dict[str, str]:
    return {
        "name": name,
        "billing_method": "standard",
        **dict.fromkeys(PLAN_NUMBERS, "0"),
        **values,
    }


# --- Customers -----------------------------------------------------------------------------


def test_customer_form_errors_are_next_to_their_fields(client: FlaskClient, app: Flask) -> None:
    response = post(
        client,
        "/billing/customers/new",
        {"company": "   ", "email": "not an address", "contact_name": "x" * 201},
    )
    assert response.status_code == 200
    assert field_error(response, "company") == "Enter the company name."
    assert "email address like billing@example.com" in field_error(response, "email")
    assert "200" in field_error(response, "contact_name")
    assert 'aria-invalid="true"' in response.get_data(as_text=True)
    assert rows(app, Customer) == []


def test_customer_create_edit_deactivate_with_audit(client: FlaskClient, app: Flask) -> None:
    response = post(
        client,
        "/billing/customers/new",
        {
            "company": "Acme <Lists> & Co",
            "contact_name": "Ann Smith",
            "email": "billing@acme.example",
            "is_active": "y",
            "payment_method": "Invoice",
            "notes": "Pays quarterly",
        },
    )
    assert response.status_code == 302
    [customer] = rows(app, Customer)
    assert customer.company == "Acme <Lists> & Co" and customer.is_active
    assert response.headers["Location"].endswith(f"/billing/customers/{customer.id}")

    detail = client.get(response.headers["Location"])
    assert "Acme &lt;Lists&gt; &amp; Co" in detail.get_data(as_text=True)  # escaped
    assert "Customer Acme <Lists> & Co created" in text(detail)

    # Deactivate (untick Is Active): kept, hidden from the active list, shown as inactive.
    edit = post(
        client,
        f"/billing/customers/{customer.id}/edit",
        {"company": "Acme <Lists> & Co", "email": "billing@acme.example"},
    )
    assert edit.status_code == 302
    [customer] = rows(app, Customer)
    assert customer.is_active is False
    assert "deactivated; their billing history is kept" in text(
        client.get(edit.headers["Location"])
    )
    assert "Acme" not in text(client.get("/billing/customers"))
    assert "Acme <Lists> & Co" in text(client.get("/billing/customers?show=inactive"))

    audit = rows(app, AuditEntry, AuditEntry.object_type == "customer")
    assert [a.action for a in sorted(audit, key=lambda a: a.id)] == [
        "customer_create",
        "customer_deactivate",
    ]
    assert {a.actor for a in audit} == {"operator"}
    assert audit[-1].detail["is_active"] == [True, False]
    assert audit[-1].object_id == customer.id


def test_customers_search_and_pages(client: FlaskClient, app: Flask) -> None:
    with app.app_context():
        session = get_state(app).session
        session.add_all(Customer(company=f"Company {i:02d}") for i in range(12))
        session.add(Customer(company="100%_Match Ltd"))
        session.commit()
    first = text(client.get("/billing/customers"))
    assert "Page 1 of 3 (13 in all)" in first
    assert "Company 00" in first and "Company 05" not in first
    found = text(client.get("/billing/customers?q=%25_match"))  # LIKE wildcards are literal
    assert "100%_Match Ltd" in found and "Company 01" not in found
    assert "Company 11" in text(client.get("/billing/customers?page=3&sort=company&dir=desc")) or (
        "Company 00" in text(client.get("/billing/customers?page=3&sort=company&dir=desc"))
    )


def test_unknown_customer_is_404_with_guidance(client: FlaskClient) -> None:
    response = client.get("/billing/customers/999")
    assert response.status_code == 404
    assert "Go back to Customers" in response.get_data(as_text=True)
    assert client.get("/billing/customers/999/edit").status_code == 404


# --- Hosting plans -------------------------------------------------------------------------


def test_plan_field_errors(client: FlaskClient, app: Flask) -> None:
    response = post(
        client,
        "/billing/plans/new",
        plan_form(
            "",
            max_lists="-1",
            max_sites="lots",
            monthly_price="19.999",
            overage_cpm="-0.5",
            included_gb="1e400",
        ),
    )
    assert response.status_code == 200
    assert field_error(response, "name") == "Enter the plan's name."
    assert "from 0" in field_error(response, "max_lists")
    assert field_error(response, "max_sites")
    assert field_error(response, "monthly_price") == "Use at most 2 decimal places."
    assert field_error(response, "overage_cpm") == "Enter 0 or more."
    assert field_error(response, "included_gb")
    assert rows(app, HostingPlan) == []


def test_plan_create_decimal_exact_duplicate_name_and_edit(client: FlaskClient, app: Flask) -> None:
    page = text(client.get("/billing/plans/new"))
    for label in (
        "Max Members Per List",
        "Max Lists Per Site",
        "Bill by List",
        "Overage CPM",
        "Max Message Size in KB",
        "Monthly Price Per Server",
        "Cost Per GB",
        "Included GB",
        "0 = unlimited",
    ):
        assert label in page
    created = post(
        client,
        "/billing/plans/new",
        plan_form(
            "Gold",
            max_lists="2",
            monthly_price="19.95",
            overage_cpm="0.1234",
            included_gb="1.5",
            bill_by_list="y",
        ),
    )
    assert created.status_code == 302
    [plan] = rows(app, HostingPlan)
    assert plan.monthly_price == Decimal("19.95") and plan.overage_cpm == Decimal("0.1234")
    assert plan.max_lists == 2 and plan.bill_by_list is True

    duplicate = post(client, "/billing/plans/new", plan_form("gold"))
    assert duplicate.status_code == 200
    assert "A hosting plan with this name exists" in field_error(duplicate, "name")
    assert len(rows(app, HostingPlan)) == 1

    edited = post(
        client,
        f"/billing/plans/{plan.id}/edit",
        plan_form(
            "Gold",
            billing_method="bandwidth",
            monthly_price_per_server="250.00",
            cost_per_gb="0.05",
            max_lists="2",
            overage_cpm="0.1234",
            included_gb="1.5",
            monthly_price="19.95",
            bill_by_list="y",
        ),
    )
    assert edited.status_code == 302
    [plan] = rows(app, HostingPlan)
    assert plan.billing_method == "bandwidth" and plan.monthly_price_per_server == Decimal("250")
    listing = text(client.get("/billing/plans"))
    assert "Bandwidth" in listing and "unlimited" in listing
    audit = rows(app, AuditEntry, AuditEntry.object_type == "plan")
    assert sorted(a.action for a in audit) == ["plan_create", "plan_update"]
    update = next(a for a in audit if a.action == "plan_update")
    assert update.detail["billing_method"] == ["standard", "bandwidth"]
    assert update.detail["cost_per_gb"] == ["0.0000", "0.05"]


# --- Billing groups ------------------------------------------------------------------------


def _customer_and_plan(app: Flask, **plan: Any) -> tuple[int, int]:
    with app.app_context():
        session = get_state(app).session
        customer = Customer(company="Acme Ltd")
        hosting = HostingPlan(name="Small", **plan)
        session.add_all([customer, hosting])
        session.commit()
        return customer.id, hosting.id


def test_group_dates_and_plan(client: FlaskClient, app: Flask) -> None:
    customer_id, plan_id = _customer_and_plan(app)
    url = f"/billing/customers/{customer_id}/groups/new"
    bad = post(
        client,
        url,
        {"name": "", "plan_id": str(plan_id), "plan_start": "2026-03-01", "plan_end": "2026-02-01"},
    )
    assert bad.status_code == 200
    assert field_error(bad, "name") == "Enter the billing group's name."
    assert field_error(bad, "plan_end") == "The end date must be after the start date."
    no_plan = post(client, url, {"name": "G", "plan_id": "0", "plan_start": "2026-03-01"})
    assert "Choose a hosting plan" in field_error(no_plan, "plan_id")
    not_a_date = post(client, url, {"name": "G", "plan_id": str(plan_id), "plan_start": "1.3."})
    assert field_error(not_a_date, "plan_start")
    assert rows(app, BillingGroup) == []

    ok = post(
        client,
        url,
        {
            "name": "Newsletters",
            "plan_id": str(plan_id),
            "plan_start": "2026-03-01",
            "plan_end": "2027-03-01",
        },
    )
    assert ok.status_code == 302
    [group] = rows(app, BillingGroup)
    assert (group.plan_start, group.plan_end) == (date(2026, 3, 1), date(2027, 3, 1))

    edit = client.get(f"/billing/groups/{group.id}/edit")
    assert re.search(
        rf'<option selected value="{plan_id}"|<option value="{plan_id}" selected',
        edit.get_data(as_text=True),
    )
    moved = post(
        client,
        f"/billing/groups/{group.id}/edit",
        {"name": "Newsletters", "plan_id": "0", "plan_start": "", "plan_end": ""},
    )
    assert moved.status_code == 302
    [group] = rows(app, BillingGroup)
    assert group.plan_id is None
    actions = sorted(a.action for a in rows(app, AuditEntry, AuditEntry.object_type == "group"))
    assert actions == ["group_create", "group_update"]


# --- Assignment through the gate -----------------------------------------------------------


def _list(name: str, site: str, members: int) -> ListRecord:
    return ListRecord(name, site, "", None, members, f"owner@{site}.example")


def _sim_dataset() -> Dataset:
    return Dataset(
        sites=[SiteRecord("site1", "Site One"), SiteRecord("site2", "Site Two")],
        lists=[
            _list("news", "site1", 40),
            _list("offers", "site1", 25),
            _list('"><img src=x onerror=alert(1)>', "site2", 5),
            *(_list(f"list-{i:02d}", "site2", i) for i in range(8)),
        ],
    )


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(_sim_dataset()) as server:
        yield server


def test_assign_is_refused_before_validate_and_sync_then_accepted(
    client: FlaskClient, app: Flask, sim: HostSim
) -> None:
    customer_id, plan_id = _customer_and_plan(app, max_lists=1)
    with app.app_context():
        session = get_state(app).session
        server = Server(name="Lists", host=sim.host, port=sim.port)
        group = BillingGroup(customer_id=customer_id, name="Acme lists", plan_id=plan_id)
        session.add_all([server, group])
        session.commit()
        server_id, group_id = server.id, group.id
        # What billing knows before the first validation: the list exists, the server
        # was never validated (as after an import or a Fix Selected Objects).
        stale = MailingList(server_id=server_id, name="news", site_name="site1")
        session.add(stale)
        session.commit()
        stale_id = stale.id

    refused = post(
        client,
        "/billing/assign",
        {"server_id": str(server_id), "group_id": str(group_id), "list_id": str(stale_id)},
    )
    assert refused.status_code == 409
    message = re.search(r'id="lmb-gate-error" role="alert">(.*?)</p>', text(refused), re.S)
    assert message, "the gate's message is not shown next to the form"
    assert "Validate and sync server 'Lists' first" in message.group(1)
    # The form keeps what the operator chose, so they can retry after syncing.
    assert re.search(
        rf'value="{stale_id}" id="lmb-list-{stale_id}" checked', refused.get_data(True)
    )
    assert rows(app, Assignment) == []

    with app.app_context():
        result = batches.sync_servers([server_id], actor="test")
        assert result.servers[0].ok, result.servers[0]
    lists = {lst.name: lst.id for lst in rows(app, MailingList)}
    sites = {s.name: s.id for s in rows(app, Site)}

    # The assign page: the synced lists, paged (5 a page) and searchable; names escaped.
    page = client.get(f"/billing/assign?server_id={server_id}&group_id={group_id}")
    assert page.status_code == 200
    assert "Page 1 of 3 (11 in all)" in text(page)
    assert "<img src=x" not in page.get_data(as_text=True)
    searched = text(client.get(f"/billing/assign?server_id={server_id}&q=OFF"))
    assert "offers" in searched and "list-01" not in searched

    accepted = post(
        client,
        "/billing/assign",
        {
            "server_id": str(server_id),
            "group_id": str(group_id),
            "list_id": [str(lists["news"]), str(lists["offers"])],
            "site_id": str(sites["site2"]),
        },
    )
    assert accepted.status_code == 302, text(accepted)[-2000:]
    assert accepted.headers["Location"].endswith(f"/billing/customers/{customer_id}")
    made = rows(app, Assignment)
    assert sorted((a.object_type, a.list_id or a.site_id) for a in made) == sorted(
        [("list", lists["news"]), ("list", lists["offers"]), ("site", sites["site2"])]
    )
    assert {a.group_id for a in made} == {group_id}
    assert [a.action for a in rows(app, AuditEntry, AuditEntry.action == "assign")] == ["assign"]

    # Customer detail: what the group pays for and the totals against the plan's limits.
    detail = client.get(accepted.headers["Location"])
    body = text(detail)
    assert "Assigned 3 objects on server Lists to billing group Acme lists." in body
    # news + offers + the 9 lists of site2 = 11 lists, over Max Lists = 1.
    over = r'Lists</th><td>11</td><td>1</td>\s*<td class="lmb-st-bad"><strong>Over the plan'
    assert re.search(over, body)
    assert f"Members</th><td>{40 + 25 + 5 + sum(range(8))}</td><td>unlimited" in body

    # Unassign the site: ended, not deleted; hidden from "now", kept in history.
    site_assignment = next(a for a in made if a.object_type == "site")
    customer_page_token = token(client)
    ended = client.post(
        "/billing/unassign",
        data={
            "csrf_token": customer_page_token,
            "customer_id": str(customer_id),
            "assignment_id": str(site_assignment.id),
        },
    )
    assert ended.status_code == 302
    [after] = rows(app, Assignment, Assignment.id == site_assignment.id)
    assert after.end_date is not None
    assert len(rows(app, Assignment)) == 3
    now_page = text(client.get(f"/billing/customers/{customer_id}"))
    assert "Ended 1 assignment of" in now_page and "Lists</th><td>2</td>" in now_page
    history = text(client.get(f"/billing/customers/{customer_id}?ended=1"))
    assert "site2" in history


def test_assign_errors_are_field_level(client: FlaskClient, app: Flask) -> None:
    customer_id, _ = _customer_and_plan(app)
    with app.app_context():
        session = get_state(app).session
        one = Server(name="One", host="127.0.0.1", port=1)
        two = Server(name="Two", host="127.0.0.1", port=1)
        session.add_all([one, two])
        session.flush()
        group = BillingGroup(customer_id=customer_id, name="G")
        foreign = MailingList(server_id=two.id, name="theirs")
        session.add_all([group, foreign])
        session.commit()
        one_id, group_id, foreign_id = one.id, group.id, foreign.id

    nothing = post(client, "/billing/assign", {"server_id": str(one_id), "group_id": str(group_id)})
    assert "Tick the lists or sites" in field_error(nothing, "whole_server")
    no_group = post(
        client, "/billing/assign", {"server_id": str(one_id), "group_id": "0", "whole_server": "y"}
    )
    assert field_error(no_group, "group_id") == "Choose a billing group."
    forged = post(
        client,
        "/billing/assign",
        {"server_id": str(one_id), "group_id": str(group_id), "list_id": str(foreign_id)},
    )
    assert "not on server One" in field_error(forged, "whole_server")
    assert rows(app, Assignment) == []


def test_unassign_refused_by_the_gate_shows_the_message(client: FlaskClient, app: Flask) -> None:
    customer_id, _ = _customer_and_plan(app)
    with app.app_context():
        session = get_state(app).session
        server = Server(name="Old <one>", host="127.0.0.1", port=1)
        session.add(server)
        session.flush()
        group = BillingGroup(customer_id=customer_id, name="G")
        session.add(group)
        session.flush()
        # An assignment made before this server lost its validation (e.g. restored backup).
        a = Assignment(
            group_id=group.id,
            object_type="server",
            server_id=server.id,
            start_date=date.today() - timedelta(days=3),
        )
        session.add(a)
        session.commit()
        assignment_id = a.id
    refused = post(
        client,
        "/billing/unassign",
        {"customer_id": str(customer_id), "assignment_id": str(assignment_id)},
    )
    assert refused.status_code == 409
    body = refused.get_data(as_text=True)
    assert "Old &lt;one&gt;" in body and "<one>" not in body
    assert "Validate and sync server 'Old <one>' first" in text(refused)
    [kept] = rows(app, Assignment)
    assert kept.end_date is None


def test_totals_and_search_on_every_backend(db_url: str) -> None:
    """The set-based SQL of the pages (coverage through server / site / list, search with
    lower() and escaped wildcards) gives the same answers on SQLite, PostgreSQL and MariaDB."""
    app = login_host_app(db_url, LM_BILLING_PAGE_SIZE=50)
    try:
        client = app.test_client()
        client.environ_base["HTTP_X_TEST_USER"] = "operator"
        with app.app_context():
            session = get_state(app).session
            one = Server(name="One", host="127.0.0.1", port=1)
            two = Server(name="Two", host="127.0.0.1", port=1)
            customer = Customer(company="Acme Ltd")
            plan = HostingPlan(
                name="Small", max_lists=3, max_members_per_list=50, max_lists_per_site=2
            )
            session.add_all([one, two, customer, plan])
            session.flush()
            site_a = Site(server_id=one.id, name="Site A")
            site_a_lower = Site(server_id=one.id, name="site a")  # a different site
            session.add_all([site_a, site_a_lower])
            lists = [
                MailingList(server_id=one.id, name="Offers", site_name="Site A", members=10),
                MailingList(server_id=one.id, name="news", site_name="Site A", members=60),
                MailingList(server_id=one.id, name="50%_off", site_name="site a", members=1),
                MailingList(
                    server_id=one.id, name="gone", site_name="Site A", members=99, status="removed"
                ),
                MailingList(server_id=two.id, name="t1", members=7),
                MailingList(server_id=two.id, name="t2", site_name="x", members=8),
            ]
            session.add_all(lists)
            session.flush()
            group = BillingGroup(customer_id=customer.id, name="G", plan_id=plan.id)
            session.add(group)
            session.flush()
            today = date.today()
            session.add_all(
                [
                    # Site A (2 active lists), plus "news" again directly: counted once.
                    Assignment(
                        group_id=group.id,
                        object_type="site",
                        server_id=one.id,
                        site_id=site_a.id,
                        start_date=today,
                    ),
                    Assignment(
                        group_id=group.id,
                        object_type="list",
                        server_id=one.id,
                        list_id=lists[1].id,
                        start_date=today,
                    ),
                    # The whole of server Two.
                    Assignment(
                        group_id=group.id, object_type="server", server_id=two.id, start_date=today
                    ),
                    # Ended today (end date exclusive): not counted.
                    Assignment(
                        group_id=group.id,
                        object_type="list",
                        server_id=one.id,
                        list_id=lists[2].id,
                        start_date=today - timedelta(days=9),
                        end_date=today,
                    ),
                ]
            )
            session.commit()
            customer_id, one_id = customer.id, one.id
        body = text(client.get(f"/billing/customers/{customer_id}"))
        assert "Lists</th><td>4</td><td>3</td>" in body  # Offers, news, t1, t2
        assert "Members</th><td>85</td>" in body
        assert "Members in the largest list</th><td>60</td><td>50</td>" in body
        assert "Lists in the fullest site</th><td>2</td><td>2</td>" in body
        assert "Sites</th><td>2</td>" in body  # Site A and x
        assert body.count("Over the plan's limit") == 2

        found = text(client.get(f"/billing/assign?server_id={one_id}&q=OFF"))
        assert "Offers" in found and "50%_off" in found and ">news<" not in found
        literal = text(client.get(f"/billing/assign?server_id={one_id}&q=%25_"))
        assert "50%_off" in literal and "Offers" not in literal
        by_site = text(client.get(f"/billing/assign?server_id={one_id}&q=site%20a"))
        assert "Offers" in by_site and "50%_off" in by_site
    finally:
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


def _count_get(app: Flask, client: FlaskClient, url: str) -> int:
    with app.app_context():
        engine = get_state(app).db.engine
    statements: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        assert client.get(url).status_code == 200
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
    return len(statements)


def test_statement_count_does_not_grow_with_groups_or_lists(
    client: FlaskClient, app: Flask
) -> None:
    customer_id, plan_id = _customer_and_plan(app)

    def grow(groups: int, lists_each: int) -> int:
        with app.app_context():
            session = get_state(app).session
            server = Server(name=f"S{groups}-{lists_each}", host="127.0.0.1", port=1)
            session.add(server)
            session.flush()
            for g in range(groups):
                group = BillingGroup(
                    customer_id=customer_id, name=f"G{groups}-{g}", plan_id=plan_id
                )
                session.add(group)
                session.flush()
                for i in range(lists_each):
                    lst = MailingList(server_id=server.id, name=f"g{g}-l{i}", members=i)
                    session.add(lst)
                    session.flush()
                    session.add(
                        Assignment(
                            group_id=group.id,
                            object_type="list",
                            server_id=server.id,
                            list_id=lst.id,
                            start_date=date.today(),
                        )
                    )
            session.commit()
            return server.id

    small_server = grow(1, 2)
    small = _count_get(app, client, f"/billing/customers/{customer_id}")
    small_assign = _count_get(app, client, f"/billing/assign?server_id={small_server}")
    big_server = grow(6, 40)
    assert _count_get(app, client, f"/billing/customers/{customer_id}") == small
    assert _count_get(app, client, f"/billing/assign?server_id={big_server}") == small_assign


def test_plan_saved_by_someone_else_in_between_is_a_field_error(
    make_app: Callable[..., Flask]
) -> None:
    """The name check passes, then another session saves the same name before our INSERT:
    the form says so next to the name, never a 500. (With the plugin's SQLite tuning a POST
    holds the write lock from its first statement, so no other writer can come in between:
    the race is staged with the tuning off, as on a database without it.)"""
    app = make_app(LM_BILLING_SQLITE_TUNING=False)
    client = app.test_client()
    with app.app_context():
        engine = get_state(app).db.engine
    other = sa.create_engine(engine.url)
    raced: list[bool] = []

    def race(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO lm_billing_plan") and not raced:
            raced.append(True)
            with other.begin() as tx:
                tx.execute(sa.insert(HostingPlan).values(plan_form("Silver") | {
                    "bill_by_list": False, "description": "",
                    "monthly_price": 0, "overage_cpm": 0, "monthly_price_per_server": 0,
                    "cost_per_gb": 0, "included_gb": 0}))

    sa.event.listen(engine, "before_cursor_execute", race)
    try:
        response = post(client, "/billing/plans/new", plan_form("Silver"))
    finally:
        sa.event.remove(engine, "before_cursor_execute", race)
        other.dispose()
    assert raced and response.status_code == 200
    assert "saved a moment ago" in field_error(response, "name")
    assert len(rows(app, HostingPlan, HostingPlan.name == "Silver")) == 1
