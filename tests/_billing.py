"""Shared set-up of the bill-run tests: a simulated hosting server with a month of sending,
synced into billing, and customers, plans, groups and assignments made through the services."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from lm_billing_plugin.catalog.assignment import assign
from lm_billing_plugin.catalog.customers import create_customer
from lm_billing_plugin.catalog.groups import create_group, set_group_plan
from lm_billing_plugin.catalog.plans import save_plan
from lm_billing_plugin.engine import batches
from lm_billing_plugin.models import (
    AdditionalCharge,
    ChargeAssignment,
    Customer,
    MailingList,
    Server,
)
from lm_billing_plugin.state import get_state
from lm_billing_plugin.tclport.records import ListRecord, SiteRecord
from lm_billing_plugin.testing.simulator import Dataset, HostSim

NOV = (date(2026, 11, 1), date(2026, 11, 30))
OCT = (date(2026, 10, 1), date(2026, 10, 31))


def dataset(lists: int = 3) -> Dataset:
    return Dataset(
        sites=[SiteRecord("s1", "Site 1")],
        lists=[ListRecord(f"l{i}", "s1", f"list {i}", date(2020, 1, 1), 10, "o@example.com")
               for i in range(1, lists + 1)],
    )


def month_of_sending(sim: HostSim) -> None:
    """November: l1 1,500 recipients, l2 500 (2,000 units); outside November: lots, which a
    bill run of November must not count."""
    sim.add_send("l1", date(2026, 11, 5), 1500, 1000)
    sim.add_send("l2", date(2026, 11, 30), 500, 1000)
    sim.add_send("l1", date(2026, 10, 31), 10_000, 1000)
    sim.add_send("l2", date(2026, 12, 1), 10_000, 1000)


def add_server(sim: HostSim, name: str = "Lists", *, sync: bool = True) -> int:
    session = get_state().session
    server = Server(name=name, host=sim.host, port=sim.port)
    session.add(server)
    session.commit()
    sid = server.id
    if sync:
        assert batches.sync_servers([sid], actor="t").exit_code in (0, 1)
    return sid


def plan(name: str = "Standard", **values: Any) -> int:
    fields = {"name": name, "billing_method": "standard", "monthly_price": Decimal("30.00"),
              "included_messages": 1000, "overage_cpm": Decimal("2.0000")}
    fields.update(values)
    created, _ = save_plan(None, fields, actor="t")
    return created.id


def customer(company: str = "Acme", **values: Any) -> Customer:
    fields: dict[str, Any] = {"company": company, "email": f"bills@{company.lower()}.example",
                              "payment_method": "Invoice"}
    fields.update(values)
    return create_customer(fields, actor="t")


def billed_customer(server_id: int, company: str = "Acme", *, plan_id: int | None = None,
                    lists: tuple[str, ...] = ("l1", "l2"), whole_server: bool = False,
                    **values: Any) -> tuple[int, int]:
    """A customer with one group on plan_id from 2026-01-01, paying for lists (or the whole
    server) from 2026-01-01; returns (customer id, group id)."""
    cu = customer(company, **values)
    group = create_group(cu, {"name": "Main"}, actor="t")
    if plan_id is not None:
        set_group_plan(group, plan_id, date(2026, 1, 1), None, actor="t")
    session = get_state().session
    ids = list(session.scalars(sa.select(MailingList.id).where(
        MailingList.server_id == server_id, MailingList.name.in_(lists))))
    assign(group.id, server_id=server_id, list_ids=[] if whole_server else ids,
           whole_server=whole_server, actor="t", start=date(2026, 1, 1))
    return cu.id, group.id


def charge(group_id: int, name: str, amount: str, start: date, *, recurring: bool = False,
           proratable: bool = False, end: date | None = None) -> int:
    session = get_state().session
    row = AdditionalCharge(name=name, name_key=name.lower().replace(" ", ""),
                           default_amount=Decimal(amount), is_recurring=recurring,
                           is_proratable=proratable)
    session.add(row)
    session.flush()
    ca = ChargeAssignment(group_id=group_id, charge_id=row.id, start_date=start, end_date=end)
    session.add(ca)
    session.commit()
    return ca.id
