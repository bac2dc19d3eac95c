"""A real TCP hosting-server simulator speaking TclPort profile 1, for tests, demos and benchmarks.

It serves a Dataset over threads, can change it live, and can misbehave on purpose (hostile modes).

One module on purpose: the data set, the protocol server and its hostile modes are one
fake hosting server, and tests and the demo read it as one.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import random
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final, NoReturn, Self

from ..tclport.client import (
    COMMANDS,
    DEFAULT_PASSWORD,
    DEFAULT_PORT,
    MAX_PAGE_SIZE,
    MAX_REQUEST_BYTES,
)
from ..tclport.codec import decode_list, encode_dict, encode_list
from ..tclport.errors import LOOKUP_COMMANDS
from ..tclport.records import (
    LOGGING_LABELS,
    LOGGING_LISTS,
    LOGGING_NO,
    MAX_MATCHES,
    ListRecord,
    RecordError,
    SiteRecord,
    UsageRecord,
    format_time,
    parse_date,
    parse_int,
    parse_time,
)

__all__ = [
    "HOSTILE_MODES",
    "UNDATED",
    "Dataset",
    "HostSim",
    "MemberEntry",
    "SendLogEntry",
    "main",
]

HOSTILE_MODES: Final = (
    "silent",
    "trickle",
    "oversized_header",
    "oversized_body",
    "truncated_body",
    "garbage_greeting",
    "not_tclport",
    "malformed_list",
    "no_final_lf",
    "bad_status",
    "reset",
    "bad_utf8",
)
HOSTILE_ON: Final = ("greeting", "command")
log = logging.getLogger("lm_billing_plugin.tclport.simulator")
# Distinct unknown command names counted in HostSim.requests; a peer sending endless new
# names must not grow the counter without bound.
_MAX_COUNTED_UNKNOWN: Final = 256
# How long a session that must close drains what its peer still sends (see close_gracefully).
_DRAIN_IDLE: Final = 1.0
_DRAIN_SECONDS: Final = 10.0
# What a port that is not TclPort typically says first.
GARBAGE_BANNER: Final = b"SSH-2.0-OpenSSH_9.6p1 Debian-4\r\n"
OVERSIZED_BYTES: Final = 100 * 1024 * 1024
_BASE_DAY: Final = date(2026, 1, 1)
# What goes on the wire as ``created`` (lists) or ``joined`` (find_member) of a record whose
# dataset gives no date: the profile's dates are YYYY-MM-DD and never empty (only ``site``,
# ``admin`` and an admin's ``name`` may be empty).  A day before every period tests bill, so
# billing counts such a list for whole periods, as it would an unknown date.
UNDATED: Final = date(2000, 1, 1)
_HOSTILE_NAMES: Final = (
    "a b",
    "  leading and trailing  ",
    "{brace",
    "brace}",
    "{}",
    "{a} {b}",
    '"quoted"',
    'say "hi"',
    "back\\slash",
    "\\",
    "ends with \\",
    "<script>alert(1)</script>",
    "Tom & Jerry",
    "Zürich Ünïcode",
    "日本語リスト",
    "emoji 🎉 list",
    "$dollar",
    "[bracket]",
    ";semi",
    "#hash",
    "tab\tname",
    "new\nline",
    "cr\rname",
    "{unbalanced",
    "x}y{z",
    "'single'",
)
# Members seeded on every generated server whatever its seed, so that Find Member finds the
# same person on several lists and servers; some are stored in other letter cases.
SHARED_MEMBERS: Final = ("pat.jones@example.org", "chris.smith@example.org", "sam.lee@example.net")
_ADMIN_NAMES: Final = (
    "Pat Jones", "Chris Smith", "Sam Lee", "Alex Müller", "Kim Smithers", "", "Jo Brown",
    "Zoë O'Brien {ops}", 'Dana "DJ" Jones',
)
_MEMBER_TYPES: Final = ("normal", "normal", "normal", "normal", "held", "unsub", "needs-confirm")


@dataclass(frozen=True, slots=True)
class MemberEntry:
    """One membership of a list: ``email`` as stored (any letter case), ListManager's type."""

    list: str
    email: str
    type: str = "normal"
    joined: date | None = None


@dataclass(frozen=True, slots=True)
class SendLogEntry:
    """One row of a server's sending log (``log_``): one mailing to ``recipients`` people.

    ``bytes`` is the size of one message; usage counts it once per recipient.
    """

    list: str
    site: str
    day: date
    recipients: int
    bytes: int


@dataclass
class Dataset:
    """Everything a simulated hosting server holds."""

    sites: list[SiteRecord] = field(default_factory=list)
    lists: list[ListRecord] = field(default_factory=list)
    log: list[SendLogEntry] = field(default_factory=list)
    logging_mode: str = LOGGING_LISTS
    logging_label: str | None = None
    product: str = "ListManager"
    version: str = "12.3"
    hostname: str = "lists.example.com"
    started: datetime | None = None
    #: Memberships (for find_member / delete_member) and list admins' names (find_admin).
    members: list[MemberEntry] = field(default_factory=list)
    admin_names: dict[str, str] = field(default_factory=dict)

    @classmethod
    def generate(
        cls,
        sites: int = 3,
        lists: int = 300,
        seed: int = 1,
        hostile_names: bool = False,
        *,
        days: int = 90,
    ) -> Dataset:
        """A reproducible dataset; ``hostile_names`` mixes in names that break naive quoting."""
        rng = random.Random(seed)
        site_records = [SiteRecord(f"site{i}", f"Site {i} Lists") for i in range(1, sites + 1)]
        if hostile_names and sites:
            site_records[-1] = SiteRecord("Site {Ünïcode} & <b>", 'Title "quoted" \\ {x')
        names: list[str] = []
        seen: set[str] = set()
        if hostile_names:
            for name in _HOSTILE_NAMES[:lists]:
                names.append(name)
                seen.add(name)
        i = 0
        while len(names) < lists:
            i += 1
            name = f"list-{i:05d}"
            if hostile_names and i % 7 == 0:
                name = f"{rng.choice(_HOSTILE_NAMES)} #{i}"
            if name not in seen:
                seen.add(name)
                names.append(name)
        list_records: list[ListRecord] = []
        log: list[SendLogEntry] = []
        for n, name in enumerate(names):
            site = "" if not site_records or n % 50 == 49 else rng.choice(site_records).name
            members = rng.randint(0, 5000)
            list_records.append(
                ListRecord(
                    name=name,
                    site=site,
                    descr=f"Description of {name}" if n % 5 else "",
                    # Every 11th list: UNDATED, without a draw, so the rest of a seed's data stays.
                    created=_BASE_DAY - timedelta(days=rng.randint(0, 3000)) if n % 11 else UNDATED,
                    members=members,
                    admin=f"owner{n}@example.com" if n % 13 else "",
                )
            )
            if rng.random() < 0.7:
                for _ in range(rng.randint(1, 4)):
                    log.append(
                        SendLogEntry(
                            list=name,
                            site=site,
                            day=_BASE_DAY + timedelta(days=rng.randint(0, days - 1)),
                            recipients=rng.randint(2, max(2, members)),
                            bytes=rng.randint(1_000, 200_000),
                        )
                    )
        people, admin_names = _seed_people(list_records, seed)
        return cls(
            sites=site_records,
            lists=list_records,
            log=log,
            started=datetime(2026, 1, 1, 6, 0, 0, tzinfo=UTC),
            members=people,
            admin_names=admin_names,
        )

    def copy(self) -> Dataset:
        return replace(self, sites=list(self.sites), lists=list(self.lists), log=list(self.log),
                       members=list(self.members), admin_names=dict(self.admin_names))

    # JSON: dates as YYYY-MM-DD, times as YYYY-MM-DDTHH:MM:SSZ, as on the wire.
    def to_dict(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "version": self.version,
            "hostname": self.hostname,
            "started": format_time(self.started) if self.started else "",
            "logging": self.logging_mode,
            "logging_label": self.logging_label,
            "sites": [asdict(s) for s in self.sites],
            "lists": [
                {**asdict(rec), "created": rec.created.isoformat() if rec.created else ""}
                for rec in self.lists
            ],
            "log": [{**asdict(e), "day": e.day.isoformat()} for e in self.log],
            "members": [
                {**asdict(m), "joined": m.joined.isoformat() if m.joined else ""}
                for m in self.members
            ],
            "admin_names": dict(self.admin_names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Dataset:
        try:
            started = str(data.get("started") or "")
            return cls(
                sites=[SiteRecord(str(s["name"]), str(s.get("title", ""))) for s in data["sites"]],
                lists=[
                    ListRecord(
                        name=str(rec["name"]),
                        site=str(rec.get("site", "")),
                        descr=str(rec.get("descr", "")),
                        created=parse_date("list", "created", rec["created"])
                        if rec.get("created")
                        else None,
                        members=int(rec.get("members", 0)),
                        admin=str(rec.get("admin", "")),
                    )
                    for rec in data["lists"]
                ],
                log=[
                    SendLogEntry(
                        list=str(e["list"]),
                        site=str(e.get("site", "")),
                        day=parse_date("log", "day", e["day"]),
                        recipients=int(e["recipients"]),
                        bytes=int(e["bytes"]),
                    )
                    for e in data.get("log", [])
                ],
                logging_mode=str(data.get("logging", LOGGING_LISTS)),
                logging_label=data.get("logging_label"),
                product=str(data.get("product", "ListManager")),
                version=str(data.get("version", "12.3")),
                hostname=str(data.get("hostname", "lists.example.com")),
                started=parse_time("server", "started", started) if started else None,
                members=[
                    MemberEntry(
                        list=str(m["list"]),
                        email=str(m["email"]),
                        type=str(m.get("type", "normal")),
                        joined=parse_date("member", "joined", m["joined"])
                        if m.get("joined")
                        else None,
                    )
                    for m in data.get("members", [])
                ],
                admin_names={str(k): str(v) for k, v in data.get("admin_names", {}).items()},
            )
        except (KeyError, TypeError, AttributeError, RecordError) as exc:
            raise ValueError(f"not a simulator dataset: {exc}") from exc

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=1)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Dataset:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def usage(self, from_day: date, to_day: date) -> list[UsageRecord]:
        """What ``usage FROM TO`` answers: per-list sums over the inclusive range."""
        totals: dict[str, list[Any]] = {}
        for entry in self.log:
            if from_day <= entry.day <= to_day:
                row = totals.setdefault(entry.list, [entry.site, 0, 0, 0])
                row[0] = entry.site
                row[1] += 1
                row[2] += entry.recipients
                row[3] += entry.bytes * entry.recipients
        return [
            UsageRecord(name, row[0], row[1], row[2], row[3])
            for name, row in sorted(totals.items(), key=lambda kv: _key(kv[0]))
        ]


def _seed_people(
    lists: Sequence[ListRecord], seed: int
) -> tuple[list[MemberEntry], dict[str, str]]:
    """Members and admin names for generated lists, from their own generator: the lists, sites
    and sending log of a seed stay exactly what they were before members existed."""
    rng = random.Random(f"people-{seed}")
    members: list[MemberEntry] = []
    names: dict[str, str] = {}
    shared_seen = 0
    for n, rec in enumerate(lists):
        if rec.admin:
            names[rec.name] = _ADMIN_NAMES[rng.randrange(len(_ADMIN_NAMES))]
        chosen: dict[str, str] = {}
        if n % 3 == 0:
            email = SHARED_MEMBERS[(n // 3) % len(SHARED_MEMBERS)]
            shared_seen += 1
            # Every other shared membership is stored in capitals: matching ignores case.
            chosen[email] = email.upper() if shared_seen % 2 == 0 else email
        for _ in range(rng.randint(0, 3)):
            email = f"member{rng.randint(1, 40)}@s{seed}.example.com"
            chosen.setdefault(email, email)
        for stored in chosen.values():
            members.append(
                MemberEntry(
                    list=rec.name,
                    email=stored,
                    type=rng.choice(_MEMBER_TYPES),
                    joined=_BASE_DAY - timedelta(days=rng.randint(0, 2000)),
                )
            )
    return members, names


def _key(name: str) -> bytes:
    # The profile sorts names by their UTF-8 bytes, not by Python's code-point order.
    return name.encode("utf-8", "surrogatepass")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class _Closed(Exception):
    """The session is over (peer gone, quit, stop, or a rule that closes)."""


class HostSim:
    """A threaded TclPort server over a :class:`Dataset`; safe to change while it runs.

    ``hostile`` names a misbehaviour from :data:`HOSTILE_MODES`; ``hostile_on`` says whether
    it hits the greeting or every command after auth (auth and quit stay well-behaved).
    """

    def __init__(
        self,
        dataset: Dataset | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        password: str = DEFAULT_PASSWORD,
        allowed_hosts: Iterable[str] = ("127.0.0.1", "::1"),
        latency: float = 0.0,
        allow_logging_set: bool = True,
        hostile: str | None = None,
        hostile_on: str = "greeting",
        trickle_interval: float = 0.05,
        commands: Mapping[str, str] | None = None,
        offer_lookups: bool = True,
        allow_delete_member: bool = True,
    ) -> None:
        self._lock = threading.RLock()
        #: False: find_admin, find_member and delete_member answer UNKNOWN_COMMAND (an older
        #: build); ``allow_delete_member`` False: delete_member answers NOT_PERMITTED.
        self.offer_lookups = offer_lookups
        self.allow_delete_member = allow_delete_member
        self._host = host
        self._requested_port = port
        self._password = password
        self._allowed = self._parse_allowed(allowed_hosts)
        self._latency = latency
        # Replies held back by the latency right now, and how many such waits began: a
        # client is blocked on its socket meanwhile (see pausing_reply).
        self._pausing = 0
        self._pauses = 0
        self.allow_logging_set = allow_logging_set
        self._hostile: str | None = None
        self._hostile_on = "greeting"
        self.set_hostile(hostile, on=hostile_on)
        self.trickle_interval = trickle_interval
        names = dict(COMMANDS)
        names.update(commands or {})
        self._wire = {wire: logical for logical, wire in names.items()}
        data = (dataset or Dataset.generate()).copy()
        self._sites: dict[str, SiteRecord] = {s.name: s for s in data.sites}
        self._lists: dict[str, ListRecord] = {rec.name: rec for rec in data.lists}
        self._order: list[str] | None = None
        self._log = list(data.log)
        self._members = list(data.members)
        self._admin_names = dict(data.admin_names)
        self._meta = replace(data, sites=[], lists=[], log=[], members=[], admin_names={})
        if self._meta.started is None:
            self._meta.started = datetime.now(UTC).replace(microsecond=0)
        #: Requests served per wire command name, and sessions accepted (for tests).
        self.requests: Counter[str] = Counter()
        self.sessions = 0
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._address: tuple[str, int] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        if self._listener is not None:
            raise RuntimeError("simulator already started")
        infos = socket.getaddrinfo(
            self._host, self._requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, socktype, proto, _canon, sockaddr = infos[0]
        listener = socket.socket(family, socktype, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(sockaddr)
            listener.listen(128)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        bound = listener.getsockname()
        self._address = (str(bound[0]), int(bound[1]))
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop.clear()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"hostsim-accept-{self.port}", daemon=True
        )
        self._acceptor.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every session, close every socket and join every thread."""
        if self._listener is None:
            return
        self._stop.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        with self._lock:
            conns = list(self._conns.items())
            for conn, _thread in conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for _conn, thread in conns:
            thread.join(timeout)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._listener = self._wake_r = self._wake_w = None
        self._acceptor = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("simulator not started")
        return self._address

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def active_sessions(self) -> int:
        with self._lock:
            return len(self._conns)

    @property
    def pausing_reply(self) -> int | None:
        """The number of the reply being held back by the latency now (None when none is):
        a client waits on its socket for it, so seeing the same number before and after a
        look at the client's side proves that look happened during network I/O."""
        with self._lock:
            return self._pauses if self._pausing else None

    def _accept_loop(self) -> None:
        listener, wake = self._listener, self._wake_r
        assert listener is not None and wake is not None
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([listener, wake], [], [])
            except (OSError, ValueError):
                return
            if wake in ready or self._stop.is_set():
                return
            try:
                conn, peer = listener.accept()
            except OSError:
                continue
            with self._lock:
                if self._stop.is_set():
                    conn.close()
                    return
                self.sessions += 1
                thread = threading.Thread(
                    target=self._session, args=(conn, peer), name="hostsim-session", daemon=True
                )
                self._conns[conn] = thread
            thread.start()

    def _session(self, conn: socket.socket, peer: tuple[Any, ...]) -> None:
        try:
            _Session(self, conn, str(peer[0])).run()
        except _Closed:
            pass
        except OSError:
            pass
        except Exception:
            # A bug here must end this session only, never kill the thread noisily or
            # leave the socket open; the log says what happened.
            log.exception("hostsim session with %s failed", peer[0])
        finally:
            # Leave the registry first, so stop() never shuts down a socket being closed.
            with self._lock:
                self._conns.pop(conn, None)
            conn.close()

    # -- live changes ---------------------------------------------------------------------

    @staticmethod
    def _parse_allowed(
        hosts: Iterable[str],
    ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(h, strict=False) for h in hosts]

    def allowed(self, ip: str) -> bool:
        addr = _ip(ip)
        with self._lock:
            return addr is not None and any(addr in net for net in self._allowed)

    def set_allowed_hosts(self, hosts: Iterable[str]) -> None:
        allowed = self._parse_allowed(hosts)
        with self._lock:
            self._allowed = allowed

    def set_password(self, password: str) -> None:
        with self._lock:
            self._password = password

    def set_hostile(self, mode: str | None, *, on: str | None = None) -> None:
        if mode is not None and mode not in HOSTILE_MODES:
            raise ValueError(f"unknown hostile mode {mode!r}; one of {', '.join(HOSTILE_MODES)}")
        if on is not None and on not in HOSTILE_ON:
            raise ValueError(f"hostile_on must be one of {HOSTILE_ON}")
        with self._lock:
            self._hostile = mode
            if on is not None:
                self._hostile_on = on

    def set_latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = seconds

    def set_logging(self, mode: str, label: str | None = None) -> None:
        """Set Enable Logging; an unknown ``mode`` needs its own ``label``."""
        with self._lock:
            self._meta.logging_mode = mode
            self._meta.logging_label = label

    def set_version(self, version: str) -> None:
        with self._lock:
            self._meta.version = version

    def add_site(self, name: str, title: str = "") -> None:
        with self._lock:
            if name in self._sites:
                raise KeyError(f"site {name!r} exists")
            self._sites[name] = SiteRecord(name, title)

    def remove_site(self, name: str) -> None:
        with self._lock:
            del self._sites[name]

    def add_list(
        self,
        name: str,
        *,
        site: str = "",
        descr: str = "",
        created: date | None = None,
        members: int = 0,
        admin: str = "",
    ) -> ListRecord:
        record = ListRecord(name, site, descr, created, members, admin)
        with self._lock:
            if name in self._lists:
                raise KeyError(f"list {name!r} exists")
            self._lists[name] = record
            self._order = None
        return record

    def remove_list(self, name: str) -> None:
        with self._lock:
            del self._lists[name]
            self._order = None

    def rename_list(self, old: str, new: str) -> None:
        with self._lock:
            if new in self._lists:
                raise KeyError(f"list {new!r} exists")
            self._lists[new] = replace(self._lists.pop(old), name=new)
            # The sending log follows the list, so its usage keeps counting under the new name.
            self._log = [replace(e, list=new) if e.list == old else e for e in self._log]
            self._order = None

    def set_site(self, name: str, site: str) -> None:
        """Move list ``name`` to ``site`` ("" = no site)."""
        with self._lock:
            self._lists[name] = replace(self._lists[name], site=site)
            self._order = None

    def set_members(self, name: str, members: int) -> None:
        with self._lock:
            self._lists[name] = replace(self._lists[name], members=members)

    def add_send(self, name: str, day: date, recipients: int, size: int) -> None:
        """Log one mailing of ``name`` (as ListManager does when it sends to a list)."""
        with self._lock:
            site = self._lists[name].site if name in self._lists else ""
            self._log.append(SendLogEntry(name, site, day, recipients, size))

    def add_member(
        self, name: str, email: str, *, type: str = "normal", joined: date | None = None
    ) -> None:
        """Add a membership of list ``name`` (for find_member and delete_member)."""
        with self._lock:
            self._members.append(MemberEntry(name, email, type, joined))

    def set_admin(self, name: str, email: str, admin_name: str = "") -> None:
        """Set list ``name``'s admin email (``lists`` shows it) and name (``find_admin``)."""
        with self._lock:
            self._lists[name] = replace(self._lists[name], admin=email)
            self._admin_names[name] = admin_name

    def members_of(self, email: str) -> list[MemberEntry]:
        """The memberships of ``email`` (any letter case) the server holds now."""
        wanted = email.lower()
        with self._lock:
            return [m for m in self._members if m.email.lower() == wanted]

    @property
    def dataset(self) -> Dataset:
        """A snapshot of what the server holds now."""
        with self._lock:
            snap = replace(
                self._meta,
                sites=list(self._sites.values()),
                lists=[self._lists[n] for n in self._sorted_names()],
                log=list(self._log),
                members=list(self._members),
                admin_names=dict(self._admin_names),
            )
        return snap

    def _sorted_names(self) -> list[str]:
        if self._order is None:
            self._order = sorted(self._lists, key=_key)
        return self._order

    # -- commands (called by sessions; return the OK body or raise _Err) -------------------

    def _logging_body(self) -> str:
        mode = self._meta.logging_mode
        label = self._meta.logging_label or LOGGING_LABELS.get(mode, mode)
        return encode_dict({"mode": mode, "label": label})

    def _lookup(self, logical: str, args: Sequence[str]) -> str:
        """find_admin, find_member and delete_member (spec 4b); called with the lock held."""
        if not self.offer_lookups:
            raise _Err("UNKNOWN_COMMAND", f"unknown command {logical}")
        if logical == "delete_member":
            _arity(args, 2)
            if not args[0] or not args[1]:
                raise _Err("BAD_ARGS", "LIST and EMAIL must not be empty")
            if not self.allow_delete_member:
                raise _Err("NOT_PERMITTED", "remote deletions of members are not permitted")
            wanted = args[1].lower()
            gone = [m for m in self._members if m.list == args[0] and m.email.lower() == wanted]
            if gone:
                self._members = [m for m in self._members if m not in gone]
                rec = self._lists.get(args[0])
                normal = sum(1 for m in gone if m.type == "normal")
                if rec is not None and normal:
                    # ``members`` counts active normal members: it drops with the deletion.
                    self._lists[args[0]] = replace(rec, members=max(0, rec.members - normal))
            return encode_dict({"deleted": "1" if gone else "0"})
        _arity(args, 1)
        if not args[0]:
            raise _Err("BAD_ARGS", f"{'PATTERN' if logical == 'find_admin' else 'EMAIL'} "
                       "must not be empty")
        items: list[str] = []
        if logical == "find_admin":
            # Empty alternatives ("a||b") would match every admin; they are ignored.
            parts = [p.lower() for p in args[0].split("|") if p]
            if not parts:
                raise _Err("BAD_ARGS", "PATTERN has no text to search for")
            for n in self._sorted_names():
                rec = self._lists[n]
                person = self._admin_names.get(n, "")
                email, who = rec.admin.lower(), person.lower()
                if rec.admin and any(p in email or p in who for p in parts):
                    items.append(encode_dict(
                        {"list": n, "site": rec.site, "admin": rec.admin, "name": person}))
        else:
            wanted = args[0].lower()
            found = {
                m.list: m for m in self._members
                if m.email.lower() == wanted and m.list in self._lists
            }
            for n in sorted(found, key=_key):
                m = found[n]
                items.append(encode_dict({
                    "list": n, "site": self._lists[n].site, "email": m.email, "type": m.type,
                    "joined": (m.joined or UNDATED).isoformat(),
                }))
        truncated = len(items) > MAX_MATCHES
        return encode_dict(
            {"items": encode_list(items[:MAX_MATCHES]), "truncated": "1" if truncated else "0"}
        )

    def handle(self, logical: str, args: Sequence[str]) -> str:
        with self._lock:
            if logical in LOOKUP_COMMANDS:
                return self._lookup(logical, args)
            if logical == "server_info":
                _arity(args, 0)
                started = self._meta.started
                return encode_dict(
                    {
                        "product": self._meta.product,
                        "version": self._meta.version,
                        "hostname": self._meta.hostname,
                        "started": format_time(started) if started else "",
                    }
                )
            if logical == "logging":
                _arity(args, 0)
                return self._logging_body()
            if logical == "logging_set":
                _arity(args, 1)
                if not self.allow_logging_set:
                    raise _Err(
                        "NOT_PERMITTED",
                        "remote changes to Enable Logging are not permitted on this server",
                    )
                if args[0] not in LOGGING_LABELS:
                    raise _Err("BAD_ARGS", f"unknown logging mode {args[0]}")
                self._meta.logging_mode = args[0]
                self._meta.logging_label = None
                return self._logging_body()
            if logical == "sites":
                _arity(args, 0)
                return encode_list(
                    encode_dict({"name": s.name, "title": s.title}) for s in self._sites.values()
                )
            if logical == "lists":
                _arity(args, 2)
                offset = _count(args[0], "OFFSET")
                limit = _count(args[1], "LIMIT")
                if not 1 <= limit <= MAX_PAGE_SIZE:
                    raise _Err("BAD_ARGS", f"LIMIT must be 1 to {MAX_PAGE_SIZE}")
                names = self._sorted_names()
                page = [self._lists[n] for n in names[offset : offset + limit]]
                items = encode_list(
                    encode_dict(
                        {
                            "name": r.name,
                            "site": r.site,
                            "descr": r.descr,
                            "created": (r.created or UNDATED).isoformat(),
                            "members": str(r.members),
                            "admin": r.admin,
                        }
                    )
                    for r in page
                )
                return encode_dict({"total": str(len(names)), "items": items})
            if logical == "usage":
                _arity(args, 2)
                from_day = _day(args[0], "FROM")
                to_day = _day(args[1], "TO")
                if from_day > to_day:
                    raise _Err("BAD_ARGS", "FROM is after TO")
                if self._meta.logging_mode == LOGGING_NO:
                    raise _Err("LOGGING_OFF", "Enable Logging is No on this server")
                rows = replace(self._meta, log=self._log).usage(from_day, to_day)
                return encode_list(
                    encode_dict(
                        {
                            "list": u.list,
                            "site": u.site,
                            "messages": str(u.messages),
                            "recipients": str(u.recipients),
                            "bytes": str(u.bytes),
                        }
                    )
                    for u in rows
                )
        raise _Err("UNKNOWN_COMMAND", f"unknown command {logical}")


class _Err(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def _arity(args: Sequence[str], n: int) -> None:
    if len(args) != n:
        raise _Err("BAD_ARGS", f"expected {n} argument(s), got {len(args)}")


def _count(text: str, what: str) -> int:
    try:
        return parse_int("request", what, text)
    except RecordError:
        raise _Err("BAD_ARGS", f"{what} must be a non-negative integer") from None


def _day(text: str, what: str) -> date:
    try:
        return parse_date("request", what, text)
    except RecordError:
        raise _Err("BAD_ARGS", f"{what} must be a YYYY-MM-DD date") from None


def _valid_text(text: str) -> str:
    """``text`` with lone surrogates (no UTF-8 form) replaced by U+FFFD, pairs joined as Tcl
    joins them; for ERR messages that echo request text such as ``\\uD800``."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _frame(status: str, body: bytes) -> bytes:
    return f"{status} {len(body)}\n".encode("ascii") + body + b"\n"


class _Session:
    """One client connection: greeting, auth, commands, and any hostile behaviour."""

    def __init__(self, sim: HostSim, conn: socket.socket, ip: str) -> None:
        self.sim = sim
        self.conn = conn
        self.ip = str(_ip(ip) or ip)
        self.buf = bytearray()
        self.authenticated = False

    # Sockets stay blocking: stop() wakes a blocked recv/send with shutdown(), and every
    # deliberate pause waits on the stop event, so no session outlives stop().

    def send(self, data: bytes) -> None:
        try:
            self.conn.sendall(data)
        except OSError:
            raise _Closed from None

    def pause(self, seconds: float) -> None:
        if seconds > 0 and self.sim._stop.wait(seconds):
            raise _Closed

    def linger(self) -> None:
        """Wait until the peer hangs up (or the simulator stops), reading and ignoring."""
        while True:
            try:
                if not self.conn.recv(65536):
                    raise _Closed
            except OSError:
                raise _Closed from None

    def close_gracefully(self) -> NoReturn:
        """Close after the last reply without a reset: a peer still sending must get it.

        Every close a rule asks for (HOST_DENIED, AUTH_FAILED, a too-long line, quit) ends here.
        Closing with unread input would send RST instead of FIN, and the peer could lose the
        reply (and reads "connection reset" instead of the end of the stream).  The drain ends
        when the peer hangs up, after _DRAIN_IDLE seconds of silence, or after _DRAIN_SECONDS
        whatever the peer keeps sending.
        """
        deadline = time.monotonic() + _DRAIN_SECONDS
        try:
            self.conn.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                self.conn.settimeout(min(left, _DRAIN_IDLE))
                if not self.conn.recv(65536):
                    break
        except OSError:
            pass
        raise _Closed

    def read_line(self) -> bytes | None:
        limit = MAX_REQUEST_BYTES + 1  # a CR before the LF does not count
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[: end + 1]
                if line.endswith(b"\r"):
                    line = line[:-1]
                return line if len(line) <= MAX_REQUEST_BYTES else None
            if len(self.buf) > limit:
                return None
            try:
                data = self.conn.recv(65536)
            except OSError:
                raise _Closed from None
            if not data:
                raise _Closed
            self.buf += data

    def reply(self, status: str, body: str, *, phase: str) -> None:
        with self.sim._lock:
            hostile = self.sim._hostile if self.sim._hostile_on == phase else None
            latency = self.sim._latency
            self.sim._pausing += 1
            self.sim._pauses += 1
        try:
            self.pause(latency)
        finally:
            with self.sim._lock:
                self.sim._pausing -= 1
        try:
            raw = body.encode("utf-8")
        except UnicodeEncodeError:
            # Text is UTF-8 on the wire (spec 1): never send CESU-8 for a lone surrogate.
            if status == "OK":
                status, body = "ERR", encode_list(
                    ["INTERNAL", "the reply holds text that has no UTF-8 form (a lone surrogate)"]
                )
            raw = _valid_text(body).encode("utf-8")
        if hostile is None:
            self.send(_frame(status, raw))
        else:
            self.misbehave(hostile, status, raw, phase)

    def error(self, code: str, message: str, *, phase: str = "command") -> None:
        self.reply("ERR", encode_list([code, message]), phase=phase)

    def misbehave(self, mode: str, status: str, body: bytes, phase: str) -> None:
        frame = _frame(status, body)
        if mode == "silent":
            self.linger()
        elif mode == "trickle":
            for i in range(len(frame)):
                self.send(frame[i : i + 1])
                self.pause(self.sim.trickle_interval)
            return
        elif mode == "oversized_header":
            self.send(b"OK " + b"0" * 200 + b"7\n")
        elif mode == "oversized_body":
            self.send(f"OK {OVERSIZED_BYTES}\n".encode("ascii"))
            chunk = b"x" * 65536
            for _ in range(OVERSIZED_BYTES // len(chunk)):
                self.send(chunk)
        elif mode == "truncated_body":
            self.send(f"{status} {len(body) + 1000}\n".encode("ascii") + body)
            try:
                self.conn.shutdown(socket.SHUT_WR)
            except OSError:
                raise _Closed from None
        elif mode == "garbage_greeting":
            self.send(GARBAGE_BANNER)
        elif mode == "not_tclport":
            other = encode_dict({"protocol": "2", "product": "MailServer"})
            self.send(_frame("OK", other.encode("utf-8")))
            if phase == "command":
                return
        elif mode == "malformed_list":
            self.send(_frame("OK", b"product {ListManager"))
        elif mode == "no_final_lf":
            self.send(frame[:-1] + b"X")
        elif mode == "bad_status":
            self.send(_frame("MAYBE", body))
        elif mode == "reset":
            self.send(frame[: max(1, len(frame) // 2)])
            # SO_LINGER 0 makes close() send RST instead of FIN.
            self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raise _Closed
        elif mode == "bad_utf8":
            self.send(_frame("OK", b"product {List\xff\xfeManager}"))
        self.linger()

    def run(self) -> None:
        sim = self.sim
        if not sim.allowed(self.ip):
            self.error("HOST_DENIED", f"{self.ip} is not in TCLPORT Hosts", phase="greeting")
            self.close_gracefully()
        self.reply("OK", encode_dict({"protocol": "1", "product": "ListManager"}), phase="greeting")
        while True:
            line = self.read_line()
            if line is None:
                self.error("BAD_REQUEST", f"request line longer than {MAX_REQUEST_BYTES} bytes")
                self.close_gracefully()
            try:
                words = decode_list(line.decode("utf-8"))
            except ValueError:
                self.error("BAD_REQUEST", "request is not a Tcl list of UTF-8 text")
                continue
            if not words:
                self.error("BAD_REQUEST", "empty request")
                continue
            wire, args = words[0], words[1:]
            logical = sim._wire.get(wire)
            with sim._lock:
                if logical is not None or len(sim.requests) < _MAX_COUNTED_UNKNOWN:
                    sim.requests[wire] += 1
            if logical == "auth":
                with sim._lock:
                    password = sim._password
                if len(args) == 1 and args[0] == password:
                    self.authenticated = True
                    self.reply("OK", "", phase="auth")
                    continue
                self.error("AUTH_FAILED", "wrong TclPort password", phase="auth")
                self.close_gracefully()
            if not self.authenticated:
                # Spec 3.2: any command but auth before a successful auth, quit included.
                self.error("AUTH_REQUIRED", "send auth first")
                continue
            if logical == "quit":
                self.reply("OK", "", phase="quit")
                self.close_gracefully()
            if logical is None:
                self.error("UNKNOWN_COMMAND", f"unknown command {wire}")
                continue
            try:
                body = sim.handle(logical, args)
            except _Err as err:
                self.error(err.code, err.message)
                continue
            except Exception as exc:
                # A bug in a handler (or a test's override) becomes INTERNAL, as on a server.
                self.error("INTERNAL", f"{type(exc).__name__}: {exc}")
                continue
            self.reply("OK", body, phase="command")


# -- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lm-billing-hostsim",
        description="Serve a simulated ListManager hosting server over TclPort (profile 1).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port (0 picks a free one; default 2021)"
    )
    parser.add_argument(
        "--password",
        default=os.environ.get("LM_BILLING_HOSTSIM_PASSWORD", DEFAULT_PASSWORD),
        help="TclPort password (default: $LM_BILLING_HOSTSIM_PASSWORD or TCLPORTPasswd)",
    )
    parser.add_argument(
        "--allow", action="append", metavar="IP",
        help="caller address or network allowed (TCLPORT Hosts); repeatable; "
        "default 127.0.0.1 and ::1",
    )
    parser.add_argument("--data", type=Path, help="dataset JSON file (see Dataset.to_json)")
    parser.add_argument("--generate-lists", type=int, default=300, metavar="N")
    parser.add_argument("--generate-sites", type=int, default=3, metavar="N")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hostile-names", action="store_true", help="generate tricky names")
    parser.add_argument("--logging", choices=(LOGGING_NO, LOGGING_LISTS), help="Enable Logging")
    parser.add_argument("--version-string", help="ListManager version to report, e.g. 10.2b")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--no-logging-set", action="store_true", help="answer NOT_PERMITTED")
    parser.add_argument(
        "--no-lookups", action="store_true",
        help="answer UNKNOWN_COMMAND to find_admin, find_member and delete_member",
    )
    parser.add_argument(
        "--no-delete-member", action="store_true", help="answer NOT_PERMITTED to delete_member"
    )
    parser.add_argument("--hostile", choices=HOSTILE_MODES)
    parser.add_argument("--hostile-on", choices=HOSTILE_ON, default="greeting")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.data is not None:
        dataset = Dataset.from_json(args.data)
    else:
        dataset = Dataset.generate(
            sites=args.generate_sites, lists=args.generate_lists, seed=args.seed,
            hostile_names=args.hostile_names,
        )
    if args.logging:
        dataset.logging_mode = args.logging
    if args.version_string:
        dataset.version = args.version_string
    sim = HostSim(
        dataset,
        host=args.host,
        port=args.port,
        password=args.password,
        allowed_hosts=args.allow or ("127.0.0.1", "::1"),
        latency=args.latency,
        allow_logging_set=not args.no_logging_set,
        offer_lookups=not args.no_lookups,
        allow_delete_member=not args.no_delete_member,
        hostile=args.hostile,
        hostile_on=args.hostile_on,
    )
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        sim.start()
        host, port = sim.address
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        print(
            f"lm-billing-hostsim listening on {where} "
            f"({len(dataset.lists)} lists, {len(dataset.sites)} sites, "
            f"logging {dataset.logging_mode})",
            flush=True,
        )
        while not done.wait(0.5):
            pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("lm-billing-hostsim stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
