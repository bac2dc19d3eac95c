"""Assigning and unassigning judge the billing rules of what they touch again, in the same
transaction: an assigned list's "has no owner" problem closes at once (the server page and the
Errors page stop showing it without a sync), unassigning reopens it, a plan limit the change
crosses opens or closes with it, and a failure rolls the assignment and the problems back
together. The answer is the one the next validation gives (checked against a real one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from _pages import PAGES_CONFIG, csrf, plain
from flask import Flask

from lm_billing_plugin.catalog import assignment, terminate
from lm_billing_plugin.engine import batches
from lm_billing_plugin.models import (
    Assignment,
    BillingGroup,
    Customer,
    HostingPlan,
    MailingList,
    Problem,
    Server,
)
from lm_billing_plugin.settings import Settings
from lm_billing_plugin.state import get_state
from lm_billing_plugin.tclport.records import ListRecord, SiteRecord
from lm_billing_plugin.testing.simulator import Dataset, HostSim


def _lst(name: str, site: str = "s1", members: int = 10) -> ListRecord:
    return ListRecord(name, site, f"about {name}", date(2020, 1, 1), members, "o@example.com")


@pytest.fixture
def sim() -> Iterator[HostSim]:
    dataset = Dataset(sites=[SiteRecord("s1", "Site 1"), SiteRecord("s2", "Site 2")],
                      lists=[_lst("a"), _lst("b"), _lst("c", site="s2")],
                      logging_mode="lists")
    with HostSim(dataset) as server:
        yield server


def _synced(app: Flask, sim: HostSim, *, max_lists: int = 0) -> dict[str, int]:
    """A server synced from the simulator (so its lists wait for an owner) and a group."""
    with app.app_context():
        s = get_state(app).session
        host, port = sim.address
        server = Server(name="Lists", host=host, port=port)
        customer = Customer(company="Acme")
        plan = HostingPlan(name="Small", max_lists=max_lists)
        s.add_all([server, customer, plan])
        s.flush()
        group = BillingGroup(customer_id=customer.id, name="News", plan_id=plan.id)
        s.add(group)
        s.commit()
        ids = {"server": server.id, "group": group.id, "customer": customer.id}
        batches.sync_servers([server.id], actor="t")
        ids |= {n: i for i, n in s.execute(sa.select(MailingList.id, MailingList.name))}
        s.commit()
        return ids


def _open(app: Flask) -> set[tuple[str, str]]:
    with app.app_context():
        s = get_state(app).session
        found = {(k, n) for k, n in s.execute(
            sa.select(Problem.kind, Problem.object_name).where(Problem.status == "open"))}
        s.commit()
        return found


def _after_validation(app: Flask, server_id: int) -> set[tuple[str, str]]:
    with app.app_context():
        batches.validate_servers([server_id], actor="t")
    return _open(app)


def test_assign_closes_and_unassign_reopens_without_a_sync(
    any_db_app: Flask, sim: HostSim
) -> None:
    app = any_db_app
    ids = _synced(app, sim)
    assert _open(app) == {("unassigned_list", "a"), ("unassigned_list", "b"),
                          ("unassigned_list", "c")}
    with app.app_context():
        assert assignment.assign(ids["group"], server_id=ids["server"],
                                 list_ids=[ids["a"]], actor="t") == 1
    assert _open(app) == {("unassigned_list", "b"), ("unassigned_list", "c")}
    # A site takes its lists with it.
    with app.app_context():
        site = get_state(app).session.execute(
            sa.text("SELECT id FROM lm_billing_site WHERE name = 's2'")).scalar_one()
        assignment.assign(ids["group"], server_id=ids["server"], site_ids=[site], actor="t")
    assert _open(app) == {("unassigned_list", "b")}
    assert _after_validation(app, ids["server"]) == {("unassigned_list", "b")}
    with app.app_context():
        [first] = get_state(app).session.scalars(
            sa.select(Assignment.id).where(Assignment.list_id == ids["a"]))
        assert assignment.unassign([first], actor="t") == 1
    assert _open(app) == {("unassigned_list", "a"), ("unassigned_list", "b")}
    # The reopened problem is the same row (one row per fingerprint, ever).
    with app.app_context():
        rows = get_state(app).session.scalars(
            sa.select(Problem.status).where(Problem.kind == "unassigned_list",
                                            Problem.object_name == "a")).all()
    assert rows == ["open"]
    assert _after_validation(app, ids["server"]) == {("unassigned_list", "a"),
                                                     ("unassigned_list", "b")}


def test_whole_server_and_a_plan_limit_follow_the_assignment(app: Flask, sim: HostSim) -> None:
    ids = _synced(app, sim, max_lists=2)
    with app.app_context():
        assignment.assign(ids["group"], server_id=ids["server"], whole_server=True, actor="t")
    # Three lists on a plan of two: the limit opens with the assignment itself.
    assert _open(app) == {("over_max_lists", "News")}
    assert _after_validation(app, ids["server"]) == {("over_max_lists", "News")}
    with app.app_context():
        [whole] = get_state(app).session.scalars(sa.select(Assignment.id))
        assignment.unassign([whole], actor="t")
    assert _open(app) == {("unassigned_list", "a"), ("unassigned_list", "b"),
                          ("unassigned_list", "c")}


@pytest.mark.parametrize("days", [1, -1])
def test_the_billing_day_decides_what_is_in_force(
    app: Flask, sim: HostSim, monkeypatch: pytest.MonkeyPatch, days: int
) -> None:
    """An assignment starts on the billing day (LM_BILLING_BILLING_TIMEZONE), which may be a
    day ahead of or behind UTC's: the re-judge reads the assignments in force on that same
    day, as a validation does, so the list's problem closes at once whatever the zone. (The
    clock cannot be set here, so the billing day is moved instead.)"""
    billing_day = datetime.now(UTC).date() + timedelta(days=days)
    monkeypatch.setattr(Settings, "billing_today", lambda self, now=None: billing_day)
    ids = _synced(app, sim)
    with app.app_context():
        assignment.assign(ids["group"], server_id=ids["server"], list_ids=[ids["a"]],
                          actor="t")
    assert ("unassigned_list", "a") not in _open(app)
    assert ("unassigned_list", "a") not in _after_validation(app, ids["server"])


def test_terminate_settles_the_lists_problems(app: Flask, sim: HostSim) -> None:
    ids = _synced(app, sim)
    with app.app_context():
        terminate.terminate_lists([ids["a"], ids["b"]], actor="t")
    assert ("unassigned_list", "a") not in _open(app)
    assert ("unassigned_list", "c") in _open(app)


def test_a_failure_rolls_back_the_assignment_and_the_problems(
    any_db_app: Flask, sim: HostSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = any_db_app
    ids = _synced(app, sim)
    before = _open(app)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the audit log is full")

    # The audit entry is written after the problems were judged again: it failing must take
    # both the new assignment and the closed problem back.
    monkeypatch.setattr(assignment.audit, "record", broken)
    with app.app_context(), pytest.raises(RuntimeError, match="audit log is full"):
        assignment.assign(ids["group"], server_id=ids["server"], list_ids=[ids["a"]],
                          actor="t")
    assert _open(app) == before
    with app.app_context():
        assert get_state(app).session.scalars(sa.select(Assignment.id)).all() == []


def test_pages_stop_showing_the_problem_after_the_assign_page(
    make_app: Callable[..., Flask], sim: HostSim
) -> None:
    app = make_app(**PAGES_CONFIG)
    client = app.test_client()
    ids = _synced(app, sim)
    server_page = f"/billing/servers/{ids['server']}"
    assert "has no owner" in plain(client.get(server_page))
    # The list's admin address is its "List admin"; "Owner" is the billing group.
    assign_page = plain(client.get(f"/billing/assign?server_id={ids['server']}"))
    assert '<th scope="col">List admin</th>' in assign_page and ">Owner<" not in assign_page
    assert "Open problems (3)" in plain(client.get("/billing/errors"))
    done = client.post("/billing/assign", data={
        "csrf_token": csrf(client), "server_id": str(ids["server"]),
        "group_id": str(ids["group"]), "whole_server": "y"}, follow_redirects=True)
    assert done.status_code == 200
    assert "has no owner" not in plain(client.get(server_page))
    errors = plain(client.get("/billing/errors"))
    assert "No open problems." in errors and "Open problems (" not in errors
    # "Remove Selected Objects" on the customer's page: the problems are back at once.
    with app.app_context():
        [whole] = get_state(app).session.scalars(sa.select(Assignment.id)).all()
    removed = client.post("/billing/unassign", data={
        "csrf_token": csrf(client), "customer_id": str(ids["customer"]),
        "assignment_id": str(whole)})
    assert removed.status_code == 302
    assert "Open problems (3)" in plain(client.get("/billing/errors"))
    assert "has no owner" in plain(client.get(server_page))
