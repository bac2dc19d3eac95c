"""Validate all Customers: each kind of finding (and what is not one), plan history read
from GroupPlan with the group's own plan as fallback, links to the fix, constant queries."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa
from _pages import count_statements, plain
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin.catalog.customer_checks import validate_customers
from lm_billing_plugin.models import (
    Assignment,
    BillingGroup,
    Customer,
    GroupPlan,
    HostingPlan,
    MailingList,
    Server,
)
from lm_billing_plugin.state import get_state

TODAY = date(2026, 3, 15)


def seed(app: Flask, extra: int = 0) -> dict[str, int]:
    """Customers of every kind; ``extra`` more valid ones."""
    with app.app_context():
        s = get_state(app).session
        server = Server(name=f"Lists{extra}", host="127.0.0.1")
        plan = HostingPlan(name=f"Gold{extra}")
        s.add_all([server, plan])
        s.flush()
        ids: dict[str, int] = {}

        def customer(name: str, *, active: bool = True, email: str = "x@y.example",
                     lists: int = 1, plan_id: int | None = plan.id,
                     history: tuple[date, date | None] | None = None) -> int:
            c = Customer(company=name + (f" {extra}" if extra else ""), is_active=active,
                         email=email)
            s.add(c)
            s.flush()
            g = BillingGroup(customer_id=c.id, name="Main", plan_id=plan_id)
            s.add(g)
            s.flush()
            if history:
                s.add(GroupPlan(group_id=g.id, plan_id=plan.id, start_date=history[0],
                                end_date=history[1]))
            for i in range(lists):
                lst = MailingList(server_id=server.id, name=f"{name}-{i}")
                s.add(lst)
                s.flush()
                s.add(Assignment(group_id=g.id, object_type="list", server_id=server.id,
                                 list_id=lst.id, start_date=date(2026, 1, 1)))
            ids[name] = c.id
            ids[name + ":group"] = g.id
            return c.id

        customer("Valid", history=(date(2026, 1, 1), None))
        customer("Fallback plan")  # no GroupPlan rows: BillingGroup.plan_id counts
        customer("No lists", lists=0)
        customer("Inactive with lists", active=False)
        customer("Inactive and empty", active=False, lists=0)
        customer("No plan", plan_id=None)
        customer("Plan ended", history=(date(2025, 1, 1), date(2026, 2, 28)))
        customer("No email", email="  ")
        for i in range(extra):
            customer(f"More {extra}-{i}", history=(date(2026, 3, 1), None))
        s.commit()
        return ids


def test_each_kind_is_found_and_nothing_else(any_db_app: Flask) -> None:
    app = any_db_app
    ids = seed(app)
    with app.app_context():
        found = validate_customers(get_state(app).session, TODAY)
    got = {(f.company, f.kind) for f in found}
    assert got == {
        ("No lists", "no_lists"),
        ("Inactive with lists", "inactive_with_lists"),
        ("No plan", "group_without_plan"),
        ("Plan ended", "group_without_plan"),
        ("No email", "no_email"),
    }
    [no_plan] = [f for f in found if f.company == "No plan"]
    assert no_plan.group_id == ids["No plan:group"] and no_plan.group_name == "Main"


def test_page_links_each_row_to_its_fix(client: FlaskClient, app: Flask) -> None:
    ids = seed(app)
    assert "Validate all Customers" in plain(client.get("/billing/customers"))
    # The report is about today; a plan ended in February 2026 is still "no plan" then.
    page = client.get("/billing/customers/validate").get_data(as_text=True)
    assert f'/billing/groups/{ids["No plan:group"]}/edit' in page
    assert f'/billing/customers/{ids["No email"]}/edit' in page
    assert f'/billing/customers/{ids["Inactive with lists"]}#lmb-assignments' in page
    assert "Customer with no lists assigned" in page


def test_all_valid_says_so(client: FlaskClient, app: Flask) -> None:
    page = plain(client.get("/billing/customers/validate"))
    assert "All customers are valid" in page


def test_query_count_does_not_grow_with_customers(app: Flask) -> None:
    seed(app)
    with app.app_context(), count_statements(app) as small:
        validate_customers(get_state(app).session, TODAY)
    seed(app, extra=30)
    with app.app_context(), count_statements(app) as big:
        found = validate_customers(get_state(app).session, TODAY)
    assert len(big) == len(small) and len({f.company for f in found}) == 10
    with app.app_context():
        assert get_state(app).session.scalar(sa.select(sa.func.count(Customer.id))) == 46
