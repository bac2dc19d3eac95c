"""Layout in a real browser (Chromium, as test_browser.py): no Billing page is wider than the
viewport at 1280 px and 390 px, even with a 253-character host and a 200-character plan name;
the Errors summary and its sticky action bar; text contrast at WCAG AA (axe-core) in the
standalone layout and in Flask-Admin (light and dark swatches) and Flask-AppBuilder."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from _login_host import build_url, plugin_rules
from conftest import build_app, skip_or_fail
from flask import Flask
from test_browser import CHROMIUM, CHROMIUM_ARGS
from werkzeug.serving import make_server

from lm_billing_plugin.models import (
    AdditionalCharge,
    Assignment,
    AuditEntry,
    Batch,
    BillingGroup,
    BillRun,
    BillRunItem,
    ChargeAssignment,
    Customer,
    DeleteRun,
    DeleteRunItem,
    HostingPlan,
    Invoice,
    InvoiceLine,
    InvoiceSend,
    InvoiceTemplate,
    InvoiceUsage,
    MailingList,
    Problem,
    Run,
    SendRun,
    SendRunItem,
    Server,
    Site,
    invoice_active_key,
)
from lm_billing_plugin.state import get_state
from lm_billing_plugin.web.portals import APPBUILDER_TEMPLATE, FLASK_ADMIN_TEMPLATE
from lm_billing_plugin.web.views.runs import shutdown_executor

pytestmark = pytest.mark.browser

AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
LONG_HOST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
LONG_PLAN = "Platinum" + "x" * 192  # 200 characters, no break opportunity
LONG_NAME = "S" * 100
LONG_LIST = "announce-" + "y" * 191
WIDTHS = (1280, 390)


def seed(app: Flask, problems: int = 120) -> dict[str, Any]:
    """Rows with names that have no break opportunity, and many problems of a few kinds."""
    with app.app_context():
        s = get_state(app).session
        server = Server(name=LONG_NAME, host=LONG_HOST, port=2021, comments="c" * 300)
        s.add(server)
        s.flush()
        site = Site(server_id=server.id, name="site-" + "z" * 150, title="t" * 200)
        lst = MailingList(server_id=server.id, name=LONG_LIST, site_name=site.name, members=1234567)
        customer = Customer(company="Cyberdyne" + "q" * 190, email="billing@example.test")
        plan = HostingPlan(name=LONG_PLAN, max_lists=10, monthly_price=Decimal("19.95"))
        s.add_all([site, lst, customer, plan])
        s.flush()
        group = BillingGroup(customer_id=customer.id, name="g" * 200, plan_id=plan.id)
        batch = Batch(kind="validate", total=1)
        s.add_all([group, batch])
        s.flush()
        run = Run(
            server_id=server.id,
            kind="validate",
            batch_id=batch.id,
            status="problems",
            error_message="e" * 300,
        )
        s.add(run)
        s.flush()
        assignment = Assignment(
            group_id=group.id,
            object_type="list",
            server_id=server.id,
            list_id=lst.id,
            start_date=date(2026, 1, 1),
        )
        charge = AdditionalCharge(name="Fee" + "f" * 197, default_amount=Decimal("50.00"))
        template = InvoiceTemplate(kind="web", name="T" * 200, body="{{ invoice.number }}")
        s.add_all([assignment, charge, template])
        s.flush()
        group_charge = ChargeAssignment(
            group_id=group.id, charge_id=charge.id, start_date=date(2026, 1, 1)
        )
        s.add(group_charge)
        # A bill run and its invoice, with the long names the invoice snapshots.
        jan, jan_end = date(2026, 1, 1), date(2026, 1, 31)
        bill_run = BillRun(period_start=jan, period_end=jan_end, status="done", customers=1,
                           invoiced=1, finished_at=datetime(2026, 2, 1, tzinfo=UTC))
        s.add(bill_run)
        s.flush()
        invoice = Invoice(number="2026-00001", year=2026, seq=1, customer_id=customer.id,
                          run_id=bill_run.id, period_start=jan, period_end=jan_end,
                          status="issued",
                          active_key=invoice_active_key(customer.id, jan, jan_end),
                          currency="USD", total=Decimal("1234567.89"),
                          company=customer.company, contact_name="n" * 200,
                          email=customer.email)
        s.add(invoice)
        s.flush()
        s.add_all([
            InvoiceLine(invoice_id=invoice.id, position=1, group_name=group.name, kind="plan",
                        description=f"Hosting plan {LONG_PLAN}", quantity=Decimal("1"),
                        unit_price=Decimal("1234567.8900"), amount=Decimal("1234567.89")),
            InvoiceUsage(invoice_id=invoice.id, group_name=group.name, server_name=LONG_NAME,
                         site_name=site.name, list_name=LONG_LIST, messages=123456789,
                         recipients=987654321, bytes=123456789012, units=Decimal("123456.789")),
            BillRunItem(run_id=bill_run.id, customer_id=customer.id, invoice_id=invoice.id),
        ])
        # A send of it, with the long addresses and server answers the pages show.
        long_address = "a" * 150 + "@" + "b" * 100 + ".example"
        send_run = SendRun(is_test=False, status="finished", from_email=long_address, total=1,
                           sent=1, finished_at=datetime(2026, 2, 2, tzinfo=UTC))
        send = InvoiceSend(invoice_id=invoice.id, to_addresses=long_address, is_test=False,
                           outcome="partial", server_answer="550 " + "r" * 300, actor="t")
        s.add_all([send_run, send])
        s.flush()
        s.add(SendRunItem(send_run_id=send_run.id, invoice_id=invoice.id, status="partial",
                          reason="550 " + "r" * 300, send_id=send.id))
        # A delete run with the long names and server messages its page shows.
        delete_run = DeleteRun(email=long_address, status="finished", total=2, servers=1,
                               deleted=1, failed=1, actor="t",
                               finished_at=datetime(2026, 2, 2, tzinfo=UTC))
        s.add(delete_run)
        s.flush()
        s.add_all([
            DeleteRunItem(delete_run_id=delete_run.id, position=n, server_id=server.id,
                          server_name=server.name, list_name=f"{LONG_LIST}-{n}",
                          list_id=lst.id, email=long_address, outcome=outcome,
                          code="NOT_PERMITTED" if outcome == "failed" else None,
                          message="m" * 300 if outcome == "failed" else None)
            for n, outcome in enumerate(("deleted", "failed"))])
        kinds = ("unknown_list", "changed_list", "unassigned_list")
        rows = [
            Problem(
                fingerprint=f"p{n}",
                server_id=server.id,
                kind=kinds[n % 3],
                object_type="list",
                object_name=f"{LONG_LIST}-{n}",
                detail=f"List '{LONG_LIST}-{n}' changed: {'w' * 200}.",
                first_run_id=run.id,
                last_run_id=run.id,
            )
            for n in range(problems)
        ]
        s.add_all(rows)
        # An audit entry by someone with a long name, about the long-named group.
        s.add(AuditEntry(actor="u" * 200, action="assign", object_type="group",
                         object_id=group.id, server_id=server.id, detail={}))
        s.commit()
        return {
            "server_id": server.id,
            "site_id": site.id,
            "list_id": lst.id,
            "customer_id": customer.id,
            "group_id": group.id,
            "plan_id": plan.id,
            "batch_id": batch.id,
            "run_id": run.id,
            "problem_id": rows[0].id,
            "assignment_id": assignment.id,
            "charge_id": charge.id,
            "group_charge_id": group_charge.id,
            "template_id": template.id,
            "bill_run_id": bill_run.id,
            "invoice_id": invoice.id,
            "send_run_id": send_run.id,
            "delete_run_id": delete_run.id,
            "filename": "lm_billing.css",
        }


def page_urls(app: Flask, samples: dict[str, Any]) -> list[str]:
    """Every GET page of the plugin, from the URL map (new pages are covered on their own)."""
    return [
        build_url(app, rule, samples)
        for rule in plugin_rules(app)
        if "GET" in (rule.methods or ())
        and rule.endpoint != "lm_billing.static"
        and not rule.rule.endswith((".csv", ".pdf"))  # downloads, not pages
        and not rule.endpoint.endswith("_json")
    ]


def serve(app: Flask) -> tuple[Any, str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, name="layout-app", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


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
def live(tmp_path: Path) -> Iterator[Callable[..., tuple[Flask, str, dict[str, Any]]]]:
    """Start host apps on real sockets; stops them afterwards."""
    started: list[tuple[Flask, Any]] = []

    def start(app: Flask | None = None, **config: Any) -> tuple[Flask, str, dict[str, Any]]:
        if app is None:
            app = build_app(f"sqlite:///{tmp_path / f'layout{len(started)}.sqlite'}", **config)
        samples = seed(app)
        server, base = serve(app)
        started.append((app, server))
        return app, base, samples

    yield start
    for app, server in started:
        server.shutdown()
        server.server_close()
        shutdown_executor(app)


def _new_page(chromium: Any, width: int) -> Any:
    # bypass_csp: the pages' Content-Security-Policy (script-src 'self') would refuse the
    # axe-core script the contrast check injects; the pages themselves need no exception.
    context = chromium.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)
    context.set_default_timeout(15_000)
    return context.new_page()


def _overflow(page: Any) -> dict[str, Any]:
    return dict(
        page.evaluate(
            """() => ({scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
                 widest: [...document.querySelectorAll('body *')]
                   .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1
                                && !e.closest('.lmb-scroll'))
                   .slice(0, 3).map(e => e.tagName + '.' + e.className)})"""
        )
    )


def test_column_headers_break_between_words_only(
    live: Callable[..., tuple[Flask, str, dict[str, Any]]], chromium: Any
) -> None:
    """On a phone, the long names of the seed squeeze the Billing Groups table: a header
    ("Lists", "Sites", "Servers") must keep its words whole, one line per word at most (not
    one letter per line); the table scrolls in its box instead."""
    _, base, _samples = live()
    page = _new_page(chromium, 390)
    page.goto(f"{base}/billing/groups")
    assert LONG_PLAN in page.inner_text("main")  # the squeezing names are there
    headers = page.evaluate(
        """() => [...document.querySelectorAll('#lmb-billing-groups thead th')].map(th => {
             const range = document.createRange();
             range.selectNodeContents(th);
             const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
             return {text: th.innerText.trim(), lines: tops.size,
                     words: th.innerText.trim().split(/\\s+/).length};
           })"""
    )
    assert len(headers) == 6, headers
    broken = [h for h in headers if h["lines"] > h["words"]]
    assert broken == [], broken
    box = page.locator(".lmb-scroll", has=page.locator("#lmb-billing-groups"))
    assert box.evaluate("e => getComputedStyle(e).overflowX") == "auto"


@pytest.mark.parametrize("width", WIDTHS)
def test_no_page_is_wider_than_the_viewport(
    live: Callable[..., tuple[Flask, str, dict[str, Any]]], chromium: Any, width: int
) -> None:
    app, base, samples = live()
    page = _new_page(chromium, width)
    urls = page_urls(app, samples)
    assert len(urls) >= 15, urls  # the whole plugin, not a few pages
    too_wide = {}
    for url in urls:
        response = page.goto(base + url)
        assert response is not None and response.status == 200, url
        size = _overflow(page)
        if size["scroll"] > size["inner"]:
            too_wide[url] = size
    assert too_wide == {}
    # The long names are on the pages (wrapped), not cut away.
    page.goto(f"{base}/billing/servers/{samples['server_id']}")
    assert LONG_HOST in page.inner_text("main")
    # A table wider than the screen scrolls inside its own box.
    if width == 390:
        box = page.locator(".lmb-scroll").last
        assert box.evaluate("e => e.scrollWidth > e.clientWidth")
        assert box.evaluate("e => getComputedStyle(e).overflowX") == "auto"


def test_checkbox_sits_before_its_label_and_dates_are_one_format(
    live: Callable[..., tuple[Flask, str, dict[str, Any]]], chromium: Any
) -> None:
    _, base, samples = live()
    page = _new_page(chromium, 1280)
    page.goto(f"{base}/billing/assign?server_id={samples['server_id']}")
    box = page.get_by_label("Assign the whole server")
    label = page.locator("label", has_text="Assign the whole server")
    b, lab = box.bounding_box(), label.bounding_box()
    assert b["x"] + b["width"] <= lab["x"], (b, lab)  # before it ...
    assert abs((b["y"] + b["height"] / 2) - (lab["y"] + lab["height"] / 2)) < lab["height"]
    start = page.get_by_label("Start Date", exact=False).first
    assert start.get_attribute("type") == "text"
    assert start.get_attribute("placeholder") == "YYYY-MM-DD"
    page.goto(f"{base}/billing/plans/{samples['plan_id']}/edit")
    box = page.get_by_label("Bill by List")
    label = page.locator("label", has_text="Bill by List")
    assert box.bounding_box()["x"] < label.bounding_box()["x"]


@pytest.mark.parametrize("width", WIDTHS)
def test_errors_summary_and_sticky_action_bar(
    live: Callable[..., tuple[Flask, str, dict[str, Any]]], chromium: Any, width: int
) -> None:
    from playwright.sync_api import expect

    _, base, _ = live()
    page = _new_page(chromium, width)
    page.goto(f"{base}/billing/errors")
    summary = page.locator("#lmb-summary")
    expect(summary.get_by_role("link", name="list changed on the server")).to_be_visible()
    expect(summary).to_contain_text("120")
    bar = page.locator("#lmb-actionbar")
    fix = bar.get_by_role("button", name="Fix Selected Objects")
    expect(fix).to_be_visible()
    # Scrolled far down the rows, the bar is still on screen, at the top.
    page.mouse.wheel(0, 2500)
    page.wait_for_function("window.scrollY > 1000")
    top = bar.evaluate("e => e.getBoundingClientRect().top")
    assert 0 <= top < 2, top
    expect(fix).to_be_in_viewport()
    # "Select all rows on this page" is in the bar too, and ticks every kind's rows.
    bar.get_by_label("Select all rows on this page").check()
    assert page.locator("#lmb-problems tbody input:checked").count() == 50
    # A count is a filter.
    page.evaluate("window.scrollTo(0, 0)")
    summary.get_by_role("link", name="list changed on the server").click()
    expect(page.locator("#lmb-problems tbody tr")).to_have_count(40)
    expect(page.locator("section.lmb-kind-group")).to_have_count(1)


# --- contrast ------------------------------------------------------------------------------


def _contrast_violations(page: Any) -> list[Any]:
    """axe-core's colour-contrast failures in the Billing content (the page and its flashed
    messages; a host portal's own navbar is the host's business)."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        """async () => {
             const r = await axe.run({include: [...document.querySelectorAll(
                 '.lmb-page, .lmb-flashes')]}, {runOnly: ['color-contrast']});
             const nodes = k => r[k].flatMap(v => v.nodes.map(n => n.target.join(' ')));
             return {violations: r.violations.flatMap(v => v.nodes.map(
                       n => n.target.join(' ') + ': ' + n.failureSummary)),
                     passes: nodes('passes'), incomplete: nodes('incomplete')};
           }"""
    )
    # Guard against a vacuous check: the buttons and body text were measured, not skipped
    # as "incomplete" (axe cannot measure some backgrounds).
    assert len(result["passes"]) > 10, result
    assert not [n for n in result["incomplete"] if "button" in n or ".btn" in n], result
    return list(result["violations"])


def _flask_admin_app(tmp_path: Path, swatch: str) -> Flask:
    from flask_admin import Admin
    from flask_admin.theme import Bootstrap4Theme

    from lm_billing_plugin import add_to_flask_admin

    app = build_app(
        f"sqlite:///{tmp_path / f'admin-{swatch}.sqlite'}",
        LM_BILLING_BASE_TEMPLATE=FLASK_ADMIN_TEMPLATE,
    )
    try:
        from flask_babel import Babel  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        Babel(app)
    admin = Admin(app, name="Host Admin", theme=Bootstrap4Theme(swatch=swatch))
    add_to_flask_admin(admin)
    return app


CONTRAST_PAGES = ("/billing/", "/billing/errors", "/billing/servers/{server_id}")


@pytest.mark.parametrize("swatch", ["standalone", "default", "darkly", "cyborg"])
def test_text_contrast_is_wcag_aa(
    live: Callable[..., tuple[Flask, str, dict[str, Any]]],
    chromium: Any,
    tmp_path: Path,
    swatch: str,
) -> None:
    from playwright.sync_api import expect

    app = None if swatch == "standalone" else _flask_admin_app(tmp_path, swatch)
    _, base, samples = live(app)
    page = _new_page(chromium, 1280)
    for url in CONTRAST_PAGES:
        page.goto(base + url.format(**samples))
        if swatch != "standalone":
            # Inside the portal: its navbar, and the theme's Bootstrap classes on our pieces.
            expect(page.locator("nav.navbar")).to_have_count(1)
            assert page.locator("table.table").count() >= 1
        assert _contrast_violations(page) == [], url
    # In a dark swatch the table headers are the theme's light text on its dark background.
    if swatch in ("darkly", "cyborg"):
        page.goto(f"{base}/billing/")
        colour = page.locator("thead th").first.evaluate("e => getComputedStyle(e).color")
        assert colour != "rgb(33, 37, 41)", colour


def test_flask_appbuilder_layout_uses_its_theme(
    live: Callable[..., tuple[Flask, str, dict[str, Any]]], chromium: Any, tmp_path: Path
) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from flask_appbuilder import AppBuilder
    except ImportError as exc:
        skip_or_fail(f"Flask-AppBuilder is not importable ({exc})")
        return
    from playwright.sync_api import expect

    from lm_billing_plugin import add_to_appbuilder

    app = build_app(
        f"sqlite:///{tmp_path / 'fab.sqlite'}",
        LM_BILLING_BASE_TEMPLATE=APPBUILDER_TEMPLATE,
        WTF_CSRF_ENABLED=False,
        AUTH_ROLE_ADMIN="Admin",
        FAB_ADD_SECURITY_API=False,
        RATELIMIT_ENABLED=False,
        APP_NAME="Host FAB",
    )
    with app.app_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        appbuilder = AppBuilder(app, app.extensions["sqlalchemy"].session)
        add_to_appbuilder(appbuilder)
        role = appbuilder.sm.find_role("Admin")
        appbuilder.sm.add_user("admin", "Ada", "Admin", "ada@example.test", role, password="pw")
    _, base, _ = live(app)
    page = _new_page(chromium, 1280)
    page.goto(f"{base}/login/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "pw")
    page.locator("form [type=submit]").first.click()
    page.goto(f"{base}/billing/errors")
    assert page.locator("table.table").count() >= 1
    assert page.locator("button.btn.btn-primary", has_text="Fix Selected Objects").count() == 1
    assert _contrast_violations(page) == []
    # A flashed outcome is a Bootstrap alert, not FAB's unstyled alert-message.
    page.locator("#lmb-actionbar").get_by_role("button", name="Fix Selected Objects").click()
    expect(page.locator(".alert-danger", has_text="Nothing was fixed")).to_have_count(1)
    assert page.locator(".alert-error, .alert-message").count() == 0
    assert _overflow(page)["scroll"] <= 1280
