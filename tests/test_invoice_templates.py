"""Invoice templates: the sandbox (SSTI corpus, growth and loops bounded, errors with line
numbers, never a 500), render_invoice from a stored invoice, and the edit page's preview."""

from __future__ import annotations

import html
import re
import time
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from _pages import csrf, plain
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin.billing.invoice_templates import (
    DEFAULT_SOURCES,
    RENDER_SECONDS,
    TemplateProblem,
    invoice_context,
    render_invoice,
    sample_context,
)
from lm_billing_plugin.models import (
    AuditEntry,
    Customer,
    Invoice,
    InvoiceLine,
    InvoiceTemplate,
    invoice_active_key,
)
from lm_billing_plugin.state import get_state

SSTI = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__dict__ }}",
    "{{ config }}",
    "{{ config.items() }}",
    "{{ request }}",
    "{{ request.application.__globals__ }}",
    "{{ invoice.__init__.__globals__ }}",
    "{{ invoice.number.__class__.__base__ }}",
    "{{ range.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ url_for.__globals__ }}",
    "{{ get_flashed_messages.__globals__ }}",
    "{{ invoice|attr('__class__') }}",
    "{{ '{0.__class__}'.format(invoice) }}",
    "{{ invoice.groups.append(1) }}",
    "{% set x = invoice.customer.update({'company': 'x'}) %}",
]
BOUNDED = [
    "{% for i in range(10**9) %}x{% endfor %}",
    "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10**9 }}",
    "{{ 10**10**10**10 }}",
    "{% set a = 'x' * 100000 %}{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}",
    "{% set a %}{% for i in range(10000) %}{{ 'x' * 100 }}{% endfor %}{% endset %}",
    "{% for i in range(10000) %}{{ 'y' * 100 }}{% endfor %}",
    "{{ 'x'.center(10**9) }}",
    "{{ 'x'|center(999999999) }}",
    "{{ '%999999999s'|format(1) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ ('x'|e).center(100000) }}",
    "{{ 'x'|indent(999999999) }}",
    "{{ [1]|batch(999999999, 0)|list }}",
    "{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}",
    "{{ ('ab' * 1000).replace('', 'c' * 1000) }}",
]


@pytest.mark.parametrize("source", SSTI)
def test_ssti_corpus_is_refused_with_a_line_number(source: str) -> None:
    with pytest.raises(TemplateProblem) as caught:
        render_invoice("web", sample_context(), source="ok\n" + source)
    assert caught.value.lineno == 2, str(caught.value)


@pytest.mark.parametrize("source", BOUNDED)
def test_growth_and_loops_are_bounded(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateProblem):
        render_invoice("email", sample_context(), source=source)
    assert time.monotonic() - started < RENDER_SECONDS + 1.5


@pytest.mark.parametrize(("source", "line", "words"), [
    ("a\nb\n{% for x in %}", 3, "Expected an expression"),
    ("{{ invoice.number }}\n{% if %}", 2, ""),
    ("line one\n{{ nothere }}", 2, "'nothere' is undefined"),
    ("{% for g in invoice.groups %}\n{{ g.nope }}\n{% endfor %}", 2, "has no attribute 'nope'"),
])
def test_template_errors_name_their_line(source: str, line: int, words: str) -> None:
    with pytest.raises(TemplateProblem) as caught:
        render_invoice("email", sample_context(), source=source)
    assert caught.value.lineno == line and words in caught.value.message


def _invoice(app: Flask, company: str = "Acme <b>&</b> Co") -> tuple[int, int]:
    with app.app_context():
        s = get_state(app).session
        customer = Customer(company=company, email="billing@acme.example")
        s.add(customer)
        s.flush()
        start, end = date(2026, 3, 1), date(2026, 3, 31)
        invoice = Invoice(number="2026-00007", year=2026, seq=7, customer_id=customer.id,
                          period_start=start, period_end=end,
                          active_key=invoice_active_key(customer.id, start, end),
                          currency="EUR", total=Decimal("1234.50"), company=company)
        s.add(invoice)
        s.flush()
        lines = [("Newsletters", "plan", "Gold", "1", "1000", "1000.00"),
                 ("Newsletters", "charge", "<script>alert(1)</script>", "1", "284.5", "284.50"),
                 ("", "credit", "Credit carried over from invoice 2026-00003", "1", "-50",
                  "-50.00")]
        for pos, (group, kind, descr, qty, unit, amount) in enumerate(lines, 1):
            s.add(InvoiceLine(invoice_id=invoice.id, position=pos, group_name=group, kind=kind,
                              description=descr, quantity=Decimal(qty),
                              unit_price=Decimal(unit), amount=Decimal(amount)))
        s.commit()
        return customer.id, invoice.id


def test_render_invoice_from_a_stored_invoice(app: Flask) -> None:
    customer_id, invoice_id = _invoice(app)
    with app.app_context():
        s = get_state(app).session
        context = invoice_context(s, s.get(Invoice, invoice_id))  # type: ignore[arg-type]
        assert context.total == "1,234.50" and context.groups[0].subtotal == "1,284.50"
        assert [ln.description for ln in context.other_lines] == [
            "Credit carried over from invoice 2026-00003"]
        web = render_invoice("web", context)
        email = render_invoice("email", context)
        # The customer's own template wins over the default once chosen.
        chosen = InvoiceTemplate(kind="email", name="Short", body="No. {{ invoice.number }}")
        s.add(chosen)
        s.flush()
        customer = s.get(Customer, customer_id)
        assert customer is not None
        customer.email_template_id = chosen.id
        s.commit()
        assert render_invoice("email", context) == "No. 2026-00007"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in web and "<script>alert" not in web
    assert "Acme &lt;b&gt;&amp;&lt;/b&gt; Co" in web
    assert "Total: EUR 1,234.50" in email and "<script>alert(1)</script>" in email


def test_defaults_render_the_sample() -> None:
    for kind, source in DEFAULT_SOURCES.items():
        out = render_invoice(kind, sample_context(), source=source)
        assert "Example Publishing" in out and "80.42" in out


# --- The page -------------------------------------------------------------------------------


def _form(client: FlaskClient, **data: str) -> dict[str, str]:
    return {**data, "csrf_token": csrf(client, "/billing/invoice-templates/new?kind=web")}


def test_edit_with_preview_against_a_real_invoice(client: FlaskClient, app: Flask) -> None:
    listing = plain(client.get("/billing/invoice-templates"))
    assert "Email Invoice Template" in listing and "Web Invoice Template" in listing
    # No invoice yet: the sample.
    first = client.get("/billing/invoice-templates/new?kind=web")
    assert "Example Publishing" in html.unescape(first.get_data(as_text=True))
    _, invoice_id = _invoice(app)
    page = client.get("/billing/invoice-templates/new?kind=web")
    body = page.get_data(as_text=True)
    # The preview runs in a frame without scripts; the data inside it is escaped twice
    # (by the invoice template, then into the srcdoc attribute).
    frame = re.search(r'<iframe sandbox="" [^>]*srcdoc="([^"]*)"', body)
    assert frame, body[-3000:]
    assert "&amp;lt;script&amp;gt;" in frame.group(1)
    previewed = client.post("/billing/invoice-templates/new?kind=web", data=_form(
        client, name="Mine", body="<p>{{ invoice.customer.company }}</p>",
        preview_invoice=str(invoice_id), preview="1"))
    assert previewed.status_code == 200
    assert "&lt;p&gt;Acme &amp;lt;b&amp;gt;" in previewed.get_data(as_text=True)
    assert app.test_client() and _count(app, InvoiceTemplate) == 0  # a preview saves nothing
    broken = client.post("/billing/invoice-templates/new?kind=web", data=_form(
        client, name="Mine", body="ok\n{{ ''.__class__.__mro__ }}", preview_invoice="0",
        save="1"))
    assert broken.status_code == 400
    error = re.search(r'<ul class="lmb-errors" id="body-error">(.*?)</ul>',
                      broken.get_data(as_text=True), re.S)
    assert error and "Line 2: not allowed" in html.unescape(error.group(1))
    assert _count(app, InvoiceTemplate) == 0
    syntax = client.post("/billing/invoice-templates/new?kind=email", data=_form(
        client, name="Mine", body="a\n\n{% for %}", preview_invoice="0", save="1"))
    assert syntax.status_code == 400 and "Line 3:" in plain(syntax)
    saved = client.post("/billing/invoice-templates/new?kind=email", data=_form(
        client, name="Mine", body="Invoice {{ invoice.number }}", preview_invoice="0",
        save="1"))
    assert saved.status_code == 302
    with app.app_context():
        template = get_state(app).session.scalars(sa.select(InvoiceTemplate)).one()
        tid = template.id
    dup = client.post("/billing/invoice-templates/new?kind=email", data=_form(
        client, name=" MINE ", body="x", preview_invoice="0", save="1"))
    assert "A template of this kind with this name exists" in plain(dup)
    edited = client.post(f"/billing/invoice-templates/{tid}/edit", data=_form(
        client, name="Mine", body="Bill {{ invoice.number }}", preview_invoice="0", save="1"))
    assert edited.status_code == 302
    assert [a.action for a in _rows(app, AuditEntry)] == ["template_create", "template_update"]
    # The customer form offers it.
    assert "Mine" in plain(client.get("/billing/customers/new"))


def _rows(app: Flask, model: Any) -> list[Any]:
    with app.app_context():
        s = get_state(app).session
        found = list(s.scalars(sa.select(model)))
        s.expunge_all()
        return found


def _count(app: Flask, model: Any) -> int:
    return len(_rows(app, model))
