"""The bill-run service on a real simulator and real databases: invoices stored whole, skips with
their reasons, idempotence, one-time charges, carry-over, void + run again, dry runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin.billing.invoices import invoice_lines, void_invoice
from lm_billing_plugin.billing.runs import bill_customers, last_month, rerun_invoice, run_bill_run
from lm_billing_plugin.engine import batches
from lm_billing_plugin.models import (
    Assignment,
    BillingGroup,
    ChargeAssignment,
    Invoice,
    InvoiceLine,
    InvoiceSequence,
    InvoiceUsage,
    Server,
)
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import HostSim
from tests._billing import (
    NOV,
    OCT,
    add_server,
    billed_customer,
    charge,
    dataset,
    month_of_sending,
    plan,
)

D = Decimal


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(dataset()) as server:
        month_of_sending(server)
        yield server


@pytest.fixture
def bapp(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    app = make_app()
    with app.app_context():
        yield app


@pytest.fixture
def dbapp(any_db_app: Flask) -> Iterator[Flask]:
    with any_db_app.app_context():
        yield any_db_app


def invoices() -> list[Invoice]:
    session = get_state().session
    rows = list(session.scalars(sa.select(Invoice).order_by(Invoice.id)))
    session.commit()
    return rows


def count(model: Any) -> int:
    session = get_state().session
    n = int(session.scalar(sa.select(sa.func.count()).select_from(model)) or 0)
    session.commit()
    return n


def test_last_month_is_the_previous_calendar_month() -> None:
    december = last_month(date(2026, 12, 1))
    assert (december.start, december.end) == NOV
    period = last_month(date(2026, 3, 15))
    assert (period.start, period.end) == (date(2026, 2, 1), date(2026, 2, 28))


def test_a_run_bills_the_period_once(dbapp: Flask, sim: HostSim) -> None:
    sid = add_server(sim)
    cid, _gid = billed_customer(sid, plan_id=plan())
    result = bill_customers(*NOV, actor="alice")
    assert result.exit_code == 0
    doc = result.to_json()
    assert doc["skipped"] == []
    [inv] = doc["invoices"]
    assert inv["total"] == "32.00" and inv["currency"] == "USD"
    assert inv["number"] == "2026-00001"
    assert [(li["kind"], li["quantity"], li["unit_price"], li["amount"]) for li in inv["lines"]] \
        == [("plan", "1.000", "30.00", "30.00"), ("overage", "1.000", "2.00", "2.00")]
    [stored] = invoices()
    assert stored.customer_id == cid and stored.status == "issued"
    assert stored.total == D("32.00") and stored.created_by == "alice"
    session = get_state().session
    usage = {(u.list_name, u.recipients, u.units) for u in
             session.scalars(sa.select(InvoiceUsage))}
    assert usage == {("l1", 1500, D("1500.000")), ("l2", 500, D("500.000"))}
    session.commit()

    again = bill_customers(*NOV, actor="bob")
    assert [(o.status, o.number) for o in again.outcomes] == [("already_billed", "2026-00001")]
    assert "Already billed" in again.to_json()["skipped"][0]["reason"]
    assert again.exit_code == 0
    assert len(invoices()) == 1 and count(InvoiceLine) == 2
    seq = get_state().session.scalar(sa.select(InvoiceSequence.last_seq))
    assert seq == 1


def _free(sid: int) -> None:
    billed_customer(sid, "Gratis", plan_id=plan(), payment_method="Free")


def _no_group(sid: int) -> None:
    from tests._billing import customer

    customer("Lonely")


def _no_plan(sid: int) -> None:
    billed_customer(sid, "Planless", plan_id=None)


def _never_validated(sid: int) -> None:
    session = get_state().session
    _cid, gid = billed_customer(sid, "Elsewhere", plan_id=plan())
    other = Server(name="Never", host="127.0.0.1", port=1)
    session.add(other)
    session.flush()
    # An assignment made before the gate existed (a data import): the run still refuses it.
    session.add(Assignment(group_id=gid, object_type="server", server_id=other.id,
                           start_date=date(2026, 1, 1)))
    session.commit()


def _drift(sid: int, sim: HostSim) -> None:
    billed_customer(sid, "Drifting", plan_id=plan())
    sim.add_list("surprise", site="s1")
    batches.validate_servers([sid], actor="t")


def _unreadable(sid: int, sim: HostSim) -> None:
    billed_customer(sid, "Unread", plan_id=plan())
    sim.stop()


SKIPS: list[tuple[str, Callable[..., None], str, str]] = [
    ("free", _free, "free", "Payment Method is Free"),
    ("no_group", _no_group, "no_group", "add a billing group"),
    ("no_plan", _no_plan, "no_plan", "has no hosting plan"),
    ("never_validated", _never_validated, "gate", "Validate and sync server 'Never' first"),
    ("drift", _drift, "gate", "open drift problem"),
    ("unreadable", _unreadable, "usage", "could not be read for the period's usage (REFUSED)"),
]


@pytest.mark.parametrize(("name", "setup", "code", "words"), SKIPS, ids=[s[0] for s in SKIPS])
def test_skipped_customers_say_why_and_what_to_do(
    bapp: Flask, sim: HostSim, name: str, setup: Callable[..., None], code: str, words: str,
) -> None:
    sid = add_server(sim)
    if setup in (_drift, _unreadable):
        setup(sid, sim)
    else:
        setup(sid)
    result = bill_customers(*NOV, actor="t")
    [outcome] = result.outcomes
    assert (outcome.status, outcome.code) == ("skipped", code)
    assert outcome.reason is not None and words in outcome.reason
    assert invoices() == []
    assert result.exit_code == (0 if code == "free" else 1)


def test_one_customer_skipped_does_not_stop_the_others(bapp: Flask, sim: HostSim) -> None:
    sid = add_server(sim)
    p = plan()
    billed_customer(sid, "Acme", plan_id=p)
    billed_customer(sid, "Planless", plan_id=None, lists=("l3",))
    result = bill_customers(*NOV, actor="t")
    assert [(o.company, o.status) for o in result.outcomes] == [
        ("Acme", "invoiced"), ("Planless", "skipped")]
    assert result.exit_code == 1


def test_dry_run_computes_and_stores_nothing(bapp: Flask, sim: HostSim) -> None:
    sid = add_server(sim)
    _cid, gid = billed_customer(sid, plan_id=plan())
    ca = charge(gid, "Setup Fee", "50.00", date(2026, 11, 3))
    result = bill_customers(*NOV, actor="t", dry_run=True)
    [o] = result.outcomes
    assert o.status == "dry_run" and o.draft is not None and o.draft.total == D("82.00")
    assert result.to_json()["invoices"][0]["total"] == "82.00"
    assert result.to_json()["invoices"][0]["number"] is None
    assert invoices() == [] and count(InvoiceSequence) == 0
    assert get_state().session.get(ChargeAssignment, ca).invoice_id is None


def test_one_time_charge_billed_once_and_again_after_void(bapp: Flask, sim: HostSim) -> None:
    sid = add_server(sim)
    _cid, gid = billed_customer(sid, plan_id=plan())
    ca = charge(gid, "Setup Fee", "50.00", date(2026, 10, 3))
    oct_run = bill_customers(*OCT, actor="t")
    assert oct_run.outcomes[0].draft is not None
    # October: plan 30.00 + setup 50.00 (the Oct 31 mailing: 10,000 units, 9,000 over: 18.00).
    assert oct_run.outcomes[0].draft.total == D("98.00")
    first = invoices()[0]
    session = get_state().session
    assert session.get(ChargeAssignment, ca).invoice_id == first.id
    session.commit()
    nov = bill_customers(*NOV, actor="t").outcomes[0]
    assert nov.draft is not None
    assert [li.kind for li in nov.draft.lines] == ["plan", "overage"]  # not billed again

    void_invoice(first.number, reason="wrong address", actor="carol")
    voided = get_state().session.get(Invoice, first.id)
    assert (voided.status, voided.voided_by, voided.void_reason) == ("void", "carol",
                                                                     "wrong address")
    assert voided.active_key is None and voided.voided_at is not None
    assert get_state().session.get(ChargeAssignment, ca).invoice_id is None
    get_state().session.commit()
    result = run_bill_run(rerun_invoice(first.number, actor="carol"))
    [again] = result.outcomes
    assert again.status == "invoiced" and again.number == "2026-00003"
    assert again.draft is not None and again.draft.total == D("98.00")
    assert get_state().session.get(ChargeAssignment, ca).invoice_id == again.invoice_id


def test_credit_is_carried_over_to_the_next_invoice(bapp: Flask, sim: HostSim) -> None:
    sid = add_server(sim)
    _cid, gid = billed_customer(sid, plan_id=plan())
    charge(gid, "Prepaid", "-150.00", date(2026, 10, 1))
    oct_result = bill_customers(*OCT, actor="t").outcomes[0]
    assert oct_result.draft is not None
    # 30.00 + 18.00 overage - 150.00 = -102.00: the total is 0.00, 102.00 carried over.
    assert oct_result.draft.total == D("0.00")
    assert oct_result.draft.carried_over == D("102.00")
    nov = bill_customers(*NOV, actor="t").outcomes[0]
    assert nov.draft is not None
    assert [(li.description, li.amount) for li in nov.draft.lines[-2:]] == [
        ("Credit carried over from invoice 2026-00001", D("-102.00")),
        ("Credit carried over to the next invoice", D("70.00"))]
    # 32.00 - 102.00 = -70.00: carried again.
    assert nov.draft.total == D("0.00") and nov.draft.carried_over == D("70.00")
    stored = invoices()
    assert stored[1].carried_from_id == stored[0].id
    session = get_state().session
    lines = invoice_lines(session, stored[1].id)
    assert sum(li.amount for li in lines) == D("0.00")


def test_selected_customers_only(bapp: Flask, sim: HostSim) -> None:
    sid = add_server(sim)
    p = plan()
    a, _ = billed_customer(sid, "Acme", plan_id=p, lists=("l1",))
    billed_customer(sid, "Beta", plan_id=p, lists=("l2",))
    result = bill_customers(*NOV, [a], actor="t")
    assert [o.company for o in result.outcomes] == ["Acme"]
    assert [i.company for i in invoices()] == ["Acme"]


def test_plan_history_from_the_group_page_fields_is_what_billing_reads(
    bapp: Flask, sim: HostSim,
) -> None:
    from lm_billing_plugin.catalog.groups import plan_history, update_group

    sid = add_server(sim)
    cheap, dear = plan("Cheap", monthly_price=D("10.00")), plan("Dear", monthly_price=D("40.00"))
    _cid, gid = billed_customer(sid, plan_id=cheap)
    group = get_state().session.get(BillingGroup, gid)
    update_group(group, {"plan_id": dear, "plan_start": date(2026, 11, 16), "plan_end": None},
                 actor="t")
    terms = [(t.plan_id, t.start_date, t.end_date) for t in
             plan_history(get_state().session, gid)]
    assert terms == [(cheap, date(2026, 1, 1), date(2026, 11, 15)),
                     (dear, date(2026, 11, 16), None)]
    assert (group.plan_id, group.plan_start) == (dear, date(2026, 11, 16))
    [o] = bill_customers(*NOV, actor="t").outcomes
    assert o.draft is not None
    assert [li.amount for li in o.draft.lines if li.kind == "plan"] == [D("5.00"), D("20.00")]
