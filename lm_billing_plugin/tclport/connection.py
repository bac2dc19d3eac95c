"""TclPort connection: address checks, connect (resolve, greeting, auth), framing, limits,
deadlines and typed errors for one hosting server; client.py adds the typed commands.

One connection is not thread-safe; use one per thread.

One module on purpose: the address check, the greeting, the password and the reply reader
are one connection's life, and the SSRF and redaction guarantees are reviewed in one place.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, Final, NoReturn, Self

from .addresses import AddressPolicy, HostRefused, Network, check_address, check_host
from .codec import decode_dict, decode_list, encode_list, encode_request
from .errors import (
    ADDRESS_REFUSED,
    BAD_TEXT,
    CLOSED,
    DNS,
    MALFORMED,
    N_,
    NOT_TCLPORT,
    OVERSIZED,
    REFUSED,
    REQUEST_TOO_LONG,
    TIMEOUT,
    UNREACHABLE,
    TclPortError,
    guidance,
    host_port,
)

__all__ = [
    "COMMANDS",
    "DEFAULT_PASSWORD",
    "DEFAULT_PORT",
    "MAX_HEADER_BYTES",
    "MAX_PAGE_SIZE",
    "MAX_REQUEST_BYTES",
    "ClientSettings",
    "StepCallback",
    "TclPortConnection",
    "size_text",
]

# The one place that names the wire commands. A deployment whose server build spells them
# differently passes its own mapping as ``TclPortClient(commands=...)``; keys are logical names.
COMMANDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "auth": "auth",
        "server_info": "server_info",
        "logging": "logging",
        "logging_set": "logging_set",
        "sites": "sites",
        "lists": "lists",
        "usage": "usage",
        # Optional cross-server look-ups (spec 4b); a server without them says UNKNOWN_COMMAND.
        "find_admin": "find_admin",
        "find_member": "find_member",
        "delete_member": "delete_member",
        "quit": "quit",
    }
)

DEFAULT_PORT: Final = 2021
DEFAULT_PASSWORD: Final = "TCLPORTPasswd"  # noqa: S105 - ListManager's documented default
PROTOCOL: Final = "1"
MAX_HEADER_BYTES: Final = 64
MAX_REQUEST_BYTES: Final = 65_536
MAX_PAGE_SIZE: Final = 5000
# Bodies are read in bounded chunks so one recv never asks for more than this.
_CHUNK: Final = 256 * 1024
# How long close() waits for the server to acknowledge quit; closing must stay quick.
_QUIT_WAIT: Final = 1.0
# A run of this many bytes of the password in a peer's text withholds that text (shorter
# runs say too little to matter; longer would let an excerpt of 4-7 characters through).
_WINDOW: Final = 4

# LENGTH is canonical decimal: no sign, no space, no leading zero.  Tcl 8.6 reads "010" as
# octal, so a Tcl peer would frame "OK 010" as 8 bytes where a naive reader takes 10.
_LENGTH_RE = re.compile(rb"0|[1-9][0-9]*")

log = logging.getLogger("lm_billing_plugin.tclport")

StepCallback = Callable[[str, float], None]




@dataclass(frozen=True)
class ClientSettings:
    """Timeouts (seconds) and limits; the Flask layer fills it from ``LM_BILLING_*``."""

    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    operation_timeout: float = 30.0
    max_reply_bytes: int = 64 * 1024 * 1024
    # Most reply bytes one client object (one read of a server: a validate, a sync, a check)
    # takes in all (LM_BILLING_MAX_READ_BYTES; 0 = no limit): with max_lists it bounds what
    # one read holds whatever a peer sends — pages of just under max_reply_bytes included.
    max_read_bytes: int = 128 * 1024 * 1024
    page_size: int = 5000
    # Most lists one server may announce (LM_BILLING_MAX_LISTS_PER_SERVER; 0 = no limit):
    # with it, what one read holds is bounded whatever a peer claims.
    max_lists: int = 0
    # Where the client may connect (LM_BILLING_ALLOWED_NETWORKS, LM_BILLING_ALLOW_LOOPBACK).
    allowed_networks: tuple[Network, ...] = ()
    allow_loopback: bool = True

    @property
    def address_policy(self) -> AddressPolicy:
        return AddressPolicy(self.allowed_networks, self.allow_loopback)

    def __post_init__(self) -> None:
        for field in ("connect_timeout", "read_timeout", "operation_timeout"):
            if not getattr(self, field) > 0:
                raise ValueError(f"ClientSettings.{field} must be positive")
        if self.max_reply_bytes < 1:
            raise ValueError("ClientSettings.max_reply_bytes must be positive")
        if self.max_read_bytes < 0:
            raise ValueError("ClientSettings.max_read_bytes must be 0 (no limit) or positive")
        if self.max_lists < 0:
            raise ValueError("ClientSettings.max_lists must be 0 (no limit) or positive")
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"ClientSettings.page_size must be between 1 and {MAX_PAGE_SIZE}")


class _Reply:
    __slots__ = ("body", "status")

    def __init__(self, status: str, body: str) -> None:
        self.status = status
        self.body = body


def _snippet(data: bytes) -> str:
    """A short printable rendering of bytes a peer sent, for messages."""
    text = data[:40].decode("utf-8", "replace")
    return repr(text + ("..." if len(data) > 40 else ""))


def size_text(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n:,} bytes ({n / (1024 * 1024):.1f} MiB)"
    return f"{n:,} bytes"


class TclPortConnection:
    """One authenticated TclPort session: ``connect()``, ``call()`` by logical command name,
    ``close()``. :class:`~.client.TclPortClient` adds the typed commands."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        password: str = DEFAULT_PASSWORD,
        *,
        name: str | None = None,
        settings: ClientSettings | None = None,
        commands: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._password = password
        self.name = name
        self.settings = settings if settings is not None else ClientSettings()
        merged = dict(COMMANDS)
        if commands:
            unknown = set(commands) - set(COMMANDS)
            if unknown:
                raise ValueError(f"unknown logical command names: {sorted(unknown)}")
            merged.update(commands)
        self.commands: Mapping[str, str] = MappingProxyType(merged)
        where = host_port(host, port)
        self.label = f"{name} ({where})" if name else where
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._greeted = False
        self._authenticated = False
        # Size in bytes of the last reply body read, for messages about it.
        self._reply_bytes = 0
        # Bytes received on this connection, for messages that must not quote them.
        self._received = 0
        # Reply body bytes announced to this object over all its connections (the read budget).
        self._read_total = 0
        # Whether this connection carried the password (from then on, peer text may echo it).
        self._password_sent = False
        #: Milliseconds spent in each connect step (resolve, connect, greeting, auth).
        self.timings: dict[str, float] = {}
        #: Address actually connected to, and the product named in the greeting.
        self.peer: tuple[Any, ...] | None = None
        self.product: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} connected={self.connected}>"

    @property
    def connected(self) -> bool:
        return self._sock is not None and self._authenticated

    def __enter__(self) -> Self:
        if self._sock is None:
            self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- errors ---------------------------------------------------------------------------

    def _error(
        self,
        phase: str,
        code: str,
        *,
        detail: str = "",
        server_message: str = "",
        timeout: float | None = None,
        abort: bool = True,
        message: str | None = None,
    ) -> TclPortError:
        local_ip = None
        if self._sock is not None and code == "HOST_DENIED":
            # Fallback when the server's message names no IP: the address we connect from.
            with contextlib.suppress(OSError):
                local_ip = str(self._sock.getsockname()[0])
        if abort:
            self._abort()
        command = phase.partition(":")[2] or phase  # "auth" is a command too
        if server_message and phase == "auth":
            # Redacted at the source: a peer that echoes the auth request would repeat the
            # password, in whatever quoting it likes, so nothing it says to auth is shown.
            server_message = "its answer to the password is not shown"
        elif server_message and self._holds_password(
            server_message.encode("utf-8", "surrogatepass")
        ):
            server_message = "its message is not shown: it holds the TclPort password"
        if code == MALFORMED and self._holds_password(detail.encode("utf-8", "surrogatepass")):
            # A finding that quotes the reply (a Tcl parse error, a bad record field).
            detail = "the reply is not shown: it holds the TclPort password"
        message = message or guidance(
            code,
            host=self.host,
            port=self.port,
            command=command,
            server_message=server_message,
            detail=detail,
            timeout=timeout,
            local_ip=local_ip,
        )
        detail = detail or server_message
        err = TclPortError(self.label, phase, code, message, detail=detail)
        log.debug("%s: %s failed: %s (%s)", self.label, phase, code, detail)
        return err

    def _holds_password(self, data: bytes) -> bool:
        """Whether peer bytes hold the password, or 4 bytes of it in a row, raw or in
        the quoting a request gives it.

        Checked on the raw bytes before any quoting, so escaping cannot hide a match, and by
        windows, so a truncated excerpt (a prefix) matches too; a hit withholds the whole
        text, however short the password is.
        """
        secret = self._password
        if not secret or secret == DEFAULT_PASSWORD or not self._password_sent:
            # The documented default is public (the guidance names it), and before auth
            # this connection has not carried the password: nothing to withhold then.
            return False
        forms = {secret, encode_list([secret]), repr(secret)[1:-1], encode_request([secret])}
        for form in forms:
            raw = form.encode("utf-8", "surrogatepass")
            size = min(len(raw), _WINDOW)
            if size and any(raw[i : i + size] in data for i in range(len(raw) - size + 1)):
                return True
        return False

    def _quote(self, phase: str, data: bytes) -> str:
        """Peer bytes for a message: a short quote, or only their size.

        Only the size before a valid greeting (a port that is not a TclPort must not become
        a banner grabber: SSH, HTTP, ...), in reply to auth (an echo would repeat the
        password) and whenever they hold the password.
        """
        if not self._greeted or phase == "auth" or self._holds_password(data):
            return f"({size_text(len(data))}, not shown)"
        return _snippet(data)

    def _abort(self) -> None:
        sock, self._sock = self._sock, None
        self._authenticated = False
        self._buf.clear()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # -- connecting -----------------------------------------------------------------------

    def connect(self, on_step: StepCallback | None = None) -> Self:
        """Resolve, connect, read the greeting and authenticate; one deadline for all.

        ``on_step(step, elapsed_ms)`` is called after each step that succeeds, with step
        ``resolve``, ``connect``, ``greeting`` and ``auth``.
        """
        self._abort()
        self._greeted = False
        self._received = 0
        self._password_sent = False
        self.timings = {}
        deadline = time.monotonic() + self.settings.operation_timeout

        def done(step: str, started: float) -> None:
            elapsed = (time.monotonic() - started) * 1000.0
            self.timings[step] = elapsed
            if on_step is not None:
                on_step(step, elapsed)

        try:
            started = time.monotonic()
            infos = self._checked(self._resolve(deadline))
            done("resolve", started)
            started = time.monotonic()
            self._sock = self._open(infos, deadline)
            done("connect", started)
            started = time.monotonic()
            self._read_greeting(deadline)
            done("greeting", started)
            started = time.monotonic()
            self._auth(deadline)
            done("auth", started)
        except BaseException:
            # Whatever stopped the session (including Ctrl-C), the socket must not leak.
            self._abort()
            raise
        log.debug(
            "%s: connected to %s in %.1f ms", self.label, self.peer, sum(self.timings.values())
        )
        return self

    def _resolve(self, deadline: float) -> list[tuple[Any, ...]]:
        # Judged as written, brackets too: the forms refuse "[::1]", so the client does as well.
        host = self.host.strip()
        if not host:
            raise self._error("resolve", DNS, detail="no host name")
        try:
            # Syntax, literal addresses and metadata names first: no lookup for those.
            literal = check_host(host, self.settings.address_policy)
        except HostRefused as exc:
            raise self._error("resolve", ADDRESS_REFUSED, detail=exc.message) from None
        if literal is not None:
            # An IP literal needs no DNS; AI_NUMERICHOST keeps getaddrinfo from blocking.
            try:
                return list(
                    socket.getaddrinfo(
                        host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
                    )
                )
            except socket.gaierror as exc:
                raise self._error("resolve", DNS, detail=str(exc)) from exc
        # getaddrinfo has no timeout of its own; a helper thread lets the deadline win.
        result: list[tuple[Any, ...]] = []
        failure: list[BaseException] = []

        def work() -> None:
            try:
                result.extend(socket.getaddrinfo(host, self.port, type=socket.SOCK_STREAM))
            except BaseException as exc:
                failure.append(exc)

        wait = max(0.0, min(self.settings.connect_timeout, deadline - time.monotonic()))
        worker = threading.Thread(target=work, name="lm-billing-resolve", daemon=True)
        worker.start()
        worker.join(wait)
        if worker.is_alive():
            # Not the hosting server's fault: no packet has gone to it yet.
            raise self._error(
                "resolve", TIMEOUT, detail="resolving the host name", timeout=wait,
                message=f"no answer within {wait:g} s from the DNS for the host name {host!r}; "
                "check the Host Name of this server and the billing server's DNS settings.",
            )
        if failure:
            problem = failure[0]
            if isinstance(problem, socket.gaierror | UnicodeError):
                raise self._error("resolve", DNS, detail=str(problem)) from problem
            raise self._error("resolve", UNREACHABLE, detail=str(problem)) from problem
        if not result:
            raise self._error("resolve", DNS, detail="no addresses")
        return result

    def _checked(self, infos: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The resolved addresses billing may connect to; the rest are dropped.

        ``_open`` connects to these sockaddrs as they are (numeric), so no second lookup can
        swap in another address after the check (DNS rebinding).
        """
        policy = self.settings.address_policy
        allowed: list[tuple[Any, ...]] = []
        refusal: HostRefused | None = None
        for info in infos:
            address = str(info[4][0])
            subject = (
                address if address.split("%", 1)[0] == self.host.strip()
                else N_("the host name %(host)s resolves to %(address)s, which")
                % {"host": repr(self.host.strip()), "address": address}
            )
            try:
                if info[0] not in (socket.AF_INET, socket.AF_INET6):
                    raise HostRefused(N_("%(subject)s is not an IP address") % {"subject": subject},
                                      "malformed")
                check_address(ipaddress.ip_address(address.split("%", 1)[0]), policy,
                              subject=subject)
            except HostRefused as exc:
                refusal = refusal or exc
                log.warning("%s: not connecting to %s: %s", self.label, address, exc.kind)
                continue
            allowed.append(info)
        if not allowed:
            assert refusal is not None
            raise self._error("resolve", ADDRESS_REFUSED, detail=refusal.message)
        return allowed

    def _open(self, infos: list[tuple[Any, ...]], deadline: float) -> socket.socket:
        # Try every address (IPv6 and IPv4); report the most telling failure.
        rank = {CLOSED: 0, REFUSED: 1, TIMEOUT: 2, UNREACHABLE: 3}
        best: tuple[str, str, float | None] | None = None
        for family, socktype, proto, _canon, sockaddr in infos:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                best = best or (TIMEOUT, "connecting", self.settings.operation_timeout)
                break
            wait = min(self.settings.connect_timeout, remaining)
            sock = socket.socket(family, socktype, proto)
            try:
                sock.settimeout(wait)
                sock.connect(sockaddr)
            except TimeoutError:
                sock.close()
                found: tuple[str, str, float | None] = (TIMEOUT, "connecting", wait)
            except ConnectionRefusedError:
                sock.close()
                found = (REFUSED, "connection refused", None)
            except ConnectionResetError:
                # Linux reports a reset that comes right after the handshake from connect()
                # itself: the server was reached, accepted, and closed at once.
                sock.close()
                found = (CLOSED, "it accepted the connection and reset it at once", None)
            except OSError as exc:
                sock.close()
                found = (UNREACHABLE, exc.strerror or str(exc), None)
            except BaseException:
                sock.close()
                raise
            else:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.peer = tuple(sockaddr)
                return sock
            if best is None or rank[found[0]] < rank[best[0]]:
                best = found
        code, detail, timeout = best or (UNREACHABLE, "no usable address", None)
        raise self._error("connect", code, detail=detail, timeout=timeout)

    def _read_greeting(self, deadline: float) -> None:
        try:
            reply = self._read_reply("greeting", deadline)
        except TclPortError as exc:
            if exc.code in (MALFORMED, OVERSIZED):
                # Spec 3.1: a greeting that is not a valid reply means "not a TclPort".
                raise self._error("greeting", NOT_TCLPORT, detail=self._not_shown()) from None
            raise
        if reply.status == "ERR":
            try:
                self._raise_err("greeting", reply.body)
            except TclPortError as exc:
                if exc.code == MALFORMED:
                    raise self._error("greeting", NOT_TCLPORT, detail=self._not_shown()) from None
                raise
        try:
            greeting = decode_dict(reply.body)
        except ValueError:
            raise self._error("greeting", NOT_TCLPORT, detail=self._not_shown()) from None
        protocol = greeting.get("protocol")
        if protocol != PROTOCOL:
            # A version number is named; any other text a peer put there is not echoed.
            shown = protocol is not None and re.fullmatch(r"[0-9][0-9.]{0,9}", protocol)
            detail = (
                f"it speaks protocol {protocol!r}, this client speaks {PROTOCOL}"
                if shown
                else "its greeting names no protocol"
                if protocol is None
                else "its greeting names another protocol"
            ) + f"; {self._not_shown()}"
            raise self._error("greeting", NOT_TCLPORT, detail=detail)
        self.product = greeting.get("product")
        self._greeted = True

    def _not_shown(self) -> str:
        # The byte count only: quoting a non-TclPort peer would let the check page grab
        # banners (SSH, HTTP, databases) of any host and port it is pointed at.
        return f"it sent {size_text(self._received)}, not shown"

    def _auth(self, deadline: float) -> None:
        if not self._greeted:
            # The password goes only to a peer that greeted as a TclPort of profile 1.
            raise RuntimeError("auth before a valid TclPort greeting")
        # The password goes only into the request line, never into logs or messages.
        self._password_sent = True
        self._send("auth", deadline, [self.commands["auth"], self._password])
        reply = self._read_reply("auth", deadline)
        if reply.status == "ERR":
            self._raise_err("auth", reply.body)
        if reply.body:
            # Spec 3.2: auth answers OK with an empty body; anything else is another protocol.
            raise self._error(
                "auth", MALFORMED,
                detail=f"the auth reply must be empty, but it held {size_text(self._reply_bytes)} "
                "(not shown)",
            )
        self._authenticated = True

    # -- framing --------------------------------------------------------------------------

    def _timeout_for(self, deadline: float) -> tuple[float, bool]:
        """Seconds the next socket call may wait, and whether the deadline is what limits it."""
        remaining = deadline - time.monotonic()
        if remaining <= self.settings.read_timeout:
            return remaining, True
        return self.settings.read_timeout, False

    def _timed_out(self, phase: str, by_deadline: bool) -> TclPortError:
        if by_deadline:
            return self._error(
                phase, TIMEOUT, detail="the reply was not complete in time",
                timeout=self.settings.operation_timeout,
            )
        return self._error(phase, TIMEOUT, timeout=self.settings.read_timeout)

    def _send(self, phase: str, deadline: float, words: list[str]) -> None:
        sock = self._sock
        if sock is None:
            raise self._closed(phase)
        text = encode_request(words)
        try:
            line = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            # Text is UTF-8 both ways (spec 1); a lone surrogate (e.g. from a command line
            # read with surrogateescape) has no UTF-8 form.  Nothing was sent.
            if phase == "auth":
                # Nothing about the password's characters goes into the message.
                what, which, todo = "the TclPort password", "", "enter it again as plain text."
            else:
                what = f"the {phase.partition(':')[2] or phase} request"
                which = f" (U+{ord(text[exc.start]):04X})"
                todo = "remove that character and try again."
            raise self._error(
                phase, BAD_TEXT, abort=False,
                detail=f"{what} holds a character that is not valid Unicode text{which}, "
                "which cannot be sent as UTF-8",
                message=f"{what} was not sent: it holds a character that is not valid "
                f"Unicode text{which}; {todo}",
            ) from None
        if len(line) > MAX_REQUEST_BYTES:
            # Nothing was sent, so the connection stays usable.
            detail = (
                f"it is {len(line):,} bytes, more than the {MAX_REQUEST_BYTES:,} "
                "bytes a TclPort request line may have"
            )
            raise self._error(
                phase, REQUEST_TOO_LONG, abort=False, detail=detail,
                message=f"the TclPort password was not sent: {detail}; enter the hosting "
                "server's real TclPort password." if phase == "auth" else None,
            )
        if b"\n" in line or b"\r" in line:
            raise ValueError("encode_request produced a raw line break")
        self._refuse_unasked(phase, sock)
        wait, by_deadline = self._timeout_for(deadline)
        if wait <= 0:
            raise self._timed_out(phase, True)
        try:
            sock.settimeout(wait)
            sock.sendall(line + b"\n")
        except TimeoutError:
            raise self._timed_out(phase, by_deadline) from None
        except OSError as exc:
            raise self._error(
                phase, CLOSED, detail=f"sending failed: {exc.strerror or exc}"
            ) from None

    def _refuse_unasked(self, phase: str, sock: socket.socket) -> None:
        """Bytes waiting before a request is sent answer no request: the stream is off.

        Spec 2: one request at a time, replies in request order.  Reading them as the next
        reply would pair a stale answer with the new request, so the session ends here.
        """
        extra = bytes(self._buf)
        if not extra:
            try:
                ready, _, _ = select.select([sock], [], [], 0)
                if ready:
                    # Readable: data, or the end of the stream (b""), which the reply read
                    # will report as CLOSED.
                    extra = sock.recv(MAX_HEADER_BYTES + 1, socket.MSG_PEEK)
            except (OSError, ValueError):
                return  # the send or the reply read reports the broken socket
        if extra:
            raise self._error(
                phase, MALFORMED,
                detail=f"before this request it sent {'at least ' if not self._buf else ''}"
                f"{size_text(len(extra))} that answer no request, "
                f"starting {self._quote(phase, extra)} "
                "(a TclPort server sends one reply per request)",
            )

    def _recv(self, phase: str, deadline: float, want: int) -> bytes:
        sock = self._sock
        if sock is None:
            raise self._closed(phase)
        wait, by_deadline = self._timeout_for(deadline)
        if wait <= 0:
            raise self._timed_out(phase, True)
        try:
            sock.settimeout(wait)
            data = sock.recv(want)
            self._received += len(data)
            return data
        except TimeoutError:
            raise self._timed_out(phase, by_deadline) from None
        except ConnectionResetError:
            raise self._error(phase, CLOSED, detail="the server reset the connection") from None
        except OSError as exc:
            raise self._error(
                phase, CLOSED, detail=f"receiving failed: {exc.strerror or exc}"
            ) from None

    def _read_reply(self, phase: str, deadline: float) -> _Reply:
        buf = self._buf
        # Header: never look past 64 bytes (+ the LF) for the end of the line.
        while True:
            end = buf.find(b"\n", 0, MAX_HEADER_BYTES + 1)
            if end >= 0:
                break
            if len(buf) > MAX_HEADER_BYTES:
                raise self._error(
                    phase, OVERSIZED,
                    detail=f"a header line longer than {MAX_HEADER_BYTES} bytes, "
                    f"starting {self._quote(phase, bytes(buf))}",
                )
            data = self._recv(phase, deadline, MAX_HEADER_BYTES + 1 - len(buf))
            if not data:
                if buf:
                    raise self._error(
                        phase, MALFORMED,
                        detail="the reply ended inside its header line "
                        f"{self._quote(phase, bytes(buf))}",
                    )
                raise self._error(phase, CLOSED, detail="it sent no reply")
            buf += data
        header = bytes(buf[:end])
        del buf[: end + 1]
        parts = header.split(b" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise self._error(
                phase, MALFORMED,
                detail=f"its {len(header)}-byte header line {self._quote(phase, header)} is not "
                "'STATUS LENGTH' (one space, nothing else)",
            )
        raw_status, raw_length = parts
        if raw_status not in (b"OK", b"ERR"):
            raise self._error(
                phase, MALFORMED,
                detail=f"its reply status {self._quote(phase, raw_status)} is neither OK nor ERR "
                f"(header line {self._quote(phase, header)})",
            )
        if _LENGTH_RE.fullmatch(raw_length) is None:
            raise self._error(
                phase, MALFORMED,
                detail=f"its reply length {self._quote(phase, raw_length)} is not a decimal "
                "byte count (digits only, no sign, no leading zero)",
            )
        status = raw_status.decode("ascii")
        length = int(raw_length)
        if length > self.settings.max_reply_bytes:
            # Refused before reading: the body never reaches memory.
            raise self._error(
                phase, OVERSIZED,
                detail=f"it announced a reply of {size_text(length)}, more than the "
                f"{size_text(self.settings.max_reply_bytes)} limit (LM_BILLING_MAX_REPLY_BYTES)",
            )
        budget = self.settings.max_read_bytes
        if budget and self._read_total + length > budget:
            # Also refused before reading: the replies one read may hold are bounded in all.
            raise self._error(
                phase, OVERSIZED,
                detail=f"its replies came to {size_text(self._read_total)} and the next one "
                f"announced {size_text(length)}, more than the {size_text(budget)} one read of a "
                "server may take (LM_BILLING_MAX_READ_BYTES; raise it if the server really "
                "holds that much)",
            )
        self._read_total += length
        need = length + 1
        body = bytearray(buf[:need])
        del buf[:need]
        while len(body) < need:
            data = self._recv(phase, deadline, min(_CHUNK, need - len(body)))
            if not data:
                raise self._error(
                    phase, MALFORMED,
                    detail=f"the reply ended after {min(len(body), length):,} of the "
                    f"{length:,} bytes it announced",
                )
            body += data
        if body[length] != 0x0A:
            raise self._error(
                phase, MALFORMED,
                detail=f"the {length:,}-byte reply body is not followed by LF",
            )
        try:
            text = str(memoryview(body)[:length], "utf-8", "strict")
        except UnicodeDecodeError as exc:
            raise self._error(
                phase, MALFORMED,
                detail=f"the {length:,}-byte reply is not valid UTF-8 (at byte {exc.start:,})",
            ) from None
        del body
        self._reply_bytes = length
        return _Reply(status, text)

    def _raise_err(self, phase: str, body: str) -> NoReturn:
        try:
            parts = decode_list(body)
        except ValueError:
            parts = []
        if len(parts) != 2 or not parts[0]:
            raise self._error(
                phase, MALFORMED,
                detail="an ERR reply must be {CODE message}, got "
                f"{self._quote(phase, body.encode())} ({size_text(self._reply_bytes)})",
            )
        code, server_message = parts
        # The server closes after these; the socket is of no further use.
        abort = code in ("HOST_DENIED", "AUTH_FAILED", "BAD_REQUEST")
        raise self._error(phase, code, server_message=server_message, abort=abort)

    def _closed(self, phase: str) -> TclPortError:
        return self._error(
            phase, CLOSED, abort=False, detail="not connected",
            message="the connection is not open (not connected yet, or closed after an "
            "earlier error); connect again.",
        )

    # -- commands -------------------------------------------------------------------------

    def call(self, command: str, *args: str) -> str:
        """Send one command by its logical name and return the OK body; ERR raises."""
        wire = self.commands[command]
        phase = f"command:{command}"
        if not self.connected:
            raise self._closed(phase)
        deadline = time.monotonic() + self.settings.operation_timeout
        started = time.monotonic()
        try:
            self._send(phase, deadline, [wire, *args])
            reply = self._read_reply(phase, deadline)
        except TclPortError:
            raise
        except BaseException:
            # Interrupted mid-exchange: the stream position is unknown, so the session is over.
            self._abort()
            raise
        log.debug(
            "%s: %s -> %s %d chars in %.1f ms", self.label, command, reply.status,
            len(reply.body), (time.monotonic() - started) * 1000.0,
        )
        if reply.status == "ERR":
            self._raise_err(phase, reply.body)
        return reply.body

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Say quit if the session is healthy, then close the socket. Never raises."""
        sock = self._sock
        if sock is None:
            return
        try:
            # Before a successful auth, quit would only get AUTH_REQUIRED (spec 3.2).
            if self._authenticated:
                deadline = time.monotonic() + min(_QUIT_WAIT, self.settings.read_timeout)
                self._send("command:quit", deadline, [self.commands["quit"]])
                self._read_reply("command:quit", deadline)
        except Exception:  # noqa: S110 - closing must not fail; the socket closes below
            pass
        finally:
            self._abort()
            self._greeted = False
