"""The seed's whole flow in a real browser: Debian's Chromium driven by Playwright against the host
app served by werkzeug on 127.0.0.1, with simulated hosting servers; saves screenshots."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _pages import PAGES_CONFIG, add_group, add_server
from conftest import build_app, skip_or_fail
from flask import Flask
from werkzeug.serving import make_server

from lm_billing_plugin.tclport.records import LOGGING_NO
from lm_billing_plugin.testing.simulator import Dataset, HostSim
from lm_billing_plugin.web.views.runs import shutdown_executor

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "screenshots"
README_SHOTS = ROOT / ".ci" / "screenshots"
HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Flask, str]]:
    """The host app on a real socket (file SQLite: the server thread and the batch threads
    each have their own connection)."""
    app = build_app(f"sqlite:///{tmp_path / 'browser.sqlite'}", **PAGES_CONFIG)
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


@pytest.fixture
def browser_page() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        skip_or_fail(f"{CHROMIUM} is not installed (apt install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(15_000)
            page = context.new_page()
            dialogs: list[str] = []

            def on_dialog(dialog: Any) -> None:
                dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", on_dialog)
            page.lmb_dialogs = dialogs  # type: ignore[attr-defined]
            yield page
        finally:
            browser.close()


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("LM_BILLING_UPDATE_SCREENSHOTS") == "1" and name in ("servers", "errors"):
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_SHOTS / f"{name}.png")


def _sim_data() -> Dataset:
    data = Dataset.generate(sites=2, lists=6, seed=11)
    return data


def test_seed_flow_in_chromium(live: tuple[Flask, str], browser_page: Any) -> None:
    from playwright.sync_api import expect

    app, base = live
    page = browser_page
    data = _sim_data()
    nolog_data = Dataset.generate(sites=1, lists=2, seed=12)
    nolog_data.logging_mode = LOGGING_NO
    with (
        HostSim(data) as good,
        HostSim(
            Dataset.generate(sites=1, lists=2, seed=13), allowed_hosts=("192.0.2.1",)
        ) as denied,
        HostSim(nolog_data) as nolog,
    ):
        for name in HOSTILE:
            good.add_list(name, site="site1", members=3)
        add_group(app, "Acme Hosting", "Acme Gold")

        # 1. Create a server through the form; it shows as unvalidated.
        page.goto(f"{base}/billing/")
        page.get_by_role("link", name="Create New Server").click()
        page.get_by_label("Name", exact=True).fill("Lists")
        page.get_by_label("Host Name").fill("127.0.0.1")
        page.get_by_label("Port", exact=True).fill(str(good.port))
        page.get_by_label("Comments").fill("main hosting server")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("heading", name="Server Lists")).to_be_visible()
        page.get_by_role("link", name="Billing: Servers").click()
        row = page.locator("#lmb-servers tbody tr", has_text="Lists")
        expect(row).to_contain_text("not checked yet")
        expect(row).to_contain_text("never")

        # 2. Tick it, Validate Selected Servers; the batch page follows it to the end.
        page.get_by_label("Select Lists").check()
        page.get_by_role("button", name="Validate Selected Servers").click()
        expect(page.locator("#lmb-progress")).to_contain_text("Finished: 1 of 1")
        page.get_by_role("link", name="Errors Were Found, Click Here to Fix").click()

        # 3. The Errors page: select all, Fix Selected Objects.
        expect(page.get_by_role("heading", name="Billing: Errors")).to_be_visible()
        expect(page.locator("#lmb-problems")).to_contain_text(HOSTILE[0])
        expect(page.locator("#lmb-problems")).to_contain_text(HOSTILE[1])
        _shot(page, "errors")
        page.get_by_label("Select all rows on this page").check()
        page.get_by_role("button", name="Fix Selected Objects").click()
        expect(page.locator(".lmb-flash").first).to_contain_text("10 fixed")
        # The lists are in billing now, and need an owner: the rows say so and link to it.
        expect(page.locator("#lmb-problems tbody tr")).to_have_count(8)
        expect(page.locator("#lmb-problems")).to_contain_text("list has no owner")
        expect(page.get_by_role("link", name="Assign an owner").first).to_be_visible()

        # 4. Assign an owner from the server page, then sync.
        page.get_by_role("link", name="Billing: Servers").click()
        page.get_by_role("link", name="Lists", exact=True).click()
        expect(page.locator("#lists")).to_contain_text(HOSTILE[0])
        expect(page.locator("#lists")).to_contain_text(HOSTILE[1])
        page.locator("#assign").get_by_label("Select all rows on this page").check()
        page.get_by_label("Billing group").select_option(label="Acme Hosting: Acme Gold")
        page.get_by_role("button", name="Assign selected lists to this billing group").click()
        expect(page.locator(".lmb-flash").first).to_contain_text("8 lists assigned")
        page.get_by_role("button", name="Sync", exact=True).click()
        expect(page.locator("#lmb-progress")).to_contain_text("Finished: 1 of 1")
        expect(page.get_by_text("Sync was successful: no errors found.")).to_be_visible()
        page.get_by_role("link", name="Lists", exact=True).click()
        expect(page.locator("#lists")).to_contain_text("Acme Hosting: Acme Gold")
        _shot(page, "server-detail")
        page.go_back()

        # 5. The errors are gone from the Servers page.
        add_server(app, "Refused", port=denied.port)
        add_server(app, "No logging", port=nolog.port)
        page.get_by_role("link", name="Back to Servers").click()
        expect(page.get_by_text("Errors Were Found, Click Here to Fix")).to_have_count(0)
        lists_row = page.locator("#lmb-servers tbody tr", has_text="main hosting server")
        expect(lists_row).to_contain_text("reachable")

        # 6. The refused and the logging-off servers show their guidance.
        page.get_by_role("link", name="Refused", exact=True).click()
        page.get_by_role("button", name="Check connection").click()
        # The check's steps show after the redirect; what to do is said once, above them.
        expect(page.locator(".lmb-check")).to_contain_text("what to do is said above")
        expect(page.locator("#lmb-guidance")).to_contain_text("TCLPORT Hosts")
        expect(page.locator("#lmb-guidance code")).to_contain_text("lm tclport")
        expect(page.locator("#lmb-status")).to_have_text("refused: not in TCLPORT Hosts")
        _shot(page, "server-refused")
        page.get_by_role("link", name="Billing: Servers").click()
        page.get_by_role("link", name="No logging", exact=True).click()
        page.get_by_role("button", name="Check connection").click()
        expect(page.locator("#lmb-status")).to_have_text("logging off")
        expect(page.get_by_role("button", name="Enable logging on this server")).to_be_visible()
        expect(page.locator(".lmb-logging")).to_contain_text(
            "Yes, Log All Messages that ListManager Sends to Mailing Lists"
        )
        _shot(page, "server-logging-off")
        page.get_by_role("link", name="Billing: Servers").click()
        expect(page.locator("#lmb-servers")).to_contain_text("refused: not in TCLPORT Hosts")
        _shot(page, "servers")

    # Hostile names were shown as text all along: no script ran.
    assert page.lmb_dialogs == []
    assert page.evaluate("document.querySelectorAll('img[src=x]').length") == 0


def test_core_actions_work_without_javascript(live: tuple[Flask, str], browser_page: Any) -> None:
    from playwright.sync_api import expect

    app, base = live
    context = browser_page.context.browser.new_context(java_script_enabled=False)
    page = context.new_page()
    with HostSim(Dataset.generate(sites=1, lists=3, seed=21)) as good:
        add_server(app, "Plain", port=good.port)
        page.goto(f"{base}/billing/")
        page.get_by_label("Select Plain").check()
        page.get_by_role("button", name="Validate Selected Servers").click()
        # Without the script the meta refresh brings the page to its end.
        expect(page.locator("#lmb-progress")).to_contain_text("Finished: 1 of 1")
        page.get_by_role("link", name="Errors Were Found, Click Here to Fix").click()
        for box in page.locator("#lmb-problems tbody input[type=checkbox]").all():
            box.check()
        page.get_by_role("button", name="Fix Selected Objects").click()
        expect(page.locator(".lmb-flash").first).to_contain_text("4 fixed")
        expect(page.locator("#lmb-problems")).to_contain_text("list has no owner")
    context.close()


def test_what_the_script_writes_is_in_the_page_language(tmp_path: Path,
                                                         browser_page: Any) -> None:
    """The select-all label and the running batch's progress, which the script writes, are
    German on a German page (the script once wrote English over the German sentence)."""
    from playwright.sync_api import expect

    from lm_billing_plugin.engine import batches

    app = build_app(f"sqlite:///{tmp_path / 'de.sqlite'}", LM_BILLING_DEFAULT_LOCALE="de",
                    **PAGES_CONFIG)
    sid = add_server(app, "Queued")
    with app.app_context():
        batch_id = batches.create_batch("validate", [sid], actor="test")  # never started
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="browser-de", daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        page = browser_page
        page.goto(f"{base}/billing/")
        expect(page.get_by_label("Alle Zeilen dieser Seite auswählen")).to_have_count(1)
        page.goto(f"{base}/billing/batches/{batch_id}")
        status = page.locator("#lmb-progress")
        expect(status).to_have_text("Läuft: 0 von 1 Server erledigt.")
        page.wait_for_timeout(2500)  # the script has polled the JSON at least once
        expect(status).to_have_text("Läuft: 0 von 1 Server erledigt.")
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
        shutdown_executor(app)
