"""Issue 11's "Done when", in Chromium against a simulated server with a month of usage:
create a charge, add it to a billing group, run bills for last month (in the background; the
page refreshes until it is finished), view the invoice and open its PDF (or read how to enable
it), void it with a reason, run again: a new invoice number, the charge billed again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from test_browser import _shot, browser_page, live  # noqa: F401  (fixtures)

from lm_billing_plugin.billing.runs import last_month
from lm_billing_plugin.testing.simulator import HostSim
from tests._billing import add_server, billed_customer, dataset, plan

pytestmark = pytest.mark.browser


@pytest.fixture
def sim() -> Iterator[HostSim]:
    period = last_month()
    with HostSim(dataset()) as server:
        # Last month: l1 1,500 recipients, l2 800 (2,300 units: 1,300 over the 1,000
        # included); the month before and this month: lots, which must not count.
        server.add_send("l1", period.start + timedelta(days=3), 1500, 1000)
        server.add_send("l2", period.end, 800, 1000)
        server.add_send("l1", period.start - timedelta(days=1), 50_000, 1000)
        server.add_send("l2", period.end + timedelta(days=1), 50_000, 1000)
        yield server


def _wait_finished(page: Any) -> None:
    from playwright.sync_api import expect

    # The run goes on in the background; its page refreshes itself every 2 s until done.
    expect(page.locator("#lmb-progress")).to_contain_text("Finished", timeout=30_000)
    expect(page.locator("#lmb-progress")).to_contain_text("1 invoiced")


def test_charge_bill_run_invoice_pdf_void_run_again(
    live: tuple[Flask, str],  # noqa: F811
    browser_page: Any,  # noqa: F811
    sim: HostSim,
) -> None:
    from playwright.sync_api import expect

    app, base = live
    page = browser_page
    period = last_month()
    with app.app_context():
        sid = add_server(sim)  # registered and synced: the gate lets it bill
        billed_customer(sid, "Acme", plan_id=plan())  # 30.00 a month, 1,000 included, 2.00/k

    page.goto(f"{base}/billing/charges")
    page.get_by_role("link", name="Create New Additional Charge").click()
    page.get_by_label("Name", exact=True).fill("Setup Fee")
    page.get_by_label("Default Amount").fill("50")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#lmb-charges")).to_contain_text("Setup Fee")

    page.goto(f"{base}/billing/customers")
    page.get_by_role("link", name="Acme", exact=True).click()
    page.get_by_role("link", name="Add Additional Charge to Main").click()
    page.get_by_label("Additional Charge").select_option(label="Setup Fee (50.00)")
    page.get_by_label("Start Date").fill(period.start.isoformat())
    page.get_by_role("button", name="Add Additional Charge").click()
    expect(page.locator(".lmb-flash").first).to_contain_text("Additional charge added")

    page.goto(f"{base}/billing/bills")
    page.get_by_role("button", name="Bill All in View").click()
    expect(page.get_by_label("Start Date")).to_have_value(period.start.isoformat())
    expect(page.get_by_label("End Date")).to_have_value(period.end.isoformat())
    page.get_by_role("button", name="Run All Customers").click()
    _wait_finished(page)
    # 30.00 plan + 1,300 over at 2.00 a thousand (2.60) + the 50.00 one-time charge.
    first_link = page.locator("table a[href*='/billing/invoices/']").first
    expect(first_link).to_contain_text("$82.60")
    first_number = first_link.inner_text().split(":")[0].strip()
    _shot(page, "bill-run-finished")
    first_link.click()

    expect(page.locator("main, body").first).to_contain_text(first_number)
    expect(page.locator("body")).to_contain_text("Setup Fee")
    pdf = page.get_by_role("link", name="PDF", exact=True)
    if pdf.count():
        href = pdf.get_attribute("href")
        assert href
        response = page.request.get(base + href)
        assert response.ok, response.status
        assert response.headers["content-type"] == "application/pdf"
        assert response.body()[:5] == b"%PDF-"
    else:  # WeasyPrint (or pango) missing: the page says how to enable PDFs
        expect(page.locator("body")).to_contain_text("pip install 'lm-billing-plugin[pdf]'")
    _shot(page, "invoice")

    page.get_by_label("Reason").fill("Wrong start date of the setup fee")
    page.get_by_role("button", name="Void").click()
    expect(page.locator(".lmb-flash").first).to_contain_text(f"Invoice {first_number} is void")
    page.get_by_role("button", name="Run again").click()
    _wait_finished(page)
    again = page.locator("table a[href*='/billing/invoices/']").first
    # The void invoice gave its one-time charge back: the new invoice bills it again.
    expect(again).to_contain_text("$82.60")
    second_number = again.inner_text().split(":")[0].strip()
    assert second_number and second_number != first_number
    again.click()
    expect(page.locator("body")).to_contain_text(second_number)
    expect(page.get_by_role("button", name="Void")).to_be_visible()
    assert page.lmb_dialogs == []
