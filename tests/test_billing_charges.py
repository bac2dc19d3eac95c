"""Additional Charges and group charges (pages, service, CLI), "Is Free" assignments, and the
one duplicate-name rule for charges, customers, plans and groups on every backend: case and
space variants, the database guarantee, the insert that races past the check, the backfill."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from _pages import csrf, loaded_version, plain
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin import downgrade, upgrade
from lm_billing_plugin.billing import charges as service
from lm_billing_plugin.catalog import assignment
from lm_billing_plugin.models import (
    AdditionalCharge,
    Assignment,
    AuditEntry,
    BillingGroup,
    ChargeAssignment,
    Customer,
    HostingPlan,
    Invoice,
    MailingList,
    Server,
    invoice_active_key,
)
from lm_billing_plugin.state import get_state

DUPLICATES = ["Setup Fee", "setup fee", "  SETUP FEE  ", "Setup  Fee", "SetupFee"]


def post(client: FlaskClient, url: str, data: dict[str, Any]) -> Any:
    return client.post(url, data={**data, "csrf_token": csrf(client, "/billing/charges/new")})


def field_error(response: Any, field_id: str) -> str:
    import re

    body = response.get_data(as_text=True)
    match = re.search(rf'<ul class="lmb-errors" id="{field_id}-error">(.*?)</ul>', body, re.S)
    assert match, f"no error next to {field_id}: {plain(response)[:2000]}"
    import html

    return html.unescape(re.sub(r"<[^>]+>", " ", match.group(1))).strip()


def rows(app: Flask, model: Any, *where: Any) -> list[Any]:
    with app.app_context():
        session = get_state(app).session
        found = list(session.scalars(sa.select(model).where(*where)))
        session.expunge_all()
        return found


def charge_form(name: str = "Setup Fee", amount: str = "50.00", **extra: str) -> dict[str, str]:
    return {"name": name, "default_amount": amount, "description": "", **extra}


def _customer_group(app: Flask, company: str = "Acme Publishing",
                    group: str = "Newsletters") -> tuple[int, int]:
    with app.app_context():
        s = get_state(app).session
        customer = Customer(company=company, email="billing@acme.example")
        s.add(customer)
        s.flush()
        g = BillingGroup(customer_id=customer.id, name=group)
        s.add(g)
        s.commit()
        return customer.id, g.id


# --- Charges: pages -------------------------------------------------------------------------


def test_charge_create_list_edit_with_audit(client: FlaskClient, app: Flask) -> None:
    page = client.get("/billing/charges")
    assert "Billing: Additional Charges" in plain(page)
    assert "Create New Additional Charge" in plain(page)
    created = post(client, "/billing/charges/new",
                   charge_form("Prepaid", "-100", is_recurring="", description="prepaid"))
    assert created.status_code == 302
    [charge] = rows(app, AdditionalCharge)
    assert charge.default_amount == Decimal("-100.00") and not charge.is_recurring
    listing = plain(client.get("/billing/charges"))
    assert "Prepaid" in listing and "-100.00" in listing
    edited = post(client, f"/billing/charges/{charge.id}/edit",
                  charge_form("Monthly support", "25.5", is_recurring="y", is_proratable="y"))
    assert edited.status_code == 302
    [charge] = rows(app, AdditionalCharge)
    assert (charge.name, charge.default_amount, charge.is_recurring, charge.is_proratable) == (
        "Monthly support", Decimal("25.50"), True, True)
    actions = [(a.action, a.actor) for a in rows(app, AuditEntry)]
    assert actions == [("charge_create", "anonymous"), ("charge_update", "anonymous")]


@pytest.mark.parametrize(("data", "field", "words"), [
    (charge_form(name=""), "name", "Enter the charge's name"),
    (charge_form(amount="abc"), "default_amount", "Enter an amount like 19.95"),
    (charge_form(amount="1.234"), "default_amount", "at most 2 decimal places"),
    (charge_form(amount="99999999999"), "default_amount", "between"),
    (charge_form(is_proratable="y"), "is_proratable", "Only a recurring charge"),
])
def test_charge_field_errors_are_next_to_their_fields(
    client: FlaskClient, app: Flask, data: dict[str, str], field: str, words: str
) -> None:
    response = post(client, "/billing/charges/new", data)
    assert response.status_code == 200
    assert words in field_error(response, field)
    assert rows(app, AdditionalCharge) == []


def test_charge_delete_only_when_never_assigned(client: FlaskClient, app: Flask) -> None:
    post(client, "/billing/charges/new", charge_form("Setup Fee"))
    post(client, "/billing/charges/new", charge_form("Unused"))
    setup, unused = sorted(rows(app, AdditionalCharge), key=lambda c: c.name)
    _, group_id = _customer_group(app)
    added = post(client, f"/billing/groups/{group_id}/charges/new",
                 {"charge_id": str(setup.id), "amount": "", "start_date": "2026-03-01"})
    assert added.status_code == 302
    refused = post(client, f"/billing/charges/{setup.id}/delete", {})
    assert refused.status_code == 409
    assert "end it on those groups instead" in plain(refused)
    assert len(rows(app, AdditionalCharge)) == 2
    deleted = post(client, f"/billing/charges/{unused.id}/delete", {})
    assert deleted.status_code == 302
    assert [c.name for c in rows(app, AdditionalCharge)] == ["Setup Fee"]
    assert "charge_delete" in [a.action for a in rows(app, AuditEntry)]


# --- Group charges --------------------------------------------------------------------------


def test_group_charge_add_list_end_remove(client: FlaskClient, app: Flask) -> None:
    post(client, "/billing/charges/new", charge_form("Setup Fee", "50"))
    [charge] = rows(app, AdditionalCharge)
    customer_id, group_id = _customer_group(app)
    form = client.get(f"/billing/groups/{group_id}/charges/new")
    assert "Add Additional Charge" in plain(form)
    bad = post(client, f"/billing/groups/{group_id}/charges/new",
               {"charge_id": str(charge.id), "amount": "1.999", "start_date": "2026-03-01",
                "end_date": "2026-02-01"})
    assert "at most 2 decimal places" in field_error(bad, "amount")
    assert "must not be before the start date" in field_error(bad, "end_date")
    ok = post(client, f"/billing/groups/{group_id}/charges/new",
              {"charge_id": str(charge.id), "amount": "", "start_date": "2026-03-01",
               "description": "first month"})
    assert ok.status_code == 302
    custom = post(client, f"/billing/groups/{group_id}/charges/new",
                  {"charge_id": str(charge.id), "amount": "-20", "start_date": "2026-04-01"})
    assert custom.status_code == 302
    page = plain(client.get(f"/billing/customers/{customer_id}"))
    assert "Additional charges of Newsletters (2)" in page
    assert "50.00 <small>(default)</small>" in page and "-20.00" in page and "first month" in page
    first, second = sorted(rows(app, ChargeAssignment), key=lambda r: r.start_date)
    assert first.amount is None and second.amount == Decimal("-20.00")
    ended = post(client, f"/billing/group-charges/{first.id}/end", {"end": "2026-05-31"})
    assert ended.status_code == 302
    assert rows(app, ChargeAssignment, ChargeAssignment.id == first.id)[0].end_date == date(
        2026, 5, 31)
    removed = post(client, f"/billing/group-charges/{second.id}/remove", {})
    assert removed.status_code == 302
    assert [r.id for r in rows(app, ChargeAssignment)] == [first.id]
    # Once an invoice covers its period, a charge can only be ended.
    with app.app_context():
        s = get_state(app).session
        s.add(Invoice(number="2026-00001", year=2026, seq=1, customer_id=customer_id,
                      period_start=date(2026, 3, 1), period_end=date(2026, 3, 31),
                      active_key=invoice_active_key(customer_id, date(2026, 3, 1),
                                                    date(2026, 3, 31)),
                      currency="USD", total=Decimal("50"), company="Acme Publishing"))
        s.commit()
    refused = client.post(f"/billing/group-charges/{first.id}/remove",
                          data={"csrf_token": csrf(client, "/billing/charges/new")},
                          follow_redirects=True)
    assert "End it instead" in plain(refused)
    assert len(rows(app, ChargeAssignment)) == 1
    actions = [a.action for a in rows(app, AuditEntry)]
    assert {"group_charge_add", "group_charge_end", "group_charge_remove"} <= set(actions)


# --- "Is Free" -----------------------------------------------------------------------------


def test_is_free_assignment_is_stored_and_shown(client: FlaskClient, app: Flask) -> None:
    customer_id, group_id = _customer_group(app)
    with app.app_context():
        s = get_state(app).session
        server = Server(name="Lists", host="127.0.0.1", validated_at=datetime.now(UTC))
        s.add(server)
        s.flush()
        lst = MailingList(server_id=server.id, name="news")
        s.add(lst)
        s.commit()
        server_id, list_id = server.id, lst.id
    page = plain(client.get(f"/billing/assign?server_id={server_id}"))
    assert "Is Free" in page
    done = client.post("/billing/assign", data={
        "csrf_token": csrf(client, "/billing/charges/new"), "group_id": str(group_id),
        "server_id": str(server_id), "list_id": str(list_id), "is_free": "y"})
    assert done.status_code == 302, plain(done)[:1500]
    [a] = rows(app, Assignment)
    assert a.is_free
    detail = client.get(f"/billing/customers/{customer_id}").get_data(as_text=True)
    assert "<th scope=\"col\">Is Free</th>" in detail and "<td>Yes</td>" in detail
    # Assigning it again as paid ends the free one and starts a paid one (history kept).
    with app.app_context():
        assignment.assign(group_id, server_id=server_id, list_ids=[list_id], actor="t",
                          start=date(2030, 1, 1))
    flags = sorted((r.start_date, r.is_free, r.end_date) for r in rows(app, Assignment))
    assert [f[1] for f in flags] == [True, False] and flags[0][2] == date(2030, 1, 1)


# --- Duplicate names on every backend -----------------------------------------------------------


@pytest.fixture
def db_app(any_db_app: Flask) -> Flask:
    return any_db_app


def test_duplicate_names_refused_on_every_backend(db_app: Flask) -> None:
    client = db_app.test_client()
    token = csrf(client, "/billing/charges/new")

    def send(url: str, data: dict[str, str]) -> Any:
        version = {"loaded_version": loaded_version(client, url)} if url.endswith("/edit") else {}
        return client.post(url, data={**data, "csrf_token": token, **version})

    assert send("/billing/charges/new", charge_form(DUPLICATES[0])).status_code == 302
    for variant in DUPLICATES[1:]:
        refused = send("/billing/charges/new", charge_form(variant))
        assert "An additional charge with this name exists" in field_error(refused, "name")
    assert send("/billing/customers/new", {"company": "Acme Publishing"}).status_code == 302
    for variant in ("acme publishing", " ACME  Publishing "):
        refused = send("/billing/customers/new", {"company": variant})
        assert "A customer with this name exists" in field_error(refused, "company")
    plan = {"name": "Gold", "billing_method": "standard", **dict.fromkeys([
        "max_members", "max_members_per_list", "max_lists", "max_lists_per_site", "max_sites",
        "monthly_price", "overage_cpm", "included_messages", "max_message_size_kb",
        "monthly_price_per_server", "cost_per_gb", "included_gb"], "0")}
    assert send("/billing/plans/new", plan).status_code == 302
    refused = send("/billing/plans/new", {**plan, "name": " GOLD "})
    assert "A hosting plan with this name exists" in field_error(refused, "name")
    with db_app.app_context():
        acme = get_state(db_app).session.scalars(sa.select(Customer)).one().id
    assert send(f"/billing/customers/{acme}/groups/new",
                {"name": "Newsletters", "plan_id": "0"}).status_code == 302
    refused = send(f"/billing/customers/{acme}/groups/new",
                   {"name": "news letters", "plan_id": "0"})
    assert "A billing group of this customer with this name exists" in field_error(
        refused, "name")
    # Another customer may have a group of the same name.
    assert send("/billing/customers/new", {"company": "Beta"}).status_code == 302
    with db_app.app_context():
        beta = get_state(db_app).session.scalar(
            sa.select(Customer.id).where(Customer.company == "Beta"))
    assert send(f"/billing/customers/{beta}/groups/new",
                {"name": "Newsletters", "plan_id": "0"}).status_code == 302
    # Renaming into a taken name is refused as well; keeping one's own name is not.
    refused = send(f"/billing/customers/{beta}/edit", {"company": "acme PUBLISHING"})
    assert "A customer with this name exists" in field_error(refused, "company")
    assert send(f"/billing/customers/{acme}/edit",
                {"company": "Acme Publishing", "email": "a@b.example"}).status_code == 302
    # The database guarantees it too, whatever writes.
    with db_app.app_context():
        s = get_state(db_app).session
        for row in (AdditionalCharge(name="SETUP fee", default_amount=Decimal("1")),
                    Customer(company="ACME publishing"), HostingPlan(name="gold"),
                    BillingGroup(customer_id=acme, name="NEWSLETTERS")):
            s.add(row)
            with pytest.raises(sa.exc.DBAPIError):
                s.commit()
            s.rollback()
    assert len(rows(db_app, Customer)) == 2 and len(rows(db_app, AdditionalCharge)) == 1


def _race(app: Flask, table: str, insert: Callable[[Any], None]) -> list[bool]:
    """Before our INSERT into ``table`` runs, another connection commits the same name."""
    with app.app_context():
        engine = get_state(app).db.engine
    other = sa.create_engine(engine.url)
    raced: list[bool] = []

    def race(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith(f"INSERT INTO {table} ") and not raced:
            raced.append(True)
            with other.begin() as tx:
                insert(tx)

    sa.event.listen(engine, "before_cursor_execute", race)
    app.extensions["lmb_race"] = (engine, race, other)
    return raced


def _unrace(app: Flask) -> None:
    engine, race, other = app.extensions.pop("lmb_race")
    sa.event.remove(engine, "before_cursor_execute", race)
    other.dispose()


def test_duplicate_saved_meanwhile_is_a_field_error_on_every_backend(
    make_app: Callable[..., Flask], db_url: str
) -> None:
    # With the plugin's SQLite tuning a POST holds the write lock from its first statement,
    # so no other writer can come in between: the race is staged with the tuning off.
    db_app = make_app(db_url, LM_BILLING_SQLITE_TUNING=False)
    client = db_app.test_client()
    token = csrf(client, "/billing/charges/new")
    now = datetime.now(UTC)
    raced = _race(db_app, "lm_billing_charge", lambda tx: tx.execute(sa.insert(AdditionalCharge)
                  .values(name="Setup fee", description="", default_amount=1,
                          is_recurring=False, is_proratable=False, created_at=now)))
    try:
        response = client.post("/billing/charges/new",
                               data={**charge_form("setup FEE"), "csrf_token": token})
    finally:
        _unrace(db_app)
    assert raced and response.status_code == 200
    assert "saved a moment ago" in field_error(response, "name")
    raced = _race(db_app, "lm_billing_customer", lambda tx: tx.execute(
        sa.insert(Customer).values(company="Acme", contact_name="", email="", is_active=True,
                                   payment_method="", notes="", created_at=now)))
    try:
        response = client.post("/billing/customers/new",
                               data={"company": "ACME", "csrf_token": token})
    finally:
        _unrace(db_app)
    assert raced and response.status_code == 200
    assert "A customer with this name was saved a moment ago" in field_error(response, "company")
    assert [c.company for c in rows(db_app, Customer)] == ["Acme"]
    assert len(rows(db_app, AdditionalCharge)) == 1


def test_backfill_keeps_old_duplicates_and_refuses_new_ones(
    make_app: Callable[..., Flask], db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(db_url, create_tables=False)
    with app.app_context():
        engine = get_state(app).db.engine
    upgrade(app, "0002")
    stamp = datetime(2026, 1, 5, 9, 30)
    with engine.begin() as conn:
        for cid, company in ((1, "Acme Publishing"), (2, "acme  publishing"), (3, "Beta")):
            conn.execute(sa.text(
                "INSERT INTO lm_billing_customer (id, company, contact_name, email, is_active,"
                " payment_method, notes, created_at, additional_emails, customer_type)"
                " VALUES (:id, :c, '', '', :t, '', '', :at, '', '')"
            ), {"id": cid, "c": company, "t": True, "at": stamp})
        for gid, cid, name in ((1, 1, "News"), (2, 1, "NEWS"), (3, 3, "News")):
            conn.execute(sa.text(
                "INSERT INTO lm_billing_group (id, customer_id, name, created_at)"
                " VALUES (:id, :cid, :n, :at)"), {"id": gid, "cid": cid, "n": name, "at": stamp})
    with caplog.at_level(logging.WARNING, logger="lm_billing_plugin.migrate"):
        upgrade(app)
    with engine.connect() as conn:
        keys = conn.execute(sa.text(
            "SELECT id, company, company_key FROM lm_billing_customer ORDER BY id")).all()
        groups = conn.execute(sa.text(
            "SELECT id, name_key FROM lm_billing_group ORDER BY id")).all()
    assert [tuple(k) for k in keys] == [(1, "Acme Publishing", "acmepublishing"),
                                       (2, "acme  publishing", "acmepublishing #2"),
                                       (3, "Beta", "beta")]
    assert [tuple(g) for g in groups] == [(1, "news"), (2, "news #2"), (3, "news")]
    assert "lm_billing_customer 2" in caplog.text and "lm_billing_group 2" in caplog.text
    client = app.test_client()
    token = csrf(client, "/billing/charges/new")
    # The old duplicate stays editable under its name; a new one is refused.
    kept = client.post("/billing/customers/2/edit",
                       data={"company": "acme  publishing", "email": "x@y.example",
                             "csrf_token": token,
                             "loaded_version": loaded_version(client, "/billing/customers/2/edit")})
    assert kept.status_code == 302
    refused = client.post("/billing/customers/new",
                          data={"company": "ACME PUBLISHING", "csrf_token": token})
    assert "A customer with this name exists" in field_error(refused, "company")
    downgrade(app, "0002")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM lm_billing_customer")).scalar() == 3
    downgrade(app)


# --- CLI -------------------------------------------------------------------------------------


def test_cli_charges_add_and_groups_charge(app: Flask) -> None:
    runner = app.test_cli_runner()
    ok = runner.invoke(args=["lm-billing", "charges", "add", "--name", "Setup Fee",
                             "--amount", "50", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["default_amount"] == "50.00"
    dup = runner.invoke(args=["lm-billing", "charges", "add", "--name", " setup FEE",
                              "--amount", "1"])
    assert dup.exit_code == 2 and "--name: An additional charge with this name exists" in (
        dup.output)
    bad = runner.invoke(args=["lm-billing", "charges", "add", "--name", "X", "--amount", "1.234"])
    assert bad.exit_code == 2 and "--amount: Use at most 2 decimal places." in bad.output
    prorated = runner.invoke(args=["lm-billing", "charges", "add", "--name", "Y", "--amount",
                                   "5", "--proratable"])
    assert prorated.exit_code == 2 and "--proratable: Only a recurring charge" in prorated.output
    monthly = runner.invoke(args=["lm-billing", "charges", "add", "--name", "Support",
                                  "--amount", "-10", "--recurring", "--proratable"])
    assert monthly.exit_code == 0, monthly.output
    _customer_group(app)
    added = runner.invoke(args=["lm-billing", "groups", "charge", "--customer",
                                "acme publishing", "--group", "Newsletters", "--charge",
                                "setup fee", "--start", "2026-03-01", "--json"])
    assert added.exit_code == 0, added.output
    assert json.loads(added.output)["amount"] is None
    wrong = runner.invoke(args=["lm-billing", "groups", "charge", "--customer", "Nobody",
                                "--group", "G", "--charge", "Nope", "--start", "2026-13-01",
                                "--end", "x"])
    assert wrong.exit_code == 2
    for words in ("--customer: there is no customer 'Nobody'",
                  "--charge: there is no additional charge 'Nope'",
                  "--start: '2026-13-01' is not a date", "--end: 'x' is not a date"):
        assert words in wrong.output
    backwards = runner.invoke(args=["lm-billing", "groups", "charge", "--customer", "Acme "
                                    "Publishing", "--group", "newsletters", "--charge",
                                    "Support", "--amount", "2", "--start", "2026-03-01",
                                    "--end", "2026-01-01"])
    assert backwards.exit_code == 2 and "--end: The end date must not be before" in (
        backwards.output)
    assert len(rows(app, ChargeAssignment)) == 1
    actors = {a.actor for a in rows(app, AuditEntry)}
    assert all(a.startswith("cli:") for a in actors)


def test_service_refuses_unknown_group_and_charge(app: Flask) -> None:
    with app.app_context(), pytest.raises(service.ChargeInputError) as caught:
        service.add_group_charge(999, 999, start=None, actor="t")
    assert set(caught.value.errors) == {"group_id", "charge_id", "start_date"}
