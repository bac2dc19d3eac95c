"""Two `flask lm-billing bills send` processes for the same bills at the same moment, on each
database: every recipient gets every bill exactly once (counted at a real aiosmtpd server), and
each invoice's send log has one real send. The claim that makes it so (billing/sending.py):
under a lock on the invoice row, a send records "sending" and commits before the SMTP
transaction; the other process, waiting on that lock, then finds the bill sent or in doubt
and skips it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from flask import Flask
from test_billing_send import Inbox, _invoice, _log, smtp  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
BILLS = 8


def _flask_send(db_url: str, port: int, at: float, numbers: list[str]
                ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "tests.send_app:create_app", "lm-billing",
         "bills", "send", *numbers, "--json"],
        cwd=ROOT, env=dict(os.environ, SEND_DB_URL=db_url, SEND_SMTP_PORT=str(port),
                           SEND_AT=str(at)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_send_processes_at_once_send_each_bill_to_each_recipient_once(
        make_app: Callable[..., Flask], db_url: str, smtp: tuple[Inbox, int],  # noqa: F811
) -> None:
    inbox, port = smtp
    app = make_app(db_url)
    ids = [_invoice(app, f"Customer {i:02d}", f"c{i}@c{i}.example", f"ledger@c{i}.example",
                    seq=i) for i in range(1, BILLS + 1)]
    numbers = [f"2026-{i:05d}" for i in range(1, BILLS + 1)]
    at = time.time() + 4.0  # both interpreters are up by then; the sends start together
    children = [_flask_send(db_url, port, at, numbers) for _ in range(2)]
    docs = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode in (0, 1), err  # 1: it skipped what the other one sent
        docs.append(json.loads(out))
    # At the mail server: each bill reached each of its two recipients once.
    received = Counter((rcpt, message["Subject"]) for _, rcpts, message in inbox.messages
                       for rcpt in rcpts)
    expected = {(address, f"Invoice {number} for Customer {i:02d}")
                for i, number in enumerate(numbers, start=1)
                for address in (f"c{i}@c{i}.example", f"ledger@c{i}.example")}
    assert set(received) == expected
    assert set(received.values()) == {1}, received.most_common(3)
    assert len(inbox.messages) == BILLS
    # Each bill: one process sent it, the other skipped it (sent already, or in doubt while
    # the first one was still at the mail server).
    for n, number in enumerate(numbers):
        pair = sorted(doc["invoices"][n]["status"] for doc in docs)
        assert pair == ["sent", "skipped"], (number, pair)
        assert all(doc["invoices"][n]["number"] == number for doc in docs)
    for invoice_id in ids:
        assert [(s.outcome, s.is_test) for s in _log(app, invoice_id)] == [("sent", False)]
    assert all(doc["failed"] == doc["partial"] == 0 for doc in docs)
