"""The plugin's LM_BILLING_* configuration: defaults, parsing and the typed settings object.
Read once at init_app; services take the Settings object, never current_app.config."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .tclport.addresses import parse_networks
from .tclport.client import ClientSettings

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)

# One row per key: (key, default, description). The README's configuration table is
# checked against this tuple by a test, so the two cannot drift apart.
CONFIG: tuple[tuple[str, Any, str], ...] = (
    (
        "LM_BILLING_URL_PREFIX",
        "/billing",
        "Where the Billing pages are mounted (a path starting with `/`; the JSON API is "
        "under `<prefix>/api/v1`).",
    ),
    (
        "LM_BILLING_BIND_KEY",
        None,
        "Name of a host `SQLALCHEMY_BINDS` entry to keep the plugin's tables (and their "
        "migrations) on that database instead of the host's default one.",
    ),
    (
        "LM_BILLING_BASE_TEMPLATE",
        "lm_billing/base.html",
        "Template every page extends; it must define the blocks `title` and `content` "
        "(optional: `head`, `scripts`).",
    ),
    (
        "LM_BILLING_ALLOW_ALL",
        False,
        "Let every request in without a permission callback. For demos and development "
        "only: never in production.",
    ),
    (
        "LM_BILLING_ENCRYPTION_KEYS",
        (),
        "Fernet keys (newest first; list or comma-separated string) that encrypt TclPort "
        "passwords at rest. Without one, passwords cannot be stored.",
    ),
    (
        "LM_BILLING_CONNECT_TIMEOUT",
        5.0,
        "Seconds to wait for a TCP connection to a hosting server.",
    ),
    ("LM_BILLING_READ_TIMEOUT", 10.0, "Seconds to wait for the next bytes of a reply."),
    (
        "LM_BILLING_OPERATION_TIMEOUT",
        30.0,
        "Seconds one TclPort operation (connect+greeting+auth, or one command) may take in all.",
    ),
    (
        "LM_BILLING_MAX_REPLY_BYTES",
        64 * 1024 * 1024,
        "Largest reply body accepted from a hosting server; a larger one is refused unread.",
    ),
    (
        "LM_BILLING_MAX_READ_BYTES",
        128 * 1024 * 1024,
        "Most reply bytes one read of a hosting server (a validate, sync or check) takes in "
        "all; the reply that would pass it is refused unread and the read fails, nothing "
        "stored, so one read's memory is bounded whatever a peer sends. 0 = no limit.",
    ),
    (
        "LM_BILLING_ALLOWED_NETWORKS",
        (),
        "Networks (CIDRs; list or comma-separated string, e.g. `10.20.0.0/16`) the hosting "
        "servers are in. When set, billing connects to no other address. Metadata, "
        "link-local, unspecified, multicast and broadcast addresses are refused either way.",
    ),
    (
        "LM_BILLING_ALLOW_LOOPBACK",
        True,
        "Allow hosting servers on this machine (127.0.0.0/8, ::1, `localhost`), whatever "
        "`LM_BILLING_ALLOWED_NETWORKS` says. False refuses them.",
    ),
    ("LM_BILLING_LIST_PAGE_SIZE", 5000, "Lists fetched per `lists OFFSET LIMIT` request (1-5000)."),
    (
        "LM_BILLING_MAX_LISTS_PER_SERVER",
        100_000,
        "Most lists one hosting server may announce; a server announcing more is refused "
        "(nothing stored) with a message naming it, so one read stays bounded. 0 = no limit.",
    ),
    (
        "LM_BILLING_SERVER_DEADLINE",
        300.0,
        "Seconds one server's validate or sync may take before it is recorded as failed.",
    ),
    ("LM_BILLING_MAX_PARALLEL", 16, "Servers validated or synced at once."),
    (
        "LM_BILLING_LEASE_SECONDS",
        900.0,
        "How long a run's claim on a server (or on the schedule) lasts before another "
        "process may take it over as interrupted.",
    ),
    ("LM_BILLING_PAGE_SIZE", 50, "Rows per page in the Billing tables."),
    ("LM_BILLING_SCHEDULER_ENABLED", True, "Run scheduled background validation."),
    (
        "LM_BILLING_VALIDATE_INTERVAL",
        3600.0,
        "Seconds between scheduled validations of all servers.",
    ),
    (
        "LM_BILLING_SCHEDULED_SYNC",
        False,
        "Scheduled runs also sync (apply drift). Off: drift is shown, not applied.",
    ),
    (
        "LM_BILLING_SCHEDULER_AUTOSTART",
        False,
        "Start the scheduler in this web process, on its first request to a Billing page "
        "(never under tests or CLI commands other than `flask run`); on a fresh database the "
        "first run waits one interval. Off by default: run `flask lm-billing scheduler`.",
    ),
    (
        "LM_BILLING_INLINE_BATCHES",
        False,
        "Run the pages' and the API's validate/sync batches inside the request instead of "
        "the background pool (for a host's own test suite: no threads, results at once).",
    ),
    (
        "LM_BILLING_BATCH_PROCESS_APP",
        "",
        "The host app as `flask --app` names it (e.g. `portal:create_app()`): the pages', the "
        "API's and the scheduler's validate/sync batches then run in a process of their own "
        "(`flask lm-billing run-batch`), so their work never slows the web workers' pages. The "
        "app it builds must use the same database. Empty: batches run in threads of the "
        "process that started them.",
    ),
    (
        "LM_BILLING_BATCH_PROCESS_NICE",
        10,
        "How much lower the batch process's CPU priority is than the web process's (Unix "
        "`nice`, 0-19): the pages come first when the cores are busy; a batch takes what they "
        "leave.",
    ),
    (
        "LM_BILLING_NOTIFY_EMAILS",
        (),
        "Addresses mailed when a scheduled run finds new trouble or fails outright.",
    ),
    ("LM_BILLING_SMTP_HOST", "localhost", "SMTP server for notifications."),
    ("LM_BILLING_SMTP_PORT", 25, "SMTP port."),
    ("LM_BILLING_SMTP_USERNAME", None, "SMTP login, if the server needs one."),
    ("LM_BILLING_SMTP_PASSWORD", None, "SMTP password, if the server needs one."),
    ("LM_BILLING_SMTP_STARTTLS", False, "Use STARTTLS."),
    ("LM_BILLING_SMTP_SENDER", "billing@localhost", "From address of notifications."),
    ("LM_BILLING_SMTP_TIMEOUT", 10.0, "Seconds to wait for the SMTP server."),
    ("LM_BILLING_BILL_FROM_NAME", "Billing", "Default \"From Name\" of sent bills (Send page)."),
    (
        "LM_BILLING_BILL_FROM_EMAIL",
        "billing@localhost",
        "Default \"From Email Address\" of sent bills.",
    ),
    (
        "LM_BILLING_BILL_BOUNCE_EMAIL",
        None,
        "Default \"Message Bounce Email Address\" (the envelope sender) of sent bills; "
        "None: the From Email Address.",
    ),
    (
        "LM_BILLING_BILL_TEST_EMAIL",
        None,
        "Default \"Test Email Address\" that \"Test Selected Bills\" sends to.",
    ),
    (
        "LM_BILLING_CURRENCY",
        "USD",
        "ISO 4217 code of the currency invoices are issued in (e.g. `EUR`); amounts are "
        "shown in it with Babel's formatting.",
    ),
    (
        "LM_BILLING_INVOICE_NUMBER_FORMAT",
        "{year}-{seq:05d}",
        "How invoice numbers are printed: `{year}` and `{seq}` (the year's gapless sequence) "
        "in Python format syntax; both are required, as each year's sequence starts at 1.",
    ),
    (
        "LM_BILLING_NOTIFY_BASE_URL",
        None,
        "Absolute URL of the Billing pages (e.g. `https://portal.example.com/billing`) for "
        "the link in notification emails; without it the email names the page instead.",
    ),
    (
        "LM_BILLING_DEFAULT_LOCALE",
        "en",
        "Language of the Billing pages when the host has no Flask-Babel of its own (then the "
        "plugin sets Flask-Babel up with this default); a host's Flask-Babel locale selector "
        "wins. Shipped: `en`, `de`.",
    ),
    (
        "LM_BILLING_TIMEZONE",
        "UTC",
        "Time zone times are shown in (an IANA name such as `Europe/Berlin`), unless the "
        "host's `@billing.timezone_selector` names the viewer's own; the zone is always named.",
    ),
    (
        "LM_BILLING_BILLING_TIMEZONE",
        "UTC",
        "Time zone whose midnight starts a billing day and month: \"this month's usage\", "
        "today's assignments and the default report and bill-run periods.",
    ),
    (
        "LM_BILLING_CONTENT_SECURITY_POLICY",
        CONTENT_SECURITY_POLICY,
        "`Content-Security-Policy` of the Billing pages. The default allows only this site's "
        "own scripts, styles, images and forms (the pages have no inline script or style); "
        "a host layout with inline scripts needs its own policy here.",
    ),
    (
        "LM_BILLING_SQLITE_TUNING",
        True,
        "On SQLite, set WAL, `busy_timeout` and BEGIN IMMEDIATE for the plugin's write "
        "transactions on the app's engine (see \"Operations\"). False leaves the engine as "
        "the host made it.",
    ),
    (
        "LM_BILLING_SQLITE_BUSY_TIMEOUT",
        30.0,
        "On SQLite, seconds a writer waits for another one to finish before failing with "
        "`database is locked`.",
    ),
)

DEFAULTS: dict[str, Any] = {key: default for key, default, _ in CONFIG}


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(str(v) for v in value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def _zone(key: str, value: Any) -> ZoneInfo:
    try:
        return value if isinstance(value, ZoneInfo) else ZoneInfo(str(value).strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{key} must be an IANA time zone name such as 'UTC' or 'Europe/Berlin'; "
            f"got {value!r}"
        ) from None


def _locale(value: Any) -> str:
    text = str(value or "en").strip().replace("-", "_")
    if not text or not all(part.isalnum() for part in text.split("_")):
        raise ValueError(
            f"LM_BILLING_DEFAULT_LOCALE must be a locale such as 'en' or 'de'; got {value!r}"
        )
    return text


@dataclass(frozen=True, slots=True)
class Settings:
    """Typed view of the LM_BILLING_* keys, built once per app."""

    url_prefix: str
    bind_key: str | None
    base_template: str
    allow_all: bool
    encryption_keys: tuple[str, ...]
    client: ClientSettings
    server_deadline: float
    max_parallel: int
    lease_seconds: float
    page_size: int
    scheduler_enabled: bool
    validate_interval: float
    scheduled_sync: bool
    scheduler_autostart: bool
    inline_batches: bool
    batch_process_app: str
    batch_process_nice: int
    notify_emails: tuple[str, ...]
    smtp_host: str
    smtp_port: int
    smtp_username: str | None
    smtp_password: str | None
    smtp_starttls: bool
    smtp_sender: str
    smtp_timeout: float
    notify_base_url: str | None
    default_locale: str
    timezone: ZoneInfo
    billing_timezone: ZoneInfo
    content_security_policy: str = CONTENT_SECURITY_POLICY
    sqlite_tuning: bool = True
    sqlite_busy_timeout: float = 30.0
    currency: str = "USD"
    invoice_number_format: str = "{year}-{seq:05d}"
    bill_from_name: str = "Billing"
    bill_from_email: str = "billing@localhost"
    bill_bounce_email: str | None = None
    bill_test_email: str | None = None

    def billing_today(self, now: datetime | None = None) -> date:
        """Today's date where billing days start (``LM_BILLING_BILLING_TIMEZONE``): the day
        assignments are in force on and whose month "this month's usage" means."""
        moment = now if now is not None else datetime.now(self.billing_timezone)
        return moment.astimezone(self.billing_timezone).date()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        def get(key: str) -> Any:
            return config.get(key, DEFAULTS[key])

        page_size = int(get("LM_BILLING_LIST_PAGE_SIZE"))
        if not 1 <= page_size <= 5000:
            raise ValueError("LM_BILLING_LIST_PAGE_SIZE must be between 1 and 5000")
        url_prefix = get("LM_BILLING_URL_PREFIX")
        if (
            not isinstance(url_prefix, str)
            or not url_prefix.startswith("/")
            or any(ch.isspace() or ch in "?#<>%\\" for ch in url_prefix)
            or "//" in url_prefix
        ):
            # Said here, in our words: Flask's own error would come from register_blueprint.
            raise ValueError(
                "LM_BILLING_URL_PREFIX must be a URL path that starts with '/', such as "
                f"'/billing' or '/admin/billing' (no spaces, '?', '#' or '//'); got {url_prefix!r}"
            )
        bind_key = get("LM_BILLING_BIND_KEY")
        if bind_key is not None and (not isinstance(bind_key, str) or not bind_key.strip()):
            raise ValueError(
                "LM_BILLING_BIND_KEY must be None or the name of an SQLALCHEMY_BINDS entry; "
                f"got {bind_key!r}"
            )
        max_parallel = int(get("LM_BILLING_MAX_PARALLEL"))
        if max_parallel < 1:
            raise ValueError("LM_BILLING_MAX_PARALLEL must be at least 1")
        nice = int(get("LM_BILLING_BATCH_PROCESS_NICE"))
        if not 0 <= nice <= 19:
            raise ValueError(f"LM_BILLING_BATCH_PROCESS_NICE must be between 0 and 19, not {nice}")
        currency = str(get("LM_BILLING_CURRENCY")).strip().upper()
        # Babel's currencies are ISO 4217's (billing-cycle.md §3); "ABC" has the shape only.
        from babel.numbers import list_currencies

        if not re.fullmatch(r"[A-Z]{3}", currency) or currency not in list_currencies():
            raise ValueError(
                f"LM_BILLING_CURRENCY must be an ISO 4217 code like USD or EUR, not {currency!r}"
            )
        number_format = str(get("LM_BILLING_INVOICE_NUMBER_FORMAT"))
        try:
            one = number_format.format(year=2026, seq=1)
            two = number_format.format(year=2026, seq=2)
            next_year = number_format.format(year=2027, seq=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"LM_BILLING_INVOICE_NUMBER_FORMAT {number_format!r} cannot be used ({exc}); "
                "use {year} and {seq}, e.g. {year}-{seq:05d}"
            ) from None
        # Each year's sequence starts at 1 (billing-cycle.md §3), so a number without its year
        # would repeat every January and the unique number would refuse the year's first
        # invoice.
        if one in (two, next_year) or len(one) > 40:
            raise ValueError(
                f"LM_BILLING_INVOICE_NUMBER_FORMAT {number_format!r} must contain {{year}} and "
                "{seq} and print at most 40 characters"
            )
        return cls(
            url_prefix=url_prefix,
            bind_key=bind_key,
            base_template=str(get("LM_BILLING_BASE_TEMPLATE")),
            allow_all=_as_bool(get("LM_BILLING_ALLOW_ALL")),
            encryption_keys=_as_tuple(get("LM_BILLING_ENCRYPTION_KEYS")),
            client=ClientSettings(
                connect_timeout=float(get("LM_BILLING_CONNECT_TIMEOUT")),
                read_timeout=float(get("LM_BILLING_READ_TIMEOUT")),
                operation_timeout=float(get("LM_BILLING_OPERATION_TIMEOUT")),
                max_reply_bytes=int(get("LM_BILLING_MAX_REPLY_BYTES")),
                max_read_bytes=int(get("LM_BILLING_MAX_READ_BYTES")),
                page_size=page_size,
                max_lists=int(get("LM_BILLING_MAX_LISTS_PER_SERVER")),
                allowed_networks=parse_networks(get("LM_BILLING_ALLOWED_NETWORKS")),
                allow_loopback=_as_bool(get("LM_BILLING_ALLOW_LOOPBACK")),
            ),
            server_deadline=float(get("LM_BILLING_SERVER_DEADLINE")),
            max_parallel=max_parallel,
            lease_seconds=float(get("LM_BILLING_LEASE_SECONDS")),
            page_size=int(get("LM_BILLING_PAGE_SIZE")),
            scheduler_enabled=_as_bool(get("LM_BILLING_SCHEDULER_ENABLED")),
            validate_interval=float(get("LM_BILLING_VALIDATE_INTERVAL")),
            scheduled_sync=_as_bool(get("LM_BILLING_SCHEDULED_SYNC")),
            scheduler_autostart=_as_bool(get("LM_BILLING_SCHEDULER_AUTOSTART")),
            inline_batches=_as_bool(get("LM_BILLING_INLINE_BATCHES")),
            batch_process_app=str(get("LM_BILLING_BATCH_PROCESS_APP") or "").strip(),
            batch_process_nice=nice,
            notify_emails=_as_tuple(get("LM_BILLING_NOTIFY_EMAILS")),
            smtp_host=str(get("LM_BILLING_SMTP_HOST")),
            smtp_port=int(get("LM_BILLING_SMTP_PORT")),
            smtp_username=get("LM_BILLING_SMTP_USERNAME"),
            smtp_password=get("LM_BILLING_SMTP_PASSWORD"),
            smtp_starttls=_as_bool(get("LM_BILLING_SMTP_STARTTLS")),
            smtp_sender=str(get("LM_BILLING_SMTP_SENDER")),
            smtp_timeout=float(get("LM_BILLING_SMTP_TIMEOUT")),
            notify_base_url=get("LM_BILLING_NOTIFY_BASE_URL") or None,
            default_locale=_locale(get("LM_BILLING_DEFAULT_LOCALE")),
            timezone=_zone("LM_BILLING_TIMEZONE", get("LM_BILLING_TIMEZONE")),
            billing_timezone=_zone(
                "LM_BILLING_BILLING_TIMEZONE", get("LM_BILLING_BILLING_TIMEZONE")
            ),
            content_security_policy=str(get("LM_BILLING_CONTENT_SECURITY_POLICY")),
            sqlite_tuning=_as_bool(get("LM_BILLING_SQLITE_TUNING")),
            sqlite_busy_timeout=float(get("LM_BILLING_SQLITE_BUSY_TIMEOUT")),
            currency=currency,
            invoice_number_format=number_format,
            bill_from_name=str(get("LM_BILLING_BILL_FROM_NAME") or ""),
            bill_from_email=str(get("LM_BILLING_BILL_FROM_EMAIL") or ""),
            bill_bounce_email=get("LM_BILLING_BILL_BOUNCE_EMAIL") or None,
            bill_test_email=get("LM_BILLING_BILL_TEST_EMAIL") or None,
        )
