"""Notifications after scheduled runs: one message per run that found new trouble, sent as a
Flask (blinker) signal hosts can subscribe to and as an email to LM_BILLING_NOTIFY_EMAILS.

Signals (sender: the Flask app)::

    from lm_billing_plugin.notify import run_finished, trouble_found

    @trouble_found.connect_via(app)
    def page_someone(sender, alert, **extra):   # alert: lm_billing_plugin.notify.Alert
        ...

``run_finished`` is sent after every scheduled run (kwargs ``run_id``, ``status``,
``summary``); ``trouble_found`` only when the run found new problems or a server turned
unreachable, refused, or stopped logging (kwarg ``alert``). A receiver that raises is logged
and never stops the run or the other receivers.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import sqlalchemy as sa
from blinker import Namespace
from flask import Flask
from sqlalchemy.orm import Session

from .extension import get_state
from .models import Problem, Server
from .settings import Settings

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
class Alert:
    """What went wrong in one scheduled run (one per run, never one per problem)."""

    run_id: int
    kind: str
    new_problems: int
    problems: list[NewProblem] = field(default_factory=list)
    status_changes: list[StatusChange] = field(default_factory=list)
    url: str | None = None

    @property
    def subject(self) -> str:
        parts = []
        if self.new_problems:
            parts.append(f"{self.new_problems} new problem{'s' if self.new_problems != 1 else ''}")
        for label in sorted({TROUBLE_STATUSES[c.status] for c in self.status_changes}):
            count = sum(1 for c in self.status_changes if TROUBLE_STATUSES[c.status] == label)
            parts.append(f"{count} server{'s' if count != 1 else ''} {label}")
        return f"Billing: scheduled {self.kind} found " + ", ".join(parts)

    def body(self) -> str:
        lines = [self.subject + ".", ""]
        if self.status_changes:
            lines.append("Servers:")
            for change in self.status_changes[:MAX_LINES]:
                was = f" (was {change.previous})" if change.previous else ""
                detail = f": {change.message}" if change.message else ""
                lines.append(f"  {change.server}: {TROUBLE_STATUSES[change.status]}{was}{detail}")
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
            lines.append(f"Details: Billing > Background validation (scheduled run {self.run_id}).")
        return "\n".join(lines) + "\n"


def build_alert(
    run_id: int,
    kind: str,
    result: Any,
    settings: Settings,
    problems: list[NewProblem] | None = None,
) -> Alert | None:
    """The alert for a run's result (the engine's BatchResult), or None when nothing new
    went wrong. ``problems``: the new problems to list (see ``new_problems_of``)."""
    changes: list[StatusChange] = []
    new_count = 0
    for outcome in getattr(result, "servers", None) or []:
        name = str(getattr(outcome, "name", ""))
        new = getattr(outcome, "new_problems", None) or 0
        new_count += new if isinstance(new, int) else len(new)
        status = getattr(outcome, "status", None)
        previous = getattr(outcome, "previous_status", None)
        if status in TROUBLE_STATUSES and status != previous:
            changes.append(
                StatusChange(
                    server=name,
                    previous=previous,
                    status=str(status),
                    message=_error_message(getattr(outcome, "error", None)),
                )
            )
    if not new_count and not changes:
        return None
    url = None
    if settings.notify_base_url:
        url = settings.notify_base_url.rstrip("/") + "/background"
    return Alert(
        run_id=run_id,
        kind=kind,
        new_problems=new_count,
        problems=list(problems or []),
        status_changes=changes,
        url=url,
    )


def new_problems_of(session: Session, result: Any, limit: int = MAX_LINES) -> list[NewProblem]:
    """The problems first found by this batch's runs (one query, at most ``limit``)."""
    run_ids = [
        o.run_id
        for o in getattr(result, "servers", None) or []
        if getattr(o, "run_id", None) is not None and getattr(o, "new_problems", None)
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


def _error_message(error: Any) -> str:
    if error is None:
        return ""
    if isinstance(error, dict):
        return str(error.get("message") or "")
    return str(getattr(error, "message", None) or error)


def notify_run(
    app: Flask, *, run_id: int, status: str, summary: dict[str, Any], result: Any
) -> Alert | None:
    """After a scheduled run: send ``run_finished``, and when it found trouble, the one
    ``trouble_found`` signal and the one email. Never raises."""
    settings = get_state(app).settings
    _send_signal(run_finished, app, run_id=run_id, status=status, summary=summary)
    try:
        with app.app_context():
            problems = new_problems_of(get_state(app).session, result)
        alert = build_alert(
            run_id, str(summary.get("kind", "validate")), result, settings, problems
        )
    except Exception:
        log.exception("scheduled run %s: could not build its notification", run_id)
        return None
    if alert is None:
        return None
    _send_signal(trouble_found, app, alert=alert)
    if settings.notify_emails:
        send_email(settings, alert)
    return alert


def _send_signal(signal: Any, app: Flask, **kwargs: Any) -> None:
    for receiver in list(signal.receivers_for(app)):
        try:
            receiver(app, **kwargs)
        except Exception:
            log.exception("a receiver of lm_billing_plugin.notify.%s failed", signal.name)


def send_email(settings: Settings, alert: Alert) -> bool:
    """Mail the alert to LM_BILLING_NOTIFY_EMAILS. Failures are logged, never raised."""
    message = EmailMessage()
    message["Subject"] = alert.subject
    message["From"] = settings.smtp_sender
    message["To"] = ", ".join(settings.notify_emails)
    message.set_content(alert.body())
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    try:
        with smtplib.SMTP(
            settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout
        ) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password or "")
            smtp.send_message(message)
    except smtplib.SMTPAuthenticationError as exc:
        log.error(
            "notification for scheduled run %s not sent: %s refused the login of %s (%s); "
            "check LM_BILLING_SMTP_USERNAME and LM_BILLING_SMTP_PASSWORD",
            alert.run_id,
            where,
            settings.smtp_username,
            exc.smtp_code,
        )
        return False
    except (OSError, smtplib.SMTPException) as exc:
        log.error(
            "notification for scheduled run %s not sent to %s: %s; check "
            "LM_BILLING_SMTP_HOST, LM_BILLING_SMTP_PORT and LM_BILLING_SMTP_STARTTLS",
            alert.run_id,
            where,
            exc,
        )
        return False
    log.info(
        "notification for scheduled run %s sent to %d address(es)",
        alert.run_id,
        len(settings.notify_emails),
    )
    return True


__all__ = [
    "Alert",
    "build_alert",
    "new_problems_of",
    "notify_run",
    "run_finished",
    "send_email",
    "trouble_found",
]
