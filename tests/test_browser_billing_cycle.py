"""Issue 11's "Done when", in Chromium against a simulated server with a month of usage and a
real SMTP server (aiosmtpd): create a charge, add it to a billing group, run bills for last
month (in the background; the page refreshes until it is finished), view the invoice and open
its PDF (or read how to enable it), Test Selected Bills to a test address, Send Bills (each a
background send whose page refreshes until finished), read the send log on the invoice, send
again (skipped: sent already) and Resend from that send's page, void it with a reason, run
again: a new invoice number, the charge billed again."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from _pages import PAGES_CONFIG
from conftest import build_app
from flask import Flask
from test_billing_send import Inbox, smtp  # noqa: F401  (fixture)
from test_browser import _shot, browser_page  # noqa: F401  (fixtures)
from werkzeug.serving import make_server

from lm_billing_plugin.billing.runs import last_month
from lm_billing_plugin.billing.sending import weasyprint_module
from lm_billing_plugin.testing.simulator import HostSim
from lm_billing_plugin.web.views.runs import shutdown_executor
from tests._billing import add_server, billed_customer, dataset, plan

COMMENTS_HTML = "<p><em>Thank you</em> for your business.</p>"
MAIL_CONFIG: dict[str, Any] = {
    "LM_BILLING_SMTP_HOST": "127.0.0.1", "LM_BILLING_SMTP_TIMEOUT": 5.0,
    "LM_BILLING_BILL_FROM_NAME": "Acme Hosting Billing",
    "LM_BILLING_BILL_FROM_EMAIL": "billing@hosting.example",
    "LM_BILLING_BILL_BOUNCE_EMAIL": "bounces@hosting.example",
}

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


@pytest.fixture
def live(tmp_path: Path, smtp: tuple[Inbox, int]  # noqa: F811
         ) -> Iterator[tuple[Flask, str]]:
    """test_browser's live app, with its mail going to the test's aiosmtpd server."""
    app = build_app(f"sqlite:///{tmp_path / 'browser.sqlite'}", **PAGES_CONFIG, **MAIL_CONFIG,
                    LM_BILLING_SMTP_PORT=smtp[1])
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="browser-app", daemon=True)
    thread.start()
    try:
        yield app, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
        shutdown_executor(app)


def _wait_sent(page: Any, summary: str) -> None:
    from playwright.sync_api import expect

    # The send goes on in the background; its page refreshes itself every 2 s until done.
    expect(page.locator("#lmb-progress")).to_contain_text("Finished", timeout=30_000)
    expect(page.locator("#lmb-progress")).to_contain_text(summary)


def _parts(message: EmailMessage) -> dict[str, EmailMessage]:
    """The message's leaf parts by content type."""
    return {part.get_content_type(): part for part in message.walk()
            if not part.is_multipart()}


def _wait_finished(page: Any) -> None:
    from playwright.sync_api import expect

    # The run goes on in the background; its page refreshes itself every 2 s until done.
    expect(page.locator("#lmb-progress")).to_contain_text("Finished", timeout=30_000)
    expect(page.locator("#lmb-progress")).to_contain_text("1 invoiced")


def test_charge_bill_run_invoice_pdf_test_send_send_void_run_again(
    live: tuple[Flask, str],
    browser_page: Any,  # noqa: F811
    sim: HostSim,
    smtp: tuple[Inbox, int],  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    app, base = live
    inbox, _port = smtp
    page = browser_page
    period = last_month()
    with app.app_context():
        sid = add_server(sim)  # registered and synced: the gate lets it bill
        # 30.00 a month, 1,000 included, 2.00/k; bills to two addresses
        billed_customer(sid, "Acme", plan_id=plan(), email="bills@acme.example",
                        additional_emails="ledger@acme.example")

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

    # Test Selected Bills: only the test address gets it; the invoice is not sent.
    page.get_by_role("link", name="Send", exact=True).click()
    expect(page.get_by_label(f"Select invoice {first_number}")).to_be_checked()
    page.get_by_label("Test Email Address").fill("qa@hosting.example")
    page.get_by_label("Message Comments (Text)").fill("Thank you for your business.")
    page.get_by_label("Message Comments (HTML)").fill(COMMENTS_HTML)
    page.get_by_role("button", name="Test Selected Bills").click()
    _wait_sent(page, "1 sent, 0 failed, 0 skipped")
    expect(page.locator("h1")).to_contain_text("Test send to qa@hosting.example")
    assert [rcpt for _, rcpt, _ in inbox.messages] == [["qa@hosting.example"]]
    assert inbox.messages[0][2]["Subject"] == f"[TEST] Invoice {first_number} for Acme"

    # Send Bills: to the customer's Email Address and Additional Email Addresses.
    page.get_by_role("link", name="Billing: Customers: Send").click()
    expect(page.get_by_label(f"Select invoice {first_number}")).to_be_checked()  # test-sent
    page.get_by_label("Message Comments (Text)").fill("Thank you for your business.")
    page.get_by_label("Message Comments (HTML)").fill(COMMENTS_HTML)
    page.get_by_role("button", name="Send Bills").click()
    _wait_sent(page, "1 sent, 0 failed, 0 skipped")
    row = page.locator("tbody tr", has_text=first_number)
    expect(row).to_contain_text("bills@acme.example, ledger@acme.example")
    expect(row.locator("td").nth(1)).to_have_text("sent")
    _shot(page, "send-finished")
    assert len(inbox.messages) == 2
    mail_from, rcpt, message = inbox.messages[1]
    assert mail_from == "bounces@hosting.example"  # the Message Bounce Email Address
    assert sorted(rcpt) == ["bills@acme.example", "ledger@acme.example"]
    assert message["From"] == "Acme Hosting Billing <billing@hosting.example>"
    assert message["To"] == "bills@acme.example, ledger@acme.example"
    assert message["Subject"] == f"Invoice {first_number} for Acme"
    parts = _parts(message)
    text, html = parts["text/plain"].get_content(), parts["text/html"].get_content()
    assert text.startswith("Thank you for your business.") and "Total: USD 82.60" in text
    assert "<em>Thank you</em>" in html and first_number in html and "Setup Fee" in html
    if weasyprint_module() is not None:
        attached = parts["application/pdf"]
        assert attached.get_filename() == f"invoice-{first_number}.pdf"
        assert attached.get_content()[:5] == b"%PDF-"
    else:
        assert "application/pdf" not in parts

    # The invoice's send log: the real send (newest first), then the test one.
    row.get_by_role("link", name=first_number).click()
    log = page.locator("table", has=page.locator("caption", has_text="Send log"))
    expect(log.locator("tbody tr")).to_have_count(2)
    expect(log.locator("tbody tr").nth(0)).to_contain_text("real")
    expect(log.locator("tbody tr").nth(0)).to_contain_text("ledger@acme.example")
    expect(log.locator("tbody tr").nth(0)).to_contain_text("accepted by 127.0.0.1")
    expect(log.locator("tbody tr").nth(1)).to_contain_text("test-sent")
    expect(log.locator("tbody tr").nth(1)).to_contain_text("qa@hosting.example")
    expect(page.locator("body")).to_contain_text("status: sent")

    # Sent once: Send Bills again skips it; Resend on that send's page sends it again.
    page.get_by_role("link", name="Send", exact=True).click()
    page.get_by_label(f"Select invoice {first_number}").check()
    page.get_by_role("button", name="Send Bills").click()
    _wait_sent(page, "0 sent, 0 failed, 1 skipped")
    expect(page.locator("tbody tr", has_text=first_number)).to_contain_text("already sent")
    assert len(inbox.messages) == 2
    page.get_by_role("button", name=f"Resend invoice {first_number}").click()
    _wait_sent(page, "1 sent, 0 failed, 0 skipped")
    assert len(inbox.messages) == 3
    assert sorted(inbox.messages[2][1]) == ["bills@acme.example", "ledger@acme.example"]
    page.locator("tbody tr", has_text=first_number).get_by_role(
        "link", name=first_number).click()

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
