"""Notifications of scheduled runs: one signal and one email per run that found new trouble or
failed outright, sent to a real SMTP server (aiosmtpd on 127.0.0.1) after runs against
simulated servers."""

from __future__ import annotations

import email
import email.policy
import logging
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _sim import closed_port
from aiosmtpd.controller import Controller
from flask import Flask

from lm_billing_plugin.engine import servers as server_service
from lm_billing_plugin.engine.batches import BatchResult, ServerOutcome
from lm_billing_plugin.models import Base
from lm_billing_plugin.schedule.notify import Alert, build_alert, run_finished, trouble_found
from lm_billing_plugin.schedule.service import SchedulerService, WorkRequest, default_work
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim


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


@pytest.fixture
def steady() -> Iterator[HostSim]:
    """A second server that stays up, so the first going down is news, not a failed run."""
    with HostSim(Dataset.generate(sites=1, lists=1, seed=8)) as running:
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


def _notifying_app(
    make_app: Callable[..., Flask], port: int, db_url: str | None = None, **extra: Any
) -> Flask:
    return make_app(
        db_url,
        **{"LM_BILLING_VALIDATE_INTERVAL": 0.05, **extra},
        LM_BILLING_NOTIFY_EMAILS="ops@example.com, boss@example.com",
        LM_BILLING_SMTP_HOST="127.0.0.1",
        LM_BILLING_SMTP_PORT=port,
        LM_BILLING_SMTP_SENDER="billing@portal.example.com",
        LM_BILLING_NOTIFY_BASE_URL="https://portal.example.com/billing/",
        LM_BILLING_CONNECT_TIMEOUT=0.5,
        LM_BILLING_READ_TIMEOUT=1.0,
    )


@pytest.fixture
def notified_app(
    make_app: Callable[..., Flask], smtp: tuple[Inbox, int], sim: HostSim, steady: HostSim
) -> Iterator[Flask]:
    app = _notifying_app(make_app, smtp[1])
    with app.app_context():
        server_service.create_server('Hosting <A> & "B"', sim.host, sim.port, actor="test")
        server_service.create_server("steady", steady.host, steady.port, actor="test")
    yield app
    trouble_found.receivers.clear()
    run_finished.receivers.clear()


def _run_once(app: Flask, service: SchedulerService | None = None) -> None:
    time.sleep(0.06)  # the next slot is due
    assert (service or SchedulerService(app)).tick(synchronous=True) == "ran"


def test_one_email_and_one_signal_per_run_with_new_trouble(
    notified_app: Flask, smtp: tuple[Inbox, int], sim: HostSim
) -> None:
    inbox, _ = smtp
    alerts, finished = _signals(notified_app)

    _run_once(notified_app)  # first validation: everything on the server is new to billing
    assert len(finished) == 1 and finished[0]["status"] in ("problems", "ok")
    assert len(alerts) == 1 and len(inbox.messages) == 1
    alert = alerts[0]
    assert alert.failure is None
    assert alert.new_problems >= 6  # per server: 1 unknown site + its unknown lists
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

    sim.stop()  # one server goes away (the other is fine): one message naming it
    _run_once(notified_app)
    assert len(alerts) == 2 and len(inbox.messages) == 2
    _, message = inbox.messages[1]
    assert message["Subject"] == "Billing: scheduled validate found 1 server unreachable"
    assert 'Hosting <A> & "B": unreachable (was' in message.get_content()
    assert "steady" not in message.get_content()

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


def _outcome(server_id: int, name: str, status: str, previous: str, **extra: Any) -> ServerOutcome:
    return ServerOutcome(
        server_id, name, ok=status == "ok", status=status, previous_status=previous, **extra
    )


def test_alert_wording_and_what_counts_as_news(make_app: Callable[..., Flask]) -> None:
    settings = get_state(make_app()).settings
    quiet = BatchResult(
        1,
        "validate",
        False,
        [_outcome(1, "a", "ok", "ok"), _outcome(2, "b", "unreachable", "unreachable")],
    )
    assert build_alert(7, "validate", quiet, settings) is None
    noisy = BatchResult(
        1,
        "sync",
        False,
        [
            _outcome(1, "a", "unreachable", "ok", error={"code": "timeout", "message": "no reply"}),
            _outcome(2, "b", "auth_failed", "ok"),
            _outcome(3, "c", "host_denied", "unchecked"),
            _outcome(4, "d", "ok", "ok", new_problems=1),
        ],
    )
    alert = build_alert(7, "sync", noisy, settings)
    assert alert is not None
    assert alert.subject == (
        "Billing: scheduled sync found 1 new problem, 1 server password rejected, "
        "1 server refused: not in TCLPORT Hosts, 1 server unreachable"
    )
    assert "a: unreachable (was ok): no reply" in alert.body()
    assert "Billing > Background validation (scheduled run 7)" in alert.body()


# --- runs that failed outright: billing watched nothing -------------------------------------


def test_every_server_unreachable_fails_the_run_and_each_such_run_is_announced(
    make_app: Callable[..., Flask], smtp: tuple[Inbox, int], sim: HostSim
) -> None:
    inbox, port = smtp
    app = _notifying_app(make_app, port)
    with app.app_context():
        server_service.create_server("only", sim.host, sim.port, actor="test")
    alerts, finished = _signals(app)
    service = SchedulerService(app)
    try:
        _run_once(app, service)  # the server is up: the usual news, no failure
        sim.stop()
        _run_once(app, service)
        _run_once(app, service)  # still down: the watchdog is still blind, say so again
    finally:
        trouble_found.receivers.clear()
        run_finished.receivers.clear()
    assert [f["status"] for f in finished] == ["problems", "failed", "failed"]
    assert [a.failure is not None for a in alerts] == [False, True, True]
    assert len(inbox.messages) == 3
    first_failure, second_failure = (m for _, m in inbox.messages[1:])
    run_id = alerts[1].run_id
    assert first_failure["Subject"] == (
        f"Billing: scheduled validate run {run_id} failed: the only server could not be read"
    )
    body = first_failure.get_content()
    assert "Billing is not watching the hosting servers until this is fixed." in body
    assert "What to do: If every server is unreachable, check the network" in body
    assert "connection check" in body
    assert "only: unreachable (was ok): " in body
    # The second failure lists the server again (it still cannot be read), no longer as a change.
    again = second_failure.get_content()
    assert "failed: the only server could not be read" in second_failure["Subject"]
    assert "  only: unreachable: " in again and "(was" not in again


def _rename(app: Flask, old: str, new: str) -> None:
    with app.app_context(), get_state(app).db.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))


@pytest.mark.parametrize("cause", ["error", "database"])
def test_a_run_that_stops_with_an_error_is_announced_with_what_to_do(
    make_app: Callable[..., Flask], smtp: tuple[Inbox, int], cause: str
) -> None:
    """The run raises (a bug), or the database fails under it (its run table vanishes, so the
    run cannot even record its outcome): one message all the same, saying what to check."""
    inbox, port = smtp
    app = _notifying_app(make_app, port)

    def broken_work(request: WorkRequest) -> BatchResult:
        if cause == "error":
            raise RuntimeError("engine bug")
        _rename(app, "lm_billing_task_run", "lm_billing_task_run_away")
        return default_work(request)  # recording the batch on the run fails

    alerts, finished = _signals(app)
    try:
        service = SchedulerService(app, work=broken_work)
        assert service.tick(synchronous=True) == "ran"
    finally:
        trouble_found.receivers.clear()
        run_finished.receivers.clear()
    assert [f["status"] for f in finished] == ["failed"]
    assert len(alerts) == 1 and len(inbox.messages) == 1
    (alert,) = alerts
    _, message = inbox.messages[0]
    subject = message["Subject"]
    assert subject.startswith(f"Billing: scheduled validate run {alert.run_id} failed: the ")
    assert subject == alert.subject
    body = message.get_content()
    assert "Billing is not watching the hosting servers until this is fixed." in body
    assert "https://portal.example.com/billing/background" in body
    if cause == "error":
        assert "stopped with an error: RuntimeError: engine bug" in subject
        assert "traceback in the log of the scheduler process on " in body
    else:
        assert "stopped with an error: OperationalError: no such table" in subject
        assert "Check that the database is up and reachable from " in body
        assert "`flask lm-billing db upgrade`" in body


def test_a_scheduler_without_its_database_for_an_interval_says_so_once(
    make_app: Callable[..., Flask], smtp: tuple[Inbox, int], tmp_path: Path
) -> None:
    """No run can start, so there is no run to report: after one interval of failing ticks
    the process sends one message for the outage, not one per tick."""
    inbox, port = smtp
    url = f"sqlite:///{tmp_path / 'not-yet' / 'billing.sqlite'}"
    app = _notifying_app(make_app, port, url, create_tables=False, LM_BILLING_VALIDATE_INTERVAL=0.3)
    alerts, _ = _signals(app)
    service = SchedulerService(app)
    try:
        assert service.tick() == "error"
        assert alerts == [] and inbox.messages == []  # a blip is not an outage
        time.sleep(0.35)
        assert service.tick() == "error"
        assert service.tick() == "error"
        (tmp_path / "not-yet").mkdir()  # the database is back
        engine = sa.create_engine(url)
        Base.metadata.create_all(engine)
        engine.dispose()
        assert service.tick(synchronous=True) == "ran"
    finally:
        trouble_found.receivers.clear()
        run_finished.receivers.clear()
    assert len(alerts) == 1 and len(inbox.messages) == 1
    assert alerts[0].run_id is None and alerts[0].failure is not None
    _, message = inbox.messages[0]
    assert message["Subject"].startswith("Billing: scheduled validate failed: the scheduler on ")
    assert "cannot reach the database: OperationalError: " in message["Subject"]
    body = message.get_content()
    assert "`flask lm-billing db upgrade`" in body
    assert "it sends this message once per outage" in body
