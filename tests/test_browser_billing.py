"""The billing pages in Chromium: create an Additional Charge, add it to a billing group, and
edit an invoice template with its preview (a sandboxed frame, hostile data shown as text)."""

from __future__ import annotations

from typing import Any

import pytest
from _pages import add_group
from flask import Flask
from test_browser import _shot, browser_page, live  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser


def test_charge_group_charge_and_template_preview(
    live: tuple[Flask, str],  # noqa: F811
    browser_page: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    app, base = live
    page = browser_page
    add_group(app, "Acme <script>alert(1)</script>", "Newsletters")

    page.goto(f"{base}/billing/charges")
    page.get_by_role("link", name="Create New Additional Charge").click()
    page.get_by_label("Name", exact=True).fill("Setup Fee")
    page.get_by_label("Default Amount").fill("50")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#lmb-charges")).to_contain_text("Setup Fee")
    # The same name in other letters is refused next to the field.
    page.get_by_role("link", name="Create New Additional Charge").click()
    page.get_by_label("Name", exact=True).fill(" setup FEE ")
    page.get_by_label("Default Amount").fill("5")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#name-error")).to_contain_text("with this name exists")

    page.goto(f"{base}/billing/customers")
    page.get_by_role("link", name="Acme <script>alert(1)</script>", exact=True).click()
    page.get_by_role("link", name="Add Additional Charge to Newsletters").click()
    page.get_by_label("Additional Charge").select_option(label="Setup Fee (50.00)")
    page.get_by_label("Start Date").fill("2026-03-01")
    page.get_by_role("button", name="Add Additional Charge").click()
    expect(page.locator(".lmb-flash").first).to_contain_text("Additional charge added")
    expect(page.locator("table[id^=lmb-group-charges]")).to_contain_text("Setup Fee")
    _shot(page, "group-charges")

    page.goto(f"{base}/billing/invoice-templates")
    page.get_by_role("link", name="Create New Web Invoice Template").click()
    page.get_by_label("Name", exact=True).fill("Branded")
    page.get_by_label("Template").fill(
        "<h1>Invoice {{ invoice.number }}</h1><p>{{ invoice.customer.company }}</p>"
        "<script>parent.document.title='pwned'</script>")
    page.get_by_role("button", name="Preview").click()
    frame = page.frame_locator("#lmb-preview iframe")
    expect(frame.locator("h1")).to_contain_text("Invoice")
    expect(frame.locator("p")).to_contain_text("Example Publishing")
    page.get_by_label("Template").fill("line one\n{{ ''.__class__.__mro__ }}")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#body-error")).to_contain_text("Line 2: not allowed")
    page.get_by_label("Template").fill("<p>{{ invoice.total }}</p>")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".lmb-flash").first).to_contain_text("Branded saved")
    _shot(page, "invoice-template")
    assert page.title() != "pwned"
    assert page.lmb_dialogs == []
