"""Billing: Overview: servers by status, open problems by kind and server, validation and sync,
usage and revenue per month — as SVG bars with tooltips and links, and tables saying the same."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from test_browser import browser_page, live  # noqa: F401 (the browser test's fixtures)
from test_reports import THIS, get, seed, table_rows, text

from lm_billing_plugin.models import Problem, Server
from lm_billing_plugin.state import get_state


def add_trouble(app: Flask, servers: list[int]) -> None:
    with app.app_context():
        s = get_state(app).session
        statuses = {servers[0]: "ok", servers[1]: "host_denied"}
        for sid, status in statuses.items():
            server = s.get(Server, sid)
            assert server is not None
            server.status = status
            server.validated_at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        s.add(Server(name="never", host="127.0.0.1", comments=""))
        for n, kind in enumerate(["unassigned_list", "unassigned_list", "logging_off"]):
            s.add(Problem(fingerprint=f"p{n}", server_id=servers[n % 2], kind=kind,
                          object_type="list", object_name=f"l{n}", status="open"))
        s.add(Problem(fingerprint="closed", server_id=servers[0], kind="over_max_lists",
                      object_type="list", status="resolved"))
        s.commit()


def test_overview_figures_link_to_the_pages_behind_them(any_db_app: Flask) -> None:
    app = any_db_app
    ids = seed(app)["servers"]
    add_trouble(app, ids)
    page = text(get(app, "/billing/overview"))
    assert table_rows(page, "lmb-status-table") == [
        ["reachable", "1"], ["refused", "1"], ["unreachable", "0"], ["logging off", "0"],
        ["not checked", "1"], ["other trouble", "0"]]
    assert "<title>refused: 1 server (refused: not in TCLPORT Hosts: 1)</title>" in page
    assert table_rows(page, "lmb-kinds-table") == [["list has no owner", "2"],
                                                   ["Enable Logging is off", "1"]]
    assert 'href="/billing/errors?kind=unassigned_list"' in page
    assert table_rows(page, "lmb-problem-servers-table") == [["srv1", "2"], ["srv2", "1"]]
    assert f'href="/billing/errors?server={ids[0]}"' in page
    assert "3 open" in page and "Errors Were Found, Click Here to Fix" in page
    # Validation: the newest, and the servers never validated.
    fleet = page[page.index('id="lmb-last-validation"'):]
    assert fleet.startswith('id="lmb-last-validation"><time datetime="2026-03-01T12:00:00')
    assert "1 never validated" in fleet[:400]
    assert "Next scheduled run" in page
    # Usage: 8 lists x 2 messages this month; revenue from issued invoices only.
    month = THIS.strftime("%Y-%m")
    assert table_rows(page, "lmb-messages-table")[-1] == [month, "16"]
    assert len(table_rows(page, "lmb-messages-table")) == 12
    assert f"<title>{month}: 16 messages</title>" in page
    assert f"/billing/reports/usage?start={month}&end={month}&by=server" in page
    assert table_rows(page, "lmb-revenue-eur-table")[-1] == [month, "150.50"]


def test_overview_of_one_server(app: Flask) -> None:
    ids = seed(app)["servers"]
    page = text(get(app, f"/billing/overview?server={ids[1]}"))
    assert "Usage, last 12 months: srv2" in page
    assert table_rows(page, "lmb-messages-table")[-1][1] == "8"
    # A stale bookmark shows the fleet rather than failing.
    assert "all servers" in text(get(app, "/billing/overview?server=987654"))


def test_the_usage_table_shows_the_busiest_servers_and_links_to_every_one(app: Flask) -> None:
    """A network of many servers: the Overview's table lists the 20 busiest (every server
    stays in the server menu) and links to Usage per server for the rest."""
    from lm_billing_plugin.models import UsageRollup
    from lm_billing_plugin.web.views.overview import OVERVIEW_SERVERS

    seed(app)
    with app.app_context():
        s = get_state(app).session
        for n in range(OVERVIEW_SERVERS + 5):
            server = Server(name=f"many{n:02d}", host="127.0.0.1", comments="")
            s.add(server)
            s.flush()
            s.add(UsageRollup(server_id=server.id, period=THIS, lists=1, messages=1000 + n,
                              recipients=10, bytes=0))
        s.commit()
        total = s.query(Server).count()
        s.commit()
    page = text(get(app, "/billing/overview"))
    rows = table_rows(page, "lmb-usage-servers")
    assert len(rows) == OVERVIEW_SERVERS
    assert rows[0][0] == f"many{OVERVIEW_SERVERS + 4:02d}"  # the most messages first
    assert f"The {OVERVIEW_SERVERS} busiest of {total} servers." in page
    month = THIS.strftime("%Y-%m")
    assert "Every server: Usage per server" in page
    assert page.count('<option value="') == total + 1  # the menu: All servers, and each one
    assert re.search(rf"/billing/reports/usage\?by=server&start=\d{{4}}-\d{{2}}&end={month}\"",
                     page)


def test_charts_are_svg_without_inline_script_or_style(app: Flask) -> None:
    seed(app)
    response = get(app, "/billing/overview")
    raw = response.get_data(as_text=True)
    assert raw.count("<svg") >= 4 and raw.count("<rect") >= 12
    # A strict CSP (default-src 'self') would block these: there are none.
    assert " style=" not in raw and "<style" not in raw
    assert not re.search(r"<script(?![^>]*\ssrc=)", raw)
    assert " on" not in re.sub(r'"[^"]*"', '""', raw).replace(" one", "")  # no onclick=...
    # Screen readers read the tables; the pictures are hidden from them.
    assert raw.count('aria-hidden="true"') == raw.count("<svg")


def test_empty_billing_says_what_is_missing(app: Flask) -> None:
    page = text(get(app, "/billing/overview"))
    assert "No active servers yet: add one on the Servers page." in page
    assert "No open problems." in page
    assert "No invoices issued in the last 12 months." in page


def test_overview_is_first_in_the_menu(app: Any) -> None:
    page = text(get(app, "/billing/overview"))
    menu = re.findall(r'<li><a href="([^"]+)">([^<]+)</a></li>', page)
    assert menu[0] == ("/billing/overview", "Overview")
    assert ("/billing/reports", "Reports") in menu and ("/billing/utilities", "Utilities") in menu


# --- in a real browser: charts drawn, tables there, no console errors --------------------


@pytest.mark.browser
def test_overview_reports_and_utilities_in_chromium(
    live: Any, browser_page: Any,  # noqa: F811 (the fixtures imported above)
) -> None:
    from playwright.sync_api import expect

    from lm_billing_plugin.engine import servers as registry
    from lm_billing_plugin.testing.simulator import Dataset, HostSim

    app, base = live
    page = browser_page
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"{msg.text} {msg.location.get('url')}")
            if msg.type == "error" and not msg.location.get("url", "").endswith("favicon.ico")
            else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    ids = seed(app)["servers"]
    add_trouble(app, ids)
    with HostSim(Dataset.generate(sites=2, lists=12, seed=5)) as sim:
        with app.app_context():
            registry.create_server("Simulated", sim.host, sim.port, actor="test")

        page.goto(f"{base}/billing/overview")
        expect(page.get_by_role("heading", name="Billing: Overview")).to_be_visible()
        bars = page.locator("#lmb-status-chart rect.lmb-bar")
        expect(bars).to_have_count(6)
        box = bars.first.bounding_box()
        assert box and box["width"] > 10  # drawn, not just present
        expect(page.locator("#lmb-messages-chart rect.lmb-bar")).to_have_count(12)
        expect(page.locator("#lmb-kinds-table")).to_contain_text("list has no owner")
        # A bar leads to the page behind it.
        page.locator("#lmb-kinds-chart a").first.click()
        expect(page.get_by_role("heading", name="Billing: Errors")).to_be_visible()
        assert "kind=unassigned_list" in page.url
        page.go_back()
        page.screenshot(path=str(_shot_path("overview")), full_page=True)

        # Reports: usage per customer, sorted by clicking a header; CSV link; revenue; limits.
        page.get_by_role("link", name="Reports", exact=True).click()
        page.get_by_role("link", name="Usage", exact=True).click()
        page.get_by_label("Per", exact=True).select_option("customer")
        page.get_by_role("button", name="Show").click()
        expect(page.locator("#lmb-usage tbody tr").first).to_contain_text("=Acme")
        page.locator("#lmb-usage").get_by_role("link", name="Customer").click()
        expect(page.locator("#lmb-usage tbody tr").first).to_contain_text("(no owner)")
        expect(page.locator("#lmb-usage-trend-chart rect.lmb-bar")).to_have_count(12)
        with page.expect_download() as download:
            page.get_by_role("link", name="Download CSV").click()
        assert download.value.suggested_filename.startswith("usage-by-customer-")
        page.screenshot(path=str(_shot_path("report-usage")), full_page=True)
        page.goto(f"{base}/billing/reports/revenue")
        expect(page.locator("#lmb-outstanding tbody tr")).to_have_count(2)
        expect(page.locator("#lmb-revenue-eur-chart rect.lmb-bar").last).to_be_visible()
        page.goto(f"{base}/billing/reports/limits")
        expect(page.locator("#lmb-limits tbody tr")).to_have_count(2)
        expect(page.locator("#lmb-limits-chart rect.lmb-bar")).to_have_count(2)

        # Utilities: Find Member, tick two, Delete Them, confirm, see what was done.
        page.get_by_role("link", name="Utilities", exact=True).click()
        page.get_by_role("link", name="Find Member").click()
        page.get_by_label("Member's email address").fill("pat.jones@example.org")
        page.get_by_role("button", name="Find").click()
        expect(page.locator("#lmb-search-summary")).to_contain_text(
            "1 of 4 active servers searched")
        before = len(sim.members_of("pat.jones@example.org"))
        assert before >= 2
        page.locator("#lmb-members tbody input[type=checkbox]").nth(0).check()
        page.locator("#lmb-members tbody input[type=checkbox]").nth(1).check()
        page.get_by_role("button", name="Delete Them").click()
        expect(page.get_by_role("heading", name="Delete 2 memberships of pat.jones@example.org "
                                "on 1 server?")).to_be_visible()
        page.get_by_role("button", name="Delete 2 memberships").click()
        expect(page.locator("#lmb-delete-summary")).to_contain_text("Deleted 2;")
        assert len(sim.members_of("pat.jones@example.org")) == before - 2
        page.screenshot(path=str(_shot_path("utilities-deleted")), full_page=True)
        # Bad input: the error sits next to the field.
        page.goto(f"{base}/billing/utilities/find-admin")
        page.get_by_label("Administrator's name or email address").fill("smith||jones")
        page.get_by_role("button", name="Find").click()
        expect(page.locator("#pattern-error")).to_contain_text("has an empty part")
    assert problems == []


def _shot_path(name: str) -> Any:
    from test_browser import SHOTS

    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS / f"{name}.png"
