"""Terminating: "Terminate lists" moves lists to the inactive placeholder "Terminated" in one
audited transaction and keeps their history; customers with history cannot be deleted;
"Remove Selected Objects" ends assignments; End Date and Is Active on the customer form."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from _pages import csrf, loaded_version, plain
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin.catalog import terminate
from lm_billing_plugin.catalog.assignment import AssignmentError, GateError
from lm_billing_plugin.models import (
    Assignment,
    AuditEntry,
    BillingGroup,
    Customer,
    Invoice,
    MailingList,
    Server,
    invoice_active_key,
)
from lm_billing_plugin.state import get_state

DAY = date(2026, 3, 15)


def rows(app: Flask, model: Any, *where: Any) -> list[Any]:
    with app.app_context():
        s = get_state(app).session
        found = list(s.scalars(sa.select(model).where(*where).order_by(model.id)))
        s.expunge_all()
        return found


def setup(app: Flask, *, validated: bool = True) -> dict[str, int]:
    with app.app_context():
        s = get_state(app).session
        server = Server(name="Lists", host="127.0.0.1",
                        validated_at=datetime.now(UTC) if validated else None)
        customer = Customer(company="Acme", email="a@acme.example")
        s.add_all([server, customer])
        s.flush()
        group = BillingGroup(customer_id=customer.id, name="News")
        lists = [MailingList(server_id=server.id, name=n, site_name="s1")
                 for n in ("one", "two", "three")]
        s.add_all([group, *lists])
        s.flush()
        for lst in lists:
            s.add(Assignment(group_id=group.id, object_type="list", server_id=server.id,
                             list_id=lst.id, start_date=date(2026, 1, 1)))
        lists[2].status = "removed"  # deleted on the hosting server: still terminable
        s.commit()
        return {"server": server.id, "customer": customer.id, "group": group.id,
                **{lst.name: lst.id for lst in lists}}


def test_terminate_moves_lists_and_keeps_history(any_db_app: Flask) -> None:
    app = any_db_app
    ids = setup(app)
    with app.app_context():
        result = terminate.terminate_lists([ids["one"], ids["three"]], actor="op", end=DAY)
        again = terminate.terminate_lists([ids["one"]], actor="op", end=DAY)
    assert (result.moved, result.ended) == (2, 2) and (again.moved, again.ended) == (0, 0)
    [placeholder] = rows(app, Customer, Customer.id == result.customer_id)
    assert placeholder.company == "Terminated" and not placeholder.is_active
    [group] = rows(app, BillingGroup, BillingGroup.customer_id == placeholder.id)
    assert group.name == "Terminated lists"
    history = [(a.group_id, a.list_id, a.start_date, a.end_date, a.is_free)
               for a in rows(app, Assignment)]
    assert (ids["group"], ids["one"], date(2026, 1, 1), DAY, False) in history
    assert (ids["group"], ids["two"], date(2026, 1, 1), None, False) in history
    assert (group.id, ids["one"], DAY, None, True) in history
    assert (group.id, ids["three"], DAY, None, True) in history
    assert len(history) == 5
    audit = [a for a in rows(app, AuditEntry) if a.action == "lists_terminate"]
    assert audit[0].actor == "op" and audit[0].detail["names"] == ["one", "three"]
    assert len(rows(app, Customer, Customer.company == "Terminated")) == 1


def test_terminate_is_all_or_nothing(app: Flask) -> None:
    ids = setup(app)
    with app.app_context():
        s = get_state(app).session
        other = BillingGroup(customer_id=ids["customer"], name="Whole")
        s.add(other)
        s.flush()
        s.add(Assignment(group_id=other.id, object_type="server", server_id=ids["server"],
                         start_date=date(2026, 1, 1)))
        s.commit()
    before = [(a.id, a.end_date) for a in rows(app, Assignment)]
    with app.app_context(), pytest.raises(AssignmentError, match="through a site or a whole"):
        terminate.terminate_lists([ids["one"], ids["two"]], actor="op", end=DAY)
    assert [(a.id, a.end_date) for a in rows(app, Assignment)] == before
    assert rows(app, Customer, Customer.company == "Terminated") == []


def test_terminate_waits_for_validation(app: Flask) -> None:
    ids = setup(app, validated=False)
    with app.app_context(), pytest.raises(GateError, match="Validate and sync server"):
        terminate.terminate_lists([ids["one"]], actor="op", end=DAY)
    assert rows(app, Customer, Customer.company == "Terminated") == []


def test_terminate_lists_button_on_the_assign_page(client: FlaskClient, app: Flask) -> None:
    ids = setup(app)
    page = client.get(f"/billing/assign?server_id={ids['server']}")
    assert "Terminate lists" in plain(page)
    done = client.post("/billing/lists/terminate", data={
        "csrf_token": csrf(client), "server_id": str(ids["server"]),
        "list_id": [str(ids["two"])], "start": "2026-03-15", "group_id": "0"},
        follow_redirects=True)
    assert "Terminated 1 list:" in plain(done)
    assert "Customer: Terminated" in plain(done)
    nothing = client.post("/billing/lists/terminate", data={
        "csrf_token": csrf(client), "server_id": str(ids["server"])}, follow_redirects=True)
    assert "Nothing was terminated: tick the lists to terminate first" in plain(nothing)


def test_remove_selected_objects_and_end_date_on_the_customer(
    client: FlaskClient, app: Flask
) -> None:
    ids = setup(app)
    page = plain(client.get(f"/billing/customers/{ids['customer']}"))
    assert "Remove Selected Objects" in page
    [first, *_] = rows(app, Assignment)
    done = client.post("/billing/unassign", data={
        "csrf_token": csrf(client), "customer_id": str(ids["customer"]),
        "assignment_id": str(first.id), "end": "2026-04-01"})
    assert done.status_code == 302
    assert rows(app, Assignment, Assignment.id == first.id)[0].end_date == date(2026, 4, 1)
    assert len(rows(app, Assignment)) == 3  # ended, not deleted
    edit = f"/billing/customers/{ids['customer']}/edit"
    saved = client.post(edit, data={
        "csrf_token": csrf(client), "loaded_version": loaded_version(client, edit),
        "company": "Acme", "email": "a@acme.example",
        "end_date": "2026-04-15", "start_date": "2026-05-01"})
    assert "must not be before the start date" in plain(saved)
    saved = client.post(edit, data={
        "csrf_token": csrf(client), "loaded_version": loaded_version(client, edit),
        "company": "Acme", "email": "a@acme.example",
        "end_date": "2026-04-15"})
    assert saved.status_code == 302
    [acme] = rows(app, Customer, Customer.id == ids["customer"])
    assert acme.end_date == date(2026, 4, 15) and not acme.is_active


def test_delete_customer_only_without_history(client: FlaskClient, app: Flask) -> None:
    ids = setup(app)
    refused = client.get(f"/billing/customers/{ids['customer']}/delete")
    assert "cannot be deleted" in plain(refused) and "Deactivate it instead" in plain(refused)
    posted = client.post(f"/billing/customers/{ids['customer']}/delete",
                         data={"csrf_token": csrf(client)})
    assert posted.status_code == 409
    with app.app_context():
        s = get_state(app).session
        billed = Customer(company="Billed")
        empty = Customer(company="Empty")
        s.add_all([billed, empty])
        s.flush()
        s.add(BillingGroup(customer_id=empty.id, name="Unused"))
        s.add(Invoice(number="2026-00001", year=2026, seq=1, customer_id=billed.id,
                      period_start=DAY, period_end=DAY,
                      active_key=invoice_active_key(billed.id, DAY, DAY), currency="USD",
                      total=Decimal("1"), company="Billed"))
        s.commit()
        billed_id, empty_id = billed.id, empty.id
        with pytest.raises(terminate.CustomerHasHistory, match="1 invoice"):
            terminate.delete_customer(billed_id, actor="op")
    gone = client.post(f"/billing/customers/{empty_id}/delete", data={"csrf_token": csrf(client)})
    assert gone.status_code == 302
    assert rows(app, Customer, Customer.id == empty_id) == []
    assert rows(app, BillingGroup, BillingGroup.customer_id == empty_id) == []
    assert len(rows(app, Customer)) == 2
    assert "customer_delete" in [a.action for a in rows(app, AuditEntry)]
