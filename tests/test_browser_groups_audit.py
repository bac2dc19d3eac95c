"""The Billing Groups and Audit log pages in Chromium at 1280 and 390 px: reached from the
menu, filtered with the page's own form, a bad date answered next to its field, the CSV
link downloads what the filter shows, and no page wider than the screen (tables scroll in
their own box)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import build_app, skip_or_fail
from test_browser import CHROMIUM, CHROMIUM_ARGS
from test_layout import _new_page, _overflow, serve

from lm_billing_plugin import audit
from lm_billing_plugin.models import (
    Assignment,
    BillingGroup,
    Customer,
    HostingPlan,
    MailingList,
    Server,
)
from lm_billing_plugin.state import get_state
from lm_billing_plugin.web.views.runs import shutdown_executor

pytestmark = pytest.mark.browser
LONG = "Cyberdyne" + "q" * 190  # no break opportunity


@pytest.fixture
def chromium() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        skip_or_fail(f"{CHROMIUM} is not installed (apt install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    app = build_app(f"sqlite:///{tmp_path / 'pages.sqlite'}")
    with app.app_context():
        s = get_state(app).session
        server = Server(name="Lists", host="127.0.0.1")
        plan = HostingPlan(name="Platinum" + "x" * 192)
        s.add_all([server, plan])
        s.flush()
        lst = MailingList(server_id=server.id, name="news", site_name="s1")
        s.add(lst)
        for name in (LONG, "Acme Publishing", "Initech"):
            customer = Customer(company=name)
            s.add(customer)
            s.flush()
            group = BillingGroup(customer_id=customer.id, name=f"{name} newsletters",
                                 plan_id=plan.id if name != "Initech" else None)
            s.add(group)
            s.flush()
            audit.record(s, actor="alice" if name != LONG else "u" * 200,
                         action="group_create", object_type="group", object_id=group.id,
                         at=datetime(2026, 3, 1, 12, tzinfo=UTC))
        s.flush()
        s.add(Assignment(group_id=group.id, object_type="list", server_id=server.id,
                         list_id=lst.id, start_date=date(2026, 1, 1)))
        audit.record(s, actor="bob", action="assign", object_type="group", object_id=group.id,
                     server_id=server.id, at=datetime(2026, 3, 5, 9, tzinfo=UTC))
        s.commit()
    server_, base = serve(app)
    try:
        yield base
    finally:
        server_.shutdown()
        server_.server_close()
        shutdown_executor(app)


def _fits(page: Any) -> None:
    size = _overflow(page)
    assert size["scroll"] <= size["inner"], size


@pytest.mark.parametrize("width", [1280, 390])
def test_billing_groups_page_in_chromium(site: str, chromium: Any, width: int) -> None:
    from playwright.sync_api import expect

    page: Any = _new_page(chromium, width)
    page.goto(f"{site}/billing/overview")
    page.locator("nav").get_by_role("link", name="Billing Groups").click()
    expect(page.get_by_role("heading", name="Billing: Billing Groups")).to_be_visible()
    table = page.locator("#lmb-billing-groups")
    expect(table.locator("tbody tr")).to_have_count(3)
    _fits(page)
    assert LONG in page.inner_text("main")  # wrapped inside its cell, not cut
    page.get_by_label("Customer").fill("initech")
    page.get_by_role("button", name="Filter").click()
    expect(table.locator("tbody tr")).to_have_count(1)
    row = table.locator("tbody tr").first
    expect(row).to_contain_text("no plan today")
    expect(row.locator("td.lmb-num").first).to_have_text("1")
    row.get_by_role("link", name="Initech newsletters").click()
    expect(page.get_by_role("heading", name="Initech", exact=False).first).to_be_visible()
    assert "#lmb-group-" in page.url


@pytest.mark.parametrize("width", [1280, 390])
def test_audit_log_page_in_chromium(site: str, chromium: Any, width: int,
                                    tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page: Any = _new_page(chromium, width)
    page.goto(f"{site}/billing/overview")
    page.locator("nav").get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", name="Billing: Audit log")).to_be_visible()
    rows = page.locator("#lmb-audit tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.first).to_contain_text("bob")  # newest first
    expect(rows.first.locator("time")).to_have_attribute("datetime", "2026-03-05T09:00:00Z")
    _fits(page)
    # A date that is not one: said next to the field, nothing else shown.
    page.get_by_label("From").fill("2026-02-30")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#start-error")).to_contain_text("Not a valid date value.")
    expect(page.locator("#lmb-audit")).to_have_count(0)
    _fits(page)
    page.get_by_label("From").fill("2026-03-02")
    page.get_by_label("Action").select_option(label="assigned")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    with page.expect_download() as download:
        page.get_by_role("link", name="Download these 1 entries as CSV").click()
    saved = tmp_path / "audit.csv"
    download.value.save_as(saved)
    lines = saved.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and ",bob," in lines[1] and ",assign," in lines[1]


def test_sync_all_sits_beside_validate_all(site: str, chromium: Any) -> None:
    page: Any = _new_page(chromium, 390)
    page.goto(f"{site}/billing/")
    actions = page.locator(".lmb-actions")
    names = [b.inner_text() for b in actions.get_by_role("button").all()]
    assert names.index("Sync All Servers") == names.index("Validate All Servers") + 2
    _fits(page)

