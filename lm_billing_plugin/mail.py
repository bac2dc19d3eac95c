"""The plugin's one SMTP client: a connection to LM_BILLING_SMTP_* (STARTTLS and login when
configured) and the message policy. Scheduled-run notifications (schedule.notify) and sent
bills (billing.sending) both go out through it."""

from __future__ import annotations

import email.policy
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

from .settings import Settings

__all__ = ["MAIL_POLICY", "redact", "smtp_connection", "smtp_where"]

# Headers stay on one line up to RFC 5322's hard limit: the stdlib folds a subject of 70-78
# characters onto a continuation line, which mail clients show with a leading space.
MAIL_POLICY = email.policy.SMTP.clone(max_line_length=998)


def smtp_where(settings: Settings) -> str:
    return f"{settings.smtp_host}:{settings.smtp_port}"


def open_smtp(settings: Settings) -> smtplib.SMTP:
    """A connected (and, when configured, STARTTLS'd and logged-in) SMTP client; the caller
    quits it. Raises OSError or smtplib.SMTPException."""
    smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout)
    try:
        if settings.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
        if settings.smtp_username:
            smtp.login(settings.smtp_username, settings.smtp_password or "")
    except BaseException:
        smtp.close()
        raise
    return smtp


@contextmanager
def smtp_connection(settings: Settings) -> Iterator[smtplib.SMTP]:
    """``with smtp_connection(settings) as smtp: smtp.send_message(...)``: open_smtp, then
    QUIT (or close, when the server is already gone)."""
    smtp = open_smtp(settings)
    try:
        yield smtp
    finally:
        close_smtp(smtp)


def close_smtp(smtp: smtplib.SMTP) -> None:
    """QUIT politely; a server that is already gone is just closed."""
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()


def redact(text: str, settings: Settings) -> str:
    """``text`` (a server's answer, an exception) with the SMTP password taken out, so it can
    be logged or stored."""
    secret = settings.smtp_password
    if secret:
        text = text.replace(secret, "[password]")
    return text
