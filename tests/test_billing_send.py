"""Sending bills (issue 11 §4) against a real SMTP server (aiosmtpd on 127.0.0.1): the message
(text + HTML + PDF, envelope sender), test sends, the send log, refused recipients, a dropped
connection, header injection, no password in any log, sent once (in doubt and Resend), the CLI
and the Send page."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from email.message import EmailMessage
from typing import Any

import pytest
import sqlalchemy as sa
from _sim import closed_port
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from flask import Flask

from lm_billing_plugin import signals
from lm_billing_plugin.billing import sending
from lm_billing_plugin.billing.sending import (
    SendError,
    SendOptions,
    check_address,
    create_send_run,
    run_send_run,
    send_bills,
)
from lm_billing_plugin.i18n import say
from lm_billing_plugin.models import (
    Customer,
    Invoice,
    InvoiceLine,
    InvoiceSend,
    SendRun,
    invoice_active_key,
    utcnow,
)
from lm_billing_plugin.state import get_state

PASSWORD = "s3cret-Pa55word"


class Inbox:
    """aiosmtpd handler: keeps every message; refuses RCPT to ``refuse``; drops the
    connection at RCPT to ``drop``; ``during_data`` runs while a message is being accepted."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.refuse: set[str] = set()
        self.drop: set[str] = set()
        self.during_data: Callable[[], None] | None = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.drop:
            server.transport.close()
            return "421 going away"
        if address in self.refuse:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.during_data is not None:
            self.during_data()
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for _, rcpt, m in self.messages if address in rcpt]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = closed_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def _mail_app(make: Callable[..., Flask], port: int, db_url: str | None = None,
              **extra: Any) -> Flask:
    config: dict[str, Any] = {
        "LM_BILLING_SMTP_HOST": "127.0.0.1", "LM_BILLING_SMTP_PORT": port,
        "LM_BILLING_SMTP_TIMEOUT": 5.0, "LM_BILLING_BILL_FROM_NAME": "Acme Hosting Billing",
        "LM_BILLING_BILL_FROM_EMAIL": "billing@hosting.example",
        "LM_BILLING_BILL_BOUNCE_EMAIL": "bounces@hosting.example",
        "LM_BILLING_BILL_TEST_EMAIL": "tester@hosting.example", **extra}
    return make(db_url, **config)


def _invoice(app: Flask, company: str, email_: str, additional: str = "", seq: int = 1) -> int:
    with app.app_context():
        s = get_state(app).session
        customer = Customer(company=company, email="live@changed.example")
        s.add(customer)
        s.flush()
        start, end = date(2026, 11, 1), date(2026, 11, 30)
        invoice = Invoice(number=f"2026-{seq:05d}", year=2026, seq=seq, customer_id=customer.id,
                          period_start=start, period_end=end, status="issued",
                          active_key=invoice_active_key(customer.id, start, end),
                          currency="USD", total=Decimal("19.95"), company=company,
                          contact_name="Pat", email=email_, additional_emails=additional)
        s.add(invoice)
        s.flush()
        s.add(InvoiceLine(invoice_id=invoice.id, position=1, group_name="News", kind="plan",
                          description="Gold plan", quantity=Decimal("1"),
                          unit_price=Decimal("19.95"), amount=Decimal("19.95")))
        s.commit()
        return int(invoice.id)


OPTIONS = SendOptions(from_name="Acme Hosting Billing", from_email="billing@hosting.example",
                      bounce_email="bounces@hosting.example", test_email="tester@hosting.example",
                      comments_text="Thanks for a great year!",
                      comments_html="<p><strong>Thanks</strong> for a great year!</p>")


def _send(app: Flask, ids: list[int], *, test: bool = False, resend: bool = False,
          options: SendOptions = OPTIONS) -> sending.SendRunResult:
    with app.app_context():
        return send_bills(ids, test=test, resend=resend, options=options, actor="tester")


def _log(app: Flask, invoice_id: int) -> list[InvoiceSend]:
    with app.app_context():
        rows = sending.invoice_sends(get_state(app).session, invoice_id)
        get_state(app).session.expunge_all()
        return rows


def _status(app: Flask, invoice_id: int) -> str:
    with app.app_context():
        invoice = get_state(app).session.get(Invoice, invoice_id)
        assert invoice is not None
        return invoice.status


# --- The message, the send log, sent once ----------------------------------------------------


def test_send_bills_text_html_pdf_to_the_snapshot_addresses_once(
        make_app: Callable[..., Flask], db_url: str, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    app = _mail_app(make_app, port, db_url)
    first = _invoice(app, "Acme Publishing", "ap@acme.example",
                     "boss@acme.example, ledger@acme.example", seq=1)
    second = _invoice(app, "Beta Lists", "beta@beta.example", seq=2)
    heard: list[dict[str, Any]] = []
    signals.bill_sent.connect(lambda sender, **kw: heard.append(kw), sender=app, weak=False)
    try:
        result = _send(app, [first, second])
    finally:
        signals.bill_sent.receivers.clear()
    assert result.exit_code == 0, result.to_json()
    assert [o.status for o in result.outcomes] == ["sent", "sent"]
    assert len(inbox.messages) == 2
    mail_from, rcpt, message = inbox.messages[0]
    assert mail_from == "bounces@hosting.example"  # the envelope sender
    assert sorted(rcpt) == ["ap@acme.example", "boss@acme.example", "ledger@acme.example"]
    assert message["From"] == "Acme Hosting Billing <billing@hosting.example>"
    assert message["Subject"] == "Invoice 2026-00001 for Acme Publishing"
    assert message.get_content_type() == "multipart/mixed"
    alternative, attachment = message.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    text, html = alternative.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert text.get_content().startswith("Thanks for a great year!")
    assert "Invoice 2026-00001 for Acme Publishing" in text.get_content()  # Email template
    assert html.get_content_type() == "text/html"
    assert "<strong>Thanks</strong>" in html.get_content()
    assert "<h1>Invoice 2026-00001</h1>" in html.get_content()  # Web template
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_filename() == "invoice-2026-00001.pdf"
    assert attachment.get_content()[:5] == b"%PDF-"
    assert _status(app, first) == "sent"
    log = _log(app, first)
    assert [(s.outcome, s.is_test) for s in log] == [("sent", False)]
    assert "ap@acme.example" in log[0].to_addresses and "accepted" in log[0].server_answer
    assert [h["number"] for h in heard] == ["2026-00001", "2026-00002"]

    again = _send(app, [first, second])
    assert [o.status for o in again.outcomes] == ["skipped", "skipped"]
    assert "already sent" in again.outcomes[0].reason and again.exit_code == 1
    assert len(inbox.messages) == 2
    resent = _send(app, [first], resend=True)
    assert [o.status for o in resent.outcomes] == ["sent"] and len(inbox.messages) == 3


def test_without_weasyprint_the_bill_goes_without_attachment_and_the_page_says_so(
        make_app: Callable[..., Flask], smtp: tuple[Inbox, int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    inbox, port = smtp
    monkeypatch.setattr(sending, "weasyprint_module", lambda: None)
    from lm_billing_plugin.web.views import bill_send

    monkeypatch.setattr(bill_send, "weasyprint_module", lambda: None)
    app = _mail_app(make_app, port)
    invoice_id = _invoice(app, "Acme", "ap@acme.example")
    page = app.test_client().get("/billing/bills/send").get_data(as_text=True)
    assert "without the PDF attachment" in page
    result = _send(app, [invoice_id])
    assert result.outcomes[0].status == "sent" and not result.with_pdf
    message = inbox.messages[0][2]
    assert message.get_content_type() == "multipart/alternative"


def test_a_test_send_goes_to_the_test_address_only_and_never_marks_sent(
        make_app: Callable[..., Flask], smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    app = _mail_app(make_app, port)
    one = _invoice(app, "Acme", "ap@acme.example", seq=1)
    two = _invoice(app, "Beta", "beta@beta.example", seq=2)
    _send(app, [two])
    result = _send(app, [one, two], test=True)
    assert [o.status for o in result.outcomes] == ["sent", "sent"]
    tests = inbox.messages[1:]
    assert [rcpt for _, rcpt, _ in tests] == [["tester@hosting.example"]] * 2
    assert tests[0][2]["Subject"].startswith("[TEST] Invoice 2026-00001")
    assert not inbox.to("ap@acme.example")
    assert _status(app, one) == "test-sent"  # issued -> test-sent
    assert _status(app, two) == "sent"  # a test send never un-sends
    assert [(s.outcome, s.is_test) for s in _log(app, one)] == [("test-sent", True)]
    # The test send did not count as sent: the real one still goes out.
    real = _send(app, [one])
    assert real.outcomes[0].status == "sent" and inbox.to("ap@acme.example")
    with pytest.raises(SendError, match="Test Email Address"):
        _send(app, [one], test=True, options=SendOptions("B", "b@hosting.example"))


# --- Failures stop nothing ---------------------------------------------------------------------


def test_a_refused_recipient_is_logged_and_the_others_get_theirs(
        make_app: Callable[..., Flask], smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    inbox.refuse.add("gone@acme.example")
    app = _mail_app(make_app, port)
    one = _invoice(app, "Acme", "ap@acme.example", "gone@acme.example", seq=1)
    two = _invoice(app, "Beta", "beta@beta.example", seq=2)
    result = _send(app, [one, two])
    assert [o.status for o in result.outcomes] == ["partial", "sent"]
    assert result.exit_code == 1
    assert inbox.to("ap@acme.example") and inbox.to("beta@beta.example")
    assert not inbox.to("gone@acme.example")
    entry = _log(app, one)[0]
    assert entry.outcome == "partial"
    assert "gone@acme.example refused: 550 5.1.1 no such user here" in entry.server_answer
    assert _status(app, one) == "sent"  # the customer has it (at ap@)


def test_a_dropped_connection_fails_that_invoice_and_the_next_one_goes_out(
        make_app: Callable[..., Flask], smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    inbox.drop.add("drop@acme.example")
    app = _mail_app(make_app, port)
    one = _invoice(app, "Acme", "drop@acme.example", seq=1)
    two = _invoice(app, "Beta", "beta@beta.example", seq=2)
    result = _send(app, [one, two])
    assert [o.status for o in result.outcomes] == ["failed", "sent"]
    assert "not sent" in result.outcomes[0].reason
    assert re.search(r"closed|disconnect", result.outcomes[0].reason, re.I)
    assert inbox.to("beta@beta.example")
    assert _status(app, one) == "issued"
    assert _log(app, one)[0].outcome == "failed"
    # Not sent means not in doubt: the next send tries it again.
    inbox.drop.clear()
    inbox.refuse.clear()
    with app.app_context():
        get_state(app).session.execute(sa.update(Invoice).where(Invoice.id == one)
                                       .values(email="ap@acme.example"))
        get_state(app).session.commit()
    assert _send(app, [one]).outcomes[0].status == "sent"


def test_an_address_with_a_line_break_is_refused_and_logged(
        make_app: Callable[..., Flask], smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    app = _mail_app(make_app, port)
    evil = _invoice(app, "Evil", "ap@acme.example\r\nBcc: victim@else.example", seq=1)
    sneaky = _invoice(app, "Sneaky", "ok@acme.example", "x@acme.example\nBcc:v@else.example",
                      seq=2)
    fine = _invoice(app, "Fine", "fine@fine.example", seq=3)
    result = _send(app, [evil, sneaky, fine])
    assert [o.status for o in result.outcomes] == ["failed", "failed", "sent"]
    assert "line break" in result.outcomes[0].reason
    assert [rcpt for _, rcpt, _ in inbox.messages] == [["fine@fine.example"]]
    entry = _log(app, evil)[0]
    assert entry.outcome == "refused" and "\r" not in entry.to_addresses
    assert "\\r\\n" in entry.to_addresses
    with pytest.raises(SendError, match="line break"):
        check_address("a@b.example\r\nX: y", "the From Email Address")
    with pytest.raises(SendError, match="line break"):
        _send(app, [fine], options=SendOptions("Billing\r\nBcc: x@y.example",
                                               "billing@hosting.example"))


def test_the_smtp_password_is_never_in_a_log(make_app: Callable[..., Flask],
                                             caplog: pytest.LogCaptureFixture) -> None:
    inbox = Inbox()
    port = closed_port()

    def refuse(server: Any, session: Any, envelope: Any, mechanism: str,
               auth_data: Any) -> AuthResult:
        return AuthResult(success=False, handled=False)

    controller = Controller(inbox, hostname="127.0.0.1", port=port, auth_require_tls=False,
                            authenticator=refuse)
    controller.start()
    try:
        app = _mail_app(make_app, port, LM_BILLING_SMTP_USERNAME="billing",
                        LM_BILLING_SMTP_PASSWORD=PASSWORD)
        invoice_id = _invoice(app, "Acme", "ap@acme.example")
        with caplog.at_level(logging.DEBUG):
            result = _send(app, [invoice_id])
    finally:
        controller.stop()
    assert result.outcomes[0].status == "failed"
    assert "LM_BILLING_SMTP_PASSWORD" in result.outcomes[0].reason
    with app.app_context():
        s = get_state(app).session
        stored = json.dumps([list(r) for t in ("lm_billing_invoice_send",
                                               "lm_billing_send_run_item",
                                               "lm_billing_send_run", "lm_billing_audit")
                             for r in s.execute(sa.text(f"SELECT * FROM {t}"))], default=str)
    assert PASSWORD not in stored
    assert PASSWORD not in caplog.text
    assert not inbox.messages


# --- Interrupted sends send nobody twice -------------------------------------------------------


def test_sending_is_recorded_before_the_smtp_transaction_and_in_doubt_is_skipped(
        make_app: Callable[..., Flask], smtp: tuple[Inbox, int], tmp_path: Any) -> None:
    inbox, port = smtp
    app = _mail_app(make_app, port)
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    one = _invoice(app, "Acme", "ap@acme.example", seq=1)
    seen: list[str] = []
    observer = sa.create_engine(url)

    def look() -> None:  # in the SMTP server, while the message is being accepted
        with observer.connect() as conn:
            seen.extend(conn.scalars(sa.text(
                "SELECT outcome FROM lm_billing_invoice_send WHERE invoice_id = :i"), {"i": one}))

    inbox.during_data = look
    assert _send(app, [one]).outcomes[0].status == "sent"
    observer.dispose()
    assert seen == ["sending"]  # committed before the SMTP transaction
    assert [s.outcome for s in _log(app, one)] == ["sent"]

    # A process that stopped between the two records (an hour ago: longer than a lease + the
    # SMTP timeout) leaves the attempt "sending".
    two = _invoice(app, "Beta", "beta@beta.example", seq=2)
    with app.app_context():
        s = get_state(app).session
        s.add(InvoiceSend(invoice_id=two, to_addresses="beta@beta.example", is_test=False,
                          outcome="sending", server_answer="", actor="died",
                          at=utcnow() - timedelta(hours=1)))
        s.commit()
    inbox.during_data = None
    result = _send(app, [two])
    assert result.outcomes[0].status == "skipped"
    assert result.outcomes[0].reason.startswith("in doubt")
    assert "(its process stopped)" in result.outcomes[0].reason
    assert not inbox.to("beta@beta.example")
    assert _send(app, [two], resend=True).outcomes[0].status == "sent"
    assert inbox.to("beta@beta.example")


def test_a_rerun_of_an_interrupted_send_run_sends_only_the_pending(
        make_app: Callable[..., Flask], smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    app = _mail_app(make_app, port)
    ids = [_invoice(app, f"C{i}", f"c{i}@c.example", seq=i) for i in (1, 2, 3)]
    with app.app_context():
        run_id = create_send_run(ids, test=False, resend=False, options=OPTIONS, actor="t")
        run_send_run(run_id)
        assert len(inbox.messages) == 3
        run_send_run(run_id)  # nothing pending any more
        again = create_send_run(ids, test=False, resend=False, options=OPTIONS, actor="t")
        result = run_send_run(again)
        run = get_state(app).session.get(SendRun, again)
        assert run is not None and run.skipped == 3 and run.finished_at is not None
    assert len(inbox.messages) == 3
    assert all(o.status == "skipped" for o in result.outcomes)


# --- CLI and page ------------------------------------------------------------------------------


def test_cli_bills_send(make_app: Callable[..., Flask], smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    inbox.drop.add("drop@acme.example")
    app = _mail_app(make_app, port)
    _invoice(app, "Acme", "ap@acme.example", seq=1)
    _invoice(app, "Drop", "drop@acme.example", seq=2)
    runner = app.test_cli_runner()
    done = runner.invoke(args=["lm-billing", "bills", "send", "2026-00001", "--json"])
    assert done.exit_code == 0, done.output
    doc = json.loads(done.output)
    assert doc["sent"] == 1 and doc["invoices"][0]["to"] == ["ap@acme.example"]
    done = runner.invoke(args=["lm-billing", "bills", "send", "2026-00001", "2026-00002"])
    assert done.exit_code == 1, done.output
    assert "already sent" in done.output and "failed" in done.output
    done = runner.invoke(args=["lm-billing", "bills", "send", "2026-00001", "--test-address",
                               "qa@hosting.example", "--json"])
    assert done.exit_code == 0 and inbox.to("qa@hosting.example")
    assert runner.invoke(args=["lm-billing", "bills", "send"]).exit_code == 2
    bad = runner.invoke(args=["lm-billing", "bills", "send", "2026-00001",
                              "--test-address", "no address"])
    assert bad.exit_code == 2 and "not an email address" in bad.output
    assert runner.invoke(args=["lm-billing", "bills", "send", "2099-1"]).exit_code == 2


def test_send_page_sends_in_the_background_and_shows_progress(
        make_app: Callable[..., Flask], smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    app = _mail_app(make_app, port, LM_BILLING_INLINE_BATCHES=True)
    one = _invoice(app, "Acme", "ap@acme.example", seq=1)
    client = app.test_client()
    page = client.get("/billing/bills/send").get_data(as_text=True)
    for label in ("From Name", "From Email Address", "Test Email Address",
                  "Message Bounce Email Address", "Message Comments (Text)",
                  "Message Comments (HTML)", "Test Selected Bills", "Send Bills", "Resend"):
        assert label in page
    assert 'value="Acme Hosting Billing"' in page and 'value="tester@hosting.example"' in page
    assert f'name="invoice_id" value="{one}"' in page
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token
    form = {"csrf_token": token.group(1), "from_name": "Acme Hosting Billing",
            "from_email": "billing@hosting.example",
            "test_email": "", "bounce_email": "", "comments_text": "Hello",
            "comments_html": "", "invoice_id": str(one)}
    refused = client.post("/billing/bills/send", data={**form, "test": "Test Selected Bills"})
    assert refused.status_code == 400 and "Test Email Address" in refused.get_data(as_text=True)
    sent = client.post("/billing/bills/send", data={**form, "send": "Send Bills"})
    assert sent.status_code == 302
    progress = client.get(sent.headers["Location"]).get_data(as_text=True)
    assert "Finished: 1 of 1" in progress and "1 sent" in progress
    assert inbox.messages[0][0] == "billing@hosting.example"  # no bounce address: From
    invoice_page = client.get(f"/billing/invoices/{one}").get_data(as_text=True)
    assert "Send log" in invoice_page and "ap@acme.example" in invoice_page


def test_a_dead_send_run_is_marked_interrupted_by_the_next_and_nobody_gets_two(
        make_app: Callable[..., Flask], smtp: tuple[Inbox, int]) -> None:
    """A send run whose process died after its first invoice (left "running", two pending,
    nothing logged for longer than a lease + the SMTP timeout) is marked interrupted by the
    next send run, its pending invoices skipped with the reason; the new run sends those two
    and skips the one already sent."""
    inbox, port = smtp
    app = _mail_app(make_app, port, LM_BILLING_LEASE_SECONDS=0.2, LM_BILLING_SMTP_TIMEOUT=0.2)
    ids = [_invoice(app, f"C{i}", f"c{i}@c.example", seq=i) for i in (1, 2, 3)]
    with app.app_context():
        session = get_state(app).session
        dead = create_send_run(ids, test=False, resend=False, options=OPTIONS, actor="t")
        # As a SIGKILL after the first invoice leaves it: that one sent, the rest pending.
        first = session.scalar(sa.select(sending.SendRunItem.id).where(
            sending.SendRunItem.send_run_id == dead, sending.SendRunItem.position == 0))
        session.commit()
        sending.run_send_run(dead)  # sends all three, then undo the end for the other two
        session.execute(sa.update(sending.SendRunItem)
                        .where(sending.SendRunItem.send_run_id == dead,
                               sending.SendRunItem.id != first)
                        .values(status="pending"))
        session.execute(sa.update(Invoice).where(Invoice.id.in_(ids[1:]))
                        .values(status="issued"))
        session.execute(sa.delete(InvoiceSend).where(InvoiceSend.invoice_id.in_(ids[1:])))
        session.execute(sa.update(SendRun).where(SendRun.id == dead)
                        .values(status="running", finished_at=None, sent=1))
        session.commit()
        del inbox.messages[1:]
        time.sleep(0.5)
        again = create_send_run(ids, test=False, resend=False, options=OPTIONS, actor="t")
        result = sending.run_send_run(again)
        run = session.get(SendRun, dead)
        assert run is not None and run.status == "interrupted" and run.finished_at is not None
        reasons = [o.reason for o in sending.send_outcomes(dead).outcomes]
        assert reasons[1:] == [sending.INTERRUPTED_REASON] * 2
    assert [o.status for o in result.outcomes] == ["skipped", "sent", "sent"]
    assert len(inbox.messages) == 3  # each customer once


def test_a_bill_another_send_is_still_sending_is_skipped_as_being_sent_not_as_stopped(
        make_app: Callable[..., Flask], db_url: str, smtp: tuple[Inbox, int]) -> None:
    """A live race: while the first send is at the mail server with a bill (its claim
    fresh), a second send of the same bill skips it saying it is being sent right now (not
    "its process stopped"); the first then records it sent, and the customer has it once.
    A claim older than a lease + the SMTP timeout reads "in doubt ... its process stopped"."""
    inbox, port = smtp
    app = _mail_app(make_app, port, db_url)
    one = _invoice(app, "Acme Publishing", "ap@acme.example", seq=1)
    during: list[sending.SendRunResult] = []
    inbox.during_data = lambda: during.append(_send(app, [one]))  # in aiosmtpd's thread
    first = _send(app, [one])
    inbox.during_data = None
    assert [o.status for o in first.outcomes] == ["sent"]
    (skipped,) = during[0].outcomes
    assert skipped.status == "skipped"
    assert skipped.reason.startswith("being sent right now by another send (to "
                                     "ap@acme.example, begun "), skipped.reason
    assert "process stopped" not in skipped.reason
    assert len(inbox.to("ap@acme.example")) == 1
    with app.app_context():
        session = get_state(app).session
        settings = get_state(app).settings
        claim = InvoiceSend(invoice_id=one, to_addresses="ap@acme.example", is_test=False,
                            outcome="sending", server_answer="", actor="t", at=utcnow())
        assert sending.claim_is_live(claim, settings)
        claim.at = utcnow() - timedelta(seconds=settings.lease_seconds
                                        + settings.smtp_timeout + 1)
        assert not sending.claim_is_live(claim, settings)
        reason = sending.doubt_reason(claim, settings)
        assert reason.startswith("in doubt: a send to ap@acme.example began on ")
        assert "(its process stopped)" in reason
        session.rollback()


def test_the_two_doubt_reasons_are_stored_in_english_and_said_in_german(
        make_app: Callable[..., Flask]) -> None:
    """The reason is stored (and printed by the CLI) in English; a German page says it."""
    app = make_app(LM_BILLING_DEFAULT_LOCALE="de")
    with app.test_request_context():
        settings = get_state(app).settings
        claim = InvoiceSend(invoice_id=1, to_addresses="ap@acme.example", is_test=False,
                            outcome="sending", server_answer="", actor="t", at=utcnow())
        live = sending.doubt_reason(claim, settings)
        claim.at = utcnow() - timedelta(hours=1)
        dead = sending.doubt_reason(claim, settings)
        assert live.startswith("being sent right now") and dead.startswith("in doubt:")
        live, dead = say(live), say(dead)
    assert live.startswith("wird gerade von einem anderen Versand") and "ap@acme.example" in live
    assert dead.startswith("unklar:") and "ap@acme.example" in dead
