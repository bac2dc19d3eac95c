"""Notifications of scheduled runs: one signal and one email per run that found new trouble,
sent to a real SMTP server (aiosmtpd on 127.0.0.1) after runs against simulated servers."""

from __future__ import annotations

import email
import email.policy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from _sim import closed_port
from aiosmtpd.controller import Controller
from flask import Flask

from lm_billing_plugin import servers as server_service
from lm_billing_plugin.notify import Alert, build_alert, run_finished, trouble_found
from lm_billing_plugin.scheduler import SchedulerService
from lm_billing_plugin.tclport.simulator import Dataset, HostSim


class Inbox:
    """aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = closed_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=1, lists=3, seed=7)) as running:
        yield running


def _signals(app: Flask) -> tuple[list[Alert], list[dict[str, Any]]]:
    alerts: list[Alert] = []
    finished: list[dict[str, Any]] = []

    def on_trouble(sender: Flask, alert: Alert, **extra: Any) -> None:
        alerts.append(alert)

    def on_finished(sender: Flask, **extra: Any) -> None:
        finished.append(extra)

    trouble_found.connect(on_trouble, sender=app, weak=False)
    run_finished.connect(on_finished, sender=app, weak=False)
    return alerts, finished


@pytest.fixture
def notified_app(
    make_app: Callable[..., Flask], smtp: tuple[Inbox, int], sim: HostSim
) -> Iterator[Flask]:
    _, port = smtp
    app = make_app(
        LM_BILLING_VALIDATE_INTERVAL=0.05,
        LM_BILLING_NOTIFY_EMAILS="ops@example.com, boss@example.com",
        LM_BILLING_SMTP_HOST="127.0.0.1",
        LM_BILLING_SMTP_PORT=port,
        LM_BILLING_SMTP_SENDER="billing@portal.example.com",
        LM_BILLING_NOTIFY_BASE_URL="https://portal.example.com/billing/",
        LM_BILLING_CONNECT_TIMEOUT=0.5,
        LM_BILLING_READ_TIMEOUT=1.0,
    )
    with app.app_context():
        server_service.create_server('Hosting <A> & "B"', sim.host, sim.port, actor="test")
    yield app
    trouble_found.receivers.clear()
    run_finished.receivers.clear()


def _run_once(app: Flask) -> None:
    import time

    time.sleep(0.06)  # the next slot is due
    assert SchedulerService(app).tick(synchronous=True) == "ran"


def test_one_email_and_one_signal_per_run_with_new_trouble(
    notified_app: Flask, smtp: tuple[Inbox, int], sim: HostSim
) -> None:
    inbox, _ = smtp
    alerts, finished = _signals(notified_app)

    _run_once(notified_app)  # first validation: everything on the server is new to billing
    assert len(finished) == 1 and finished[0]["status"] in ("problems", "ok")
    assert len(alerts) == 1 and len(inbox.messages) == 1
    alert = alerts[0]
    assert alert.new_problems >= 4  # 1 unknown site + 3 unknown lists
    recipients, message = inbox.messages[0]
    assert recipients == ["ops@example.com", "boss@example.com"]
    assert message["From"] == "billing@portal.example.com"
    assert message["Subject"] == alert.subject
    assert f"{alert.new_problems} new problems" in message["Subject"]
    body = message.get_content()
    assert "unknown_list" in body and 'Hosting <A> & "B"' in body
    for record in sim.dataset.lists:
        assert record.name in body
    assert "https://portal.example.com/billing/background" in body

    _run_once(notified_app)  # nothing changed on the server: nothing new, no message
    assert len(finished) == 2 and len(alerts) == 1 and len(inbox.messages) == 1

    sim.stop()  # the server goes away: one message naming it
    _run_once(notified_app)
    assert len(alerts) == 2 and len(inbox.messages) == 2
    _, message = inbox.messages[1]
    assert "1 server unreachable" in message["Subject"]
    assert 'Hosting <A> & "B": unreachable (was' in message.get_content()

    _run_once(notified_app)  # still unreachable: not news
    assert len(alerts) == 2 and len(inbox.messages) == 2


def test_a_server_that_stops_logging_is_reported(
    notified_app: Flask, smtp: tuple[Inbox, int], sim: HostSim
) -> None:
    inbox, _ = smtp
    _run_once(notified_app)
    sim.set_logging("no")
    _run_once(notified_app)
    assert len(inbox.messages) == 2
    subject = inbox.messages[1][1]["Subject"]
    assert "logging off" in subject


def test_smtp_failure_is_logged_and_never_fails_the_run(
    make_app: Callable[..., Flask], sim: HostSim, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(
        LM_BILLING_NOTIFY_EMAILS=["ops@example.com"],
        LM_BILLING_SMTP_HOST="127.0.0.1",
        LM_BILLING_SMTP_PORT=closed_port(),
        LM_BILLING_SMTP_TIMEOUT=1.0,
    )
    with app.app_context():
        server_service.create_server("one", sim.host, sim.port, actor="test")
    alerts, _ = _signals(app)
    try:
        service = SchedulerService(app)
        with caplog.at_level(logging.ERROR, logger="lm_billing_plugin.notify"):
            assert service.tick(synchronous=True) == "ran"
    finally:
        trouble_found.receivers.clear()
        run_finished.receivers.clear()
    assert service.last_run is not None and service.last_run[1] == "problems"
    assert len(alerts) == 1  # the signal went out all the same
    errors = [r.getMessage() for r in caplog.records if r.name == "lm_billing_plugin.notify"]
    assert len(errors) == 1
    assert "not sent" in errors[0] and "LM_BILLING_SMTP_HOST" in errors[0]


def test_a_failing_receiver_is_logged_and_the_email_still_goes(
    notified_app: Flask, smtp: tuple[Inbox, int], caplog: pytest.LogCaptureFixture
) -> None:
    inbox, _ = smtp

    def broken(sender: Flask, **extra: Any) -> None:
        raise RuntimeError("receiver bug")

    trouble_found.connect(broken, sender=notified_app, weak=False)
    _run_once(notified_app)
    assert len(inbox.messages) == 1
    assert any("receiver" in r.getMessage() and r.exc_info for r in caplog.records)


def test_without_notify_emails_only_the_signal_is_sent(
    make_app: Callable[..., Flask], smtp: tuple[Inbox, int], sim: HostSim
) -> None:
    inbox, port = smtp
    app = make_app(LM_BILLING_SMTP_HOST="127.0.0.1", LM_BILLING_SMTP_PORT=port)
    with app.app_context():
        server_service.create_server("one", sim.host, sim.port, actor="test")
    alerts, _ = _signals(app)
    try:
        assert SchedulerService(app).tick(synchronous=True) == "ran"
    finally:
        trouble_found.receivers.clear()
        run_finished.receivers.clear()
    assert len(alerts) == 1 and inbox.messages == []


@dataclass
class _Outcome:
    server_id: int
    name: str
    status: str
    previous_status: str
    new_problems: int = 0
    error: dict[str, str] | None = None
    run_id: int | None = None


@dataclass
class _Result:
    servers: list[_Outcome] = field(default_factory=list)


def test_alert_wording_and_what_counts_as_news(make_app: Callable[..., Flask]) -> None:
    from lm_billing_plugin.extension import get_state

    settings = get_state(make_app()).settings
    quiet = _Result([_Outcome(1, "a", "ok", "ok"), _Outcome(2, "b", "unreachable", "unreachable")])
    assert build_alert(7, "validate", quiet, settings) is None
    noisy = _Result(
        [
            _Outcome(1, "a", "unreachable", "ok", error={"code": "timeout", "message": "no reply"}),
            _Outcome(2, "b", "auth_failed", "ok"),
            _Outcome(3, "c", "host_denied", "unchecked"),
            _Outcome(4, "d", "ok", "ok", new_problems=1),
        ]
    )
    alert = build_alert(7, "sync", noisy, settings)
    assert alert is not None
    assert alert.subject == (
        "Billing: scheduled sync found 1 new problem, 1 server password rejected, "
        "1 server refused: not in TCLPORT Hosts, 1 server unreachable"
    )
    assert "a: unreachable (was ok): no reply" in alert.body()
    assert "Billing > Background validation (scheduled run 7)" in alert.body()
