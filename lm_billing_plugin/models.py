"""The plugin's tables (all prefixed lm_billing_): hosting servers and what they hold,
customers, billing groups, hosting plans, assignments, runs, problems, schedule and audit.

One module on purpose: one metadata that Alembic and the host's ``include_object`` see
whole; each table is a short declaration, grouped in the order above.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    column_property,
    mapped_column,
    relationship,
    validates,
)
from sqlalchemy.types import TypeDecorator

from .kinds import ALL_KINDS

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


# MariaDB's TEXT holds 65,535 bytes (not characters): a problem's detail or object name, or a
# server's status message, built from what a peer sent (a huge name, many names) could be
# longer, and storing it would fail with DataError and block the server. Such text is cut
# below that on every database, so the three store the same thing.
MAX_TEXT_BYTES: Final = 60_000
ELLIPSIS: Final = "\u2026"


def bounded_text(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    """``text`` if its UTF-8 form fits in ``limit`` bytes, else its longest prefix that fits
    with an ellipsis after it (never half a character: the cut is on a character boundary)."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    room = limit - len(ELLIPSIS.encode("utf-8"))
    return data[:room].decode("utf-8", "ignore") + ELLIPSIS


class BoundedText(TypeDecorator[str]):
    """TEXT whose every write is cut by bounded_text, whatever wrote it: an ORM attribute,
    a Core ``update(...).values(...)`` or an insert (the bind goes through the column's
    type), so no write path can forget the bound and fail on MariaDB."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else bounded_text(value)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    Stored as naive UTC because SQLite and MariaDB have no zone-aware type; handed back
    aware, so no caller ever compares naive with aware datetimes.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        # MariaDB's plain DATETIME drops the microseconds, which would reorder runs and
        # leases started within one second; DATETIME(6) keeps them.
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use an aware datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def bind_processor(self, dialect: Dialect) -> Any:
        # A bulk write binds the same instant in every row (``now``): convert it once. The
        # memo is one immutable pair, replaced whole, so threads sharing it stay correct.
        convert = super().bind_processor(dialect)
        if convert is None:  # pragma: no cover - a TypeDecorator always converts
            return None
        memo: tuple[Any, Any] = (None, None)

        def process(value: Any) -> Any:
            nonlocal memo
            last, out = memo
            if value is last and value is not None:
                return out
            out = convert(value)
            memo = (value, out)
            return out

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def _name_type(length: int = 255) -> sa.types.TypeEngine[str]:
    # Server, site and list names are compared exactly (case- and trailing-space
    # sensitive): MariaDB's default collations would merge "Lists" with "lists " in a
    # unique index, so names use a binary NO PAD collation there.
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_nopad_bin"), "mysql", "mariadb"
    )


NameType = _name_type


def charge_name_key(name: str) -> str:
    """The form in which two names are "the same name": case and spaces ignored. Used for
    charges, customers (Company), hosting plans and billing groups alike."""
    return "".join(name.split()).casefold()


name_key = charge_name_key
# Keys compare exactly like Python does: a binary collation on MariaDB, whose default one
# would also merge "café" with "cafe" and let the database refuse what the check allowed.
KeyType = _name_type


def _key_default(column: str) -> Callable[[Any], str]:
    """Column default computing a name key from the row's name, so Core inserts (tests,
    scripts) get the key too; ORM changes go through the @validates hooks below."""

    def default(context: Any) -> str:
        return name_key(str(context.get_current_parameters()[column]))

    return default


def _rekey(obj: Any, name_attr: str, key_attr: str, value: str | None) -> None:
    # A rename that keeps the same key keeps the stored key: rows the 0003 backfill marked
    # as old duplicates (key "name #id") stay editable until someone renames them.
    if value is None:
        return
    old = obj.__dict__.get(name_attr)
    if old is None or name_key(old) != name_key(value) or obj.__dict__.get(key_attr) is None:
        setattr(obj, key_attr, name_key(value))


TABLE_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}


class Base(DeclarativeBase):
    """Declarative base of the plugin's own tables, separate from the host's models."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


# --- Hosting servers and what they hold -------------------------------------------------

SERVER_STATUSES = (
    "unchecked",  # not checked yet
    "ok",  # reachable, logging on
    "logging_off",  # reachable, Enable Logging is not "Yes, Log All Messages ..."
    "host_denied",  # refused: not in TCLPORT Hosts
    "auth_failed",  # password rejected
    "unreachable",  # DNS, refused, timeout
    "error",  # protocol error or unexpected failure
    "interrupted",  # the last run died with its process
)


class Server(Base):
    __tablename__ = "lm_billing_server"
    __table_args__ = (TABLE_OPTIONS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(NameType(100), unique=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    port: Mapped[int] = mapped_column(default=2021, server_default="2021")
    comments: Mapped[str] = mapped_column(sa.Text, default="")
    # Fernet token of the TclPort password; None = ListManager's default password.
    password_encrypted: Mapped[str | None] = mapped_column(sa.Text)
    active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    version: Mapped[str | None] = mapped_column(sa.String(40))
    hostname_reported: Mapped[str | None] = mapped_column(sa.String(255))
    validated_at: Mapped[datetime | None]
    synced_at: Mapped[datetime | None]
    checked_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(sa.String(20), default="unchecked")
    status_message: Mapped[str] = mapped_column(BoundedText, default="")
    logging_mode: Mapped[str | None] = mapped_column(sa.String(40))
    logging_label: Mapped[str | None] = mapped_column(sa.String(255))
    # The lease: which process runs this server now, and until when its claim holds.
    lease_owner: Mapped[str | None] = mapped_column(sa.String(200))
    lease_expires_at: Mapped[datetime | None]
    lease_run_id: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    sites: Mapped[list[Site]] = relationship(back_populates="server", lazy="raise_on_sql")
    lists: Mapped[list[MailingList]] = relationship(back_populates="server", lazy="raise_on_sql")

    def __repr__(self) -> str:
        return f"<Server {self.name!r} {self.host}:{self.port}>"


OBJECT_STATUSES = ("active", "removed")


class Site(Base):
    __tablename__ = "lm_billing_site"
    __table_args__ = (sa.UniqueConstraint("server_id", "name"), TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(primary_key=True)
    server_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_server.id"), index=True)
    name: Mapped[str] = mapped_column(NameType())
    title: Mapped[str] = mapped_column(sa.Text, default="")
    status: Mapped[str] = mapped_column(sa.String(10), default="active")
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    removed_at: Mapped[datetime | None]

    server: Mapped[Server] = relationship(back_populates="sites", lazy="raise_on_sql")


class MailingList(Base):
    __tablename__ = "lm_billing_list"
    __table_args__ = (
        sa.UniqueConstraint("server_id", "name"),
        # Usage per list for one month sorted by name: a page is the first lists of this
        # index that have usage that month (reports.usage; 0009), never a sort of the month.
        sa.Index("ix_lm_billing_list_name_server", "name", "server_id"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    server_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_server.id"), index=True)
    name: Mapped[str] = mapped_column(NameType())
    # The site's name as the server reports it ("" = no site); matched to Site.name.
    site_name: Mapped[str] = mapped_column(NameType(), default="")
    descr: Mapped[str] = mapped_column(sa.Text, default="")
    created: Mapped[date | None]
    members: Mapped[int] = mapped_column(default=0)
    admin: Mapped[str] = mapped_column(sa.String(320), default="")
    status: Mapped[str] = mapped_column(sa.String(10), default="active")
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    removed_at: Mapped[datetime | None]

    server: Mapped[Server] = relationship(back_populates="lists", lazy="raise_on_sql")


class Usage(Base):
    """Sending-log figures of one list for one month (period = first day of the month)."""

    __tablename__ = "lm_billing_usage"
    __table_args__ = (
        sa.UniqueConstraint("list_id", "period"),
        # A month or a range of months reads only its own rows (reports; a sync's read).
        sa.Index("ix_lm_billing_usage_period_server", "period", "server_id"),
        # The few rows whose size can count more message units than recipients.
        sa.Index("ix_lm_billing_usage_kb_period", "kb_per_recipient", "period"),
        # Usage per list for one month, sorted: a page is the first rows of one of these
        # (reports.usage; 0008), never a sort of the month's rows.
        sa.Index("ix_lm_billing_usage_period_messages", "period", "messages", "list_id"),
        sa.Index("ix_lm_billing_usage_period_recipients", "period", "recipients", "list_id"),
        sa.Index("ix_lm_billing_usage_period_bytes", "period", "bytes", "list_id"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    server_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_server.id"), index=True)
    list_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_list.id"))
    period: Mapped[date]
    messages: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    recipients: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    # bytes / recipients in KB, rounded down (KB_CAP when nothing was received but bytes were
    # sent): a plan's Max Message Size of N KB counts more units than recipients only where
    # this is >= N, so the per-server report reads those rows only (see usage_kb_per_recipient).
    kb_per_recipient: Mapped[int] = mapped_column(default=lambda ctx: _kb_default(ctx),
                                                  server_default="0")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


KB_CAP: Final = 2**31 - 1


def usage_kb_per_recipient(bytes_sent: int, recipients: int) -> int:
    """Usage.kb_per_recipient of these figures."""
    if recipients <= 0:
        return KB_CAP if bytes_sent > 0 else 0
    return min(KB_CAP, max(0, bytes_sent) // (recipients * 1024))


def _kb_default(ctx: Any) -> int:
    params = ctx.get_current_parameters()
    return usage_kb_per_recipient(int(params.get("bytes") or 0),
                                  int(params.get("recipients") or 0))


# --- Customers, plans, billing groups ------------------------------------------------------


class Customer(Base):
    __tablename__ = "lm_billing_customer"
    __table_args__ = (TABLE_OPTIONS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    company: Mapped[str] = mapped_column(sa.String(200))
    contact_name: Mapped[str] = mapped_column(sa.String(200), default="")
    email: Mapped[str] = mapped_column(sa.String(320), default="")
    is_active: Mapped[bool] = mapped_column(default=True)
    payment_method: Mapped[str] = mapped_column(sa.String(100), default="")
    notes: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    groups: Mapped[list[BillingGroup]] = relationship(
        back_populates="customer", lazy="raise_on_sql"
    )
    # Added by 0002 for the billing cycle: the End Date prorates the final bill.
    start_date: Mapped[date | None]
    end_date: Mapped[date | None]
    additional_emails: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    customer_type: Mapped[str] = mapped_column(sa.String(50), default="", server_default="")
    # Added by 0003: name_key(company), unique, so "Acme Publishing" exists once; the
    # invoice templates the customer's bills use (None = the default template).
    company_key: Mapped[str] = mapped_column(
        KeyType(200), unique=True, default=_key_default("company")
    )
    email_template_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("lm_billing_template.id")
    )
    web_template_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_template.id"))

    @validates("company")
    def _company_key(self, _: str, value: str) -> str:
        _rekey(self, "company", "company_key", value)
        return value


BILLING_METHODS = ("standard", "bandwidth")


class HostingPlan(Base):
    """A hosting plan: limits (0 = unlimited) and the prices of its billing method."""

    __tablename__ = "lm_billing_plan"
    __table_args__ = (TABLE_OPTIONS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    max_members: Mapped[int] = mapped_column(default=0)
    max_members_per_list: Mapped[int] = mapped_column(default=0)
    max_lists: Mapped[int] = mapped_column(default=0)
    max_lists_per_site: Mapped[int] = mapped_column(default=0)
    max_sites: Mapped[int] = mapped_column(default=0)
    bill_by_list: Mapped[bool] = mapped_column(default=False)
    billing_method: Mapped[str] = mapped_column(sa.String(20), default="standard")
    monthly_price: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2), default=Decimal("0"))
    overage_cpm: Mapped[Decimal] = mapped_column(sa.Numeric(12, 4), default=Decimal("0"))
    included_messages: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    max_message_size_kb: Mapped[int] = mapped_column(default=0)
    monthly_price_per_server: Mapped[Decimal] = mapped_column(
        sa.Numeric(12, 2), default=Decimal("0")
    )
    cost_per_gb: Mapped[Decimal] = mapped_column(sa.Numeric(12, 4), default=Decimal("0"))
    included_gb: Mapped[Decimal] = mapped_column(sa.Numeric(12, 3), default=Decimal("0"))
    # Added by 0003: name_key(name), unique ("Gold" and "gold " are one plan).
    name_key: Mapped[str] = mapped_column(KeyType(200), unique=True, default=_key_default("name"))

    @validates("name")
    def _name_key(self, _: str, value: str) -> str:
        _rekey(self, "name", "name_key", value)
        return value


class BillingGroup(Base):
    """One contract of a customer: a hosting plan and the objects it pays for."""

    __tablename__ = "lm_billing_group"
    __table_args__ = (sa.UniqueConstraint("customer_id", "name_key"), TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_customer.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    plan_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_plan.id"))
    plan_start: Mapped[date | None]
    plan_end: Mapped[date | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    customer: Mapped[Customer] = relationship(back_populates="groups", lazy="raise_on_sql")
    plan: Mapped[HostingPlan | None] = relationship(lazy="raise_on_sql")
    # Added by 0003: name_key(name), unique within the customer.
    name_key: Mapped[str] = mapped_column(KeyType(200), default=_key_default("name"))

    @validates("name")
    def _name_key(self, _: str, value: str) -> str:
        _rekey(self, "name", "name_key", value)
        return value


ASSIGNMENT_TYPES = ("server", "site", "list")


class Assignment(Base):
    """A server, site or list paid for by a billing group from start_date to end_date.

    Ended assignments are kept (end_date set) so a list's billing history survives.
    """

    __tablename__ = "lm_billing_assignment"
    __table_args__ = (
        sa.CheckConstraint(
            "(object_type = 'server' AND site_id IS NULL AND list_id IS NULL)"
            " OR (object_type = 'site' AND site_id IS NOT NULL AND list_id IS NULL)"
            " OR (object_type = 'list' AND list_id IS NOT NULL AND site_id IS NULL)",
            name="object",
        ),
        sa.Index("ix_lm_billing_assignment_server_end", "server_id", "end_date"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_group.id"), index=True)
    object_type: Mapped[str] = mapped_column(sa.String(10))
    server_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_server.id"))
    site_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_site.id"))
    list_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_list.id"))
    start_date: Mapped[date]
    end_date: Mapped[date | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    group: Mapped[BillingGroup] = relationship(lazy="raise_on_sql")
    # Added by 0002: an "Is Free" assignment costs nothing (no per-list price, no usage).
    is_free: Mapped[bool] = mapped_column(default=False, server_default=sa.false())


# --- Runs, problems, schedule, audit --------------------------------------------------------

RUN_KINDS = ("check", "validate", "sync", "fix", "enable_logging")
RUN_STATUSES = ("queued", "running", "ok", "problems", "failed", "interrupted", "skipped")


class Batch(Base):
    """One request to validate or sync several servers; its runs report progress here."""

    __tablename__ = "lm_billing_batch"
    __table_args__ = (TABLE_OPTIONS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    status: Mapped[str] = mapped_column(sa.String(20), default="running")
    total: Mapped[int] = mapped_column(default=0)
    done: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    dry_run: Mapped[bool] = mapped_column(default=False)
    triggered_by: Mapped[str] = mapped_column(sa.String(200), default="")
    host: Mapped[str] = mapped_column(sa.String(200), default="")
    pid: Mapped[int | None]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Run(Base):
    """One validate / sync / fix / check of one server, with its outcome."""

    __tablename__ = "lm_billing_run"
    __table_args__ = (
        sa.Index("ix_lm_billing_run_server_started", "server_id", "started_at"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_batch.id"), index=True)
    server_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_server.id"))
    kind: Mapped[str] = mapped_column(sa.String(20))
    status: Mapped[str] = mapped_column(sa.String(20), default="running")
    triggered_by: Mapped[str] = mapped_column(sa.String(200), default="")
    host: Mapped[str] = mapped_column(sa.String(200), default="")
    pid: Mapped[int | None]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    error_code: Mapped[str | None] = mapped_column(sa.String(40))
    error_message: Mapped[str | None] = mapped_column(BoundedText)
    lists_seen: Mapped[int] = mapped_column(default=0)
    created: Mapped[int] = mapped_column(default=0)
    updated: Mapped[int] = mapped_column(default=0)
    removed: Mapped[int] = mapped_column(default=0)
    problems_open: Mapped[int] = mapped_column(default=0)
    problems_new: Mapped[int] = mapped_column(default=0)


# One list of problem kinds: the engine defines them (reconcile has no database imports).
PROBLEM_KINDS = ALL_KINDS
PROBLEM_STATUSES = ("open", "resolved", "fixed")


class Problem(Base):
    """One validation error. The fingerprint (kind + object) keeps it one row across runs:
    found again, it stays the same problem; no longer found, it is resolved.

    ``last_seen_at`` / ``last_run_id`` read as the last run that found it: for a server's
    open problem that is its server's :class:`ProblemRun` (a run that confirms a server's
    problems writes that one row, not every problem it found again), else what the row
    stores (``stored_last_seen_at`` / ``stored_last_run_id``: when a run last wrote it; a
    problem is frozen at its last sighting when it closes).
    """

    __tablename__ = "lm_billing_problem"
    __table_args__ = (
        sa.Index("ix_lm_billing_problem_status_server", "status", "server_id"),
        # A validate reads and writes one server's problems, and the ids of those its run
        # just created: without these, both scan every server's problems.
        sa.Index("ix_lm_billing_problem_server_status", "server_id", "status"),
        sa.Index("ix_lm_billing_problem_first_run", "first_run_id"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(sa.String(64), unique=True)
    server_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_server.id"))
    group_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_group.id"))
    kind: Mapped[str] = mapped_column(sa.String(40))
    object_type: Mapped[str] = mapped_column(sa.String(10))
    object_name: Mapped[str] = mapped_column(sa.Text, default="")
    detail: Mapped[str] = mapped_column(sa.Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    status: Mapped[str] = mapped_column(sa.String(10), default="open")
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    stored_last_seen_at: Mapped[datetime] = mapped_column(
        "last_seen_at", key="last_seen_at", default=utcnow)
    closed_at: Mapped[datetime | None]
    first_run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_run.id"))
    stored_last_run_id: Mapped[int | None] = mapped_column(
        "last_run_id", sa.ForeignKey("lm_billing_run.id"), key="last_run_id")
    if TYPE_CHECKING:  # set below (they need ProblemRun): the effective last sighting
        last_seen_at: Mapped[datetime]
        last_run_id: Mapped[int | None]

    def __init__(self, **kwargs: Any) -> None:
        # Callers name the public columns; the row stores them as written.
        for public, stored in (("last_seen_at", "stored_last_seen_at"),
                               ("last_run_id", "stored_last_run_id")):
            if public in kwargs:
                kwargs[stored] = kwargs.pop(public)
        super().__init__(**kwargs)


class TaskState(Base):
    """The schedule of one background task; the single source of truth across processes.

    A process claims a due run with one conditional UPDATE of this row (lease_owner and
    lease_expires_at), so exactly one process in the deployment runs it.
    """

    __tablename__ = "lm_billing_task"
    __table_args__ = (TABLE_OPTIONS,)

    name: Mapped[str] = mapped_column(sa.String(50), primary_key=True)
    next_run_at: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(sa.String(200))
    lease_expires_at: Mapped[datetime | None]
    current_run_id: Mapped[int | None]
    last_run_id: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class TaskRun(Base):
    __tablename__ = "lm_billing_task_run"
    __table_args__ = (
        sa.Index("ix_lm_billing_task_run_task_started", "task", "started_at"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(sa.String(50))
    scheduled_for: Mapped[datetime]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(sa.String(20), default="running")
    host: Mapped[str] = mapped_column(sa.String(200), default="")
    pid: Mapped[int | None]
    batch_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_batch.id"))
    error_message: Mapped[str | None] = mapped_column(BoundedText)
    summary: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)


class AuditEntry(Base):
    """Who changed what, when: every validate, sync, fix, enable-logging and assignment."""

    __tablename__ = "lm_billing_audit"
    __table_args__ = (sa.Index("ix_lm_billing_audit_at", "at"), TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(sa.String(200))
    action: Mapped[str] = mapped_column(sa.String(50))
    object_type: Mapped[str] = mapped_column(sa.String(20), default="")
    object_id: Mapped[int | None]
    server_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_server.id"))
    detail: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)


# --- The billing cycle: charges, plan history, invoices, bill runs --------------------------


class AdditionalCharge(Base):
    """An "Additional Charge": a default amount, recurring or once, proratable or whole."""

    __tablename__ = "lm_billing_charge"
    __table_args__ = (TABLE_OPTIONS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    # charge_name_key(name), unique: "Setup Fee" and "setup  fee" are one charge.
    name_key: Mapped[str] = mapped_column(KeyType(200), unique=True, default=_key_default("name"))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    default_amount: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2), default=Decimal("0"))
    is_recurring: Mapped[bool] = mapped_column(default=False)
    is_proratable: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @validates("name")
    def _name_key(self, _: str, value: str) -> str:
        _rekey(self, "name", "name_key", value)
        return value


class ChargeAssignment(Base):
    """An additional charge a billing group pays from start_date to end_date.

    amount None = the charge's default amount. A one-time charge records the invoice that
    billed it (invoice_id); voiding that invoice clears it, so the period bills it again.
    """

    __tablename__ = "lm_billing_group_charge"
    __table_args__ = (TABLE_OPTIONS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_group.id"), index=True)
    charge_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_charge.id"), index=True)
    amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(12, 2))
    start_date: Mapped[date]
    end_date: Mapped[date | None]
    description: Mapped[str] = mapped_column(sa.Text, default="")
    invoice_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_invoice.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    charge: Mapped[AdditionalCharge] = relationship(lazy="raise_on_sql")


class GroupPlan(Base):
    """One hosting plan of a billing group over time: the plan history billing reads."""

    __tablename__ = "lm_billing_group_plan"
    __table_args__ = (TABLE_OPTIONS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_group.id"), index=True)
    plan_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_plan.id"), index=True)
    start_date: Mapped[date]
    end_date: Mapped[date | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    plan: Mapped[HostingPlan] = relationship(lazy="raise_on_sql")


BILL_RUN_STATUSES = ("running", "done", "failed", "interrupted")


class BillRun(Base):
    """One "Run Bills" for a period: who ran it, and what became of each customer."""

    __tablename__ = "lm_billing_bill_run"
    __table_args__ = (
        sa.Index("ix_lm_billing_bill_run_period", "period_start", "period_end"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    period_start: Mapped[date]
    period_end: Mapped[date]
    status: Mapped[str] = mapped_column(sa.String(20), default="running")
    dry_run: Mapped[bool] = mapped_column(default=False)
    customers: Mapped[int] = mapped_column(default=0)
    invoiced: Mapped[int] = mapped_column(default=0)
    skipped: Mapped[int] = mapped_column(default=0)
    already_billed: Mapped[int] = mapped_column(default=0)
    actor: Mapped[str] = mapped_column(sa.String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


INVOICE_STATUSES = ("issued", "sent", "test-sent", "void")


def invoice_active_key(customer_id: int, start: date, end: date) -> str:
    """Invoice.active_key of a non-void invoice: unique, so a period is billed once."""
    return f"{customer_id}:{start.isoformat()}:{end.isoformat()}"


class Invoice(Base):
    """An issued invoice: a snapshot of the customer, its lines and usage; never edited.

    active_key is invoice_active_key(...) while the invoice is not void and NULL once void:
    its unique constraint is "at most one non-void invoice per (customer, Start, End)" on
    every backend (NULLs never collide), without partial indexes.
    """

    __tablename__ = "lm_billing_invoice"
    __table_args__ = (
        sa.UniqueConstraint("year", "seq"),
        sa.CheckConstraint(
            "status IN ('issued', 'sent', 'test-sent', 'void')", name="status"
        ),
        sa.CheckConstraint(
            "(status = 'void') = (active_key IS NULL)", name="active_key"
        ),
        sa.Index("ix_lm_billing_invoice_period", "period_start", "period_end"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(sa.String(40), unique=True)
    year: Mapped[int]
    seq: Mapped[int]
    customer_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_customer.id"), index=True)
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_bill_run.id"))
    period_start: Mapped[date]
    period_end: Mapped[date]
    status: Mapped[str] = mapped_column(sa.String(20), default="issued")
    active_key: Mapped[str | None] = mapped_column(sa.String(60), unique=True)
    currency: Mapped[str] = mapped_column(sa.String(3))
    total: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))
    # The credit this invoice carried to the next one, and the invoice whose credit it used.
    carried_over: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2), default=Decimal("0"))
    carried_from_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_invoice.id"))
    company: Mapped[str] = mapped_column(sa.String(200))
    contact_name: Mapped[str] = mapped_column(sa.String(200), default="")
    email: Mapped[str] = mapped_column(sa.String(320), default="")
    additional_emails: Mapped[str] = mapped_column(sa.Text, default="")
    void_reason: Mapped[str | None] = mapped_column(sa.Text)
    voided_by: Mapped[str | None] = mapped_column(sa.String(200))
    voided_at: Mapped[datetime | None]
    created_by: Mapped[str] = mapped_column(sa.String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    lines: Mapped[list[InvoiceLine]] = relationship(
        order_by="InvoiceLine.position", lazy="raise_on_sql"
    )
    usage: Mapped[list[InvoiceUsage]] = relationship(lazy="raise_on_sql")


class InvoiceLine(Base):
    __tablename__ = "lm_billing_invoice_line"
    __table_args__ = (sa.UniqueConstraint("invoice_id", "position"), TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_invoice.id"))
    position: Mapped[int]
    group_name: Mapped[str] = mapped_column(sa.String(200), default="")
    # The hosting plan the line was billed under (its name then; "" = none, e.g. a carried
    # credit), so revenue per plan stays with the plan of billing time (0008).
    plan_name: Mapped[str] = mapped_column(sa.String(200), default="", server_default="")
    kind: Mapped[str] = mapped_column(sa.String(20))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    quantity: Mapped[Decimal] = mapped_column(sa.Numeric(14, 3))
    unit_price: Mapped[Decimal] = mapped_column(sa.Numeric(14, 4))
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))


class InvoiceUsage(Base):
    """The usage one list's lines were computed from (a snapshot: names, not ids)."""

    __tablename__ = "lm_billing_invoice_usage"
    __table_args__ = (TABLE_OPTIONS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_invoice.id"), index=True)
    group_name: Mapped[str] = mapped_column(sa.String(200), default="")
    server_name: Mapped[str] = mapped_column(NameType(100))
    site_name: Mapped[str] = mapped_column(NameType(), default="")
    list_name: Mapped[str] = mapped_column(NameType())
    messages: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    recipients: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    units: Mapped[Decimal] = mapped_column(sa.Numeric(18, 3), default=Decimal("0"))


class InvoiceSequence(Base):
    """The last invoice number taken in a year; locked and bumped by the storing transaction,
    so numbers are gapless (a rolled-back invoice gives its number back)."""

    __tablename__ = "lm_billing_invoice_seq"
    __table_args__ = (TABLE_OPTIONS,)

    year: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(default=0)


class InvoiceSend(Base):
    """One attempt to email an invoice (or a test copy), with the mail server's answer."""

    __tablename__ = "lm_billing_invoice_send"
    __table_args__ = (TABLE_OPTIONS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_invoice.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    to_addresses: Mapped[str] = mapped_column(sa.Text)
    is_test: Mapped[bool] = mapped_column(default=False)
    outcome: Mapped[str] = mapped_column(sa.String(20))
    server_answer: Mapped[str] = mapped_column(sa.Text, default="")
    actor: Mapped[str] = mapped_column(sa.String(200), default="")


class BillRunItem(Base):
    """What a bill run did for one customer: its invoice, or why it was skipped."""

    __tablename__ = "lm_billing_bill_run_item"
    __table_args__ = (sa.UniqueConstraint("run_id", "customer_id"), TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_bill_run.id"))
    customer_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_customer.id"))
    invoice_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_invoice.id"))
    skip_code: Mapped[str | None] = mapped_column(sa.String(40))
    skip_reason: Mapped[str | None] = mapped_column(sa.Text)


# --- Invoice templates (0003) ---------------------------------------------------------------

TEMPLATE_KINDS = ("email", "web")


class InvoiceTemplate(Base):
    """An "Email Invoice Template" (plain text) or "Web Invoice Template" (HTML): Jinja
    source rendered in billing.invoice_templates' sandbox, never trusted as code."""

    __tablename__ = "lm_billing_template"
    __table_args__ = (
        sa.UniqueConstraint("kind", "name_key"),
        sa.CheckConstraint("kind IN ('email', 'web')", name="kind"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(10))
    name: Mapped[str] = mapped_column(sa.String(200))
    name_key: Mapped[str] = mapped_column(KeyType(200), default=_key_default("name"))
    body: Mapped[str] = mapped_column(sa.Text)
    updated_by: Mapped[str] = mapped_column(sa.String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @validates("name")
    def _name_key(self, _: str, value: str) -> str:
        _rekey(self, "name", "name_key", value)
        return value


class ProblemRun(Base):
    """The last run that judged one server's problems (speed, issue 15): every problem of the
    server still open was found by it, so a validate writes this row instead of moving "last
    seen" on every problem it found again. ``inventory_digest``/``result_digest`` let the
    next run of an unchanged server skip the comparison (see engine.store)."""

    __tablename__ = "lm_billing_problem_run"
    __table_args__ = (TABLE_OPTIONS,)

    server_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_server.id"),
                                           primary_key=True, autoincrement=False)
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_run.id"))
    seen_at: Mapped[datetime]
    inventory_digest: Mapped[str | None] = mapped_column(sa.String(64))
    result_digest: Mapped[str | None] = mapped_column(sa.String(64))


def confirmed_sighting(column: str) -> Any:
    """A server's open problem: its ProblemRun's ``column`` when that run came later than the
    row was last written; else the row's own value."""
    table = ProblemRun.__table__
    problem = Problem.__table__
    pointer_seen = (sa.select(table.c.seen_at).where(table.c.server_id == problem.c.server_id)
                    .scalar_subquery())
    pointer = (sa.select(table.c[column]).where(table.c.server_id == problem.c.server_id)
               .scalar_subquery())
    return sa.case(
        (sa.and_(problem.c.status == "open", problem.c.server_id.is_not(None),
                 pointer_seen > problem.c.last_seen_at), pointer),
        else_=problem.c[{"seen_at": "last_seen_at", "run_id": "last_run_id"}[column]],
    )


Problem.last_seen_at = column_property(confirmed_sighting("seen_at").label("last_seen_at"))
Problem.last_run_id = column_property(confirmed_sighting("run_id").label("last_run_id"))


# --- Roll-ups of usage (reports, issue 16) -------------------------------------------------


class UsageRollup(Base):
    """The sums of one server's Usage rows for one month (period = first day): what the Overview
    and the fleet- and server-level reports read instead of every list's row. Written only in
    the transaction that writes those Usage rows (engine.store; engine.rollup.rebuild_rollups
    for anything else), from every Usage row of that server and month, so it always equals
    them. A row exists while the server has usage rows for the month."""

    __tablename__ = "lm_billing_usage_rollup"
    __table_args__ = (sa.Index("ix_lm_billing_usage_rollup_period", "period"), TABLE_OPTIONS)

    server_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_server.id"),
                                           primary_key=True, autoincrement=False)
    period: Mapped[date] = mapped_column(primary_key=True)
    lists: Mapped[int] = mapped_column(default=0)  # Usage rows (lists with figures)
    messages: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    recipients: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsageSiteRollup(Base):
    """The sums of one site's Usage rows of one server for one month (site_name "" = lists
    in no site; a list's rows count where the list is now, as the per-row report groups
    them): what Usage per site reads instead of every list's row. Written with those rows
    (engine.store: the month's rows when a sync writes usage, every month of the server when
    a sync moves a list to another site; engine.rollup.rebuild_rollups for anything else),
    so it always equals them. A row exists while the site has usage rows for the month."""

    __tablename__ = "lm_billing_usage_site_rollup"
    __table_args__ = (sa.Index("ix_lm_billing_usage_site_rollup_period", "period"),
                      TABLE_OPTIONS)

    server_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_server.id"),
                                           primary_key=True, autoincrement=False)
    site_name: Mapped[str] = mapped_column(NameType(), primary_key=True)
    period: Mapped[date] = mapped_column(primary_key=True)
    lists: Mapped[int] = mapped_column(default=0)
    messages: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    recipients: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)


NO_PREVIOUS: Final = date(1000, 1, 1)  # UsagePrevious.previous of a list's first month


class UsagePrevious(Base):
    """How many of one server's Usage rows of ``period`` have their list's previous Usage row
    in month ``previous`` (NO_PREVIOUS: the list's first month with usage). The number of
    lists with usage in a range of months is then the rows of the range whose previous month
    lies before it — each list counted once, at its first month in the range — read from at
    most months² rows instead of one probe per list (reports.usage). Written with the Usage
    rows it counts (engine.store, when a sync adds or removes rows; engine.rollup for anything
    else), so it always equals them."""

    __tablename__ = "lm_billing_usage_previous"
    __table_args__ = (TABLE_OPTIONS,)

    server_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_server.id"),
                                           primary_key=True, autoincrement=False)
    period: Mapped[date] = mapped_column(primary_key=True)
    previous: Mapped[date] = mapped_column(primary_key=True)
    lists: Mapped[int] = mapped_column(default=0)


class ListCount(Base):
    """The active lists of one site of one server (site_name "" = lists in no site): how many,
    their members and the largest list's. What the Plan limits report reads instead of every
    list (reports.limits). Written only in the transaction that writes that server's lists
    (engine.store.apply_sync through engine.rollup.write_list_counts;
    engine.rollup.rebuild_list_counts for anything else), from every
    list of the server as it is after that write, so a server's rows are wholly old or wholly
    new. A row exists while the site holds an active list."""

    __tablename__ = "lm_billing_list_count"
    __table_args__ = (TABLE_OPTIONS,)

    server_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_server.id"),
                                           primary_key=True, autoincrement=False)
    site_name: Mapped[str] = mapped_column(NameType(), primary_key=True)
    lists: Mapped[int] = mapped_column(default=0)
    members: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    largest: Mapped[int] = mapped_column(default=0)  # members of the largest list


__all__ = [
    "ELLIPSIS",
    "KB_CAP",
    "MAX_TEXT_BYTES",
    "NO_PREVIOUS",
    "AdditionalCharge",
    "Assignment",
    "AuditEntry",
    "Base",
    "Batch",
    "BillRun",
    "BillRunItem",
    "BillingGroup",
    "BoundedText",
    "ChargeAssignment",
    "Customer",
    "GroupPlan",
    "HostingPlan",
    "Invoice",
    "InvoiceLine",
    "InvoiceSend",
    "InvoiceSequence",
    "InvoiceTemplate",
    "InvoiceUsage",
    "ListCount",
    "MailingList",
    "Problem",
    "ProblemRun",
    "Run",
    "Server",
    "Site",
    "TaskRun",
    "TaskState",
    "UTCDateTime",
    "Usage",
    "UsagePrevious",
    "UsageRollup",
    "UsageSiteRollup",
    "bounded_text",
    "charge_name_key",
    "confirmed_sighting",
    "invoice_active_key",
    "name_key",
    "usage_kb_per_recipient",
    "utcnow",
]


# --- Sending bills (0006) -------------------------------------------------------------------

SEND_OUTCOMES = ("sending", "sent", "partial", "failed", "refused", "test-sent")


class SendRun(Base):
    """One "Send Bills" / "Test Selected Bills" (page or CLI): what was asked, and its
    progress (the invoices in SendRunItem, each attempt's mail log in InvoiceSend)."""

    __tablename__ = "lm_billing_send_run"
    __table_args__ = (TABLE_OPTIONS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    is_test: Mapped[bool] = mapped_column(default=False)
    resend: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(sa.String(20), default="running")
    from_name: Mapped[str] = mapped_column(sa.String(200), default="")
    from_email: Mapped[str] = mapped_column(sa.String(320), default="")
    bounce_email: Mapped[str] = mapped_column(sa.String(320), default="")
    test_email: Mapped[str] = mapped_column(sa.String(320), default="")
    comments_text: Mapped[str] = mapped_column(sa.Text, default="")
    comments_html: Mapped[str] = mapped_column(sa.Text, default="")
    total: Mapped[int] = mapped_column(default=0)
    sent: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    skipped: Mapped[int] = mapped_column(default=0)
    with_pdf: Mapped[bool] = mapped_column(default=False)
    actor: Mapped[str] = mapped_column(sa.String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class SendRunItem(Base):
    """One invoice of a send run: pending, then sent / failed / skipped, with the reason."""

    __tablename__ = "lm_billing_send_run_item"
    __table_args__ = (sa.UniqueConstraint("send_run_id", "invoice_id"), TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(primary_key=True)
    send_run_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_send_run.id"))
    invoice_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_invoice.id"), index=True)
    position: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(sa.String(20), default="pending")
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    send_id: Mapped[int | None] = mapped_column(sa.ForeignKey("lm_billing_invoice_send.id"))


# --- Member deletion runs (0008) ------------------------------------------------------------

DELETE_OUTCOMES = ("pending", "deleted", "not_found", "failed", "interrupted")


class DeleteRun(Base):
    """One "Delete Them" (page or CLI ``find-member --delete``): who asked, for which address,
    and its progress; each membership in DeleteRunItem. ``updated_at`` moves with every
    server's outcome, so a run whose process died is told from a slow one (it is marked
    ``interrupted`` once nothing moved for LM_BILLING_LEASE_SECONDS)."""

    __tablename__ = "lm_billing_delete_run"
    __table_args__ = (TABLE_OPTIONS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320), default="")
    status: Mapped[str] = mapped_column(sa.String(20), default="running")
    total: Mapped[int] = mapped_column(default=0)
    servers: Mapped[int] = mapped_column(default=0)
    deleted: Mapped[int] = mapped_column(default=0)
    not_found: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    actor: Mapped[str] = mapped_column(sa.String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class DeleteRunItem(Base):
    """One membership of a delete run: pending, then deleted / not_found / failed (code and
    message say why), or interrupted (its run stopped before the server's answer was stored).
    Server and list are snapshots by name (a server may be erased later; the record stays)."""

    __tablename__ = "lm_billing_delete_run_item"
    __table_args__ = (sa.Index("ix_lm_billing_delete_run_item_run", "delete_run_id",
                               "position"), TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(primary_key=True)
    delete_run_id: Mapped[int] = mapped_column(sa.ForeignKey("lm_billing_delete_run.id"))
    position: Mapped[int] = mapped_column(default=0)
    server_id: Mapped[int]
    server_name: Mapped[str] = mapped_column(NameType(100))
    list_name: Mapped[str] = mapped_column(NameType())
    list_id: Mapped[int | None]
    email: Mapped[str] = mapped_column(sa.String(320))
    outcome: Mapped[str] = mapped_column(sa.String(20), default="pending")
    code: Mapped[str | None] = mapped_column(sa.String(40))
    # A server's own error text can be part of it: cut like every stored peer text.
    message: Mapped[str | None] = mapped_column(BoundedText)
    finished_at: Mapped[datetime | None]
