"""The hosting-server registry: create, edit, delete, check and enable logging, with audit.
Pages and CLI both call these functions; none of them ever returns or logs a password.

One module on purpose: the field rules, the writes and the checks all guard the same secret
(the stored TclPort password, which an edit of the host must not carry to another host), and
keeping them together keeps every path that decrypts or sends it in one place to review.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import audit, signals
from ..i18n import M_
from ..models import (
    Assignment,
    AuditEntry,
    ListCount,
    MailingList,
    Problem,
    ProblemRun,
    Run,
    Server,
    Site,
    Usage,
    UsagePrevious,
    UsageRollup,
    UsageSiteRollup,
    utcnow,
)
from ..secrets import SecretsError
from ..state import get_state
from ..tclport import addresses
from ..tclport.client import DEFAULT_PASSWORD, DEFAULT_PORT
from ..tclport.errors import DNS, REFUSED, TIMEOUT, UNREACHABLE
from . import checks, versions
from .checks import ConnectionReport, LoggingReport
from .store import PROBLEM, close_values, is_conflict

__all__ = [
    "MAX_COMMENTS",
    "MAX_HOST",
    "MAX_NAME",
    "MAX_PASSWORD",
    "ServerError",
    "ServerFieldError",
    "ServerNotFound",
    "UnknownServers",
    "check_server",
    "create_server",
    "delete_server",
    "enable_logging",
    "get_server",
    "rotate_passwords",
    "run_message",
    "server_json",
    "servers_by_name",
    "status_for",
    "status_for_error",
    "tclport_password",
    "update_server",
    "validate_host_name",
    "validate_server_fields",
]

log = logging.getLogger("lm_billing_plugin.servers")

MAX_NAME: Final = 100
MAX_HOST: Final = 253
MAX_COMMENTS: Final = 2000
MAX_PASSWORD: Final = 256

_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Connection failures that mean "nothing usable answered at that address".
_UNREACHABLE_CODES: Final = frozenset({DNS, REFUSED, TIMEOUT, UNREACHABLE})
_HOST_CHANGED: Final = M_(
    "The host name changed: enter the TclPort password for the new host again "
    "(the stored one is not sent to a different host unasked)."
)


class ServerError(Exception):
    """A registry operation cannot be done; ``str()`` says why and what to do."""


class ServerNotFound(ServerError, LookupError):
    """No server with that id (or name)."""


class UnknownServers(ServerError, LookupError):
    """Some of the named servers do not exist; ``names`` lists them as given."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        shown = ", ".join(repr(n) for n in self.names)
        super().__init__(
            (M_("unknown server: %(names)s (see `flask lm-billing servers list` for the names)")
             if len(self.names) == 1 else
             M_("unknown servers: %(names)s (see `flask lm-billing servers list` for the "
                "names)")) % {"names": shown}
        )


class ServerFieldError(ServerError, ValueError):
    """Input that cannot be saved; ``errors`` maps a form field name to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in self.errors.items()))


# --- field rules ----------------------------------------------------------------------------


def validate_host_name(value: str) -> str | None:
    """Why ``value`` is not a host name or IP address (None when it is one).

    Accepts a DNS name of RFC 1123 labels (an optional final dot) or an IPv4/IPv6 address;
    refuses URLs, paths, ports and spaces, with a message that says what to type instead.
    """
    if not value:
        return M_("Enter the hosting server's host name or IP address.")
    if len(value) > MAX_HOST:
        return M_("A host name has at most %(max)s characters.") % {"max": MAX_HOST}
    if any(ch.isspace() for ch in value) or _CONTROL_RE.search(value):
        return M_("A host name has no spaces or control characters.")
    if "://" in value:
        return M_("Enter only the host name (e.g. lists.example.com), not a URL.")
    if "/" in value or "\\" in value:
        return M_("Enter only the host name, without a path.")
    if value.startswith("[") and value.endswith("]"):
        return M_("Write an IPv6 address without brackets (e.g. 2001:db8::1).")
    if "@" in value:
        return M_("Enter only the host name, without a user name.")
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            return M_("Enter the host name without a port; the port has its own field.")
        return None
    if not value.isascii():
        return M_("Write an international domain name in its ASCII (xn--) form.")
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(value.rstrip("."))
        except ValueError:
            return M_("%(value)s is not a valid IPv4 address.") % {"value": repr(value)}
        return None
    for label in labels:
        if not label:
            return M_("A host name has no empty parts (two dots in a row, or a leading dot).")
        if not _LABEL_RE.fullmatch(label):
            return M_(
                "%(label)s is not a valid part of a host name: letters, digits and hyphens "
                "only, at most 63, not starting or ending with a hyphen."
            ) % {"label": repr(label)}
    return None


def _name_error(session: Session, name: str, server_id: int | None) -> str | None:
    if not name:
        return M_("Enter a name for this server.")
    if len(name) > MAX_NAME:
        return M_("A server name has at most %(max)s characters.") % {"max": MAX_NAME}
    if _CONTROL_RE.search(name):
        return M_("A server name has no control characters (tabs, line breaks).")
    clash = session.execute(sa.select(Server.id, Server.active).where(Server.name == name)).first()
    if clash is not None and clash.id != server_id:
        if not clash.active:
            return M_(
                "A deactivated server is still called %(name)s (its billing history is "
                "kept); choose another name."
            ) % {"name": repr(name)}
        return M_("A server named %(name)s already exists; choose another name.") % {
            "name": repr(name)}
    return None


def validate_server_fields(
    *,
    name: str,
    host: str,
    port: int | str | None,
    comments: str = "",
    password: str | None = None,
    server_id: int | None = None,
    session: Session | None = None,
) -> dict[str, str]:
    """Field-keyed errors for a server's fields (empty when all is well).

    ``server_id`` is the server being edited, so its own name does not count as a duplicate.
    """
    session = session if session is not None else get_state().session
    errors: dict[str, str] = {}
    name_error = _name_error(session, name, server_id)
    if name_error:
        errors["name"] = name_error
    # Then where billing may connect (no DNS here; the client checks resolved addresses).
    policy = get_state().settings.client.address_policy
    host_error = addresses.host_error(host, policy) or validate_host_name(host)
    if host_error:
        errors["host"] = host_error
    port_value = _port(port)
    if port_value is None:
        errors["port"] = M_("The port is a number from 1 to 65535 (TclPort's default is 2021).")
    if len(comments) > MAX_COMMENTS:
        errors["comments"] = M_("Comments have at most %(max)s characters.") % {
            "max": MAX_COMMENTS}
    if password is not None:
        if len(password) > MAX_PASSWORD:
            errors["password"] = M_("A TclPort password has at most %(max)s characters.") % {
                "max": MAX_PASSWORD}
        elif "\n" in password or "\r" in password:
            errors["password"] = M_(
                "A TclPort password is one line (no line breaks).")
    return errors


def _port(value: int | str | None) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value.isascii() or not value.isdigit():
            return None
    if value is None:
        return None
    number = int(value)
    return number if 1 <= number <= 65535 else None


# --- lookups --------------------------------------------------------------------------------


def get_server(server_id: int, *, session: Session | None = None) -> Server:
    session = session if session is not None else get_state().session
    server = session.get(Server, server_id)
    if server is None:
        raise ServerNotFound(M_("no hosting server with id %(id)s") % {"id": server_id})
    return server


def lock_server(server_id: int) -> Server:
    """The server, its row held until the caller's commit or rollback, so a check made on it
    (an API's If-Match) and the write that follows are one transaction: SELECT ... FOR UPDATE
    on PostgreSQL and MariaDB; SQLite locks the database, not rows, so there a no-op write
    takes the write lock first (a read that later upgrades would fail as busy)."""
    session = get_state().session
    if session.get_bind(mapper=Server).dialect.name == "sqlite":
        session.execute(
            sa.update(Server).where(Server.id == server_id).values(id=Server.id)
            .execution_options(synchronize_session=False)
        )
    server = session.execute(
        sa.select(Server).where(Server.id == server_id).with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if server is None:
        session.rollback()
        raise ServerNotFound(M_("no hosting server with id %(id)s") % {"id": server_id})
    return server


def servers_by_name(
    names: Iterable[str], *, include_inactive: bool = False, session: Session | None = None
) -> list[Server]:
    """The servers with exactly these names, in the order given; raises UnknownServers."""
    session = session if session is not None else get_state().session
    wanted = list(dict.fromkeys(names))
    query = sa.select(Server).where(Server.name.in_(wanted))
    if not include_inactive:
        query = query.where(Server.active.is_(True))
    found = {s.name: s for s in session.scalars(query)}
    # The database may compare names case-insensitively; billing compares them exactly.
    missing = [n for n in wanted if n not in found]
    if missing:
        raise UnknownServers(missing)
    return [found[n] for n in wanted]


def server_json(server: Server) -> dict[str, Any]:
    """The server as JSON values, as the API and ``servers list --json`` give it: never the
    password, only whether one is stored; times in ISO 8601."""
    return {
        "id": server.id,
        "name": server.name,
        "host": server.host,
        "port": server.port,
        "comments": server.comments,
        "active": server.active,
        "password_set": server.password_encrypted is not None,
        "status": server.status,
        "status_message": server.status_message,
        "version": server.version,
        "logging_mode": server.logging_mode,
        "logging_label": server.logging_label,
        **{name: _iso(getattr(server, name)) for name in ("checked_at", "validated_at",
                                                           "synced_at")},
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def tclport_password(token: str | None) -> str:
    """The TclPort password a server's ``password_encrypted`` stands for: the Fernet token
    decrypted, or ListManager's default (``TCLPORTPasswd``) when none is stored.

    Raises SecretsError (its message says what to do) when the token cannot be decrypted.
    """
    if token is None:
        return DEFAULT_PASSWORD
    return get_state().secrets.decrypt(token)


def rotate_passwords(*, actor: str) -> tuple[int, list[str]]:
    """Re-encrypt every stored TclPort password with the first key of
    LM_BILLING_ENCRYPTION_KEYS (``flask lm-billing rotate-keys``), in one transaction, so the
    keys after it can be removed. Returns (passwords re-encrypted, names of the servers
    whose stored password no key decrypts: left as they are, to be entered again). Raises
    SecretsError when no key is set."""
    state = get_state()
    session = state.session
    box = state.secrets
    if not box.configured:
        raise SecretsError("cannot re-encrypt the TclPort passwords: LM_BILLING_ENCRYPTION_KEYS "
                           "is not set")
    rows = session.execute(
        sa.select(Server.id, Server.name, Server.password_encrypted)
        .where(Server.password_encrypted.is_not(None)).order_by(Server.id)).all()
    rotated, unreadable = 0, []
    for server_id, name, token in rows:
        if token is None:  # not selected; the type allows it
            continue
        try:
            new_token = box.rotate(token)
        except SecretsError:
            unreadable.append(name)
            continue
        # Only if the row still holds what was read: a password changed meanwhile is already
        # encrypted with the first key.
        rotated += session.execute(
            sa.update(Server).where(Server.id == server_id, Server.password_encrypted == token)
            .values(password_encrypted=new_token)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    audit.record(session, actor=actor, action="rotate_keys", object_type="server",
                 detail={"rotated": rotated, "unreadable": unreadable})
    session.commit()
    return rotated, unreadable


# --- create, update, delete -----------------------------------------------------------------


def _encrypt(password: str) -> str:
    try:
        return get_state().secrets.encrypt(password)
    except SecretsError as exc:
        raise ServerFieldError({"password": str(exc)}) from None


def create_server(
    name: str,
    host: str,
    port: int = DEFAULT_PORT,
    comments: str = "",
    password: str | None = None,
    *,
    actor: str,
) -> Server:
    """Register a hosting server; ``password`` None or "" = ListManager's default (nothing stored).

    Raises ServerFieldError with field-keyed messages when the input cannot be saved.
    """
    session = get_state().session
    name, host, comments = name.strip(), host.strip(), comments.strip()
    errors = validate_server_fields(
        name=name, host=host, port=port, comments=comments, password=password, session=session
    )
    if errors:
        raise ServerFieldError(errors)
    server = Server(
        name=name,
        host=host,
        port=int(port),
        comments=comments,
        password_encrypted=_encrypt(password) if password else None,
        status="unchecked",
        status_message="",
    )
    session.add(server)
    session.flush()
    audit.record(
        session,
        object_type="server",
        actor=actor,
        action="server_create",
        server_id=server.id,
        object_id=server.id,
        detail={
            "name": name,
            "host": host,
            "port": int(port),
            "password": "set" if password else "default",
        },
    )
    _commit_or_field_error(session, name)
    log.info("server %r (%s:%s) created by %s", name, host, port, actor)
    signals.send(signals.server_created, server_id=server.id, name=name, actor=actor)
    return server


def _commit_or_field_error(session: Session, name: str) -> None:
    # Two requests may race past the duplicate check; the unique index then decides.
    try:
        session.commit()
    except sa.exc.DBAPIError as exc:
        session.rollback()
        if not is_conflict(exc):
            raise
        raise ServerFieldError(
            {"name": M_("A server named %(name)s already exists; choose another name.")
                      % {"name": repr(name)}}
        ) from None


_UNSET: Any = object()


def update_server(
    server_id: int,
    *,
    name: str = _UNSET,
    host: str = _UNSET,
    port: int = _UNSET,
    comments: str = _UNSET,
    password: str | None = None,
    keep_password: bool = False,
    actor: str,
    expected_version: str | None = None,
) -> Server:
    """Change a server's fields; arguments left out stay as they are.

    ``expected_version``: the edit form's hidden version (``versions.fields_version`` of
    SERVER_OPERATOR_FIELDS when the form was loaded). When given, the row is locked and
    compared first: another operator's change in between raises ``ChangedMeanwhile`` and
    nothing is written. A sync's writes (status and inventory columns) are not a change.

    ``password``: None = unchanged, "" = back to ListManager's default (the stored one is
    erased), text = the new password. A stored password is never sent to a new host unasked:
    when ``host`` changes while a password is stored, pass the password again (or "" for the
    default), or ``keep_password=True`` to keep the stored one; otherwise ServerFieldError on
    ``password``.
    """
    session = get_state().session
    server = get_server(server_id, session=session)
    versions.check_version(session, "server", Server, server_id,
                           versions.SERVER_OPERATOR_FIELDS, expected_version)
    new_name = server.name if name is _UNSET else name.strip()
    new_host = server.host if host is _UNSET else host.strip()
    new_port = server.port if port is _UNSET else port
    new_comments = server.comments if comments is _UNSET else comments.strip()
    errors = validate_server_fields(
        name=new_name,
        host=new_host,
        port=new_port,
        comments=new_comments,
        password=password,
        server_id=server.id,
        session=session,
    )
    host_changed = new_host != server.host
    if (
        host_changed
        and password is None
        and not keep_password
        and server.password_encrypted is not None
        and "host" not in errors
    ):
        errors["password"] = _HOST_CHANGED
    if errors:
        session.rollback()
        raise ServerFieldError(errors)
    changes: dict[str, Any] = {}
    for field, new in (
        ("name", new_name),
        ("host", new_host),
        ("port", int(new_port)),
        ("comments", new_comments),
    ):
        old = getattr(server, field)
        if old != new:
            changes[field] = {"old": old, "new": new}
            setattr(server, field, new)
    if password is not None:
        server.password_encrypted = _encrypt(password) if password else None
        changes["password"] = "changed" if password else "reset to default"
    if host_changed or "port" in changes:
        # The last check was of another address: say so instead of showing its result.
        server.status = "unchecked"
        server.status_message = ""
    if changes:
        audit.record(
            session,
            object_type="server",
            actor=actor,
            action="server_update",
            server_id=server.id,
            object_id=server.id,
            detail={"name": server.name, "changes": changes},
        )
    _commit_or_field_error(session, new_name)
    if changes:
        signals.send(signals.server_updated, server_id=server.id, name=server.name,
                     changes=changes, actor=actor)
    return server


def _lease_held(server: Server, now: datetime) -> bool:
    return (
        server.lease_owner is not None
        and server.lease_expires_at is not None
        and server.lease_expires_at > now
    )


def delete_server(server_id: int, *, actor: str) -> str:
    """Delete a server; returns "deactivated" or "erased".

    A server that is or ever was paid for by a billing group (any assignment of it, its sites
    or its lists, ended or not) is deactivated (``active=False``) so its billing history and
    assignments stay. A server that never was is erased with its sites, lists, usage,
    problems and runs; its audit entries stay (their detail names the server).
    """
    session = get_state().session
    server = get_server(server_id, session=session)
    if _lease_held(server, utcnow()):
        session.rollback()
        raise ServerError(
            M_("a validate or sync of %(server)s is running now; delete it when that run "
               "has finished.") % {"server": repr(server.name)}
        )
    name = server.name
    assigned = session.execute(
        sa.select(sa.func.count()).select_from(Assignment).where(Assignment.server_id == server.id)
    ).scalar_one()
    detail = {"name": name, "host": server.host, "port": server.port}
    if assigned:
        if not server.active:
            session.rollback()
            raise ServerError(M_("server %(server)s is already deactivated")
                              % {"server": repr(name)})
        server.active = False
        audit.record(
            session,
            object_type="server",
            actor=actor,
            action="server_deactivate",
            server_id=server.id,
            object_id=server.id,
            detail={**detail, "assignments": int(assigned)},
        )
        session.commit()
        log.info("server %r deactivated by %s (it has billing history)", name, actor)
        signals.send(signals.server_deleted, server_id=server.id, name=name,
                     outcome="deactivated", actor=actor)
        return "deactivated"
    sid = server.id
    # Children first (foreign keys); audit rows are kept but let go of the server.
    session.execute(sa.update(AuditEntry).where(AuditEntry.server_id == sid).values(server_id=None))
    session.execute(sa.delete(UsageRollup).where(UsageRollup.server_id == sid))
    session.execute(sa.delete(UsagePrevious).where(UsagePrevious.server_id == sid))
    session.execute(sa.delete(UsageSiteRollup).where(UsageSiteRollup.server_id == sid))
    session.execute(sa.delete(ListCount).where(ListCount.server_id == sid))
    session.execute(sa.delete(Usage).where(Usage.server_id == sid))
    session.execute(sa.delete(ProblemRun).where(ProblemRun.server_id == sid))
    session.execute(sa.delete(Problem).where(Problem.server_id == sid))
    session.execute(sa.delete(MailingList).where(MailingList.server_id == sid))
    session.execute(sa.delete(Site).where(Site.server_id == sid))
    session.execute(sa.delete(Run).where(Run.server_id == sid))
    session.execute(sa.delete(Server).where(Server.id == sid))
    audit.record(
        session,
        actor=actor,
        action="server_delete",
        object_type="server",
        object_id=sid,
        detail=detail,
    )
    session.commit()
    log.info("server %r erased by %s", name, actor)
    signals.send(signals.server_deleted, server_id=sid, name=name, outcome="erased", actor=actor)
    return "erased"


# --- checks ---------------------------------------------------------------------------------


def status_for_error(code: str) -> str:
    """The Server.status a TclPortError code stands for (checks, validate, sync and fix)."""
    if code == "HOST_DENIED":
        return "host_denied"
    if code == "AUTH_FAILED":
        return "auth_failed"
    if code in _UNREACHABLE_CODES:
        return "unreachable"
    return "error"


def status_for(connection: ConnectionReport, logging_report: LoggingReport | None) -> str:
    """The Server.status a check's outcome stands for."""
    if connection.error is not None:
        return status_for_error(connection.error.code)
    if logging_report is None or logging_report.mode is None:
        return "error"
    return "ok" if logging_report.ok else "logging_off"


def _address(server: Server) -> tuple[str, int, str, str]:
    """What a network call needs, read before the transaction is closed."""
    try:
        password = tclport_password(server.password_encrypted)
    except SecretsError as exc:
        raise ServerError(M_("server %(server)s: %(message)s")
                          % {"server": repr(server.name), "message": str(exc)}) from None
    return server.host, server.port, password, server.name


def run_message(server: str, message: str) -> str:
    """A Run's error message: it names the server, since lists of runs mix servers."""
    return M_("server %(server)s: %(message)s") % {"server": f"'{server}'", "message": message}


def _record_call(
    session: Session,
    server: Server,
    *,
    kind: str,
    run_status: str,
    actor: str,
    started: datetime,
    message: str | None,
    code: str | None,
    detail: dict[str, Any],
) -> None:
    """Add the finished ``kind`` run of a check or enable-logging call and its audit entry."""
    session.add(
        Run(
            server_id=server.id,
            kind=kind,
            status=run_status,
            triggered_by=actor,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=started,
            finished_at=utcnow(),
            error_code=code,
            error_message=None if message is None else run_message(server.name, message),
        )
    )
    audit.record(
        session,
        actor=actor,
        action="server_check" if kind == "check" else kind,
        object_type="server",
        object_id=server.id,
        server_id=server.id,
        detail={"name": server.name, **detail},
    )


def check_server(server_id: int, *, actor: str) -> tuple[ConnectionReport, LoggingReport | None]:
    """Connection check step by step, then the Enable Logging check; records the outcome.

    The network part runs with no transaction open; then one short transaction updates the
    server's status, version and logging, and adds a ``check`` run and an audit entry.
    """
    state = get_state()
    session = state.session
    server = get_server(server_id, session=session)
    host, port, password, name = _address(server)
    session.commit()  # no transaction stays open during the network I/O below
    started = utcnow()
    result = checks.check_server(host, port, password, name=name, settings=state.settings.client)
    connection, logging_report = result.connection, result.logging
    status = status_for(connection, logging_report)
    message: str
    code: str | None
    if connection.error is not None:
        message, code = connection.error.message, connection.error.code
    elif logging_report is not None:
        message, code = logging_report.message, logging_report.code
    else:  # pragma: no cover - checks always reports logging after a good connection
        message, code = connection.message, None

    server = get_server(server_id, session=session)
    server.status = status
    server.status_message = message
    server.checked_at = utcnow()
    if connection.version is not None:
        server.version = connection.version
        server.hostname_reported = connection.hostname
    if logging_report is not None and logging_report.mode is not None:
        server.logging_mode = logging_report.mode
        server.logging_label = logging_report.label
    run_status = {"ok": "ok", "logging_off": "problems"}.get(status, "failed")
    _record_call(
        session,
        server,
        kind="check",
        run_status=run_status,
        actor=actor,
        started=started,
        message=None if status == "ok" else message,
        code=None if status == "ok" else code or status,
        detail={
            "status": status,
            "code": code,
            "version": connection.version,
            "logging_mode": logging_report.mode if logging_report else None,
        },
    )
    session.commit()
    return connection, logging_report


def enable_logging(server_id: int, *, actor: str) -> LoggingReport:
    """Switch the server's Enable Logging to "Yes, Log All Messages ..." over TclPort.

    A server that does not allow remote changes answers NOT_PERMITTED: the report says so
    (``code == "NOT_PERMITTED"``) with what to do on the hosting server itself.
    """
    state = get_state()
    session = state.session
    server = get_server(server_id, session=session)
    host, port, password, name = _address(server)
    session.commit()
    started = utcnow()
    report = checks.enable_logging(host, port, password, name=name, settings=state.settings.client)

    server = get_server(server_id, session=session)
    if report.mode is not None:
        server.logging_mode = report.mode
        server.logging_label = report.label
    if report.ok:
        server.status = "ok"
        server.status_message = report.message
        server.checked_at = utcnow()
        # The Errors page should not keep offering a fix that was just made; the next
        # validation reopens the same problem (same fingerprint) if logging goes off again.
        session.execute(
            sa.update(PROBLEM)
            .where(
                PROBLEM.c.server_id == server.id,
                PROBLEM.c.kind == "logging_off",
                PROBLEM.c.status == "open",
            )
            .ordered_values(*close_values("fixed"), (PROBLEM.c.closed_at, utcnow()))
        )
    elif report.code is not None and report.code != "NOT_PERMITTED":
        # It could not even be asked: the connection failure is the server's state now.
        server.status = status_for_error(report.code)
        server.status_message = report.message
        server.checked_at = utcnow()
    else:
        server.status = "logging_off"
        server.status_message = report.message
    _record_call(
        session,
        server,
        kind="enable_logging",
        run_status="ok" if report.ok else "failed",
        actor=actor,
        started=started,
        message=None if report.ok else report.message,
        code=None if report.ok else report.code or "logging_off",
        detail={
            "ok": report.ok,
            "changed": report.changed,
            "mode": report.mode,
            "code": report.code,
        },
    )
    session.commit()
    if report.ok and report.changed:
        signals.send(signals.logging_enabled, server_id=server_id, actor=actor)
    return report
