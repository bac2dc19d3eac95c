"""A send interrupted mid-way sends nobody twice (issue 14, item 10), with a real SIGKILL: the
real `flask lm-billing bills send` CLI in a child process (tests.send_app) mails 10 bills, two
recipients each, to a real aiosmtpd server whose handler kills the child with SIGKILL at a
seeded moment; a second, unkilled `bills send` of the same bills then finishes the job.

The kill moments (the handler decides, so each seed is deterministic):

- ``data``: while message k is being accepted (the server has it, the client never hears the
  250): that bill's attempt is recorded "sending" with the customer holding the message.
- ``mail``: at MAIL FROM of message k+1: bill k is recorded sent, bill k+1 is claimed
  ("sending") and nobody has it yet.

Either way the claimed bill is honestly "in doubt": the rerun skips it and says so (the
customer may have it), and sends every other bill. Counted at the mail server per
(recipient, invoice): nobody has any bill twice. The dead run is marked interrupted by the
rerun, and its page says so (not "stalled") and lists the bill in doubt with the guidance.

LM_BILLING_KILL_SEEDS seeds (tests/_kill.py: 1 in the normal suite, 25 in `make stress`);
the phase alternates with the seed, k comes from random.Random(seed). SQLite, PostgreSQL and
(first seed only, for suite time) MariaDB.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _sim import closed_port
from aiosmtpd.controller import Controller
from flask import Flask
from test_billing_send import _invoice

from lm_billing_plugin.billing import sending
from lm_billing_plugin.models import Invoice, InvoiceSend, SendRun, SendRunItem
from lm_billing_plugin.state import get_state
from tests._kill import SEEDS, killed

ROOT = Path(__file__).resolve().parent.parent
BILLS = 10
LEASE = 0.5
SMTP_TIMEOUT = 2.0
PHASES = ("data", "mail")


class KillingInbox:
    """aiosmtpd handler that keeps every message (envelope recipients and subject) and sends
    SIGKILL to ``victim`` at the seeded moment: during DATA of message ``k`` (phase
    ``data``, the message counted as received), or at the MAIL FROM after message ``k``
    (phase ``mail``)."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], str]] = []
        self.victim: int | None = None
        self.k = 0
        self.phase = ""
        self.killed_at: str | None = None

    def _kill(self, where: str) -> None:
        if self.victim is not None and self.killed_at is None:
            self.killed_at = where
            os.kill(self.victim, signal.SIGKILL)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        if self.phase == "mail" and len(self.messages) == self.k:
            self._kill(f"MAIL FROM after message {self.k}")
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), str(message["Subject"])))
        if self.phase == "data" and len(self.messages) == self.k:
            self._kill(f"DATA of message {self.k}")
        return "250 Message accepted for delivery"


@pytest.fixture
def killing_smtp() -> Iterator[tuple[KillingInbox, int]]:
    inbox = KillingInbox()
    port = closed_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def _send_cli(db_url: str, port: int, numbers: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "tests.send_app:create_app", "lm-billing",
         "bills", "send", *numbers, "--json"],
        cwd=ROOT, env=dict(os.environ, SEND_DB_URL=db_url, SEND_SMTP_HOST="127.0.0.1",
                           SEND_SMTP_PORT=str(port), SEND_SMTP_TIMEOUT=str(SMTP_TIMEOUT),
                           SEND_LEASE=str(LEASE)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _sending_rows(app: Flask) -> dict[int, str]:
    """Invoice id -> the outcome of each of its real attempts, joined (``sending`` = the
    attempt that began and recorded no end)."""
    with app.app_context():
        session = get_state().session
        rows = session.execute(sa.select(InvoiceSend.invoice_id, InvoiceSend.outcome)
                               .where(InvoiceSend.is_test.is_(False))
                               .order_by(InvoiceSend.id)).all()
        session.commit()
    found: dict[int, list[str]] = {}
    for invoice_id, outcome in rows:
        found.setdefault(invoice_id, []).append(outcome)
    return {i: ",".join(o) for i, o in found.items()}


@pytest.mark.parametrize("seed", SEEDS)
def test_seeded_sigkill_of_a_send_then_a_rerun_mails_nobody_twice(
        make_app: Callable[..., Flask], db_url: str,
        killing_smtp: tuple[KillingInbox, int], seed: int) -> None:
    if db_url.startswith("mysql") and seed > 0:
        pytest.skip("seeded send kills on MariaDB: the first seed only (suite time)")
    inbox, port = killing_smtp
    inbox.phase = PHASES[seed % len(PHASES)]
    inbox.k = random.Random(seed).randint(1, BILLS - 1)
    app = make_app(db_url, LM_BILLING_LEASE_SECONDS=LEASE, LM_BILLING_SMTP_TIMEOUT=SMTP_TIMEOUT)
    ids = [_invoice(app, f"Customer {i:02d}", f"c{i}@c{i}.example", f"ledger@c{i}.example",
                    seq=i) for i in range(1, BILLS + 1)]
    numbers = [f"2026-{i:05d}" for i in range(1, BILLS + 1)]
    subjects = {f"Invoice {number} for Customer {i:02d}": ids[i - 1]
                for i, number in enumerate(numbers, start=1)}

    # 1. The send, killed by the mail server's handler at the seeded moment.
    child = _send_cli(db_url, port, numbers)
    inbox.victim = child.pid
    out, err = child.communicate(timeout=180)
    assert killed(child), (inbox.phase, inbox.k, child.returncode, err[-3000:])
    assert inbox.killed_at is not None
    received_before = len(inbox.messages)
    assert received_before == inbox.k
    with app.app_context():
        session = get_state().session
        dead = session.scalars(sa.select(SendRun)).one()
        dead_id, dead_status = dead.id, dead.status
        session.commit()
    assert dead_status == "running"  # as the kill left it: nobody could end it
    # The claimed bill: the (k)th for "data" (the server has it), the (k+1)th for "mail".
    doubtful = ids[inbox.k - 1] if inbox.phase == "data" else ids[inbox.k]
    attempts = _sending_rows(app)
    assert attempts[doubtful] == "sending", attempts
    assert all(attempts[i] == "sent" for i in ids if i != doubtful and i in attempts)

    # 2. Once the dead run's lease + SMTP timeout have passed, the same send again.
    time.sleep(LEASE + SMTP_TIMEOUT + 0.3)
    rerun = _send_cli(db_url, port, numbers)
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 1, err[-3000:]  # 1: it skipped some (sent, in doubt)
    doc = json.loads(out)
    statuses = {o["number"]: (o["status"], o["reason"]) for o in doc["invoices"]}

    # At the mail server: nobody has any bill twice, and each bill not in doubt was
    # received by both its recipients.
    received = Counter((rcpt, subjects[subject]) for rcpts, subject in inbox.messages
                       for rcpt in rcpts)
    assert set(received.values()) == {1}, received.most_common(3)
    for i, invoice_id in enumerate(ids, start=1):
        got = {rcpt for rcpt, inv in received if inv == invoice_id}
        status, reason = statuses[numbers[i - 1]]
        if invoice_id == doubtful:
            assert status == "skipped" and reason.startswith("in doubt:"), (status, reason)
            assert "its process stopped" in reason and "Resend" in reason
            # "data": the customer has it; "mail": nobody does. Never more than once.
            assert got == ({f"c{i}@c{i}.example", f"ledger@c{i}.example"}
                           if inbox.phase == "data" else set())
        else:
            assert got == {f"c{i}@c{i}.example", f"ledger@c{i}.example"}, (i, got)
            assert status in ("sent", "skipped"), (i, status, reason)
            if status == "skipped":
                assert reason.startswith("already sent"), reason
    # Every bill is finally sent except the one in doubt, whose only attempt is "sending".
    with app.app_context():
        session = get_state().session
        final = dict(session.execute(sa.select(Invoice.id, Invoice.status)).all())
        session.commit()
    assert {i for i, s in final.items() if s != "sent"} == {doubtful}
    attempts = _sending_rows(app)
    assert attempts[doubtful] == "sending"
    assert all(attempts[i] == "sent" for i in ids if i != doubtful), attempts

    # 3. The dead run: interrupted, its page says so (not stalled) and lists the bill in
    # doubt with the guidance; the bills it never reached are skipped with the reason.
    with app.app_context():
        session = get_state().session
        run = session.get(SendRun, dead_id)
        assert run is not None and run.status == "interrupted" and run.finished_at
        items = dict(session.execute(sa.select(SendRunItem.invoice_id, SendRunItem.reason)
                                     .where(SendRunItem.send_run_id == dead_id)).all())
        session.commit()
    assert items[doubtful].startswith("in doubt:")
    reached = ids.index(doubtful)
    assert all(items[i] == sending.INTERRUPTED_REASON for i in ids[reached + 1:])
    assert all(items[i] == "" for i in ids[:reached])  # sent by the dead run
    page = app.test_client().get(f"/billing/bills/sends/{dead_id}").get_data(as_text=True)
    assert "Interrupted" in page and "This send was interrupted" in page
    assert "seems to have stopped" not in page  # the stalled notice
    number = numbers[reached]
    row = page[page.index(f">{number}</a>"):]
    row = row[:row.index("</tr>")]
    assert "in doubt: a send to" in row and "check the mail server&#39;s log" in row
