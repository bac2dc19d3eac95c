"""billing-cycle.md rules that only a stored run can show, on SQLite, PostgreSQL and MariaDB
(docs/billing-conformance.md lists every rule and its test): the billing day's time zone at
the year and month boundaries, the invoice's currency, and the snapshot later edits never
change."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin.billing import invoices as invoices_module
from lm_billing_plugin.billing.charges import ChargeInput, add_group_charge, create_charge
from lm_billing_plugin.billing.invoice_templates import invoice_context
from lm_billing_plugin.billing.invoices import export_rows, invoice_lines, invoice_usage
from lm_billing_plugin.billing.runs import bill_customers
from lm_billing_plugin.catalog.assignment import assign
from lm_billing_plugin.catalog.customers import update_customer
from lm_billing_plugin.catalog.plans import save_plan
from lm_billing_plugin.models import Customer, HostingPlan, Invoice, InvoiceSequence, MailingList
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import HostSim
from tests._billing import NOV, add_server, billed_customer, dataset, month_of_sending, plan

D = Decimal
# 23:30 UTC on 31 December 2026 is already 00:30 on 1 January 2027 in Berlin.
NEW_YEARS_EVE_UTC = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(dataset()) as server:
        month_of_sending(server)
        yield server


@pytest.fixture
def tz_app(make_app: Callable[..., Flask], db_url: str, request: pytest.FixtureRequest
           ) -> Iterator[Flask]:
    app = make_app(db_url, LM_BILLING_BILLING_TIMEZONE=request.param,
                   LM_BILLING_CURRENCY="EUR")
    with app.app_context():
        yield app


def _stored() -> list[Invoice]:
    session = get_state().session
    rows = list(session.scalars(sa.select(Invoice).order_by(Invoice.id)))
    session.commit()
    return rows


@pytest.mark.parametrize(("tz_app", "number", "year"), [
    ("Europe/Berlin", "2027-00001", 2027),
    ("UTC", "2026-00001", 2026),
], indirect=["tz_app"], ids=["Berlin", "UTC"])
def test_the_invoice_year_is_the_billing_day_s_year(
    tz_app: Flask, sim: HostSim, monkeypatch: pytest.MonkeyPatch, number: str, year: int,
) -> None:
    """§3 "one gapless sequence per year": the year of the billing day the invoice is issued
    on (LM_BILLING_BILLING_TIMEZONE), as every other billing day is; it used to be UTC's."""
    monkeypatch.setattr(invoices_module, "utcnow", lambda: NEW_YEARS_EVE_UTC)
    sid = add_server(sim)
    billed_customer(sid, plan_id=plan())
    [outcome] = bill_customers(*NOV, actor="t").outcomes
    assert (outcome.status, outcome.number) == ("invoiced", number)
    [inv] = _stored()
    assert (inv.year, inv.seq, inv.number) == (year, 1, number)
    session = get_state().session
    assert session.scalar(sa.select(InvoiceSequence.last_seq)
                          .where(InvoiceSequence.year == year)) == 1
    session.commit()


@pytest.mark.parametrize(("tz_app", "l3_line"), [
    # Berlin: last seen 00:30 on 1 November, so it existed on 1 of November's 30 days:
    # 30.00 x 1/30 = 1.00.
    ("Europe/Berlin", [D("1.00")]),
    # UTC: last seen on 31 October, before November: no line.
    ("UTC", []),
], indirect=["tz_app"], ids=["Berlin", "UTC"])
def test_a_list_removed_at_the_month_boundary_is_dated_in_the_billing_time_zone(
    tz_app: Flask, sim: HostSim, l3_line: list[Decimal],
) -> None:
    """§1 "for the days each assignment is active", with billing days starting at midnight of
    LM_BILLING_BILLING_TIMEZONE: a list last seen at 23:30 UTC on 31 October was there on
    1 November in Berlin. (It used to be dated 31 October, UTC, and left off.)"""
    sid = add_server(sim)
    billed_customer(sid, plan_id=plan(bill_by_list=True), whole_server=True)
    session = get_state().session
    gone = datetime(2026, 10, 31, 23, 30, tzinfo=UTC)
    session.execute(sa.update(MailingList).where(MailingList.name == "l3")
                    .values(status="removed", last_seen_at=gone, removed_at=gone))
    session.commit()
    [outcome] = bill_customers(*NOV, actor="t").outcomes
    assert outcome.status == "invoiced" and outcome.draft is not None
    lines = [(li.description, li.amount) for li in outcome.draft.lines]
    # Bill by List, 30.00 a list, 1,000 included messages a list, CPM 2.00:
    # l1: 30.00, overage (1,500 - 1,000) / 1,000 x 2.00 = 1.00; l2: 30.00 (500 units).
    assert ("Hosting plan Standard, list l1 on Lists", D("30.00")) in lines
    assert ("Overage, Standard, list l1 on Lists", D("1.00")) in lines
    assert ("Hosting plan Standard, list l2 on Lists", D("30.00")) in lines
    assert [amount for text, amount in lines if "list l3" in text] == l3_line
    [inv] = _stored()
    assert inv.total == D("61.00") + sum(l3_line, D("0"))


@pytest.mark.parametrize("tz_app", ["UTC"], indirect=True)
def test_the_invoice_keeps_its_snapshot_and_currency_after_later_edits(
    tz_app: Flask, sim: HostSim,
) -> None:
    """§3: name, contact, email addresses, period, currency (LM_BILLING_CURRENCY), each line
    and its usage are copied at issue time; editing the customer or the plan afterwards
    changes nothing on the issued invoice."""
    sid = add_server(sim)
    pid = plan()
    cid, _gid = billed_customer(sid, plan_id=pid, contact_name="Pat",
                                additional_emails="ap@acme.example")
    [outcome] = bill_customers(*NOV, actor="t").outcomes
    assert outcome.status == "invoiced"
    session = get_state().session
    cu = session.get(Customer, cid)
    assert cu is not None
    update_customer(cu, {"company": "Acme Renamed", "contact_name": "Sam",
                         "email": "new@acme.example", "additional_emails": ""}, actor="t")
    p = session.get(HostingPlan, pid)
    save_plan(p, {"name": "Standard", "billing_method": "standard",
                  "monthly_price": D("99.00"), "included_messages": 0,
                  "overage_cpm": D("9.0000")}, actor="t")
    [inv] = _stored()
    assert (inv.company, inv.contact_name, inv.email, inv.additional_emails) == (
        "Acme", "Pat", "bills@acme.example", "ap@acme.example")
    assert (inv.period_start, inv.period_end, inv.currency) == (*NOV, "EUR")
    # 30.00 plan; (2,000 - 1,000) / 1,000 x 2.00 = 2.00 overage.
    assert [(li.kind, li.quantity, li.unit_price, li.amount)
            for li in invoice_lines(session, inv.id)] == [
        ("plan", D("1.000"), D("30.0000"), D("30.00")),
        ("overage", D("1.000"), D("2.0000"), D("2.00"))]
    # The sending log's bytes are message bytes x recipients: 1,000 x 1,500 and 1,000 x 500.
    assert [(u.list_name, u.messages, u.recipients, u.bytes, u.units)
            for u in invoice_usage(session, inv.id)] == [
        ("l1", 1, 1500, 1_500_000, D("1500.000")), ("l2", 1, 500, 500_000, D("500.000"))]
    assert inv.total == D("32.00")
    session.commit()


def _list_id(server_id: int, name: str) -> int:
    session = get_state().session
    lid = session.scalar(sa.select(MailingList.id).where(MailingList.server_id == server_id,
                                                         MailingList.name == name))
    session.commit()
    assert lid is not None
    return int(lid)


@pytest.mark.parametrize("tz_app", ["UTC"], indirect=True)
def test_a_stored_run_bills_free_and_ended_assignments_and_charge_amounts_by_the_rules(
    tz_app: Flask, sim: HostSim,
) -> None:
    """§1 objects and Is Free, an assignment's last day, §2 charges: the amount defaults to
    the charge's Default Amount unless the group's assignment gives its own; a recurring
    proratable charge is amount x f. Through the services and a real run."""
    sid = add_server(sim)
    pid = plan(bill_by_list=True)
    _cid, gid = billed_customer(sid, plan_id=pid, lists=("l1",))
    # l2 Is Free (its 500 recipients are not billed); l3 paid until its end date 16 November
    # (assignment end dates are the first day not covered: 1-15 November, 15 days).
    assign(gid, server_id=sid, list_ids=[_list_id(sid, "l2")], is_free=True, actor="t",
           start=date(2026, 1, 1))
    assign(gid, server_id=sid, list_ids=[_list_id(sid, "l3")], actor="t",
           start=date(2026, 1, 1), end=date(2026, 11, 16))
    setup = create_charge(ChargeInput("Setup", D("50.00")), actor="t")
    support = create_charge(ChargeInput("Support", D("30.00"), is_recurring=True,
                                        is_proratable=True), actor="t")
    add_group_charge(gid, setup.id, start=date(2026, 11, 3), amount="12.50", actor="t")
    add_group_charge(gid, support.id, start=date(2026, 11, 16), actor="t")
    [outcome] = bill_customers(*NOV, actor="t").outcomes
    assert outcome.status == "invoiced"
    [inv] = _stored()
    session = get_state().session
    assert [(li.description, li.quantity, li.amount)
            for li in invoice_lines(session, inv.id)] == [
        # l1: 30.00 x 30/30; overage (1,500 - 1,000 x 30/30) / 1,000 x 2.00 = 1.00
        ("Hosting plan Standard, list l1 on Lists", D("1.000"), D("30.00")),
        ("Overage, Standard, list l1 on Lists", D("0.500"), D("1.00")),
        # l3: 30.00 x 15/30 = 15.00; allowance 500, no usage: no overage line
        ("Hosting plan Standard, list l3 on Lists", D("0.500"), D("15.00")),
        # one-time, the group's own amount 12.50 (not the Default Amount 50.00), in full
        ("Setup", D("1.000"), D("12.50")),
        # recurring, proratable, default 30.00, 16-30 November: 30.00 x 15/30 = 15.00
        ("Support", D("0.500"), D("15.00")),
    ]
    # 30.00 + 1.00 + 15.00 + 12.50 + 15.00
    assert inv.total == D("73.50")
    assert [(u.list_name, u.units) for u in invoice_usage(session, inv.id)] == [
        ("l1", D("1500.000")), ("l3", D("0.000"))]
    session.commit()


@pytest.mark.parametrize("tz_app", ["UTC"], indirect=True)
def test_each_year_s_sequence_starts_at_one_and_numbers_stay_distinct(
    tz_app: Flask, sim: HostSim, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§3 one gapless sequence per year: November issued on 31 December 2026, December on
    1 January 2027 (both UTC): 2026-00001, then 2027-00001."""
    moments = iter([NEW_YEARS_EVE_UTC, datetime(2027, 1, 1, 0, 30, tzinfo=UTC)])
    monkeypatch.setattr(invoices_module, "utcnow", lambda: next(moments))
    sid = add_server(sim)
    billed_customer(sid, plan_id=plan())
    first = bill_customers(*NOV, actor="t").outcomes[0]
    second = bill_customers(date(2026, 12, 1), date(2026, 12, 31), actor="t").outcomes[0]
    assert (first.number, second.number) == ("2026-00001", "2027-00001")
    assert [(i.year, i.seq) for i in _stored()] == [(2026, 1), (2027, 1)]


@pytest.mark.parametrize(("tz_app", "day"), [
    ("Europe/Berlin", "2027-01-01"), ("UTC", "2026-12-31"),
], indirect=["tz_app"], ids=["Berlin", "UTC"])
def test_the_issued_day_is_the_billing_day_on_the_page_the_template_and_the_export(
    tz_app: Flask, sim: HostSim, monkeypatch: pytest.MonkeyPatch, day: str,
) -> None:
    """The day printed as "Issued" is the billing day whose year numbers the invoice: 2027-00001
    is not "Issued: 2026-12-31" in Berlin."""
    monkeypatch.setattr(invoices_module, "utcnow", lambda: NEW_YEARS_EVE_UTC)
    sid = add_server(sim)
    billed_customer(sid, plan_id=plan())
    [outcome] = bill_customers(*NOV, actor="t").outcomes
    assert outcome.invoice_id is not None
    session = get_state().session
    inv = session.get(Invoice, outcome.invoice_id)
    assert inv is not None
    assert invoice_context(session, inv).issued == day
    session.commit()
    rows = list(export_rows(NOV[0], fields=("number", "issued")))
    assert rows[1][1] == day
    page = tz_app.test_client().get(f"/billing/invoices/{outcome.invoice_id}")
    assert page.status_code == 200
    assert f"Issued: {day}" in page.get_data(as_text=True)


@pytest.mark.parametrize(("tz_app", "gone_on", "l3_line"), [
    # removed (last seen) on 15 November: 1-15 November, 30.00 x 15/30 = 15.00
    ("UTC", datetime(2026, 11, 15, 12, 0, tzinfo=UTC), [D("15.00")]),
    # removed on 15 October, before November: no day in November, no line (it used to be
    # billed the whole month, 30.00, because a removed list was left out of the run's lists
    # and a list assignment's missing list counted as there all month)
    ("UTC", datetime(2026, 10, 15, 12, 0, tzinfo=UTC), []),
], indirect=["tz_app"], ids=["removed-in-the-period", "removed-before-the-period"])
def test_a_list_assignment_of_a_removed_list_bills_only_the_days_the_list_existed(
    tz_app: Flask, sim: HostSim, gone_on: datetime, l3_line: list[Decimal],
) -> None:
    """docs/billing-rules.md choice 3: a list's removal bounds its days, whether it was removed
    inside the period or before it (a list assignment nobody ended)."""
    sid = add_server(sim)
    billed_customer(sid, plan_id=plan(bill_by_list=True), lists=("l2", "l3"))
    session = get_state().session
    session.execute(sa.update(MailingList).where(MailingList.name == "l3")
                    .values(status="removed", last_seen_at=gone_on, removed_at=gone_on))
    session.commit()
    [outcome] = bill_customers(*NOV, actor="t").outcomes
    assert outcome.status == "invoiced" and outcome.draft is not None
    lines = [(li.description, li.amount) for li in outcome.draft.lines]
    # l2: 30.00 x 30/30, 500 units under its 1,000: no overage
    assert lines[0] == ("Hosting plan Standard, list l2 on Lists", D("30.00"))
    assert [amount for text, amount in lines if "list l3" in text] == l3_line
    [inv] = _stored()
    assert inv.total == D("30.00") + sum(l3_line, D("0"))
