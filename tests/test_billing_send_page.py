"""The page of one send (Billing: Customers: Send, then its progress page): every invoice's
outcome, and "Resend" from it for the bills that send skipped (sent already or in doubt) —
a new send with the same message, against a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient
from test_billing_send import OPTIONS, Inbox, _invoice, _log, _mail_app, _send, smtp  # noqa: F401

from lm_billing_plugin.billing.invoices import void_invoice
from lm_billing_plugin.models import InvoiceSend
from lm_billing_plugin.state import get_state


def _token(page: str) -> str:
    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert found, "no CSRF token on the page"
    return found.group(1)


def _resend(client: FlaskClient, run_id: int, token: str, *invoice_ids: int) -> str:
    """POST Resend; the page it redirects to."""
    response = client.post(f"/billing/bills/sends/{run_id}/resend",
                           data={"csrf_token": token, "invoice_id": [str(i) for i in
                                                                    invoice_ids]})
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    return client.get(response.headers["Location"]).get_data(as_text=True)


def test_the_send_page_shows_each_outcome_and_resends_a_skipped_bill(
        make_app: Callable[..., Flask], smtp: tuple[Inbox, int]) -> None:  # noqa: F811
    inbox, port = smtp
    inbox.refuse.add("gone@beta.example")
    app = _mail_app(make_app, port, LM_BILLING_INLINE_BATCHES=True)
    sent = _invoice(app, "Acme", "ap@acme.example", seq=1)
    partial = _invoice(app, "Beta", "beta@beta.example", "gone@beta.example", seq=2)
    fresh = _invoice(app, "Gamma", "g@gamma.example", seq=3)
    _send(app, [sent])
    run = _send(app, [sent, partial, fresh])  # Acme skipped: sent already
    client = app.test_client()
    page = client.get(f"/billing/bills/sends/{run.send_run_id}").get_data(as_text=True)
    rows = re.findall(r"<tr><th scope=\"row\">.*?</tr>", page, re.S)
    assert len(rows) == 3
    assert "2026-00001" in rows[0] and ">skipped<" in rows[0] and "already sent" in rows[0]
    assert "Resend invoice 2026-00001" in rows[0]
    assert ">sent, some refused<" in rows[1] and "gone@beta.example refused: 550" in rows[1]
    assert ">sent<" in rows[2] and "g@gamma.example" in rows[2]
    assert "Resend invoice" not in rows[1] + rows[2]  # only what the send skipped
    assert "Finished: 3 of 3" in page and "2 sent, 0 failed, 1 skipped" in page

    again = _resend(client, run.send_run_id, _token(page), sent)
    assert "Finished: 1 of 1" in again and "1 sent, 0 failed, 0 skipped" in again
    assert len(inbox.to("ap@acme.example")) == 2
    mail_from, _, message = inbox.messages[-1]
    # The same message as the send it came from: From, envelope sender, comments.
    assert mail_from == OPTIONS.bounce_email
    assert message["From"] == "Acme Hosting Billing <billing@hosting.example>"
    assert "Thanks for a great year!" in message.get_body(("plain",)).get_content()
    log = _log(app, sent)
    assert [(s.outcome, s.is_test) for s in log] == [("sent", False), ("sent", False)]


def test_resend_refuses_what_the_send_did_not_skip_and_a_void_bill(
        make_app: Callable[..., Flask], smtp: tuple[Inbox, int]) -> None:  # noqa: F811
    inbox, port = smtp
    app = _mail_app(make_app, port, LM_BILLING_INLINE_BATCHES=True)
    one = _invoice(app, "Acme", "ap@acme.example", seq=1)
    two = _invoice(app, "Beta", "beta@beta.example", seq=2)
    first = _send(app, [one])
    skipped = _send(app, [one, two])  # one skipped, two sent
    client = app.test_client()
    page = client.get(f"/billing/bills/sends/{first.send_run_id}").get_data(as_text=True)
    assert "Resend invoice" not in page  # the first send skipped nothing
    token = _token(client.get(f"/billing/bills/sends/{skipped.send_run_id}")
                   .get_data(as_text=True))
    # A bill that send did not skip (two: sent by it), one of another send, one not a number.
    for run_id, ids in ((skipped.send_run_id, (two,)), (first.send_run_id, (one,)),
                        (skipped.send_run_id, ())):
        back = _resend(client, run_id, token, *ids)
        assert "Nothing to resend" in back
    response = client.post(f"/billing/bills/sends/{skipped.send_run_id}/resend",
                           data={"csrf_token": token, "invoice_id": "x"})
    assert response.status_code == 302
    # Void since: never resent.
    with app.app_context():
        void_invoice(one, reason="wrong amount", actor="t")
    page = client.get(f"/billing/bills/sends/{skipped.send_run_id}").get_data(as_text=True)
    assert "Resend invoice" not in page
    assert "Nothing to resend" in _resend(client, skipped.send_run_id, token, one)
    assert len(inbox.messages) == 2  # one and two, once each
    assert client.post("/billing/bills/sends/999/resend",
                       data={"csrf_token": token, "invoice_id": str(one)}).status_code == 404


def test_a_test_send_offers_no_resend(make_app: Callable[..., Flask],
                                      smtp: tuple[Inbox, int]) -> None:  # noqa: F811
    inbox, port = smtp
    app = _mail_app(make_app, port, LM_BILLING_INLINE_BATCHES=True)
    one = _invoice(app, "Acme", "ap@acme.example", seq=1)
    _send(app, [one])
    test = _send(app, [one], test=True)
    client = app.test_client()
    page = client.get(f"/billing/bills/sends/{test.send_run_id}").get_data(as_text=True)
    assert "Test send to tester@hosting.example" in page and "Resend" not in page
    back = _resend(client, test.send_run_id, _token(client.get("/billing/bills/send")
                                                    .get_data(as_text=True)), one)
    assert "Nothing to resend" in back
    with app.app_context():
        assert get_state(app).session.query(InvoiceSend).count() == 2
    assert len(inbox.messages) == 2
