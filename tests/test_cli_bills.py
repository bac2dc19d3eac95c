"""`flask lm-billing customers|plans|groups|assign|bills`: a whole month billed from the command
line against a simulated server, with the README's JSON shapes and exit statuses."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from lm_billing_plugin.testing.simulator import HostSim
from tests._billing import add_server, dataset, month_of_sending


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(dataset()) as server:
        month_of_sending(server)
        yield server


def call(runner: FlaskCliRunner, *args: str, code: int = 0) -> str:
    result = runner.invoke(args=["lm-billing", *args])
    assert result.exit_code == code, result.output
    return result.output


def test_a_month_billed_from_the_command_line(app: Flask, runner: FlaskCliRunner,
                                              sim: HostSim) -> None:
    with app.app_context():
        add_server(sim)
    made = json.loads(call(runner, "customers", "add", "--company", "Acme", "--email",
                           "bills@acme.example", "--contact", "Ann", "--json"))
    assert made["company"] == "Acme" and made["payment_method"] == "Invoice"
    call(runner, "customers", "add", "--company", "Gratis", "--email", "g@example.com",
         "--payment-method", "free")
    plan = json.loads(call(runner, "plans", "add", "--name", "Standard", "--method", "standard",
                           "--monthly-price", "30", "--included-messages", "1000",
                           "--overage-cpm", "2", "--json"))
    assert plan["monthly_price"] == "30.00"
    dup = call(runner, "plans", "add", "--name", "standard", code=2)
    assert "choose another name" in dup
    group = json.loads(call(runner, "groups", "add", "--customer", "Acme", "--name", "Main",
                            "--json"))
    assert group["name"] == "Main"
    call(runner, "groups", "plan", "--customer", "Acme", "--group", "Main", "--plan", "Standard",
         "--start", "2026-01-01")
    out = call(runner, "assign", "--customer", "Acme", "--group", "Main", "--server", "Lists",
               "--list", "l1", "--list", "l2", "--start", "2026-01-01")
    assert "2 assignment(s) created" in out
    missing = call(runner, "assign", "--customer", "Acme", "--group", "Main", "--server",
                   "Lists", "--list", "nope", code=2)
    assert "nope" in missing and "sync the server" in missing

    dry = json.loads(call(runner, "bills", "run", "--start", "2026-11-01", "--end",
                          "2026-11-30", "--dry-run", "--json"))
    assert dry["invoices"][0]["number"] is None and dry["invoices"][0]["total"] == "32.00"

    doc = json.loads(call(runner, "bills", "run", "--start", "2026-11-01", "--end",
                          "2026-11-30", "--json"))
    [inv] = doc["invoices"]
    assert set(inv) == {"number", "customer", "start", "end", "currency", "total", "lines"}
    assert (inv["number"], inv["customer"], inv["total"]) == ("2026-00001", "Acme", "32.00")
    assert inv["lines"][0] == {"group": "Main", "kind": "plan",
                               "description": "Hosting plan Standard", "quantity": "1.000",
                               "unit_price": "30.00", "amount": "30.00"}
    assert [(s["customer"], s["code"]) for s in doc["skipped"]] == [("Gratis", "free")]

    again = json.loads(call(runner, "bills", "run", "--start", "2026-11-01", "--end",
                            "2026-11-30", "--customer", "Acme", "--json"))
    assert again["invoices"] == []
    assert again["skipped"][0]["code"] == "already_billed"

    listed = json.loads(call(runner, "bills", "list", "--json"))
    assert [(i["number"], i["status"]) for i in listed["invoices"]] == [("2026-00001", "issued")]
    shown = json.loads(call(runner, "bills", "show", "2026-00001", "--json"))
    assert shown["lines"] == inv["lines"]
    assert "Total: 32.00 USD" in call(runner, "bills", "show", "2026-00001")

    call(runner, "bills", "void", "2026-00001", "--reason", "  ", code=2)
    voided = json.loads(call(runner, "bills", "void", "2026-00001", "--reason", "typo",
                             "--json"))
    assert voided["status"] == "void" and voided["voided_by"].startswith("cli:")
    assert "already void" in call(runner, "bills", "void", "2026-00001", "--reason", "x",
                                  code=2)
    rerun = json.loads(call(runner, "bills", "run", "--start", "2026-11-01", "--end",
                            "2026-11-30", "--customer", "Acme", "--json"))
    assert rerun["invoices"][0]["number"] == "2026-00002"

    exported = call(runner, "bills", "export", "--csv", "--start", "2026-11-01",
                    "--field", "number", "--field", "line", "--field", "amount",
                    "--field", "status")
    rows = list(csv.reader(io.StringIO(exported)))
    assert rows[0] == ["number", "line", "amount", "status"]
    assert ["2026-00001", "Hosting plan Standard", "30.00", "void"] in rows
    assert ["2026-00002", "Overage, Standard", "2.00", "issued"] in rows
    assert len(rows) == 5


def test_bad_input_says_what_to_do(app: Flask, runner: FlaskCliRunner) -> None:
    out = call(runner, "bills", "run", "--start", "2026-11-30", "--end", "2026-11-01", code=2)
    assert "End Date" in out and "before the Start Date" in out
    assert "no customer 'Nobody'" in call(runner, "bills", "run", "--start", "2026-11-01",
                                          "--end", "2026-11-30", "--customer", "Nobody",
                                          code=2)
    assert "no customer" in call(runner, "groups", "add", "--customer", "Nobody", "--name",
                                 "G", code=2)
    assert "no invoice" in call(runner, "bills", "show", "2026-99999", code=2)


def test_skipped_customer_exits_1(app: Flask, runner: FlaskCliRunner) -> None:
    call(runner, "customers", "add", "--company", "Lonely", "--email", "l@example.com")
    doc = json.loads(call(runner, "bills", "run", "--start", "2026-11-01", "--end",
                          "2026-11-30", "--json", code=1))
    assert doc["skipped"] == [{"customer": "Lonely", "code": "no_group",
                               "reason": doc["skipped"][0]["reason"]}]
    assert "add a billing group" in doc["skipped"][0]["reason"]


def test_cli_refuses_duplicate_names_like_the_pages(any_db_app: Flask) -> None:
    """customers add / plans add / groups add go through the catalog services, so the one
    duplicate-name rule (catalog.names: case and spaces ignored) refuses what the pages do."""
    runner = any_db_app.test_cli_runner()
    call(runner, "customers", "add", "--company", "Acme Publishing", "--email", "a@example.com")
    dup = call(runner, "customers", "add", "--company", " acme  PUBLISHING", "--email",
               "b@example.com", code=2)
    assert "A customer with this name exists" in dup
    call(runner, "customers", "add", "--company", "Beta", "--email", "b@example.com")
    call(runner, "plans", "add", "--name", "Gold")
    dup = call(runner, "plans", "add", "--name", " GOLD ", code=2)
    assert "A hosting plan with this name exists" in dup
    call(runner, "groups", "add", "--customer", "Acme Publishing", "--name", "Newsletters")
    dup = call(runner, "groups", "add", "--customer", "Acme Publishing", "--name",
               "news letters", code=2)
    assert "A billing group of this customer with this name exists" in dup
    # Another customer may have a group of that name; names are looked up the same way.
    call(runner, "groups", "add", "--customer", "beta", "--name", "Newsletters")
    call(runner, "groups", "plan", "--customer", "acme publishing", "--group", "NEWSLETTERS",
         "--plan", "gold", "--start", "2026-01-01")
    # `groups charge` hangs off the same `groups` group.
    call(runner, "charges", "add", "--name", "Setup Fee", "--amount", "50")
    call(runner, "groups", "charge", "--customer", "Acme Publishing", "--group", "Newsletters",
         "--charge", "Setup Fee", "--start", "2026-01-01")
    listed = call(runner, "groups", "--help")
    assert all(word in listed for word in ("add", "plan", "charge"))


def test_cli_duplicate_saved_meanwhile_is_refused(any_db_app: Flask) -> None:
    """A customer of the same name committed between the check and the INSERT: the unique
    key refuses it and the command says so (exit 2), as the page does."""
    import sqlalchemy as sa

    from lm_billing_plugin.models import Customer, utcnow
    from lm_billing_plugin.state import get_state

    runner = any_db_app.test_cli_runner()
    with any_db_app.app_context():
        engine = get_state(any_db_app).db.engine
    if engine.dialect.name == "sqlite":
        # A command's transactions take SQLite's write lock at BEGIN (lm_billing_plugin.sqlite),
        # so no other connection can commit in between there: nothing can race.
        pytest.skip("SQLite: the command holds the write lock, nothing can race it")
    other = sa.create_engine(engine.url)
    raced: list[bool] = []

    def race(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.startswith("INSERT INTO lm_billing_customer ") and not raced:
            raced.append(True)
            with other.begin() as tx:
                tx.execute(sa.insert(Customer).values(
                    company="Acme", contact_name="", email="", is_active=True,
                    payment_method="", notes="", created_at=utcnow()))

    sa.event.listen(engine, "before_cursor_execute", race)
    try:
        out = call(runner, "customers", "add", "--company", "ACME", "--email", "a@example.com",
                   code=2)
    finally:
        sa.event.remove(engine, "before_cursor_execute", race)
        other.dispose()
    assert raced and "A customer with this name was saved a moment ago" in out
