"""Send bills (issue 11 §4): email issued invoices to their customers, or test copies to a test
address, over the plugin's one SMTP client (mail.py), one message per invoice, with a send log.

A message is text + HTML (multipart/alternative: the customer's Email Invoice Template and
Web Invoice Template, each after the Message Comments), with the invoice PDF attached when
WeasyPrint (the ``[pdf]`` extra) works. The envelope sender (MAIL FROM) is the Message Bounce
Email Address. Recipients come from the invoice's snapshot: Email Address and Additional Email
Addresses; an address with a line break or anything else an address cannot hold refuses the
invoice (logged, nobody mailed), so no header or envelope can be injected.

The guarantees, per invoice:

- One attempt = one InvoiceSend row. It is written with outcome ``sending`` and committed
  BEFORE the SMTP transaction, under a lock on the invoice row, and set to its result
  (``sent``, ``partial``: some recipients refused, ``failed``, ``test-sent``) in a second
  short transaction after it. ``refused``: the invoice was not tried (a bad address, a
  template that cannot be rendered).
- **Not sent twice.** A real send skips an invoice that is ``sent`` already, and one that is
  **in doubt**: a real attempt still ``sending`` (its process stopped — or is still working —
  between the two records, so the customer may or may not have the message). Only "Resend"
  (``--resend``) sends either again; check the mail server's log first for one in doubt.
- A test send goes to the test address only, never marks an invoice sent (``issued`` becomes
  ``test-sent``; a ``sent`` invoice stays ``sent``), and may be repeated.
- One failure stops nothing: a refused recipient, a dropped connection, a template problem
  fails (or partly fails) that invoice with the reason; the next one goes out (over a new
  connection when the old one broke). After three connection failures in a row the rest are
  failed without trying ("the mail server could not be reached").
- Server answers are stored and logged with the SMTP password taken out.

One module on purpose: the send run, its claims, the in-doubt rule and the mailer guard one
promise (nobody is mailed twice), which is reviewed in one place.
"""

from __future__ import annotations

import logging
import re
import smtplib
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from flask import current_app, has_request_context, render_template, url_for
from sqlalchemy.orm import Session

from .. import audit, signals
from ..i18n import M_
from ..mail import MAIL_POLICY, close_smtp, open_smtp, redact, smtp_where
from ..models import Invoice, InvoiceSend, SendRun, SendRunItem, utcnow
from ..settings import Settings
from ..sqlite import writes
from ..state import get_state
from .invoice_templates import KIND_LABELS, TemplateProblem, invoice_context, render_invoice
from .invoices import find_invoice, invoice_lines, invoice_usage

__all__ = [
    "PdfRenderer",
    "SendError",
    "SendOptions",
    "SendOutcome",
    "SendRunResult",
    "check_address",
    "claim_is_live",
    "create_send_run",
    "default_options",
    "doubt_reason",
    "in_doubt",
    "invoice_recipients",
    "invoice_sends",
    "print_context",
    "render_invoice_pdf",
    "resolve_invoices",
    "run_send_run",
    "send_bills",
    "send_outcomes",
    "weasyprint_module",
]

log = logging.getLogger("lm_billing_plugin.billing.sending")

PdfRenderer = Callable[[Invoice], bytes | None]
_MAX_CONNECT_FAILURES: Final = 3
_MAX_ANSWER: Final = 2000
# An addr-spec as billing accepts it: no white space or control characters (no CR/LF: no
# header injection), no brackets, quotes, commas or semicolons (one address, not a list).
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\\x00-\x1f\x7f]+@[^\s@<>()\[\],;:\"\\\x00-\x1f\x7f]+"
                      r"\.?[^\s@<>()\[\],;:\"\\\x00-\x1f\x7f]*")
_SEPARATORS = re.compile(r"[,;\s]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SendError(ValueError):
    """A send that cannot start as asked (bad address, no invoice); the message says what to
    do."""


@dataclass(frozen=True)
class SendOptions:
    """The Send page's fields (defaults: LM_BILLING_BILL_*)."""

    from_name: str
    from_email: str
    bounce_email: str = ""
    test_email: str = ""
    comments_text: str = ""
    comments_html: str = ""


def default_options(settings: Settings) -> SendOptions:
    return SendOptions(from_name=settings.bill_from_name, from_email=settings.bill_from_email,
                       bounce_email=settings.bill_bounce_email or "",
                       test_email=settings.bill_test_email or "")


def check_address(text: str, what: str) -> str:
    """One email address, or SendError naming ``what`` (a line break is never accepted)."""
    if _CONTROL.search(text):
        raise SendError(M_("%(what)s %(text)s contains a line break or control character")
                        % {"what": what, "text": repr(text)})
    address = text.strip()
    if len(address) > 320 or not _ADDRESS.fullmatch(address):
        raise SendError(M_("%(what)s %(address)s is not an email address (name@example.com)")
                        % {"what": what, "address": repr(address)})
    return address


def _check_options(options: SendOptions, *, test: bool) -> SendOptions:
    if _CONTROL.search(options.from_name):
        raise SendError(M_("the From Name contains a line break or control character"))
    if len(options.from_name) > 200:
        raise SendError(M_("the From Name is longer than 200 characters"))
    from_email = check_address(options.from_email, M_("the From Email Address"))
    bounce = (check_address(options.bounce_email, M_("the Message Bounce Email Address"))
              if options.bounce_email.strip() else from_email)
    test_email = options.test_email.strip()
    if test:
        if not test_email:
            raise SendError(M_("give the Test Email Address (LM_BILLING_BILL_TEST_EMAIL sets "
                               "its default)"))
        test_email = check_address(test_email, M_("the Test Email Address"))
    elif test_email:
        test_email = check_address(test_email, M_("the Test Email Address"))
    return SendOptions(options.from_name.strip(), from_email, bounce, test_email,
                       options.comments_text, options.comments_html)


def invoice_recipients(invoice: Invoice) -> list[str]:
    """The invoice snapshot's Email Address and Additional Email Addresses (comma, semicolon
    or white space separated), without duplicates. SendError when there is none, or when one
    is not an address (the whole invoice is refused: nobody gets a message built from a
    snapshot that holds a line break)."""
    addresses: list[str] = []
    if invoice.email.strip() or _CONTROL.search(invoice.email):
        addresses.append(check_address(invoice.email, "the Email Address"))
    for part in _SEPARATORS.split(invoice.additional_emails or ""):
        if part:
            addresses.append(check_address(part, "an Additional Email Address"))
    if not addresses:
        raise SendError(M_("invoice %(number)s has no Email Address (the customer had "
                           "none when it was issued): void it, add the address to the customer "
                           "and run the period again") % {"number": invoice.number})
    unique: list[str] = []
    for address in addresses:
        if address.casefold() not in {a.casefold() for a in unique}:
            unique.append(address)
    return unique


# --- The PDF (the Invoice page's, web/views/bills.invoice_pdf, uses the same) ----------------


def weasyprint_module() -> Any:
    """The weasyprint module, or None without the [pdf] extra (or without pango)."""
    try:
        import weasyprint
    except (ImportError, OSError):  # OSError: the package is there but pango is not
        return None
    return weasyprint


def print_context(session: Session, invoice: Invoice) -> dict[str, Any]:
    """What invoice_print.html (and the Invoice page) render: lines by group, the usage, and
    ``money`` (the pages' Babel filter, lmb_money)."""
    groups: dict[str, list[Any]] = {}
    for line in invoice_lines(session, invoice.id):
        groups.setdefault(line.group_name, []).append(line)
    return {"invoice": invoice, "groups": groups, "usage": invoice_usage(session, invoice.id),
            "money": current_app.jinja_env.filters["lmb_money"]}


def _static_fetcher(weasyprint: Any, prefix: str, folder: str | None) -> Any:
    """A WeasyPrint URL fetcher that reads the plugin's own stylesheet from disk (no HTTP
    request to ourselves) and nothing else; for WeasyPrint's old (function returning a dict)
    and new (URLFetcher returning a URLFetcherResponse, 70+) interfaces."""

    def read(url: str) -> bytes:
        name = url[len(prefix):].split("?", 1)[0] if url.startswith(prefix) else ""
        if folder and name and ".." not in name and (Path(folder) / name).is_file():
            return (Path(folder) / name).read_bytes()
        raise ValueError(f"not fetched: {url}")

    urls = getattr(weasyprint, "urls", None)
    fetcher_class: Any = getattr(urls, "URLFetcher", None)
    response_class: Any = getattr(urls, "URLFetcherResponse", None)
    if fetcher_class is not None and response_class is not None:

        class LocalFetcher(fetcher_class):  # type: ignore[misc]
            def fetch(self, url: str, headers: Any = None) -> Any:
                return response_class(url, body=read(url),
                                      headers={"Content-Type": "text/css"})

        return LocalFetcher()
    return lambda url: {"string": read(url), "mime_type": "text/css", "redirected_url": url}


def render_invoice_pdf(invoice: Invoice) -> bytes | None:
    """The invoice as PDF (invoice_print.html through WeasyPrint), or None without it. Works
    in a request, a CLI command or a background thread (app context)."""
    weasyprint = weasyprint_module()
    if weasyprint is None:
        return None
    context = print_context(get_state().session, invoice)
    base = get_state().settings.notify_base_url or "http://localhost/"
    with nullcontext() if has_request_context() else current_app.test_request_context(
            "/", base_url=base):
        html = render_template("lm_billing/invoice_print.html", **context)
        prefix = url_for("lm_billing.static", filename="", _external=True)
        fetcher = _static_fetcher(weasyprint, prefix,
                                  current_app.blueprints["lm_billing"].static_folder)
        pdf = weasyprint.HTML(string=html, base_url=prefix, url_fetcher=fetcher).write_pdf()
    return bytes(pdf)


# --- Results -------------------------------------------------------------------------------


@dataclass
class SendOutcome:
    """One invoice of a send run. status: pending, sent, partial (some recipients refused),
    failed, skipped (already sent, in doubt, void)."""

    invoice_id: int
    number: str
    company: str
    status: str
    reason: str = ""
    to: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "customer": self.company, "status": self.status,
                "reason": self.reason, "to": self.to}


@dataclass
class SendRunResult:
    send_run_id: int
    test: bool
    finished: bool
    with_pdf: bool
    outcomes: list[SendOutcome]

    def count(self, *statuses: str) -> int:
        return sum(1 for o in self.outcomes if o.status in statuses)

    @property
    def exit_code(self) -> int:
        """0 every invoice went out to everyone; 1 some failed, were partly refused or were
        skipped."""
        return 0 if all(o.status == "sent" for o in self.outcomes) else 1

    def to_json(self) -> dict[str, Any]:
        return {"send_run": self.send_run_id, "test": self.test, "finished": self.finished,
                "pdf": self.with_pdf, "sent": self.count("sent"),
                "partial": self.count("partial"), "failed": self.count("failed"),
                "skipped": self.count("skipped"),
                "invoices": [o.to_json() for o in self.outcomes]}


# --- Creating and running a send -------------------------------------------------------------


INTERRUPTED_REASON = ("not sent: the send run's process stopped before this invoice; "
                      "send it again")


def sweep_stale_send_runs(session: Session, settings: Settings) -> list[int]:
    """Mark send runs whose process died (killed mid-way) interrupted, as validation batches
    are: still "running", and nothing logged for its invoices for longer than a lease plus
    an SMTP timeout (a live run logs an attempt per invoice, each bounded by that timeout).
    Their pending invoices become skipped with the reason; an invoice whose attempt began is
    skipped as "in doubt" (doubt_reason), and the "in doubt" rule keeps the next runs from
    sending it, so a rerun never mails anyone twice. Commits."""
    cutoff = utcnow() - timedelta(seconds=settings.lease_seconds + settings.smtp_timeout)
    running = session.execute(sa.select(SendRun.id, SendRun.created_at)
                              .where(SendRun.status == "running")).all()
    stale: list[int] = []
    for run_id, created in running:
        last = session.scalar(
            sa.select(sa.func.max(InvoiceSend.at))
            .join(SendRunItem, SendRunItem.invoice_id == InvoiceSend.invoice_id)
            .where(SendRunItem.send_run_id == run_id, InvoiceSend.at >= created))
        if max(created, last or created) < cutoff:
            stale.append(int(run_id))
    created_at = dict(running)
    for run_id in stale:
        # An invoice whose attempt began (a "sending" record since the run started) says
        # "in doubt" on the dead run's page too, not "stopped before this invoice".
        for item_id, invoice_id in session.execute(
                sa.select(SendRunItem.id, SendRunItem.invoice_id)
                .where(SendRunItem.send_run_id == run_id, SendRunItem.status == "pending")
                ).all():
            doubt = in_doubt(session, invoice_id)
            if doubt is not None and doubt.at >= created_at[run_id]:
                session.execute(sa.update(SendRunItem).where(SendRunItem.id == item_id)
                                .values(status="skipped",
                                        reason=doubt_reason(doubt, settings)[:10_000]))
        session.execute(
            sa.update(SendRunItem).where(SendRunItem.send_run_id == run_id,
                                         SendRunItem.status == "pending")
            .values(status="skipped", reason=INTERRUPTED_REASON))
        count = int(session.scalar(sa.select(sa.func.count()).where(
            SendRunItem.send_run_id == run_id, SendRunItem.status == "skipped")) or 0)
        session.execute(sa.update(SendRun).where(SendRun.id == run_id,
                                                 SendRun.status == "running")
                        .values(status="interrupted", finished_at=utcnow(), skipped=count))
    session.commit()
    return stale


def create_send_run(invoice_ids: Sequence[int], *, test: bool, resend: bool,
                    options: SendOptions, actor: str) -> int:
    """Record the send (options checked, invoices in the given order) and commit; then
    run_send_run does it. SendError when an option is bad or no invoice is given."""
    options = _check_options(options, test=test)
    ids = list(dict.fromkeys(int(i) for i in invoice_ids))
    if not ids:
        raise SendError(M_("select at least one invoice"))
    session = get_state().session
    sweep_stale_send_runs(session, get_state().settings)
    try:
        known = set(session.scalars(sa.select(Invoice.id).where(Invoice.id.in_(ids))))
        missing = [i for i in ids if i not in known]
        if missing:
            raise SendError(M_("there is no invoice with id %(id)s") % {"id": missing[0]})
        run = SendRun(is_test=test, resend=resend and not test, status="running",
                      from_name=options.from_name, from_email=options.from_email,
                      bounce_email=options.bounce_email, test_email=options.test_email,
                      comments_text=options.comments_text, comments_html=options.comments_html,
                      total=len(ids), with_pdf=weasyprint_module() is not None, actor=actor)
        session.add(run)
        session.flush()
        run_id = int(run.id)  # read before the commit: no new transaction after it
        session.execute(sa.insert(SendRunItem), [
            {"send_run_id": run_id, "invoice_id": i, "position": n, "status": "pending",
             "reason": ""} for n, i in enumerate(ids)])
        session.commit()
        return run_id
    except BaseException:
        session.rollback()
        raise


def in_doubt(session: Session, invoice_id: int) -> InvoiceSend | None:
    """The invoice's real attempt still recorded as ``sending``, if any (see the module)."""
    return session.scalar(
        sa.select(InvoiceSend)
        .where(InvoiceSend.invoice_id == invoice_id, InvoiceSend.is_test.is_(False),
               InvoiceSend.outcome == "sending")
        .order_by(InvoiceSend.id.desc()).limit(1))


def _skip_reason(session: Session, invoice: Invoice, run: SendRun) -> str | None:
    if invoice.status == "void":
        return M_("invoice %(number)s is void: it is never sent") % {"number": invoice.number}
    if run.is_test or run.resend:
        return None
    if invoice.status == "sent":
        last = session.scalar(
            sa.select(InvoiceSend).where(InvoiceSend.invoice_id == invoice.id,
                                         InvoiceSend.is_test.is_(False),
                                         InvoiceSend.outcome.in_(("sent", "partial")))
            .order_by(InvoiceSend.id.desc()).limit(1))
        if last is None:
            return M_("already sent; choose Resend to send it again")
        return M_("already sent on %(at)s UTC to %(to)s; choose Resend to send it again") % {
            "at": f"{last.at:%Y-%m-%d %H:%M}", "to": last.to_addresses}
    doubt = in_doubt(session, invoice.id)
    if doubt is not None:
        return doubt_reason(doubt, get_state().settings)
    return None


def claim_is_live(send: InvoiceSend, settings: Settings) -> bool:
    """Whether a ``sending`` attempt may still be under way in its process: begun less than
    a lease plus an SMTP timeout ago (a live send records its end within that; the same
    bound sweep_stale_send_runs uses to call a run dead)."""
    age = utcnow() - send.at
    return age < timedelta(seconds=settings.lease_seconds + settings.smtp_timeout)


def doubt_reason(send: InvoiceSend, settings: Settings) -> str:
    """Why a bill with a ``sending`` attempt is skipped, worded for what is known: another
    process still at the mail server with it (a live race: wait, it ends sent or failed), or
    a process that stopped between its two records (the customer may have it)."""
    when = f"{send.at:%Y-%m-%d %H:%M:%S}"
    if claim_is_live(send, settings):
        return M_(
            "being sent right now by another send (to %(to)s, begun %(when)s UTC), which has "
            "not recorded its end yet; look at the bill's send log in a minute: it ends sent, "
            "failed (then send it again) or in doubt. Do not choose Resend before that") % {
            "to": send.to_addresses, "when": when}
    return M_(
        "in doubt: a send to %(to)s began on %(when)s UTC and recorded no end (its process "
        "stopped), so the customer may have it; check the mail server's log, then choose "
        "Resend if it did not go out") % {"to": send.to_addresses, "when": when}


class _Mailer:
    """The send run's SMTP connection: opened when needed, dropped after any failure."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.smtp: smtplib.SMTP | None = None
        self.connect_failures = 0

    def connect(self) -> str | None:
        """None when connected, else why not (password redacted)."""
        if self.smtp is not None:
            return None
        try:
            self.smtp = open_smtp(self.settings)
        except smtplib.SMTPAuthenticationError as exc:
            self.connect_failures += 1
            return (f"{smtp_where(self.settings)} refused the login of "
                    f"{self.settings.smtp_username} ({exc.smtp_code}); check "
                    "LM_BILLING_SMTP_USERNAME and LM_BILLING_SMTP_PASSWORD")
        except (OSError, smtplib.SMTPException) as exc:
            self.connect_failures += 1
            return (f"could not reach the mail server {smtp_where(self.settings)}: "
                    f"{redact(str(exc), self.settings) or type(exc).__name__}; check "
                    "LM_BILLING_SMTP_HOST, LM_BILLING_SMTP_PORT and LM_BILLING_SMTP_STARTTLS")
        self.connect_failures = 0
        return None

    def drop(self) -> None:
        if self.smtp is not None:
            close_smtp(self.smtp)
            self.smtp = None


def _answer(text: str, settings: Settings) -> str:
    return redact(text, settings)[:_MAX_ANSWER]


def _smtp_error(exc: object) -> str:
    code = getattr(exc, "smtp_code", None)
    error = getattr(exc, "smtp_error", None)
    if code is not None and error is not None:
        words = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
        return f"{code} {words}"
    return str(exc) or type(exc).__name__


def _with_comments_html(html: str, comments: str) -> str:
    if not comments.strip():
        return html
    block = f'<div class="lmb-message-comments">{comments}</div>\n'
    match = re.search(r"<body[^>]*>", html, re.I)
    if match is None:
        return block + html
    return html[: match.end()] + "\n" + block + html[match.end():]


def _subject(invoice: Invoice, test: bool) -> str:
    subject = _CONTROL.sub(" ", f"Invoice {invoice.number} for {invoice.company}")[:200]
    return f"[TEST] {subject}" if test else subject


def _build_message(invoice: Invoice, run: SendRun, to: list[str],
                   pdf: bytes | None) -> EmailMessage:
    """Raises SendError when the customer's template cannot be rendered."""
    session = get_state().session
    context = invoice_context(session, invoice)
    rendered: dict[str, str] = {}
    for kind in ("email", "web"):
        try:
            rendered[kind] = render_invoice(kind, context)
        except TemplateProblem as exc:
            raise SendError(f"the customer's {KIND_LABELS[kind]} cannot be used: {exc}"
                            ) from None
    text, html = rendered["email"], rendered["web"]
    if run.comments_text.strip():
        text = run.comments_text.rstrip() + "\n\n" + text
    message = EmailMessage(policy=MAIL_POLICY)
    message["Subject"] = _subject(invoice, run.is_test)
    domain = run.from_email.rpartition("@")[2] or "localhost"
    message["From"] = formataddr((run.from_name, run.from_email)) if run.from_name else (
        run.from_email)
    message["To"] = ", ".join(to)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=domain)
    message.set_content(text)
    message.add_alternative(_with_comments_html(html, run.comments_html), subtype="html")
    if pdf is not None:
        message.add_attachment(pdf, maintype="application", subtype="pdf",
                               filename=f"invoice-{invoice.number}.pdf")
    return message


def _finish_item(session: Session, run_id: int, item_id: int, status: str, reason: str,
                 send_id: int | None = None) -> None:
    session.execute(sa.update(SendRunItem).where(SendRunItem.id == item_id)
                    .values(status=status, reason=reason[:10_000], send_id=send_id))
    column = {"sent": SendRun.sent, "partial": SendRun.sent, "failed": SendRun.failed,
              "skipped": SendRun.skipped}[status]
    session.execute(sa.update(SendRun).where(SendRun.id == run_id)
                    .values({column.key: column + 1}))


def _log_attempt(session: Session, invoice_id: int, to: Sequence[str], *, test: bool,
                 outcome: str, answer: str, actor: str) -> int:
    send = InvoiceSend(invoice_id=invoice_id, to_addresses=", ".join(to), is_test=test,
                       outcome=outcome, server_answer=answer, actor=actor, at=utcnow())
    session.add(send)
    session.flush()
    return int(send.id)


def run_send_run(send_run_id: int, *, pdf: PdfRenderer | None = render_invoice_pdf
                 ) -> SendRunResult:
    """Send every pending invoice of the run, one after the other (see the module for the
    guarantees). Call inside an app context; commits as it goes."""
    session = get_state().session
    settings = get_state().settings
    with writes():
        run = session.get(SendRun, send_run_id)
        if run is None:
            raise SendError(M_("there is no send run %(run)s") % {"run": send_run_id})
        with_pdf = run.with_pdf
        items = list(session.execute(
            sa.select(SendRunItem.id, SendRunItem.invoice_id)
            .where(SendRunItem.send_run_id == send_run_id, SendRunItem.status == "pending")
            .order_by(SendRunItem.position)).all())
        session.commit()
        mailer = _Mailer(settings)
        try:
            for item_id, invoice_id in items:
                try:
                    _send_one(session, settings, mailer, send_run_id, item_id, invoice_id,
                              pdf if with_pdf else None)
                except Exception as exc:  # the database or a bug: this invoice, not the run
                    session.rollback()
                    log.exception("send run %s: invoice %s", send_run_id, invoice_id)
                    try:
                        _finish_item(session, send_run_id, item_id, "failed",
                                     f"not sent: {type(exc).__name__}: "
                                     f"{_answer(str(exc), settings)}")
                        session.commit()
                    except Exception:
                        session.rollback()
        finally:
            mailer.drop()
            session.execute(sa.update(SendRun).where(SendRun.id == send_run_id)
                            .values(status="finished", finished_at=utcnow()))
            session.commit()
    return send_outcomes(send_run_id)


def _send_one(session: Session, settings: Settings, mailer: _Mailer, run_id: int,
              item_id: int, invoice_id: int, pdf: PdfRenderer | None) -> None:
    run = session.get(SendRun, run_id)
    invoice = session.get(Invoice, invoice_id)
    assert run is not None and invoice is not None
    test, actor = run.is_test, run.actor
    number = invoice.number
    # 1. What to send: skipped, refused (logged, nobody mailed) or a message.
    reason = _skip_reason(session, invoice, run)
    if reason is not None:
        _finish_item(session, run_id, item_id, "skipped", reason)
        session.commit()
        return
    try:
        to = [run.test_email] if test else invoice_recipients(invoice)
        message = _build_message(invoice, run, to, pdf(invoice) if pdf else None)
    except SendError as exc:
        what = str(exc)
        # The snapshot's addresses as written, escaped: a line break shows as \r\n.
        shown = [repr(a)[1:-1] for a in (invoice.email, invoice.additional_emails) if a]
        send_id = _log_attempt(session, invoice_id, shown, test=test, outcome="refused",
                               answer=_answer(what, settings), actor=actor)
        _finish_item(session, run_id, item_id, "failed",
                     M_("not sent: %(why)s") % {"why": what}, send_id)
        session.commit()
        log.warning("send run %s: invoice %s refused: %s", run_id, number,
                    _answer(what, settings))
        return
    bounce = run.bounce_email or run.from_email
    session.commit()
    # 2. The mail server, before anything is claimed (nothing was sent when this fails).
    if mailer.connect_failures >= _MAX_CONNECT_FAILURES:
        why = (M_("not tried: the mail server %(where)s could not be reached %(times)s "
                  "times in a row")
               % {"where": smtp_where(settings), "times": _MAX_CONNECT_FAILURES})
        _finish_item(session, run_id, item_id, "failed", why)
        session.commit()
        return
    failure = mailer.connect()
    if failure is not None:
        send_id = _log_attempt(session, invoice_id, to, test=test, outcome="failed",
                               answer=_answer(failure, settings), actor=actor)
        _finish_item(session, run_id, item_id, "failed",
                     M_("not sent: %(why)s") % {"why": failure}, send_id)
        session.commit()
        log.error("send run %s: invoice %s not sent: %s", run_id, number, failure)
        return
    # 3. Claim: under the invoice's row lock, check again and record "sending".
    locked = session.scalar(sa.select(Invoice).where(Invoice.id == invoice_id)
                            .with_for_update())
    assert locked is not None
    reason = _skip_reason(session, locked, run)
    if reason is not None:
        _finish_item(session, run_id, item_id, "skipped", reason)
        session.commit()
        return
    send_id = _log_attempt(session, invoice_id, to, test=test, outcome="sending",
                           answer="", actor=actor)
    session.commit()
    # 4. The SMTP transaction, no database transaction open.
    assert mailer.smtp is not None
    refused: dict[str, Any] = {}
    error: str | None = None
    try:
        refused = dict(mailer.smtp.send_message(message, from_addr=bounce, to_addrs=to))
    except smtplib.SMTPRecipientsRefused as exc:
        refused = dict(exc.recipients)
        error = M_("every recipient was refused")
    except (OSError, smtplib.SMTPException) as exc:
        error = _smtp_error(exc)
        mailer.drop()
    # 5. Record the result.
    refusals = "; ".join(M_("%(address)s refused: %(answer)s")
                         % {"address": addr, "answer": _smtp_error(_Refusal(*answer))}
                         for addr, answer in refused.items())
    accepted = [a for a in to if a not in refused]
    if error is not None:
        outcome, status = "failed", "failed"
        answer = (M_("not sent: %(why)s (%(refusals)s)") % {"why": error, "refusals": refusals}
                  if refusals else M_("not sent: %(why)s") % {"why": error})
    elif refused:
        outcome, status = "partial", "partial"
        answer = M_("accepted for %(to)s; %(refusals)s") % {
            "to": ", ".join(accepted), "refusals": refusals}
    else:
        outcome, status = ("test-sent" if test else "sent"), "sent"
        answer = f"accepted by {smtp_where(settings)} for {', '.join(accepted)}"
    answer = _answer(answer, settings)
    session.execute(sa.update(InvoiceSend).where(InvoiceSend.id == send_id)
                    .values(outcome=outcome, server_answer=answer))
    if status in ("sent", "partial"):
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None
        if not test:
            invoice.status = "sent"
            audit.record(session, actor=actor, action="invoice_send", object_type="customer",
                         object_id=invoice.customer_id,
                         detail={"invoice": number, "invoice_id": invoice_id,
                                 "to": accepted, "refused": sorted(refused)})
        elif invoice.status == "issued":
            invoice.status = "test-sent"
    _finish_item(session, run_id, item_id, status, "" if status == "sent" else answer, send_id)
    session.commit()
    if error is not None or refused:
        log.warning("send run %s: invoice %s: %s", run_id, number, answer)
    if status in ("sent", "partial") and not test:
        signals.send(signals.bill_sent, invoice_id=invoice_id, number=number, to=accepted,
                     refused=sorted(refused), actor=actor)


@dataclass(frozen=True)
class _Refusal:
    smtp_code: int
    smtp_error: bytes | str


def send_bills(invoice_ids: Sequence[int], *, test: bool, resend: bool,
               options: SendOptions, actor: str,
               pdf: PdfRenderer | None = render_invoice_pdf) -> SendRunResult:
    """create_send_run + run_send_run, in this thread (the CLI)."""
    run_id = create_send_run(invoice_ids, test=test, resend=resend, options=options,
                             actor=actor)
    return run_send_run(run_id, pdf=pdf)


def send_outcomes(send_run_id: int) -> SendRunResult:
    """The run's invoices as they stand (pending ones included), in order."""
    session = get_state().session
    run = session.get(SendRun, send_run_id)
    if run is None:
        raise SendError(M_("there is no send run %(run)s") % {"run": send_run_id})
    rows = session.execute(
        sa.select(SendRunItem, Invoice.number, Invoice.company, InvoiceSend.to_addresses)
        .join(Invoice, Invoice.id == SendRunItem.invoice_id)
        .outerjoin(InvoiceSend, InvoiceSend.id == SendRunItem.send_id)
        .where(SendRunItem.send_run_id == send_run_id)
        .order_by(SendRunItem.position)).all()
    outcomes = [SendOutcome(item.invoice_id, number, company, item.status, item.reason,
                            [a for a in (to or "").split(", ") if a])
                for item, number, company, to in rows]
    result = SendRunResult(send_run_id, run.is_test, run.finished_at is not None,
                           run.with_pdf, outcomes)
    session.commit()
    return result


def invoice_sends(session: Session, invoice_id: int) -> list[InvoiceSend]:
    """The invoice's send log, newest first."""
    return list(session.scalars(sa.select(InvoiceSend).where(InvoiceSend.invoice_id ==
                                                             invoice_id)
                                .order_by(InvoiceSend.id.desc())))


def resolve_invoices(keys: Sequence[str], run_id: int | None) -> list[int]:
    """Invoice ids from printed numbers (or ids) and/or a bill run: that run's issued and
    test-sent invoices, plus the sent ones (skipped unless Resend)."""
    session = get_state().session
    ids: list[int] = []
    if run_id is not None:
        ids += list(session.scalars(sa.select(Invoice.id).where(
            Invoice.run_id == run_id, Invoice.status != "void").order_by(Invoice.year,
                                                                          Invoice.seq)))
        if not ids:
            raise SendError(M_("bill run %(run)s has no invoice to send") % {"run": run_id})
    for key in keys:
        found = find_invoice(session, key) or (find_invoice(session, int(key))
                                               if key.isdigit() else None)
        if found is None:
            raise SendError(f"there is no invoice {key!r}; `flask lm-billing bills list` shows "
                            "the numbers")
        ids.append(found.id)
    session.commit()
    return ids
