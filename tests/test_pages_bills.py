"""The Bill, Run Billing, bill-run, Invoice (page and PDF) and Export pages, and the customer's
history, on a simulated server: run bills in the background, void, run again."""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Callable, Iterator
from datetime import date

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin.models import Customer, Invoice
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import HostSim
from lm_billing_plugin.web.views.runs import shutdown_executor, wait_for_batches
from tests._billing import add_server, billed_customer, customer, dataset, month_of_sending, plan
from tests._pages import post


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(dataset()) as server:
        month_of_sending(server)
        yield server


@pytest.fixture
def papp(app: Flask, sim: HostSim) -> Iterator[Flask]:
    with app.app_context():
        sid = add_server(sim)
        billed_customer(sid, plan_id=plan())
        customer("Lonely")
    yield app
    shutdown_executor(app)


def text(response: object) -> str:
    body = response.get_data(as_text=True)  # type: ignore[attr-defined]
    return html.unescape(re.sub(r"\s+", " ", body))


def run_november(client: FlaskClient, app: Flask, **extra: str) -> str:
    page = client.get("/billing/bills/run?show=all")
    assert page.status_code == 200
    assert 'value="2026-11-01"' in page.get_data(as_text=True)  # default: last month
    data = {"start": "2026-11-01", "end": "2026-11-30", "customer_ids": "",
            "run_all": "Run All Customers", **extra}
    started = post(client, "/billing/bills/run?show=all", data,
                   token_from="/billing/bills/run?show=all")
    assert started.status_code == 302, text(started)
    wait_for_batches(app)
    return str(started.headers["Location"])


def test_run_bills_view_the_invoice_void_and_run_again(papp: Flask, client: FlaskClient
                                                       ) -> None:
    bill = text(client.get("/billing/bills?show=all"))
    assert "Bill All in View" in bill and "Bill Selected Customers" in bill
    assert "never billed" in bill
    for label in ("All Customers", "Active Customers", "Inactive Customers",
                  "Start Date After", "Active Before"):
        assert label in bill

    dry_url = run_november(client, papp, dry_run="y")
    dry = text(client.get(dry_url))
    assert "Dry run" in dry and "would bill $32.00" in dry
    with papp.app_context():
        assert get_state().session.query(Invoice).count() == 0

    result = text(client.get(run_november(client, papp)))
    assert "Finished: 2 of 2 customers done" in result
    assert "2026-00001: $32.00" in result
    assert "Lonely" in result and "No billing group: add a billing group" in result
    with papp.app_context():
        inv = get_state().session.query(Invoice).one()
        invoice_id = inv.id
    page = text(client.get(f"/billing/invoices/{invoice_id}"))
    assert "Invoice 2026-00001" in page and "Total: $32.00" in page
    assert "Hosting plan Standard" in page and "Main" in page  # grouped by billing group
    assert "1,500" in page or "1500" in page  # the usage behind the usage line
    pdf = client.get(f"/billing/invoices/{invoice_id}.pdf")
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
    assert pdf.data.startswith(b"%PDF")

    refused = post(client, f"/billing/invoices/{invoice_id}/void", {"reason": ""},
                   token_from=f"/billing/invoices/{invoice_id}")
    assert refused.status_code == 400 and "Give the reason" in text(refused)
    voided = post(client, f"/billing/invoices/{invoice_id}/void", {"reason": "wrong plan"},
                  token_from=f"/billing/invoices/{invoice_id}", follow=True)
    assert "is void" in text(voided) and "Run again" in text(voided)
    again = post(client, f"/billing/invoices/{invoice_id}/rerun", {},
                 token_from=f"/billing/invoices/{invoice_id}")
    assert again.status_code == 302
    wait_for_batches(papp)
    assert "2026-00002: $32.00" in text(client.get(again.headers["Location"]))

    with papp.app_context():
        customer_id = get_state().session.get(Invoice, invoice_id).customer_id
    history = text(client.get(f"/billing/customers/{customer_id}"))
    assert "2026-00001" in history and "2026-00002" in history
    assert "voided an invoice" in history and "wrong plan" in history

    export = client.get("/billing/invoices/export?download=1&start=2026-11-01"
                        "&field=number&field=amount&field=status")
    rows = list(csv.reader(io.StringIO(export.get_data(as_text=True))))
    assert rows[0] == ["number", "amount", "status"]
    assert ["2026-00001", "30.00", "void"] in rows and ["2026-00002", "2.00", "issued"] in rows
    form = text(client.get("/billing/invoices/export"))
    assert "Export Invoice Data" in form


def test_selected_customers_only(papp: Flask, client: FlaskClient) -> None:
    with papp.app_context():
        acme = get_state().session.scalar(
            sa.select(Customer.id).where(Customer.company == "Acme"))
    page = text(client.get(f"/billing/bills/run?show=all&scope=selected&customer_id={acme}"))
    assert "Run Selected Customers" in page and "Acme" in page
    started = post(client, "/billing/bills/run?show=all",
                   {"start": "2026-11-01", "end": "2026-11-30", "customer_ids": str(acme),
                    "run_selected": "Run Selected Customers"},
                   token_from="/billing/bills/run?show=all")
    wait_for_batches(papp)
    result = text(client.get(started.headers["Location"]))
    assert "1 of 1 customer done" in result and "Lonely" not in result
    bad = post(client, "/billing/bills/run", {"start": "2026-11-30", "end": "2026-11-01",
                                              "run_all": "Run All Customers"},
               token_from="/billing/bills/run")
    assert "The End Date must be on or after the Start Date." in text(bad)


def test_the_invoice_shows_a_cpm_unit_price_with_its_decimals(app: Flask, client: FlaskClient,
                                                              sim: HostSim) -> None:
    """billing-cycle.md §3: each line's unit price is on the invoice. An Overage CPM of 0.0125
    is shown as $0.0125 (it was $0.01, which times the quantity is not the amount)."""
    from decimal import Decimal

    from lm_billing_plugin.billing.runs import bill_customers

    with app.app_context():
        sid = add_server(sim)
        billed_customer(sid, plan_id=plan(overage_cpm=Decimal("0.0125"),
                                          monthly_price=Decimal("19.95")))
        [outcome] = bill_customers(date(2026, 11, 1), date(2026, 11, 30), actor="t").outcomes
        assert outcome.status == "invoiced"
        invoice_id = outcome.invoice_id
    page = text(client.get(f"/billing/invoices/{invoice_id}"))
    # November: 2,000 units, 1,000 included: 1,000 / 1,000 x 0.0125 = 0.0125 -> 0.01.
    assert re.search(r"Overage, Standard</td>\s*<td[^>]*>1</td>\s*<td[^>]*>\$0\.0125</td>"
                     r"\s*<td[^>]*>\$0\.01</td>", page), page
    # the plan line: 19.95 x 30/30, its unit price with the currency's two decimals
    assert re.search(r"Hosting plan Standard</td>\s*<td[^>]*>1</td>\s*<td[^>]*>\$19\.95</td>"
                     r"\s*<td[^>]*>\$19\.95</td>", page), page
    assert "Total: $19.96" in page


def test_amounts_keep_their_cents_in_a_currency_without_decimals(
    make_app: Callable[..., Flask], sim: HostSim,
) -> None:
    """billing-cycle.md §2 rounds every amount to cents; the invoice shows what it holds, also
    in yen (whose own format has no decimals): 19.95 + 0.01 = 19.96, not ¥20 = ¥20 + ¥0."""
    from decimal import Decimal

    from lm_billing_plugin.billing.runs import bill_customers

    app = make_app(LM_BILLING_CURRENCY="JPY")
    with app.app_context():
        sid = add_server(sim)
        billed_customer(sid, plan_id=plan(overage_cpm=Decimal("0.0125"),
                                          monthly_price=Decimal("19.95")))
        [outcome] = bill_customers(date(2026, 11, 1), date(2026, 11, 30), actor="t").outcomes
        invoice_id = outcome.invoice_id
    page = text(app.test_client().get(f"/billing/invoices/{invoice_id}"))
    assert "Total: ¥19.96" in page
    assert re.search(r"Overage, Standard</td>\s*<td[^>]*>1</td>\s*<td[^>]*>¥0\.0125</td>"
                     r"\s*<td[^>]*>¥0\.01</td>", page), page
    assert re.search(r"Hosting plan Standard</td>\s*<td[^>]*>1</td>\s*<td[^>]*>¥19\.95</td>"
                     r"\s*<td[^>]*>¥19\.95</td>", page), page
