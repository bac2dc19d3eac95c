"""Helpers for the TclPort tests: fast client settings, raw protocol sockets, a scripted server,
and resource counters for leak checks. Everything runs on real sockets on 127.0.0.1."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence

from lm_billing_plugin.tclport.client import ClientSettings
from lm_billing_plugin.tclport.codec import decode_list, encode_request

# Short timeouts so hostile peers fail fast; the deadline is shorter than the read timeout
# where a test must prove that the overall deadline (not the per-read timeout) fired.
FAST = ClientSettings(connect_timeout=0.5, read_timeout=0.4, operation_timeout=0.8)
# For peers that answer (healthy ones, and ones that answer wrongly at once): a loaded CI
# machine can leave a simulator thread unscheduled for longer than FAST allows, and a patient
# timeout costs nothing when the answer comes.
PATIENT = ClientSettings(connect_timeout=10.0, read_timeout=10.0, operation_timeout=20.0)


def fd_count() -> int:
    """Open sockets of this process (other descriptors — database files, pipes of other
    tests' subprocesses — come and go on their own and are not this client's to leak)."""
    gc.collect()
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:  # closed between listdir and readlink
            pass
    return count


def sockets_back_to(before: int, timeout: float = 2.0) -> bool:
    """True once no more sockets are open than ``before`` (peers may close a moment late)."""
    deadline = time.monotonic() + timeout
    while fd_count() > before:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def thread_count() -> int:
    return threading.active_count()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RawConn:
    """A bare TclPort connection for testing the simulator's rules byte by byte."""

    def __init__(self, address: tuple[str, int], timeout: float = 2.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_line(self, line: bytes) -> None:
        self.sock.sendall(line + b"\n")

    def send(self, *words: str) -> None:
        self.send_line(encode_request(words).encode("utf-8"))

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def reply(self) -> tuple[str, str]:
        while b"\n" not in self.buf:
            if not self._fill():
                raise EOFError("connection closed")
        header, self.buf = self.buf.split(b"\n", 1)
        status, length = header.decode("ascii").split(" ")
        need = int(length) + 1
        while len(self.buf) < need:
            if not self._fill():
                raise EOFError("connection closed mid-body")
        body, self.buf = self.buf[: need - 1], self.buf[need:]
        return status, body.decode("utf-8")

    def err(self) -> tuple[str, str]:
        status, body = self.reply()
        assert status == "ERR", body
        code, message = decode_list(body)
        return code, message

    def is_closed(self) -> bool:
        """True when the peer has closed (EOF or reset) within the socket timeout."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def login(self, password: str = "TCLPORTPasswd") -> RawConn:
        assert self.reply()[0] == "OK"
        self.send("auth", password)
        assert self.reply() == ("OK", "")
        return self


@contextlib.contextmanager
def scripted_server(script: Sequence[bytes]) -> Iterator[tuple[str, int]]:
    """A one-connection TCP server: sends script[0] on connect, then script[i] per request.

    For framing edge cases the simulator does not produce (exact header sizes, odd ERR bodies).
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(5)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                conn.sendall(script[0])
                buf = b""
                for chunk in script[1:]:
                    while b"\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    buf = buf.split(b"\n", 1)[1]
                    conn.sendall(chunk)
                while conn.recv(65536):
                    pass
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield ("127.0.0.1", int(listener.getsockname()[1]))
    finally:
        listener.close()
        thread.join(5)


def frame(status: str, body: bytes) -> bytes:
    return f"{status} {len(body)}\n".encode("ascii") + body + b"\n"


GREETING = frame("OK", b"protocol 1 product ListManager")
AUTH_OK = frame("OK", b"")


@contextlib.contextmanager
def blackhole() -> Iterator[tuple[str, int]]:
    """An address whose TCP connects hang: a listener with a full backlog drops new SYNs."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(3):
            sock = socket.socket()
            sock.setblocking(False)
            fillers.append(sock)
            with contextlib.suppress(BlockingIOError):
                sock.connect(address)
        yield ("127.0.0.1", int(address[1]))
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


def settle(sim: object, timeout: float = 2.0) -> None:
    """Wait until the simulator's sessions have finished (their sockets are closed)."""
    deadline = time.monotonic() + timeout
    while getattr(sim, "active_sessions", 0) and time.monotonic() < deadline:
        time.sleep(0.005)


TCL_CLIENT = r"""
# A TclPort client written in Tcl: reads the simulator's replies with Tcl's own list parser.
lassign $argv host port
set s [socket $host $port]
fconfigure $s -translation binary -buffering full
proc reply {s} {
    gets $s header
    lassign [split $header " "] status len
    set body [read $s $len]
    if {[read $s 1] ne "\n"} { error "no final LF" }
    return [list $status [encoding convertfrom utf-8 $body]]
}
proc send {s args} {
    puts -nonewline $s "[encoding convertto utf-8 [list {*}$args]]\n"
    flush $s
}
proc hx {text} { binary encode hex [encoding convertto utf-8 $text] }
lassign [reply $s] status greeting
if {[dict get $greeting protocol] ne "1"} { error "not protocol 1" }
send $s auth TCLPORTPasswd
lassign [reply $s] status body
if {$status ne "OK"} { error "auth: $body" }
send $s lists 0 5000
lassign [reply $s] status page
puts "total [dict get $page total]"
foreach item [dict get $page items] {
    puts "list [hx [dict get $item name]] [hx [dict get $item descr]] [dict get $item members]"
}
send $s sites
lassign [reply $s] status sites
foreach site $sites { puts "site [hx [dict get $site name]] [hx [dict get $site title]]" }
send $s quit
reply $s
close $s
"""

TCL_SERVER = r"""
# A TclPort server written in Tcl: builds its replies with Tcl's own list and dict commands.
set f [open [lindex $argv 0] r]
fconfigure $f -translation binary
set names {}
foreach h [split [read $f] "\n"] {
    if {$h ne ""} { lappend names [encoding convertfrom utf-8 [binary decode hex $h]] }
}
close $f
proc frame {chan status body} {
    set bytes [encoding convertto utf-8 $body]
    puts -nonewline $chan "$status [string length $bytes]\n$bytes\n"
    flush $chan
}
proc serve {chan addr port} {
    fconfigure $chan -translation binary -buffering full
    frame $chan OK [dict create protocol 1 product ListManager]
    while {[gets $chan line] >= 0} {
        set words [encoding convertfrom utf-8 $line]
        switch -- [lindex $words 0] {
            auth { frame $chan OK {} }
            sites {
                set out {}
                foreach n $::names { lappend out [dict create name $n title "Title $n"] }
                frame $chan OK $out
            }
            lists {
                set items {}
                foreach n $::names {
                    lappend items [dict create name $n site $n descr "d $n" \
                        created 2026-01-02 members 5 admin "$n@example.com"]
                }
                frame $chan OK [dict create total [llength $::names] items $items]
            }
            quit { frame $chan OK {}; break }
            default { frame $chan ERR [list UNKNOWN_COMMAND "unknown [lindex $words 0]"] }
        }
    }
    close $chan
}
set server [socket -server serve -myaddr 127.0.0.1 0]
puts [lindex [fconfigure $server -sockname] 2]
flush stdout
vwait forever
"""
