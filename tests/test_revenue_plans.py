"""Revenue per hosting plan keeps the plan of billing time (issue 12 §2): each invoice line
stores the plan it was billed under (plan_name), so changing a group's plan after invoicing
leaves past revenue with the old plan; migration 0008 fills plan_name for the lines there are
from the plan term that covered their invoice's period."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date
from decimal import Decimal

import pytest
import sqlalchemy as sa
from flask import Flask
from test_migrations import bare_app, engine_of  # noqa: F401 (the migration test's fixture)

from lm_billing_plugin import downgrade, upgrade
from lm_billing_plugin.billing.runs import bill_customers
from lm_billing_plugin.catalog.groups import set_group_plan
from lm_billing_plugin.models import (
    BillingGroup,
    Customer,
    GroupPlan,
    HostingPlan,
    Invoice,
    InvoiceLine,
    invoice_active_key,
)
from lm_billing_plugin.reports import revenue
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import HostSim
from tests._billing import NOV, add_server, billed_customer, charge, dataset, month_of_sending, plan


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(dataset()) as server:
        month_of_sending(server)
        yield server


@pytest.fixture
def dbapp(any_db_app: Flask) -> Iterator[Flask]:
    with any_db_app.app_context():
        yield any_db_app


def plans_of(first: date, last: date) -> dict[str, Decimal]:
    session = get_state().session
    rows = revenue.by_plan(session, first, last)
    session.commit()
    return {row.label: row.amount for row in rows}


def test_a_plan_change_after_invoicing_leaves_revenue_with_the_old_plan(
    dbapp: Flask, sim: HostSim
) -> None:
    sid = add_server(sim)
    standard = plan("Standard")
    premium = plan("Premium", monthly_price=Decimal("90.00"))
    _cid, gid = billed_customer(sid, plan_id=standard)
    charge(gid, "Setup", "15.00", NOV[0])
    result = bill_customers(*NOV, actor="t")
    assert [o.status for o in result.outcomes] == ["invoiced"]
    session = get_state().session
    lines = session.execute(sa.select(InvoiceLine.kind, InvoiceLine.plan_name)
                            .order_by(InvoiceLine.position)).all()
    session.commit()
    # The plan's lines and the group's charge are stored under the plan of November.
    assert {(k, p) for k, p in lines} >= {("plan", "Standard"), ("charge", "Standard")}
    before = plans_of(*NOV)
    assert set(before) == {"Standard"} and before["Standard"] > 0
    # The group moves to Premium from December: the group's plan is Premium now.
    group = session.get(BillingGroup, gid)
    assert group is not None
    set_group_plan(group, premium, date(2026, 12, 1), None, actor="t")
    session = get_state().session
    assert session.get(BillingGroup, gid).plan_id == premium  # type: ignore[union-attr]
    session.commit()
    assert plans_of(*NOV) == before  # November's revenue stays with Standard


def _add_invoice(session: sa.orm.Session, customer_id: int, start: date, end: date,
                 number: str, group: str) -> int:
    inv = Invoice(number=number, year=start.year, seq=int(number[-4:]), customer_id=customer_id,
                  period_start=start, period_end=end, status="issued",
                  active_key=invoice_active_key(customer_id, start, end), currency="EUR",
                  total=Decimal("10.00"), company="Acme")
    session.add(inv)
    session.flush()
    for n, name in enumerate((group, ""), start=1):  # a group's line and an invoice-wide one
        session.add(InvoiceLine(invoice_id=inv.id, position=n, group_name=name, kind="plan",
                                description="x", quantity=Decimal(1), unit_price=Decimal(5),
                                amount=Decimal(5)))
    return inv.id


def test_migration_fills_plan_names_from_the_covering_plan_term(
    bare_app: Flask,  # noqa: F811
    make_app: Callable[..., Flask],
) -> None:
    engine = engine_of(bare_app)
    upgrade(bare_app)
    with bare_app.app_context():
        session = get_state().session
        small, big = HostingPlan(name="Small"), HostingPlan(name="Big")
        acme = Customer(company="Acme")
        session.add_all([small, big, acme])
        session.flush()
        group = BillingGroup(customer_id=acme.id, name="Main", plan_id=big.id)
        session.add(group)
        session.flush()
        # Small through October, Big from 15 October: October's lines go to the later one.
        session.add_all([
            GroupPlan(group_id=group.id, plan_id=small.id, start_date=date(2026, 1, 1),
                      end_date=date(2026, 10, 14)),
            GroupPlan(group_id=group.id, plan_id=big.id, start_date=date(2026, 10, 15)),
        ])
        sept = _add_invoice(session, acme.id, date(2026, 9, 1), date(2026, 9, 30),
                            "2026-0001", "Main")
        octo = _add_invoice(session, acme.id, date(2026, 10, 1), date(2026, 10, 31),
                            "2026-0002", "Main")
        gone = _add_invoice(session, acme.id, date(2026, 11, 1), date(2026, 11, 30),
                            "2026-0003", "Removed group")
        session.commit()
        get_state().remove_session()
    downgrade(bare_app, "0007")
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("lm_billing_invoice_line")}
    assert "plan_name" not in columns
    upgrade(bare_app)
    with engine.connect() as conn:
        got = {(i, g): p for i, g, p in conn.execute(sa.text(
            "SELECT invoice_id, group_name, plan_name FROM lm_billing_invoice_line"))}
    assert got == {(sept, "Main"): "Small", (sept, ""): "",
                   (octo, "Main"): "Big", (octo, ""): "",
                   (gone, "Removed group"): "", (gone, ""): ""}
    downgrade(bare_app)  # leave the database as bare_app found it
