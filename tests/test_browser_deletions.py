"""Delete Them in a real browser (Debian's Chromium through Playwright, the host app on
127.0.0.1, simulated servers): Find Member, tick, confirm, the delete run's progress page
until it finishes, its CSV link; and the Servers page's status filter from the Overview. No
console errors on the way."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from _pages import add_server
from flask import Flask
from test_browser import browser_page, live  # noqa: F401 (the browser tests' fixtures)

from lm_billing_plugin.testing.simulator import Dataset, HostSim

pytestmark = pytest.mark.browser

PAT = "pat.jones@example.org"


def _console_errors(page: Any) -> list[str]:
    """Console errors and failed resources; the test host has no /favicon.ico (the host's
    business, not the plugin's), so that one request is not counted."""
    errors: list[str] = []

    def on_console(msg: Any) -> None:
        location = (msg.location or {}).get("url", "")
        if msg.type == "error" and not location.endswith("/favicon.ico"):
            errors.append(f"{msg.text} ({location})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Which resource failed (the console names only the status).
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400
            else None)
    return errors


def test_delete_them_runs_in_the_background_and_shows_each_list(
    live: tuple[Flask, str],  # noqa: F811
    browser_page: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    app, base = live
    page = browser_page
    errors = _console_errors(page)
    with HostSim(Dataset.generate(sites=2, lists=12, seed=7)) as one, \
            HostSim(Dataset.generate(sites=2, lists=12, seed=8)) as two:
        add_server(app, "one", port=one.port)
        add_server(app, "two", port=two.port)
        before = len(one.members_of(PAT)) + len(two.members_of(PAT))
        page.goto(f"{base}/billing/utilities/find-member")
        page.get_by_label("Member's email address").fill(PAT)
        page.get_by_role("button", name="Find", exact=True).click()
        boxes = page.locator('input[name="membership"]')
        expect(boxes.first).to_be_visible()
        assert boxes.count() == before >= 2
        boxes.nth(0).check()
        boxes.nth(boxes.count() - 1).check()
        page.get_by_role("button", name="Delete Them").click()
        expect(page.locator("h1")).to_contain_text("on 2 servers?")
        page.get_by_role("button", name=re.compile(r"^Delete 2 memberships")).click()
        # The run's page refreshes itself until the servers have answered.
        expect(page).to_have_url(re.compile(r"/billing/utilities/deletions/\d+$"))
        expect(page.locator("#lmb-delete-summary")).to_contain_text(
            "Deleted 2; 0 already gone; 0 failed.", timeout=20_000)
        rows = page.locator("#lmb-deleted tbody tr")
        assert rows.count() == 2
        expect(rows.first).to_contain_text("deleted")
        assert len(one.members_of(PAT)) + len(two.members_of(PAT)) == before - 2
        with page.expect_download() as info:
            page.get_by_role("link", name="Download this as CSV").click()
        saved = tmp_path / "deleted.csv"
        info.value.save_as(saved)
        lines = saved.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("at,actor,server,list,email,outcome") and len(lines) == 3
    assert errors == []


def test_overview_status_bar_opens_the_filtered_servers_page(
    live: tuple[Flask, str],  # noqa: F811
    browser_page: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    app, base = live
    page = browser_page
    errors = _console_errors(page)
    add_server(app, "fine", status="ok")
    add_server(app, "gone", status="unreachable")
    add_server(app, "dark", status="unreachable")
    page.goto(f"{base}/billing/overview")
    # The bar's row in the chart's table (the bar itself links to the same URL).
    page.locator('table a[href$="?status=unreachable"]').first.click()
    expect(page).to_have_url(re.compile(r"/billing/\?status=unreachable$"))
    names = page.locator("#lmb-servers tbody th[scope=row]")
    expect(names).to_have_count(2)
    assert sorted(names.all_inner_texts()) == ["dark", "gone"]
    expect(page.locator("#lmb-status-filter")).to_contain_text("unreachable (2)")
    page.get_by_role("link", name="all", exact=True).click()
    expect(names).to_have_count(3)
    assert errors == []
