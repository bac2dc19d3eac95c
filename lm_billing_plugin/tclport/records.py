"""Typed records for what a TclPort hosting server returns.

Parsing is strict: a field that is missing or not in the profile's format is a protocol error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Generic, TypeVar

__all__ = [
    "LOGGING_LABELS",
    "LOGGING_LISTS",
    "LOGGING_NO",
    "MAX_INT",
    "MAX_MATCHES",
    "AdminMatch",
    "ListRecord",
    "LoggingState",
    "Matches",
    "MemberMatch",
    "RecordError",
    "ServerInfo",
    "SiteRecord",
    "UsageRecord",
    "parse_deleted",
    "parse_matches",
]

LOGGING_NO = "no"
LOGGING_LISTS = "lists"
# The labels ListManager's users know from Server Settings: Automatic Maintenance: Logging.
LOGGING_LABELS: Mapping[str, str] = {
    LOGGING_NO: "No",
    LOGGING_LISTS: "Yes, Log All Messages that ListManager Sends to Mailing Lists",
}

# Python's int() and fromisoformat() accept more than the profile does (signs, underscores,
# Unicode digits, other ISO forms), so the shapes are checked with ASCII-only patterns first.
# Integers are canonical: no sign, no space, no leading zero.  Tcl 8.6 reads "010" as octal
# (8), so a peer written in Tcl and this one would disagree on any number with a leading zero.
_INT_RE = re.compile(r"0|[1-9][0-9]{0,18}", re.ASCII)
# Counts end up in BIGINT columns; anything larger cannot be stored, so it is refused here.
MAX_INT = 2**63 - 1
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z", re.ASCII)


class RecordError(ValueError):
    """A reply field is missing or malformed; the client turns it into a MALFORMED error."""

    def __init__(self, record: str, field: str, problem: str) -> None:
        self.record = record
        self.field = field
        self.problem = problem
        super().__init__(f"{record} field {field!r} {problem}")


def _text(record: str, data: Mapping[str, str], field: str) -> str:
    try:
        return data[field]
    except KeyError:
        raise RecordError(record, field, "is missing") from None


def _short(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


def parse_int(record: str, field: str, value: str) -> int:
    """Parse a non-negative decimal ASCII integer (``0`` or no leading zero, at most 2**63-1)."""
    if not _INT_RE.fullmatch(value):
        raise RecordError(record, field, f"is not a decimal count: {_short(value)}")
    number = int(value)
    if number > MAX_INT:
        raise RecordError(record, field, f"is larger than {MAX_INT}: {_short(value)}")
    return number


def parse_date(record: str, field: str, value: str) -> date:
    """Parse a ``YYYY-MM-DD`` date."""
    if _DATE_RE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise RecordError(record, field, f"is not a YYYY-MM-DD date: {_short(value)}")


def parse_time(record: str, field: str, value: str) -> datetime:
    """Parse a ``YYYY-MM-DDTHH:MM:SSZ`` UTC time into an aware datetime."""
    if _TIME_RE.fullmatch(value):
        try:
            return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            pass
    raise RecordError(record, field, f"is not a YYYY-MM-DDTHH:MM:SSZ time: {_short(value)}")


def format_time(value: datetime) -> str:
    """Write a time the way the profile does (UTC, whole seconds, ``Z``)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """Reply of ``server_info``; ``started`` is None when the server leaves it empty."""

    product: str
    version: str
    hostname: str
    started: datetime | None

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> ServerInfo:
        name = "server_info"
        # "started" is informational: a build that leaves it out still identifies itself.
        started = data.get("started", "")
        return cls(
            product=_text(name, data, "product"),
            version=_text(name, data, "version"),
            hostname=_text(name, data, "hostname"),
            started=parse_time(name, "started", started) if started else None,
        )


@dataclass(frozen=True, slots=True)
class LoggingState:
    """The server's "Enable Logging" setting: a mode token and the label to show for it."""

    mode: str
    label: str

    @property
    def counts_messages(self) -> bool:
        # Only "log all messages sent to mailing lists" fills the log_ table billing reads.
        return self.mode == LOGGING_LISTS

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> LoggingState:
        return cls(mode=_text("logging", data, "mode"), label=_text("logging", data, "label"))


@dataclass(frozen=True, slots=True)
class SiteRecord:
    """One site of a hosting server."""

    name: str
    title: str

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> SiteRecord:
        return cls(name=_text("site", data, "name"), title=_text("site", data, "title"))


@dataclass(frozen=True, slots=True)
class ListRecord:
    """One mailing list; ``site`` and ``admin`` may be empty, ``created`` may be unknown."""

    name: str
    site: str
    descr: str
    created: date | None
    members: int
    admin: str

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> ListRecord:
        name = "list"
        created = _text(name, data, "created")
        return cls(
            name=_text(name, data, "name"),
            site=_text(name, data, "site"),
            descr=_text(name, data, "descr"),
            created=parse_date(name, "created", created) if created else None,
            members=parse_int(name, "members", _text(name, data, "members")),
            admin=_text(name, data, "admin"),
        )


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Sending totals of one list over a date range, from the server's ``log_`` table."""

    list: str
    site: str
    messages: int
    recipients: int
    bytes: int

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> UsageRecord:
        name = "usage"
        return cls(
            list=_text(name, data, "list"),
            site=_text(name, data, "site"),
            messages=parse_int(name, "messages", _text(name, data, "messages")),
            recipients=parse_int(name, "recipients", _text(name, data, "recipients")),
            bytes=parse_int(name, "bytes", _text(name, data, "bytes")),
        )


# -- cross-server look-ups (spec 4b) ---------------------------------------------------------

# A look-up reply holds at most this many items; more matches are cut and flagged truncated.
MAX_MATCHES = 5000
_FLAGS = {"0": False, "1": True}


@dataclass(frozen=True, slots=True)
class AdminMatch:
    """One list whose administrator matched a ``find_admin`` pattern; ``name`` may be empty."""

    list: str
    site: str
    admin: str
    name: str

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> AdminMatch:
        name = "find_admin item"
        admin = _text(name, data, "admin")
        if not admin:
            # Only an admin's email or name can match, and the email is what a person acts on.
            raise RecordError(name, "admin", "is empty")
        return cls(
            list=_text(name, data, "list"),
            site=_text(name, data, "site"),
            admin=admin,
            name=_text(name, data, "name"),
        )


@dataclass(frozen=True, slots=True)
class MemberMatch:
    """One membership ``find_member`` found; ``type`` is the server's own token, shown as it
    is; ``joined`` is None when the server leaves it empty (as ``created`` of a list)."""

    list: str
    site: str
    email: str
    type: str
    joined: date | None

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> MemberMatch:
        name = "find_member item"
        email = _text(name, data, "email")
        kind = _text(name, data, "type")
        joined = _text(name, data, "joined")
        if not email:
            raise RecordError(name, "email", "is empty")
        if not kind:
            raise RecordError(name, "type", "is empty")
        return cls(
            list=_text(name, data, "list"),
            site=_text(name, data, "site"),
            email=email,
            type=kind,
            joined=parse_date(name, "joined", joined) if joined else None,
        )


_Match = TypeVar("_Match", AdminMatch, MemberMatch)


@dataclass(frozen=True, slots=True)
class Matches(Generic[_Match]):
    """A look-up's items, and whether the server cut them at :data:`MAX_MATCHES`."""

    items: tuple[_Match, ...]
    truncated: bool


def parse_matches(
    record: str, data: Mapping[str, str], items: list[_Match]
) -> Matches[_Match]:
    """Check the bounds of a decoded look-up reply (``items`` already parsed from it)."""
    if "items" not in data:
        raise RecordError(record, "items", "is missing")
    if len(items) > MAX_MATCHES:
        raise RecordError(record, "items", f"holds {len(items):,} items, more than {MAX_MATCHES:,}")
    flag = _text(record, data, "truncated")
    if flag not in _FLAGS:
        raise RecordError(record, "truncated", f"is not 0 or 1: {_short(flag)}")
    return Matches(tuple(items), _FLAGS[flag])


def parse_deleted(data: Mapping[str, str]) -> bool:
    """The ``deleted`` flag of a ``delete_member`` reply: whether a member was removed."""
    flag = _text("delete_member", data, "deleted")
    if flag not in _FLAGS:
        raise RecordError("delete_member", "deleted", f"is not 0 or 1: {_short(flag)}")
    return _FLAGS[flag]
