"""Cross-server look-ups (spec 4b): find a list admin or a member on every active hosting server
at once; pages and CLI call these (deleting what Find Member found: engine.deletions).

Call inside an app context. The network part runs in worker threads that never touch the
database (as the runner's do); results are plain dataclasses, ready for a page or for JSON.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..i18n import M_, N_
from ..models import MailingList, Server
from ..secrets import SecretsError
from ..settings import Settings
from ..state import get_state
from ..tclport.errors import TclPortError
from ..tclport.records import AdminMatch, Matches, MemberMatch
from .inventory import _DeadlineClient
from .servers import tclport_password

__all__ = [
    "MAX_EMAIL",
    "MAX_PATTERN",
    "AdminResult",
    "AdminSearch",
    "LookupInputError",
    "MemberResult",
    "MemberSearch",
    "Membership",
    "ServerFailure",
    "check_email",
    "check_pattern",
    "find_admin",
    "find_member",
]

log = logging.getLogger("lm_billing_plugin.lookups")

MAX_PATTERN: Final = 200
# RFC 5321's limits: 64 for the local part, 254 for a whole address in a mail path.
MAX_EMAIL: Final = 254
_MAX_LOCAL: Final = 64
# How long past its deadline a worker may run before it is given up (as the runner does).
_GRACE: Final = 5.0
# Names per IN (...) when linking results to billing's lists; keeps statements small.
_CHUNK: Final = 500


class LookupInputError(ValueError):
    """What was entered cannot be searched for or deleted; ``str()`` says what to change."""


# --- input -----------------------------------------------------------------------------------


def _bad_characters(text: str) -> bool:
    # Control characters (newlines, tabs, NUL) have no place in an address or a name part,
    # and lone surrogates have no UTF-8 form, so the request could not even be sent.
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)


def check_pattern(pattern: str) -> str:
    """``pattern`` if Find Admin can search for it, else :class:`LookupInputError`.

    One or more parts separated by ``|``; a blank part is refused because every admin
    contains the empty text (a search would list every list on every server).
    """
    if not pattern or not pattern.strip():
        raise LookupInputError(N_("enter part of an admin's email address or name to search for"))
    if len(pattern) > MAX_PATTERN:
        raise LookupInputError(
            M_("the search is %(length)s characters long; shorten it to at most %(limit)s "
               "(search for fewer or shorter parts)")
            % {"length": f"{len(pattern):,}", "limit": MAX_PATTERN}
        )
    if _bad_characters(pattern):
        raise LookupInputError(
            N_("the search holds a control character (such as a line break or tab); remove it")
        )
    if any(not part.strip() for part in pattern.split("|")):
        raise LookupInputError(
            N_("the search has an empty part (two '|' in a row, or '|' at the start or end), "
               "which would match every admin; remove the extra '|'")
        )
    return pattern


def check_email(email: str) -> str:
    """``email`` without surrounding white space if it looks like an address, else
    :class:`LookupInputError`. A plain shape check (local@domain.tld), not RFC 5322."""
    value = email.strip()
    if not value:
        raise LookupInputError(N_("enter the member's email address"))
    if len(value) > MAX_EMAIL:
        raise LookupInputError(
            M_("the email address is %(length)s characters long; an address has at most "
               "%(limit)s") % {"length": f"{len(value):,}", "limit": MAX_EMAIL}
        )
    if _bad_characters(value):
        raise LookupInputError(
            N_("the email address holds a control character (such as a line break); remove it")
        )
    local, at, domain = value.rpartition("@")
    labels = domain.split(".")
    if (
        not at
        or not local
        or "@" in local
        or len(local) > _MAX_LOCAL
        or any(ch.isspace() for ch in value)
        or len(labels) < 2
        or not all(labels)
    ):
        raise LookupInputError(
            M_("%(value)s is not an email address; enter it as name@example.com")
            % {"value": repr(value[:80])}
        )
    return value


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerFailure:
    """A server that could not be searched (or asked), and what to do about it."""

    server_id: int
    server: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.server}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"server": self.server, "server_id": self.server_id, "code": self.code,
                "message": self.message}


@dataclass(frozen=True, slots=True)
class Membership:
    """One membership to delete: ``email`` on list ``list`` of server ``server_id``."""

    server_id: int
    list: str
    email: str


@dataclass(frozen=True, slots=True)
class AdminResult:
    """A list whose admin matched; ``list_id`` is billing's id of the list, if billing has it."""

    server_id: int
    server: str
    site: str
    list: str
    admin: str
    name: str
    list_id: int | None

    def to_json(self) -> dict[str, Any]:
        return {"server": self.server, "server_id": self.server_id, "site": self.site,
                "list": self.list, "list_id": self.list_id, "admin": self.admin,
                "name": self.name}


@dataclass(frozen=True, slots=True)
class MemberResult:
    """A membership found; ``type`` as the server says (normal, held, unsub, ...)."""

    server_id: int
    server: str
    site: str
    list: str
    email: str
    type: str
    joined: date | None
    list_id: int | None

    @property
    def membership(self) -> Membership:
        # The address as the server stores it: that is the member the server will remove.
        return Membership(self.server_id, self.list, self.email)

    def to_json(self) -> dict[str, Any]:
        return {"server": self.server, "server_id": self.server_id, "site": self.site,
                "list": self.list, "list_id": self.list_id, "email": self.email,
                "type": self.type, "joined": self.joined.isoformat() if self.joined else None}


_Result = TypeVar("_Result", AdminResult, MemberResult)


@dataclass
class _Search(Generic[_Result]):
    query: str
    results: list[_Result] = field(default_factory=list)
    failures: list[ServerFailure] = field(default_factory=list)
    #: Names of the servers that answered, and of those whose matches were cut at 5,000.
    searched: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 = every active server searched; 1 = some could not be; 2 = none could be."""
        if self.failures and not self.searched:
            return 2
        return 1 if self.failures else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "results": [r.to_json() for r in self.results],
            "servers_searched": list(self.searched),
            "truncated": list(self.truncated),
            "failures": [f.to_json() for f in self.failures],
        }


class AdminSearch(_Search[AdminResult]):
    """What Find Admin found on every active server."""


class MemberSearch(_Search[MemberResult]):
    """What Find Member found on every active server."""

    def memberships(self) -> list[Membership]:
        return [r.membership for r in self.results]


# --- servers and the parallel part ---------------------------------------------------------


@dataclass(frozen=True)
class _Server:
    """Plain values of one server for a worker thread (no ORM object crosses threads)."""

    id: int
    name: str
    host: str
    port: int
    password: str | None = field(repr=False)
    password_error: str | None


def _servers(session: Session, where: Any) -> list[_Server]:
    rows = session.execute(
        sa.select(Server.id, Server.name, Server.host, Server.port, Server.password_encrypted,
                  Server.active)
        .where(where).order_by(Server.name)
    ).all()
    out = []
    for row in rows:
        password: str | None = None
        error: str | None = None
        try:
            password = tclport_password(row.password_encrypted)
        except SecretsError as exc:
            error = str(exc)
        out.append(_Server(row.id, row.name, row.host, row.port, password, error))
    return out


_T = TypeVar("_T")


_Work = Callable[[_Server, _DeadlineClient], _T]


def _on_server(settings: Settings, server: _Server, work: _Work[_T]) -> _T:
    """Worker thread: one session with ``server``, every step within its deadline (counted
    from when the worker starts, so a server queued behind others gets all of it)."""
    assert server.password is not None
    deadline = time.monotonic() + settings.server_deadline
    client = _DeadlineClient(server.host, server.port, server.password, name=server.name,
                             settings=settings.client, deadline=deadline)
    try:
        client.connect()
        return work(server, client)
    finally:
        client.close()


def _failure(server: _Server, exc: TclPortError) -> ServerFailure:
    return ServerFailure(server.id, server.name, exc.code, exc.message)


def _in_parallel(settings: Settings, servers: Sequence[_Server], work: _Work[_T],
                 on_done: Callable[[_Server, _T | ServerFailure], None] | None = None,
                 ) -> dict[int, _T | ServerFailure]:
    """``work`` on every server at once (LM_BILLING_MAX_PARALLEL), each within
    LM_BILLING_SERVER_DEADLINE; a server's failure is its :class:`ServerFailure`.

    ``on_done(server, answer)`` runs in the calling thread as soon as each server's answer is
    in (the delete runs store each server's outcome then, so their progress moves while the
    slower servers are still working); the searches wait for all and pass none.
    """
    out: dict[int, _T | ServerFailure] = {}

    def settle(server: _Server, answer: _T | ServerFailure) -> None:
        out[server.id] = answer
        if on_done is not None:
            on_done(server, answer)

    todo = []
    for server in servers:
        if server.password_error is not None:
            settle(server, ServerFailure(server.id, server.name, "PASSWORD",
                                         server.password_error))
        else:
            todo.append(server)
    if not todo:
        return out
    workers = max(1, min(settings.max_parallel, len(todo)))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lm-billing-lookup")
    try:
        # Queued servers start later, so the wait allows for the rounds the pool needs.
        rounds = -(-len(todo) // workers)
        until = time.monotonic() + rounds * settings.server_deadline + _GRACE
        futures: dict[Future[_T], _Server] = {
            pool.submit(_on_server, settings, server, work): server for server in todo
        }
        pending = set(futures)
        while pending:
            left = until - time.monotonic()
            if left <= 0:
                break
            done, pending = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: futures[f].name):
                server = futures[fut]
                try:
                    settle(server, fut.result())
                except TclPortError as exc:
                    settle(server, _failure(server, exc))
                except Exception as exc:
                    log.exception("server %s: look-up failed unexpectedly", server.name)
                    settle(server, ServerFailure(
                        server.id, server.name, "INTERNAL",
                        f"the look-up failed unexpectedly ({type(exc).__name__}: {exc}); see "
                        "the billing server's log"))
        for fut in sorted(pending, key=lambda f: futures[f].name):
            server = futures[fut]
            settle(server, ServerFailure(
                server.id, server.name, "TIMEOUT",
                "the server did not answer within its deadline (LM_BILLING_SERVER_DEADLINE)"
                "; check its load and network, or raise the deadline"))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return out


def _list_ids(session: Session, wanted: dict[int, set[str]]) -> dict[tuple[int, str], int]:
    """Billing's id of each (server id, list name) billing knows; a live list wins over a
    removed one of the same name. Names are compared exactly, as everywhere in billing."""
    found: dict[tuple[int, str], tuple[bool, int]] = {}
    for server_id, names in wanted.items():
        ordered = sorted(names)
        for start in range(0, len(ordered), _CHUNK):
            chunk = ordered[start : start + _CHUNK]
            rows = session.execute(
                sa.select(MailingList.id, MailingList.name, MailingList.status)
                .where(MailingList.server_id == server_id, MailingList.name.in_(chunk))
            ).all()
            for row in rows:
                if row.name not in names:
                    continue
                key = (server_id, row.name)
                rank = (row.status != "removed", row.id)
                if key not in found or rank > found[key]:
                    found[key] = rank
    return {key: rank[1] for key, rank in found.items()}


# --- searches --------------------------------------------------------------------------------


def _search(search: _Search[_Result], call: _Work[Matches[Any]],
            build: Callable[[_Server, Any, int | None], _Result]) -> None:
    state = get_state()
    session = state.session
    servers = _servers(session, Server.active.is_(True))
    session.commit()  # no transaction stays open during the network work
    answers = _in_parallel(state.settings, servers, call)
    wanted: dict[int, set[str]] = {}
    for server in servers:
        answer = answers[server.id]
        if isinstance(answer, Matches):
            wanted[server.id] = {m.list for m in answer.items}
    ids = _list_ids(session, wanted)
    session.commit()
    for server in servers:
        answer = answers[server.id]
        if isinstance(answer, ServerFailure):
            search.failures.append(answer)
            continue
        search.searched.append(server.name)
        if answer.truncated:
            search.truncated.append(server.name)
        search.results.extend(
            build(server, m, ids.get((server.id, m.list))) for m in answer.items
        )


def find_admin(pattern: str) -> AdminSearch:
    """Lists on every active server whose admin's email or name contains any ``|``-separated
    part of ``pattern`` (case-insensitive). Raises :class:`LookupInputError` on bad input."""
    pattern = check_pattern(pattern)
    search = AdminSearch(pattern)

    def build(server: _Server, m: AdminMatch, list_id: int | None) -> AdminResult:
        return AdminResult(server.id, server.name, m.site, m.list, m.admin, m.name, list_id)

    _search(search, lambda _server, client: client.find_admin(pattern), build)
    return search


def find_member(email: str) -> MemberSearch:
    """Every list on every active server that has ``email`` as a member (any letter case).
    Raises :class:`LookupInputError` on bad input."""
    email = check_email(email)
    search = MemberSearch(email)

    def build(server: _Server, m: MemberMatch, list_id: int | None) -> MemberResult:
        return MemberResult(server.id, server.name, m.site, m.list, m.email, m.type, m.joined,
                            list_id)

    _search(search, lambda _server, client: client.find_member(email), build)
    return search
