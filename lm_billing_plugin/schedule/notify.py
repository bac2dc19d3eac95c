"""Notifications after scheduled runs: one message per run that found new trouble or failed
outright, sent as a Flask (blinker) signal hosts can subscribe to and as an email.

Signals (sender: the Flask app)::

    from lm_billing_plugin.schedule.notify import run_finished, trouble_found

    @trouble_found.connect_via(app)
    def page_someone(sender, alert, **extra):   # alert: lm_billing_plugin.schedule.notify.Alert
        ...

``run_finished`` is sent after every scheduled run (kwargs ``run_id``, ``status``,
``summary``); ``trouble_found`` (kwarg ``alert``) when the run found new problems, when a
server turned unreachable, refused, or stopped logging, and after every run that failed
outright (``alert.failure`` set: it stopped with an error, the database going away included,
or not one server could be read), because then billing is not watching anything; and once
when a scheduler process has not reached the database for a whole interval (``alert.run_id``
None). The email to LM_BILLING_NOTIFY_EMAILS goes out with ``trouble_found``. A receiver
that raises is logged and never stops the run or the other receivers.
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from blinker import Namespace
from flask import Flask
from sqlalchemy.orm import Session

from ..mail import MAIL_POLICY, redact, smtp_connection
from ..models import Problem, Server
from ..settings import Settings
from ..state import get_state

if TYPE_CHECKING:
    from ..engine.batches import BatchResult

log = logging.getLogger("lm_billing_plugin.notify")

_signals = Namespace()
run_finished = _signals.signal("lm-billing-run-finished")
trouble_found = _signals.signal("lm-billing-trouble-found")

# Server statuses that mean "billing cannot see this server any more".
TROUBLE_STATUSES = {
    "unreachable": "unreachable",
    "host_denied": "refused: not in TCLPORT Hosts",
    "auth_failed": "password rejected",
    "error": "protocol error",
    "logging_off": "logging off",
}
# An email lists this many problems and status changes; the page has the rest.
MAX_LINES = 50
MAX_SUBJECT = 200


@dataclass(frozen=True, slots=True)
class NewProblem:
    server: str
    kind: str
    object: str
    detail: str


@dataclass(frozen=True, slots=True)
class StatusChange:
    server: str
    previous: str | None
    status: str
    message: str


@dataclass(frozen=True, slots=True)
class Failure:
    """A run that failed outright: what failed (one line) and what to do about it."""

    what: str
    advice: str


@dataclass(frozen=True, slots=True)
class Alert:
    """What went wrong in one scheduled run (one per run, never one per problem).

    ``failure``: set when the run failed outright; ``status_changes`` then lists every server
    that could not be read, changed or not. ``run_id`` None: no run could even start (a
    scheduler process lost the database; see ``notify_outage``)."""

    run_id: int | None
    kind: str
    new_problems: int
    problems: list[NewProblem] = field(default_factory=list)
    status_changes: list[StatusChange] = field(default_factory=list)
    url: str | None = None
    failure: Failure | None = None

    @property
    def subject(self) -> str:
        if self.failure is not None:
            subject = f"Billing: scheduled {self.kind}{self._run} failed: {self.failure.what}"
            return subject if len(subject) <= MAX_SUBJECT else subject[: MAX_SUBJECT - 3] + "..."
        parts = []
        if self.new_problems:
            parts.append(f"{self.new_problems} new problem{'s' if self.new_problems != 1 else ''}")
        labels = [_label(c.status) for c in self.status_changes]
        for label in sorted(set(labels)):
            count = labels.count(label)
            parts.append(f"{count} server{'s' if count != 1 else ''} {label}")
        return f"Billing: scheduled {self.kind} found " + ", ".join(parts)

    def body(self) -> str:
        lines = [self.subject + ".", ""]
        if self.failure is not None:
            lines += [
                "Billing is not watching the hosting servers until this is fixed.",
                f"What to do: {self.failure.advice}",
                "The next run is due as usual; every scheduled run that fails sends one "
                "message like this."
                if self.run_id is not None
                else "The scheduler keeps retrying; it sends this message once per outage.",
                "",
            ]
        if self.status_changes:
            lines.append("Servers:")
            for change in self.status_changes[:MAX_LINES]:
                was = f" (was {change.previous})" if change.previous else ""
                detail = f": {change.message}" if change.message else ""
                lines.append(f"  {change.server}: {_label(change.status)}{was}{detail}")
            lines.append("")
        if self.problems:
            lines.append("New problems:")
            for problem in self.problems[:MAX_LINES]:
                detail = f" ({problem.detail})" if problem.detail else ""
                lines.append(f"  {problem.server}: {problem.kind} {problem.object}{detail}")
            shown = min(len(self.problems), MAX_LINES)
            if self.new_problems > shown:
                lines.append(f"  ... and {self.new_problems - shown} more")
            lines.append("")
        if self.url:
            lines.append(f"Details: {self.url}")
        else:
            which = f" (scheduled run {self.run_id})" if self.run_id is not None else ""
            lines.append(f"Details: Billing > Background validation{which}.")
        return "\n".join(lines) + "\n"

    @property
    def _run(self) -> str:
        return f" run {self.run_id}" if self.run_id is not None else ""


def build_alert(
    run_id: int,
    kind: str,
    result: BatchResult | None,
    settings: Settings,
    problems: list[NewProblem] | None = None,
    failure: Failure | None = None,
) -> Alert | None:
    """The alert for a run, or None when nothing new went wrong. ``result``: the engine's
    BatchResult (None when the run stopped with an error); ``problems``: the new problems to
    list (see ``new_problems_of``); ``failure``: set when the run failed outright."""
    changes: list[StatusChange] = []
    new_count = 0
    for outcome in result.servers if result is not None else []:
        new_count += outcome.new_problems
        status, previous = outcome.status, outcome.previous_status
        changed = status in TROUBLE_STATUSES and status != previous
        failed = not outcome.ok and outcome.skipped_reason is None
        if changed or (failure is not None and failed):
            changes.append(
                StatusChange(
                    server=outcome.name,
                    previous=previous if status != previous else None,
                    status=status,
                    message=_error_message(outcome.error),
                )
            )
    if not new_count and not changes and failure is None:
        return None
    return Alert(
        run_id=run_id,
        kind=kind,
        new_problems=new_count,
        problems=list(problems or []),
        status_changes=changes,
        url=_page_url(settings),
        failure=failure,
    )


def _page_url(settings: Settings) -> str | None:
    if not settings.notify_base_url:
        return None
    return settings.notify_base_url.rstrip("/") + "/background"


def new_problems_of(
    session: Session, result: BatchResult | None, limit: int = MAX_LINES
) -> list[NewProblem]:
    """The problems first found by this batch's runs (one query, at most ``limit``)."""
    run_ids = [
        o.run_id
        for o in (result.servers if result is not None else [])
        if o.run_id is not None and o.new_problems
    ]
    if not run_ids:
        return []
    rows = session.execute(
        sa.select(Server.name, Problem.kind, Problem.object_name, Problem.detail)
        .outerjoin(Server, Server.id == Problem.server_id)
        .where(Problem.first_run_id.in_(run_ids))
        .order_by(Server.name, Problem.kind, Problem.object_name)
        .limit(limit)
    ).all()
    return [
        NewProblem(server=r.name or "", kind=r.kind, object=r.object_name, detail=r.detail)
        for r in rows
    ]


def _label(status: str) -> str:
    return TROUBLE_STATUSES.get(status, status)


def _error_message(error: dict[str, str] | None) -> str:
    return str((error or {}).get("message") or "")


def notify_run(
    app: Flask,
    *,
    run_id: int,
    status: str,
    summary: dict[str, Any],
    result: BatchResult | None,
    failure: Failure | None = None,
) -> Alert | None:
    """After a scheduled run: send ``run_finished``, and when it found trouble or failed
    outright (``failure``), the one ``trouble_found`` signal and the one email. Never raises;
    a run that failed is announced even when the database cannot be read."""
    settings = get_state(app).settings
    _send_signal(run_finished, app, run_id=run_id, status=status, summary=summary)
    problems: list[NewProblem] = []
    try:
        with app.app_context():
            problems = new_problems_of(get_state(app).session, result)
    except Exception:
        log.exception("scheduled run %s: could not read its new problems", run_id)
    kind = str(summary.get("kind", "validate"))
    alert = build_alert(run_id, kind, result, settings, problems, failure)
    if alert is not None:
        _announce(app, settings, alert)
    return alert


def notify_outage(app: Flask, *, kind: str, failure: Failure) -> Alert:
    """A scheduler process has not reached the database for a whole interval, so no run can
    start: the one ``trouble_found`` signal and email for this outage (``run_id`` None)."""
    settings = get_state(app).settings
    alert = Alert(run_id=None, kind=kind, new_problems=0, url=_page_url(settings), failure=failure)
    _announce(app, settings, alert)
    return alert


def _announce(app: Flask, settings: Settings, alert: Alert) -> None:
    _send_signal(trouble_found, app, alert=alert)
    if settings.notify_emails:
        send_email(settings, alert)


def _send_signal(signal: Any, app: Flask, **kwargs: Any) -> None:
    for receiver in list(signal.receivers_for(app)):
        try:
            receiver(app, **kwargs)
        except Exception:
            log.exception("a receiver of lm_billing_plugin.notify.%s failed", signal.name)


def send_email(settings: Settings, alert: Alert) -> bool:
    """Mail the alert to LM_BILLING_NOTIFY_EMAILS. Failures are logged, never raised."""
    message = EmailMessage(policy=MAIL_POLICY)
    message["Subject"] = alert.subject
    message["From"] = settings.smtp_sender
    message["To"] = ", ".join(settings.notify_emails)
    message.set_content(alert.body())
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    about = f"scheduled run {alert.run_id}" if alert.run_id is not None else "scheduler outage"
    try:
        with smtp_connection(settings) as smtp:
            smtp.send_message(message)
    except smtplib.SMTPAuthenticationError as exc:
        log.error(
            "notification for %s not sent: %s refused the login of %s (%s); "
            "check LM_BILLING_SMTP_USERNAME and LM_BILLING_SMTP_PASSWORD",
            about,
            where,
            settings.smtp_username,
            exc.smtp_code,
        )
        return False
    except (OSError, smtplib.SMTPException) as exc:
        log.error(
            "notification for %s not sent to %s: %s; check "
            "LM_BILLING_SMTP_HOST, LM_BILLING_SMTP_PORT and LM_BILLING_SMTP_STARTTLS",
            about,
            where,
            redact(str(exc), settings),
        )
        return False
    log.info(
        "notification for %s sent to %d address(es)",
        about,
        len(settings.notify_emails),
    )
    return True


__all__ = [
    "Alert",
    "Failure",
    "build_alert",
    "new_problems_of",
    "notify_outage",
    "notify_run",
    "run_finished",
    "send_email",
    "trouble_found",
]
