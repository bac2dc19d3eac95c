"""Cross-server look-ups (spec 4b): find a list admin or a member on every active hosting server
at once, and delete chosen memberships with an audit entry each; pages and CLI call these.

Call inside an app context. The network part runs in worker threads that never touch the
database (as the runner's do); results are plain dataclasses, ready for a page or for JSON.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import audit
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
    "DeleteResult",
    "Deletion",
    "LookupInputError",
    "MemberResult",
    "MemberSearch",
    "Membership",
    "ServerFailure",
    "check_email",
    "check_pattern",
    "delete_memberships",
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
        raise LookupInputError("enter part of an admin's email address or name to search for")
    if len(pattern) > MAX_PATTERN:
        raise LookupInputError(
            f"the search is {len(pattern):,} characters long; shorten it to at most "
            f"{MAX_PATTERN} (search for fewer or shorter parts)"
        )
    if _bad_characters(pattern):
        raise LookupInputError(
            "the search holds a control character (such as a line break or tab); remove it"
        )
    if any(not part.strip() for part in pattern.split("|")):
        raise LookupInputError(
            "the search has an empty part (two '|' in a row, or '|' at the start or end), "
            "which would match every admin; remove the extra '|'"
        )
    return pattern


def check_email(email: str) -> str:
    """``email`` without surrounding white space if it looks like an address, else
    :class:`LookupInputError`. A plain shape check (local@domain.tld), not RFC 5322."""
    value = email.strip()
    if not value:
        raise LookupInputError("enter the member's email address")
    if len(value) > MAX_EMAIL:
        raise LookupInputError(
            f"the email address is {len(value):,} characters long; an address has at most "
            f"{MAX_EMAIL}"
        )
    if _bad_characters(value):
        raise LookupInputError(
            "the email address holds a control character (such as a line break); remove it"
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
            f"{value[:80]!r} is not an email address; enter it as name@example.com"
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


@dataclass(frozen=True, slots=True)
class Deletion:
    """The outcome of deleting one membership: ``deleted``, ``not_found`` (the server had no
    such member any more) or ``failed`` (``code`` and ``message`` say why and what to do)."""

    server_id: int
    server: str
    list: str
    email: str
    list_id: int | None
    outcome: str
    code: str | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"server": self.server, "server_id": self.server_id, "list": self.list,
                "list_id": self.list_id, "email": self.email, "outcome": self.outcome,
                "code": self.code, "message": self.message}


@dataclass
class DeleteResult:
    """One :class:`Deletion` per membership asked for, in the order asked."""

    deletions: list[Deletion]

    def count(self, outcome: str) -> int:
        return sum(1 for d in self.deletions if d.outcome == outcome)

    @property
    def exit_code(self) -> int:
        """0 = every membership deleted (or already gone); 1 = some failed; 2 = all failed."""
        failed = self.count("failed")
        if failed and failed == len(self.deletions):
            return 2
        return 1 if failed else 0

    def to_json(self) -> dict[str, Any]:
        return {"deletions": [d.to_json() for d in self.deletions]}


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


def _in_parallel(settings: Settings, servers: Sequence[_Server],
                 work: _Work[_T]) -> dict[int, _T | ServerFailure]:
    """``work`` on every server at once (LM_BILLING_MAX_PARALLEL), each within
    LM_BILLING_SERVER_DEADLINE; a server's failure is its :class:`ServerFailure`."""
    out: dict[int, _T | ServerFailure] = {}
    todo = []
    for server in servers:
        if server.password_error is not None:
            out[server.id] = ServerFailure(server.id, server.name, "PASSWORD",
                                           server.password_error)
        else:
            todo.append(server)
    if not todo:
        return out
    workers = max(1, min(settings.max_parallel, len(todo)))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lm-billing-lookup")
    try:
        # Queued servers start later, so the wait allows for the rounds the pool needs.
        rounds = -(-len(todo) // workers)
        futures: dict[Future[_T], _Server] = {
            pool.submit(_on_server, settings, server, work): server for server in todo
        }
        done, _ = wait(list(futures), timeout=rounds * settings.server_deadline + _GRACE)
        for fut, server in futures.items():
            if fut not in done:
                out[server.id] = ServerFailure(
                    server.id, server.name, "TIMEOUT",
                    "the server did not answer within its deadline (LM_BILLING_SERVER_DEADLINE)"
                    "; check its load and network, or raise the deadline")
                continue
            try:
                out[server.id] = fut.result()
            except TclPortError as exc:
                out[server.id] = _failure(server, exc)
            except Exception as exc:
                log.exception("server %s: look-up failed unexpectedly", server.name)
                out[server.id] = ServerFailure(
                    server.id, server.name, "INTERNAL",
                    f"the look-up failed unexpectedly ({type(exc).__name__}: {exc}); see the "
                    "billing server's log")
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


# --- deletions -------------------------------------------------------------------------------


def _selection(selection: Iterable[Membership]) -> list[Membership]:
    out: list[Membership] = []
    seen: set[tuple[int, str, str]] = set()
    for item in selection:
        if not item.list:
            raise LookupInputError("a membership to delete names no list")
        email = check_email(item.email)
        key = (item.server_id, item.list, email.lower())
        if key not in seen:  # one deletion per membership, however often it was chosen
            seen.add(key)
            out.append(Membership(item.server_id, item.list, email))
    if not out:
        raise LookupInputError("choose at least one membership to delete")
    return out


def _delete_all(
    per_server: dict[int, list[Membership]],
) -> _Work[list[bool | TclPortError]]:
    def work(server: _Server, client: _DeadlineClient) -> list[bool | TclPortError]:
        out: list[bool | TclPortError] = []
        for item in per_server[server.id]:
            if not client.connected:
                # An earlier error ended the session: the rest were not asked for.
                assert isinstance(out[-1], TclPortError)
                out.append(out[-1])
                continue
            try:
                out.append(client.delete_member(item.list, item.email))
            except TclPortError as exc:
                out.append(exc)
        return out

    return work


def delete_memberships(selection: Iterable[Membership], *, actor: str) -> DeleteResult:
    """Delete each chosen membership with its own ``delete_member`` call, one session per
    server, servers in parallel; every attempt gets an audit entry naming ``actor``.

    Billing's member counts change with the next sync (it reads the servers' counts).
    Raises :class:`LookupInputError` for an empty selection, a bad address, or a server that
    is unknown or deactivated.
    """
    items = _selection(selection)
    state = get_state()
    session = state.session
    wanted_ids = sorted({i.server_id for i in items})
    rows = session.execute(
        sa.select(Server.id, Server.name, Server.active).where(Server.id.in_(wanted_ids))
    ).all()
    known = {r.id: r for r in rows}
    missing = [sid for sid in wanted_ids if sid not in known]
    if missing:
        session.rollback()
        raise LookupInputError(
            f"no such server id(s): {missing}; search again (the server may have been deleted)"
        )
    inactive = sorted(known[sid].name for sid in wanted_ids if not known[sid].active)
    if inactive:
        session.rollback()
        raise LookupInputError(
            f"server(s) {', '.join(repr(n) for n in inactive)} are deactivated; activate them "
            "before deleting members there"
        )
    servers = _servers(session, Server.id.in_(wanted_ids))
    session.commit()
    per_server: dict[int, list[Membership]] = {}
    for item in items:
        per_server.setdefault(item.server_id, []).append(item)
    by_id = {s.id: s for s in servers}
    answers = _in_parallel(state.settings, servers, _delete_all(per_server))
    ids = _list_ids(session, {sid: {i.list for i in group} for sid, group in per_server.items()})
    deletions: dict[Membership, Deletion] = {}
    for sid, group in per_server.items():
        server = by_id[sid]
        answer = answers[sid]
        for n, item in enumerate(group):
            list_id = ids.get((sid, item.list))
            if isinstance(answer, ServerFailure):
                deletion = Deletion(sid, server.name, item.list, item.email, list_id, "failed",
                                    answer.code, answer.message)
            else:
                got = answer[n]
                if isinstance(got, TclPortError):
                    deletion = Deletion(sid, server.name, item.list, item.email, list_id,
                                        "failed", got.code, got.message)
                else:
                    deletion = Deletion(sid, server.name, item.list, item.email, list_id,
                                        "deleted" if got else "not_found")
            deletions[item] = deletion
            audit.record(
                session, actor=actor, action="delete_member", object_type="list",
                object_id=list_id, server_id=sid,
                detail={"server": server.name, "list": item.list, "email": item.email,
                        "outcome": deletion.outcome, "code": deletion.code},
            )
    session.commit()
    return DeleteResult([deletions[i] for i in items])

