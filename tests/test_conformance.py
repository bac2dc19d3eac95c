"""TclPort profile 1 conformance, rule by rule: our client against raw-socket servers that send
literal bytes, and our simulator driven by literal request bytes, so no shared bug can hide.

Checklist (spec /work/shared/spec/tclport-protocol.md). (*) marks a test new in this file
(the rule was untested, or tested only through our own client or simulator); [Dn] marks a
deviation this review found and fixed, whose tests failed before the fix.

| id  | rule                                                    | code
|-----|---------------------------------------------------------|------------------------------
| V1  | decode = Tcl 8.6 lists; reject as Tcl                   | codec.decode_list
| V2  | encode: Tcl reads every string back                     | codec.encode_*
| V3  | integers: `0` or `[1-9][0-9]*`, at most 2**63-1 [D1,D2] | records.parse_int (client
|     | (Tcl 8.6 reads `010` as octal 8)                        | and sim)
| V4  | dates YYYY-MM-DD, request and reply                     | records.parse_date,
|     |                                                         | client.usage
| V5  | times YYYY-MM-DDTHH:MM:SSZ                              | records.parse_time
| V6  | strict UTF-8 both ways [D3, D4]                         | client._send,
|     |                                                         | client._read_reply, sim reply
|     |                                                         | / run
| F1  | request: one LF-ended line, no raw CR/LF                | client._send,
|     |                                                         | codec.encode_request
| F2  | a CR before the LF is ignored (server)                  | sim read_line
| F3  | request <= 65,536 bytes (LF, ignored CR not counted);   | client._send, sim read_line
|     | else BAD_REQUEST + close                                |
| F4  | header `STATUS SP LENGTH LF`, STATUS exactly OK or ERR  | client._read_reply
| F5  | LENGTH: digits, no sign/space/leading 0 nor empty       | client._LENGTH_RE, sim _frame
|     | (decided strictly) [D1]                                 |
| F6  | header <= 64 bytes, LF not counted                      | client._read_reply
| F7  | LENGTH bytes, then exactly one LF                       | client._read_reply
| F8  | LENGTH over the maximum: refused unread                 | client._read_reply
| F9  | ERR body = `{CODE message}`                             | client._raise_err, sim error
| F10 | refusals: errors naming the server; no crash, hang or   | client
|     | unbounded memory                                        |
| F11 | one request at a time, replies in order [D7]            | client._refuse_unasked, sim
| S1  | greeting `protocol 1 product ListManager`               | sim run
| S2  | other greeting: not a TclPort [D8]                      | client._read_greeting
| S3  | HOST_DENIED `{<ip> is not in TCLPORT Hosts}`, then      | sim run, client._raise_err
|     | close                                                   |
| S4  | auth -> OK, empty body [D6]                             | client._auth, sim run
| S5  | AUTH_FAILED, then close                                 | sim run, client
| S6  | before auth: AUTH_REQUIRED, quit too [D5]               | sim run, client.close
| S7  | quit -> OK (empty), then close                          | sim run, client.close
| K1  | server_info product/version/hostname/started            | records.ServerInfo
| K2  | logging mode+label; other modes shown as they are       | records.LoggingState, checks
| K3  | logging_set -> dict; NOT_PERMITTED                      | client, sim, checks
| K4  | sites name/title, names unique [D13]                    | client.sites
| K5  | lists: total/items, UTF-8 byte order, LIMIT 1..5000     | client.lists_page,
|     | else BAD_ARGS                                           | client._pages, sim
| K6  | usage inclusive, one row per list [D13], LOGGING_OFF    | client.usage, sim
|     | while mode is no                                        |
| K7  | names: unique, exact, any characters                    | client, sim
| E1  | unknown error code shown as it is                       | errors.guidance
| M1  | section 6: each failure names the server and says what  | errors.guidance, client
|     | to do (sizes: [D9, D10])                                |
| M2  | command names in one place                              | client.COMMANDS

Tests per item (this file unless another is named):

V1   test_codec (tclsh oracle)
V2   test_codec (tclsh oracle)
V3   test_reply_integers_are_strict*; test_sim_request_integers_are_strict*
V4   test_client_sends_exact_request_lines*; test_sim_request_dates_are_strict*; test_client
V5   test_reply_dates_and_times_are_strict*
V6   test_client_never_sends_invalid_utf8*; test_reply_that_is_not_strict_utf8*;
     test_sim_refuses_requests_that_are_not_utf8*; test_sim_never_sends_invalid_utf8*
F1   test_client_sends_exact_request_lines*; test_password_with_line_ends_is_one_line_tcl_reads*
F2   test_sim_ignores_cr_before_lf*; test_simulator
F3   test_client_request_line_boundary*; test_simulator (limit, huge line); test_client
F4   test_bad_header_is_malformed*; test_client
F5   test_bad_header_is_malformed*; Wire checks every simulator header*
F6   test_header_of_64_bytes_is_read_65_is_refused*
F7   test_body_must_end_with_exactly_one_lf*
F8   test_client (100 MB, limit); client fuzz*
F9   test_err_body_must_be_two_elements*; simulator fuzz*
F10  test_fuzz_client_reply_parser*; test_client (hostile modes)
F11  test_unasked_reply_is_refused_not_paired*; test_sim_answers_pipelined_requests_in_order*
S1   test_sim_greeting_and_auth_bytes*; test_simulator
S2   test_greeting_that_is_not_profile_1*; test_client
S3   test_sim_host_denied_bytes*; test_simulator; test_host_denied_client_sends_nothing*
S4   test_auth_reply_must_be_empty*
S5   test_sim_auth_failed_bytes*; test_simulator; test_auth_failed_client_sends_nothing_more*
S6   test_sim_auth_required_even_for_quit*
S7   test_sim_quit_bytes*; test_client
K1   test_result_shapes_are_checked*; test_client
K2   test_sim_logging_labels_bytes*; test_checks; test_unknown_logging_mode_is_shown_as_it_is*
K3   test_simulator; test_checks
K4   test_result_shapes_are_checked*; test_repeated_names_are_refused*
K5   test_lists_page_must_be_sorted_by_utf8_bytes*; test_lists_page_arguments*; test_simulator
K6   test_repeated_names_are_refused*; test_client; test_simulator
K7   test_client (hostile names); test_simulator
E1   test_unknown_error_code_is_shown_as_it_is*
M1   test_messages_say_what_to_do*; test_malformed_messages_say_what_and_how_large*
M2   test_client (command mapping)

Deviations found and fixed: D1 LENGTH and integers with leading zeros were accepted ("OK 010"
read 10 bytes; a Tcl 8.6 peer reads 8). D2 integers up to 19 digits, beyond the BIGINT columns.
D3 the client sent lone surrogates as CESU-8. D4 the simulator did too (ERR echoes, dataset
text). D5 the simulator answered quit before auth with OK. D6 a non-empty auth reply was
taken. D7 bytes after a reply were read as the next request's reply (a stale answer was
returned). D8 a greeting ERR that is not `{CODE message}` was MALFORMED, not "not a TclPort".
D9 malformed-reply messages did not say how large the reply was. D10 BAD_ARGS, BAD_REQUEST,
INTERNAL and REQUEST_TOO_LONG did not say what to do. D12 the simulator counted every unknown
command name (unbounded). D13 repeated site names, or two usage rows for one list, were taken.
Second review (docs/protocol-conformance.md holds the whole rule table): D14 the simulator
reset (RST) instead of closing after HOST_DENIED, AUTH_FAILED and quit when the peer's input
was pending. D15 the simulator sent empty `created` and `joined`, which are dates.

Hardening without a failing case: an unexpected error in a simulator session is logged and
ends that session (it used to escape the thread); the simulator fuzz asserts none is logged.

Decisions: a request line's 65,536 bytes exclude its LF and an ignored CR (as the 64-byte
header excludes its LF). LENGTH and every integer are canonical decimal (see V3). The client
still accepts an empty `created` and a missing or empty `started` (left lenient; see report).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from datetime import date
from typing import Any

import pytest
from _sim import (
    AUTH_OK,
    GREETING,
    RawConn,
    fd_count,
    frame,
    settle,
    sockets_back_to,
    thread_count,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tclsh_oracle import Tclsh, tclsh_path

from lm_billing_plugin.engine.checks import check_logging
from lm_billing_plugin.tclport import ClientSettings, TclPortClient, TclPortError
from lm_billing_plugin.tclport.codec import decode_dict, decode_list, encode_dict, encode_list
from lm_billing_plugin.tclport.records import ListRecord
from lm_billing_plugin.testing import simulator
from lm_billing_plugin.testing.simulator import UNDATED, Dataset, HostSim, MemberEntry

FAST = ClientSettings(connect_timeout=0.5, read_timeout=0.4, operation_timeout=0.8)
PATIENT = ClientSettings(connect_timeout=10.0, read_timeout=10.0, operation_timeout=20.0)
LISTS_LABEL = b"Yes, Log All Messages that ListManager Sends to Mailing Lists"

# -- a raw server for the client: literal bytes out, request lines recorded -------------------


class RawServer:
    """Sends ``replies[0]`` on connect and ``replies[i]`` after the i-th request line; records
    everything the client sends, byte for byte.  After the script: close, or stay silent."""

    def __init__(self, replies: Sequence[bytes], *, close_after: bool = False,
                 tail: bytes = b"") -> None:
        self.replies = list(replies)
        self.close_after = close_after
        self.tail = tail
        self.received = bytearray()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(5)
        self.address = ("127.0.0.1", int(self.listener.getsockname()[1]))
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def lines(self) -> list[bytes]:
        return bytes(self.received).split(b"\n")[:-1]

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                conn.sendall(self.replies[0])
                for seen, reply in enumerate(self.replies[1:]):
                    while self.received.count(b"\n") <= seen:
                        data = conn.recv(65536)
                        if not data:
                            return
                        self.received += data
                    conn.sendall(reply)
                if self.tail:
                    conn.sendall(self.tail)
                if self.close_after:
                    conn.shutdown(socket.SHUT_WR)
                while data := conn.recv(65536):
                    self.received += data
            except OSError:
                return


@contextlib.contextmanager
def raw_server(replies: Sequence[bytes], **kw: Any) -> Iterator[RawServer]:
    server = RawServer(replies, **kw)
    server.thread.start()
    try:
        yield server
    finally:
        server.listener.close()
        server.thread.join(5)


def client(server: RawServer, password: str = "TCLPORTPasswd",
           settings: ClientSettings = PATIENT) -> TclPortClient:
    return TclPortClient(*server.address, password, name="Lists", settings=settings)


def fails(server: RawServer, call: str = "logging", *args: Any) -> TclPortError:
    """The error the client raises connecting and calling ``call``; checks it names the server."""
    c = client(server)
    with pytest.raises(TclPortError) as info:
        c.connect()
        getattr(c, call)(*args)
    c.close()
    assert str(info.value).startswith(f"Lists (127.0.0.1:{server.address[1]}): ")
    assert not c.connected
    return info.value


def ok(body: bytes) -> bytes:
    return frame("OK", body)


LOGGING_LISTS_REPLY = ok(b"mode lists label {" + LISTS_LABEL + b"}")
QUIT_OK = ok(b"")  # for close(): without it, close() waits for its quit reply in vain


# -- client: what it sends -----------------------------------------------------------------------


def test_client_sends_exact_request_lines() -> None:
    """F1, V4, S7: one LF-ended line per request, no CR, canonical integers and dates."""
    replies = [
        GREETING, AUTH_OK,
        ok(b"product ListManager version 12.3 hostname h started 2026-01-01T06:00:00Z"),
        LOGGING_LISTS_REPLY, LOGGING_LISTS_REPLY,
        ok(b"{name s1 title T}"),
        ok(b"total 0 items {}"),
        ok(b""),
        QUIT_OK,
    ]
    with raw_server(replies) as server:
        with client(server) as c:
            c.server_info()
            c.logging()
            c.logging_set("lists")
            c.sites()
            c.lists_page(0, 5000)
            c.usage(date(2026, 1, 1), date(2026, 1, 31))
        server.thread.join(5)
    assert bytes(server.received) == (
        b"auth TCLPORTPasswd\nserver_info\nlogging\nlogging_set lists\nsites\n"
        b"lists 0 5000\nusage 2026-01-01 2026-01-31\nquit\n"
    )


def test_password_with_line_ends_is_one_line_tcl_reads() -> None:
    """F1, V6: raw LF/CR never go out; the line is UTF-8 and tclsh reads back the password."""
    password = "p\nw\r{x} \"y\" \\ ü 日本 🎉"
    with raw_server([GREETING, AUTH_OK, QUIT_OK]) as server:
        client(server, password).connect().close()
        server.thread.join(5)
    line = server.lines[0]
    assert b"\r" not in line and len(server.lines) == 2  # auth, quit
    text = line.decode("utf-8")  # strict
    path = tclsh_path()
    if path is None:
        pytest.skip("tclsh (Tcl 8.6) is not installed")
    oracle = Tclsh(path)
    try:
        assert oracle.split([text]) == [["auth", password]]
    finally:
        oracle.close()


def test_client_request_line_boundary() -> None:
    """F3: 65,536 bytes before the LF go out; 65,537 are refused unsent, session intact."""
    word = "x" * (65_536 - len("logging_set "))
    replies = [GREETING, AUTH_OK, LOGGING_LISTS_REPLY, LOGGING_LISTS_REPLY, QUIT_OK]
    with raw_server(replies) as server:
        with client(server) as c:
            c.logging_set(word)
            with pytest.raises(TclPortError) as info:
                c.logging_set(word + "x")
            assert info.value.code == "REQUEST_TOO_LONG" and "65,537 bytes" in info.value.message
            assert "logging_set" in info.value.message
            assert c.logging().mode == "lists"
        server.thread.join(5)
    assert [len(line) for line in server.lines] == [18, 65_536, 7, 4]


def test_client_never_sends_invalid_utf8() -> None:
    """V6 [D3]: a lone surrogate (e.g. a password read with surrogateescape) is not sent as
    CESU-8; the user is told what to do and nothing reaches the server."""
    with raw_server([GREETING, AUTH_OK]) as server:
        c = client(server, password="pass\udcff")
        with pytest.raises(TclPortError) as info:
            c.connect()
        c.close()
        server.thread.join(5)
    assert info.value.code == "BAD_TEXT" and info.value.phase == "auth"
    assert "password" in info.value.message and "enter it again" in info.value.message
    assert "DCFF" not in str(info.value.as_dict())  # nothing about the password's characters
    assert bytes(server.received) == b""
    replies = [GREETING, AUTH_OK, LOGGING_LISTS_REPLY, QUIT_OK]
    with raw_server(replies) as server, client(server) as c:
        with pytest.raises(TclPortError) as info:
            c.logging_set("\ud800")
        assert info.value.code == "BAD_TEXT" and "U+D800" in info.value.message
        assert c.logging().mode == "lists"  # nothing was sent: the session goes on


def test_host_denied_client_sends_nothing() -> None:
    """S3: after HOST_DENIED the client closes without a word."""
    denied = frame("ERR", b"HOST_DENIED {10.1.2.3 is not in TCLPORT Hosts}")
    with raw_server([denied]) as server:
        error = fails(server)
        server.thread.join(5)
    assert error.code == "HOST_DENIED" and "lm tclport 10.1.2.3" in error.message
    assert bytes(server.received) == b""


def test_auth_failed_client_sends_nothing_more() -> None:
    """S5: after AUTH_FAILED the client sends no quit (the server has closed)."""
    with raw_server([GREETING, frame("ERR", b"AUTH_FAILED {bad password}")]) as server:
        error = fails(server)
        server.thread.join(5)
    assert error.code == "AUTH_FAILED"
    assert server.lines == [b"auth TCLPORTPasswd"]


# -- client: reading replies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"OK 016", b"OK 0016", b"OK +16", b"OK -16", b"OK 16 ", b"OK  16", b"OK\t16", b" OK 16",
        b"OK ", b"OK", b"", b"OK 0x10", b"OK 16\r", b"OK 1_6", "OK \uff11\uff16".encode(),
        b"ok 16", b"Ok 16", b"OK\x0016", b"MAYBE 16", b"OK 16 16",
    ],
)
def test_bad_header_is_malformed(header: bytes) -> None:
    """F4, F5 [D1]: only `OK|ERR SP (0|[1-9][0-9]*) LF`; `OK 016` is 14 bytes to Tcl 8.6.
    The 16-byte body is a valid logging dict, so only the header can be at fault."""
    with raw_server([GREETING, AUTH_OK, header + b"\nmode no label No\n"]) as server:
        error = fails(server)
    assert error.code == "MALFORMED"
    assert "cannot read" in error.message


def test_canonical_zero_length_is_read() -> None:
    replies = [GREETING, AUTH_OK, b"OK 0\n\n", b"OK 0\n\n", QUIT_OK]
    with raw_server(replies) as server, client(server) as c:
        assert c.call("logging") == "" and c.call("sites") == ""


def test_header_of_64_bytes_is_read_65_is_refused() -> None:
    """F6: a 64-byte header (LF not counted) is parsed: here it announces too much."""
    header64 = b"ERR 1" + b"0" * 59
    assert len(header64) == 64
    with raw_server([GREETING, AUTH_OK, header64 + b"\n"]) as server:
        error = fails(server)
    assert error.code == "OVERSIZED" and "announced a reply of" in error.message
    with raw_server([GREETING, AUTH_OK, header64 + b"0\n"]) as server:
        error = fails(server)
    assert error.code == "OVERSIZED" and "header line longer than 64 bytes" in error.message


@pytest.mark.parametrize(
    ("after_body", "code"),
    [(b"", "MALFORMED"), (b"\r\n", "MALFORMED"), (b"X", "MALFORMED"), (b" \n", "MALFORMED")],
)
def test_body_must_end_with_exactly_one_lf(after_body: bytes, code: str) -> None:
    """F7: LENGTH bytes, then one LF."""
    body = b"mode no label No"
    reply = f"OK {len(body)}\n".encode() + body + after_body
    with raw_server([GREETING, AUTH_OK, reply], close_after=True) as server:
        assert fails(server).code == code


def test_unasked_reply_is_refused_not_paired() -> None:
    """F7, F11 [D7]: bytes after a reply answer no request; before this fix the next call
    returned that stale reply (logging said "no" while the server had answered "lists")."""
    stale = ok(b"mode no label No")
    with raw_server([GREETING, AUTH_OK, LOGGING_LISTS_REPLY + stale, LOGGING_LISTS_REPLY]) as srv:
        c = client(srv).connect()
        assert c.logging().mode == "lists"
        time.sleep(0.05)  # let the stale reply arrive
        with pytest.raises(TclPortError) as info:
            c.logging()
        c.close()
    assert info.value.code == "MALFORMED"
    assert "answer no request" in info.value.message and "bytes" in info.value.message
    # One LF too many after the body is the same fault, found at the next request.
    with raw_server([GREETING, AUTH_OK, LOGGING_LISTS_REPLY + b"\n", LOGGING_LISTS_REPLY]) as srv:
        c = client(srv).connect()
        c.logging()
        with pytest.raises(TclPortError) as info:
            c.logging()
        c.close()
    assert info.value.code == "MALFORMED"


@pytest.mark.parametrize(
    "body", [b"ONLYCODE", b"A b c", b"{} msg", b"", b"CODE {unbalanced", b"{A} {b} {c}"]
)
def test_err_body_must_be_two_elements(body: bytes) -> None:
    """F9: an ERR body is `{CODE message}` with a non-empty CODE."""
    with raw_server([GREETING, AUTH_OK, frame("ERR", body)]) as server:
        error = fails(server)
    assert error.code == "MALFORMED" and "ERR reply must be {CODE message}" in error.message
    assert f"{len(body)} bytes" in error.message


def test_unknown_error_code_is_shown_as_it_is() -> None:
    """E1: an unknown code is shown with its message; an ERR keeps the session."""
    replies = [GREETING, AUTH_OK, frame("ERR", b"QUOTA_EXCEEDED {too many calls today}"),
               LOGGING_LISTS_REPLY, QUIT_OK]
    with raw_server(replies) as server, client(server) as c:
        with pytest.raises(TclPortError) as info:
            c.logging()
        assert (info.value.code, info.value.message) == (
            "QUOTA_EXCEEDED", "QUOTA_EXCEEDED: too many calls today"
        )
        assert str(info.value).startswith("Lists (127.0.0.1:")
        assert c.logging().mode == "lists"


@pytest.mark.parametrize(
    "greeting",
    [
        ok(b"protocol 01 product ListManager"),
        ok(b"protocol 2 product ListManager"),
        ok(b"product ListManager"),
        ok(b"protocol 1 product"),
        ok(b"protocol {1"),
        frame("ERR", b"ONLYCODE"),  # [D8]: was MALFORMED, the profile says "not a TclPort"
        frame("ERR", b""),
        b"OK 030\nprotocol 1 product ListManager\n",
        b"220 mail.example.com ESMTP\r\n",
        b"HTTP/1.1 400 Bad Request\r\n\r\n",
    ],
)
def test_greeting_that_is_not_profile_1(greeting: bytes) -> None:
    """S2: a greeting that is not a valid reply, or not protocol 1."""
    with raw_server([greeting], close_after=True) as server:
        error = fails(server)
    assert error.code == "NOT_TCLPORT" and error.phase == "greeting"
    assert f"127.0.0.1:{server.address[1]} answered, but not as a ListManager TclPort" in (
        error.message
    )


def test_auth_reply_must_be_empty() -> None:
    """S4 [D6]: auth answers OK with an empty body."""
    with raw_server([GREETING, ok(b"welcome")]) as server:
        error = fails(server)
    assert (error.code, error.phase) == ("MALFORMED", "auth")
    assert "must be empty" in error.message and "7 bytes" in error.message


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b"\xff", "UTF-8"),
        (b"mode {no\xc0\xaf} label No", "UTF-8"),  # overlong "/"
        (b"mode {\xed\xa0\x80} label No", "UTF-8"),  # CESU-8 surrogate
        (b"mode {\xf4\x90\x80\x80} label No", "UTF-8"),  # above U+10FFFF
    ],
)
def test_reply_that_is_not_strict_utf8(body: bytes, what: str) -> None:
    """V6: reply text is strict UTF-8."""
    with raw_server([GREETING, AUTH_OK, frame("OK", body)]) as server:
        error = fails(server)
    assert error.code == "MALFORMED" and what in error.message
    assert f"{len(body)}-byte" in error.message


def lists_reply(total: int, *items: dict[str, str]) -> bytes:
    full = [{"name": "x", "site": "", "descr": "", "created": "", "members": "1", "admin": "",
             **item} for item in items]
    return ok(encode_dict({"total": str(total),
                           "items": encode_list(encode_dict(i) for i in full)}).encode())


@pytest.mark.parametrize(
    ("members", "good"),
    [
        ("0", True), ("7", True), ("9223372036854775807", True),
        ("010", False), ("00", False), ("+1", False), ("-1", False), (" 1", False),
        ("1 ", False), ("1.0", False), ("1e3", False), ("0x10", False), ("1_000", False),
        ("9223372036854775808", False), ("99999999999999999999", False), ("", False),
        ("\u0661", False),  # Arabic-Indic one: int() takes it
    ],
)
def test_reply_integers_are_strict(members: str, good: bool) -> None:
    """V3 [D1]: decimal ASCII, canonical, fits the BIGINT columns."""
    with raw_server([GREETING, AUTH_OK, lists_reply(1, {"members": members}), QUIT_OK]) as server:
        if good:
            with client(server) as c:
                assert c.lists()[0].members == int(members)
            return
        error = fails(server, "lists")
    assert error.code == "MALFORMED" and "'members'" in error.message


@pytest.mark.parametrize(
    "started",
    ["2026-01-01 06:00:00Z", "2026-01-01T06:00:00", "2026-01-01T06:00:00+00:00",
     "2026-01-01T06:00Z", "2026-01-01T06:00:60Z", "2026-13-01T06:00:00Z", "2026-01-01t06:00:00z",
     "2026-01-01T06:00:00.5Z"],
)
def test_reply_dates_and_times_are_strict(started: str) -> None:
    """V4, V5: times are YYYY-MM-DDTHH:MM:SSZ (dates: see test_client bad field values)."""
    body = encode_dict({"product": "ListManager", "version": "12.3", "hostname": "h",
                        "started": started})
    with raw_server([GREETING, AUTH_OK, ok(body.encode())]) as server:
        error = fails(server, "server_info")
    assert error.code == "MALFORMED" and "'started'" in error.message


@pytest.mark.parametrize(
    ("call", "args", "body", "named"),
    [
        ("server_info", (), b"product ListManager version 12.3", "'hostname'"),
        ("logging", (), b"mode lists", "logging"),
        ("logging", (), b"mode lists label", "dict"),
        ("logging_set", ("lists",), b"label No", "'mode'"),
        ("sites", (), b"{name a}", "'title'"),
        ("sites", (), b"{name a title}", "dict"),
        ("lists", (), b"total 1", "'items'"),
        ("lists", (), b"items {}", "'total'"),
        ("usage", (date(2026, 1, 1), date(2026, 1, 2)),
         b"{list a site s messages 1 recipients 2}", "'bytes'"),
    ],
)
def test_result_shapes_are_checked(call: str, args: tuple[Any, ...], body: bytes,
                                   named: str) -> None:
    """K1-K6: each command's result shape; what is missing is named, with the reply size."""
    with raw_server([GREETING, AUTH_OK, ok(body)]) as server:
        error = fails(server, call, *args)
    assert error.code == "MALFORMED" and named in error.message
    assert f"{len(body)} bytes" in error.message


@pytest.mark.parametrize(
    "names",
    [
        ["b", "a"],
        ["a", "B"],  # "B" (0x42) sorts before "a" (0x61): case-sensitive byte order
        ["a", "a"],
        ["\U00010000", "\uffff"],  # UTF-16 order; UTF-8 bytes put U+FFFF first
        ["é", "z"],  # a collation's order; in bytes "z" (0x7a) < "é" (0xc3 0xa9)
    ],
)
def test_lists_page_must_be_sorted_by_utf8_bytes(names: list[str]) -> None:
    """K5: a page not strictly ascending by UTF-8 bytes is refused."""
    reply = lists_reply(2, *({"name": n} for n in names))
    with raw_server([GREETING, AUTH_OK, reply]) as server:
        error = fails(server, "lists")
    assert error.code == "MALFORMED" and "not sorted" in error.message


def test_lists_in_utf8_byte_order_are_read() -> None:
    names = ["B", "a", "z", "é", "\uffff", "\U00010000"]
    reply = lists_reply(len(names), *({"name": n} for n in names))
    with raw_server([GREETING, AUTH_OK, reply, QUIT_OK]) as server, client(server) as c:
        assert [r.name for r in c.lists()] == names


def test_lists_page_arguments() -> None:
    """K5: the client never asks for a LIMIT outside 1..5000 or a negative OFFSET."""
    for bad in (0, 5001):
        with pytest.raises(ValueError):
            ClientSettings(page_size=bad)
    with raw_server([GREETING, AUTH_OK, QUIT_OK]) as server, client(server) as c:
        for offset, limit in ((0, 0), (0, 5001), (-1, 10)):
            with pytest.raises(ValueError):
                c.lists_page(offset, limit)
    assert server.lines == [b"auth TCLPORTPasswd", b"quit"]


@pytest.mark.parametrize(
    ("call", "args", "body"),
    [
        ("sites", (), b"{name a title A} {name a title B}"),
        ("usage", (date(2026, 1, 1), date(2026, 1, 2)),
         b"{list a site s messages 1 recipients 2 bytes 3} "
         b"{list a site s messages 1 recipients 2 bytes 3}"),
    ],
)
def test_repeated_names_are_refused(call: str, args: tuple[Any, ...], body: bytes) -> None:
    """K4, K6 [D13]: names are unique; a second usage row for a list would be billed twice."""
    with raw_server([GREETING, AUTH_OK, ok(body)]) as server:
        error = fails(server, call, *args)
    assert error.code == "MALFORMED" and "appears twice" in error.message


def test_unknown_logging_mode_is_shown_as_it_is() -> None:
    """K2: another mode token with its own label is shown as it is; it cannot count."""
    reply = ok(b"mode errors label {Log Errors Only}")
    with raw_server([GREETING, AUTH_OK, reply, QUIT_OK]) as server:
        report = check_logging(*server.address, settings=PATIENT)
    assert (report.mode, report.label, report.ok) == ("errors", "Log Errors Only", False)
    assert '"Log Errors Only"' in report.message
    assert LISTS_LABEL.decode() in report.message


# -- section 6: what the user reads ------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "code", "phrases"),
    [
        (frame("ERR", b"NOT_PERMITTED {remote changes are off}"), "NOT_PERMITTED",
         ["'logging'", "on the hosting server itself"]),
        (frame("ERR", b"LOGGING_OFF {logging is off}"), "LOGGING_OFF",
         [LISTS_LABEL.decode(), "Server Settings: Automatic Maintenance: Logging"]),
        (frame("ERR", b"BUSY {maintenance}"), "BUSY", ["try again later"]),
        (frame("ERR", b"INTERNAL {db gone}"), "INTERNAL", ["db gone", "try again later",
                                                           "ListManager log"]),
        (frame("ERR", b"BAD_ARGS {no}"), "BAD_ARGS", ["'logging'", "ListManager version"]),
        (frame("ERR", b"BAD_REQUEST {no}"), "BAD_REQUEST", ["ListManager version"]),
        (frame("ERR", b"UNKNOWN_COMMAND {no}"), "UNKNOWN_COMMAND", ["'logging'",
                                                                    "command names"]),
        (frame("ERR", b"AUTH_REQUIRED {no}"), "AUTH_REQUIRED", ["retry"]),
        (b"OK 99999999999\n", "OVERSIZED", ["99,999,999,999 bytes", "limit"]),
        (b"OK 40\nmode", "MALFORMED", ["4 of the 40 bytes"]),
        (b"OK 5\nmode no", "MALFORMED", ["5-byte", "LF"]),
    ],
)
def test_messages_say_what_to_do(reply: bytes, code: str, phrases: list[str]) -> None:
    """M1: each failure names the server and says what to do (spec section 6)."""
    with raw_server([GREETING, AUTH_OK, reply], close_after=True) as server:
        error = fails(server)
    assert error.code == code
    for phrase in phrases:
        assert phrase in error.message, (phrase, error.message)


@pytest.mark.parametrize(
    ("body", "size"),
    [
        (b"mode {lists", "11 bytes"),
        (b"mode lists label", "16 bytes"),
        (b"{" * 3000, "3,000 bytes"),
    ],
)
def test_malformed_messages_say_what_and_how_large(body: bytes, size: str) -> None:
    """M1 [D9]: "the server sent a reply this client cannot read (what, and how large)"."""
    with raw_server([GREETING, AUTH_OK, ok(body)]) as server:
        error = fails(server)
    assert error.code == "MALFORMED"
    assert "cannot read" in error.message and size in error.message
    assert "dict" in error.message


# -- the simulator, driven by literal bytes ------------------------------------------------------

_CANONICAL = re.compile(rb"(OK|ERR) (0|[1-9][0-9]*)")


class Wire:
    """A client of literal bytes that checks every reply frame independently of our client."""

    def __init__(self, address: tuple[str, int], timeout: float = 2.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buf = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"closed after {self.buf!r}")
            self.buf += data

    def raw_reply(self) -> bytes:
        """One whole reply frame, checked: canonical header <= 64 bytes, one LF, UTF-8."""
        while b"\n" not in self.buf:
            assert len(self.buf) <= 64
            self._need(len(self.buf) + 1)
        header = self.buf.split(b"\n", 1)[0]
        assert len(header) <= 64 and _CANONICAL.fullmatch(header), header
        length = int(header.split(b" ")[1])
        total = len(header) + 1 + length + 1
        self._need(total)
        whole, self.buf = self.buf[:total], self.buf[total:]
        assert whole.endswith(b"\n")
        whole[len(header) + 1 : -1].decode("utf-8")  # strict
        return whole

    def expect(self, data: bytes) -> None:
        assert self.raw_reply() == data

    def status_body(self) -> tuple[bytes, bytes]:
        whole = self.raw_reply()
        header, body = whole.split(b"\n", 1)
        return header.split(b" ")[0], body[:-1]

    def code(self) -> str:
        status, body = self.status_body()
        assert status == b"ERR", body
        words = decode_list(body.decode("utf-8"))
        assert len(words) == 2 and words[0], words
        return words[0]

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def login(self) -> Wire:
        self.expect(b"OK 30\nprotocol 1 product ListManager\n")
        self.send(b"auth TCLPORTPasswd\n")
        self.expect(b"OK 0\n\n")
        return self


@pytest.fixture(scope="module")
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=2, lists=30, seed=2)) as server:
        yield server


@pytest.fixture
def fresh() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=2, lists=30, seed=2)) as server:
        yield server


def test_sim_greeting_and_auth_bytes(sim: HostSim) -> None:
    """S1, S4, F5: the greeting and the auth answer, byte for byte."""
    with Wire(sim.address) as wire:
        wire.login()


def test_sim_auth_required_even_for_quit(sim: HostSim) -> None:
    """S6 [D5]: before auth, every command but auth gets AUTH_REQUIRED, quit included."""
    with Wire(sim.address) as wire:
        wire.expect(b"OK 30\nprotocol 1 product ListManager\n")
        for line in (b"quit\n", b"server_info\n", b"lists 0 10\n", b"no_such_command\n"):
            wire.send(line)
            wire.expect(frame("ERR", b"AUTH_REQUIRED {send auth first}"))
        wire.send(b"auth TCLPORTPasswd\n")
        wire.expect(b"OK 0\n\n")


def test_sim_auth_failed_bytes(sim: HostSim) -> None:
    """S5: AUTH_FAILED, then the server closes."""
    with Wire(sim.address) as wire:
        wire.expect(b"OK 30\nprotocol 1 product ListManager\n")
        wire.send(b"auth nope\n")
        assert wire.code() == "AUTH_FAILED"
        assert wire.closed()


def test_sim_host_denied_bytes(fresh: HostSim) -> None:
    """S3: `ERR {HOST_DENIED {<ip> is not in TCLPORT Hosts}}`, then close."""
    fresh.set_allowed_hosts(["10.0.0.0/8"])
    with Wire(fresh.address) as wire:
        wire.expect(frame("ERR", b"HOST_DENIED {127.0.0.1 is not in TCLPORT Hosts}"))
        assert wire.closed()


def test_sim_quit_bytes(sim: HostSim) -> None:
    """S7: quit -> `OK 0`, empty body, then close."""
    with Wire(sim.address) as wire:
        wire.login()
        wire.send(b"quit\n")
        wire.expect(b"OK 0\n\n")
        assert wire.closed()


# Bytes a peer sends that the server has not read when a rule makes it close: more than one
# recv (64 KiB) takes, so some are still in the kernel's buffer at the close.
_PENDING = b"x" * 100_000


def _reply_then_clean_end(wire: Wire, expected: bytes) -> None:
    wire.expect(expected)
    # A clean end of stream (FIN), not a reset: a reset can lose the reply on a real network
    # and makes a peer read "connection reset by peer" instead of the end.
    assert wire.sock.recv(1) == b""


def test_sim_host_denied_close_is_not_a_reset(fresh: HostSim) -> None:
    """S3 [D14]: HOST_DENIED, then a close that keeps the reply, even with input pending."""
    fresh.set_allowed_hosts(["10.0.0.0/8"])
    with Wire(fresh.address) as wire:
        wire.send(b"auth TCLPORTPasswd\n" + _PENDING)
        _reply_then_clean_end(
            wire, frame("ERR", b"HOST_DENIED {127.0.0.1 is not in TCLPORT Hosts}"))


def test_sim_auth_failed_close_is_not_a_reset(sim: HostSim) -> None:
    """S5 [D14]: AUTH_FAILED, then a clean close, even with the next request pending."""
    with Wire(sim.address) as wire:
        wire.expect(GREETING)
        wire.send(b"auth nope\n" + _PENDING)
        _reply_then_clean_end(wire, frame("ERR", b"AUTH_FAILED {wrong TclPort password}"))


def test_sim_quit_close_is_not_a_reset(sim: HostSim) -> None:
    """S7 [D14]: quit -> OK, then a clean close, even with more input pending."""
    with Wire(sim.address) as wire:
        wire.login()
        wire.send(b"quit\n" + _PENDING)
        _reply_then_clean_end(wire, AUTH_OK)


def test_sim_closing_session_ends_when_the_peer_stays_silent(fresh: HostSim) -> None:
    """S7 [D14]: the drain before the close is bounded: a peer that neither sends nor hangs
    up after quit does not keep the session (about one second of silence ends it)."""
    with Wire(fresh.address) as wire:
        wire.login()
        wire.send(b"quit\n")
        wire.expect(AUTH_OK)
        started = time.monotonic()
        settle(fresh, timeout=5)
        assert fresh.active_sessions == 0
        assert time.monotonic() - started < 4
        assert wire.sock.recv(1) == b""


def test_sim_closing_session_ends_when_the_peer_keeps_sending(
    fresh: HostSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S7 [D14]: a peer that keeps sending after quit cannot hold the session open: the drain
    stops at its overall bound (10 s; 0.5 s here)."""
    monkeypatch.setattr(simulator, "_DRAIN_SECONDS", 0.5)
    with Wire(fresh.address) as wire:
        wire.login()
        wire.send(b"quit\n")
        wire.expect(AUTH_OK)
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while fresh.active_sessions and time.monotonic() - started < 5:
                wire.send(b"x" * 1024)
                time.sleep(0.05)
        settle(fresh, timeout=2)
        assert fresh.active_sessions == 0
        assert time.monotonic() - started < 3


def test_sim_sends_dates_for_records_without_one() -> None:
    """K5, V4, 4b [D15]: `created` and `joined` are YYYY-MM-DD dates on the wire, never empty
    (the profile lets only `site`, `admin` and an admin's `name` be empty): a dataset record
    without a date goes out as 2000-01-01, and `started` is always a time."""
    data = Dataset(lists=[ListRecord("l1", "", "", None, 1, "a@example.com")],
                   members=[MemberEntry("l1", "pat@example.org")])
    with HostSim(data) as server, Wire(server.address) as wire:
        server.add_list("l2")
        server.add_member("l2", "PAT@example.org")
        wire.login()
        wire.send(b"lists 0 10\n")
        wire.expect(frame("OK", b"total 2 items {{name l1 site {} descr {} created 2000-01-01 "
                                b"members 1 admin a@example.com} {name l2 site {} descr {} "
                                b"created 2000-01-01 members 0 admin {}}}"))
        wire.send(b"find_member pat@example.org\n")
        wire.expect(frame("OK", b"items {{list l1 site {} email pat@example.org type normal "
                                b"joined 2000-01-01} {list l2 site {} email PAT@example.org "
                                b"type normal joined 2000-01-01}} truncated 0"))
        wire.send(b"server_info\n")
        status, body = wire.status_body()
        assert status == b"OK"
        assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z",
                            decode_dict(body.decode())["started"])


def test_generated_datasets_date_every_list() -> None:
    """D15: generated lists all have a creation date; the seed's other data is as before."""
    data = Dataset.generate(lists=60, seed=3)
    assert all(rec.created is not None for rec in data.lists)
    assert [rec.created for rec in data.lists[::11]] == [UNDATED] * 6
    assert data.lists[1].created == date(2023, 11, 8)  # drawn as before this change


def test_sim_ignores_cr_before_lf(sim: HostSim) -> None:
    """F2: `\\r\\n` ends a request like `\\n`."""
    with Wire(sim.address) as wire:
        wire.expect(b"OK 30\nprotocol 1 product ListManager\n")
        wire.send(b"auth TCLPORTPasswd\r\n")
        wire.expect(b"OK 0\n\n")
        wire.send(b"logging\r\n")
        wire.expect(LOGGING_LISTS_REPLY)


def test_sim_logging_labels_bytes(fresh: HostSim) -> None:
    """K2: `no` is labelled No; an unknown mode keeps its own label."""
    with Wire(fresh.address) as wire:
        wire.login()
        fresh.set_logging("no")
        wire.send(b"logging\n")
        wire.expect(ok(b"mode no label No"))
        fresh.set_logging("bounces", "Log Bounces Only")
        wire.send(b"logging\n")
        wire.expect(ok(b"mode bounces label {Log Bounces Only}"))


@pytest.mark.parametrize(
    "line",
    [b"auth \xff", b"auth TCLPORT\xc0\xafPasswd", b"auth \xed\xa0\x80",
     b"auth \xf8\x88\x80\x80\x80"],
)
def test_sim_refuses_requests_that_are_not_utf8(sim: HostSim, line: bytes) -> None:
    """V6: request text is strict UTF-8: BAD_REQUEST, the session goes on."""
    with Wire(sim.address) as wire:
        wire.expect(b"OK 30\nprotocol 1 product ListManager\n")
        wire.send(line + b"\n")
        assert wire.code() == "BAD_REQUEST"
        wire.send(b"auth TCLPORTPasswd\n")
        wire.expect(b"OK 0\n\n")


def test_sim_never_sends_invalid_utf8(fresh: HostSim) -> None:
    """V6 [D4]: an ERR that echoes `\\uD800` from a request, or a dataset name with a lone
    surrogate, never goes out as CESU-8 (Wire checks every reply is strict UTF-8)."""
    with Wire(fresh.address) as wire:
        wire.login()
        wire.send(b"\\uD800\n")
        assert wire.code() == "UNKNOWN_COMMAND"
        wire.send(b"logging_set \\uDFFF\n")
        assert wire.code() == "BAD_ARGS"
        fresh.add_list("bad \udc80 name")
        wire.send(b"lists 0 5000\n")
        assert wire.code() == "INTERNAL"
        wire.send(b"logging\n")
        assert wire.status_body()[0] == b"OK"


@pytest.mark.parametrize(
    ("offset", "limit", "good"),
    [
        (b"0", b"1", True), (b"0", b"5000", True), (b"29", b"5000", True),
        (b"01", b"10", False), (b"0", b"010", False), (b"00", b"10", False),
        (b"+1", b"10", False), (b"0", b"1.0", False), (b"0", b"0x10", False),
        (b"{ 1}", b"10", False), (b"9223372036854775808", b"10", False), (b"{}", b"10", False),
        (b"0", b"0", False), (b"0", b"5001", False), (b"-1", b"10", False),
    ],
)
def test_sim_request_integers_are_strict(sim: HostSim, offset: bytes, limit: bytes,
                                         good: bool) -> None:
    """V3 [D1], K5: OFFSET and LIMIT are canonical decimal; LIMIT 1..5000 else BAD_ARGS."""
    with Wire(sim.address) as wire:
        wire.login()
        wire.send(b"lists " + offset + b" " + limit + b"\n")
        if good:
            assert wire.status_body()[0] == b"OK"
        else:
            assert wire.code() == "BAD_ARGS"


@pytest.mark.parametrize(
    "dates",
    [b"2026-1-01 2026-01-31", b"20260101 20260131", b"2026-01-01T00:00:00Z 2026-01-31",
     b"2026-01-01 2026-02-30", b"{2026-01-01 } 2026-01-31", b"2026-01-01"],
)
def test_sim_request_dates_are_strict(sim: HostSim, dates: bytes) -> None:
    """V4: usage FROM TO are YYYY-MM-DD."""
    with Wire(sim.address) as wire:
        wire.login()
        wire.send(b"usage " + dates + b"\n")
        assert wire.code() == "BAD_ARGS"
        wire.send(b"usage 2026-01-01 2026-01-01\n")
        assert wire.status_body()[0] == b"OK"


def test_sim_counts_a_bounded_number_of_unknown_commands(fresh: HostSim) -> None:
    """[D12]: a peer inventing command names cannot grow ``HostSim.requests`` without bound."""
    with Wire(fresh.address) as wire:
        wire.login()
        wire.send(b"".join(b"made_up_%d\n" % n for n in range(400)))
        for _ in range(400):
            assert wire.code() == "UNKNOWN_COMMAND"
        wire.send(b"logging\n")
        assert wire.status_body()[0] == b"OK"
    assert len(fresh.requests) <= 260 and fresh.requests["logging"] == 1


def test_sim_answers_pipelined_requests_in_order(sim: HostSim) -> None:
    """F11: replies come in request order, one per request."""
    with Wire(sim.address) as wire:
        wire.login()
        wire.send(b"logging\nsites\nno_such\nserver_info\nlists 0 1\n")
        assert wire.status_body()[1].startswith(b"mode lists ")
        assert wire.status_body()[1].startswith(b"{name site1 ")
        assert wire.code() == "UNKNOWN_COMMAND"
        assert wire.status_body()[1].startswith(b"product ListManager ")
        assert wire.status_body()[1].startswith(b"total 30 items ")


# -- robustness: fuzzing ---------------------------------------------------------------------------

FUZZ = settings(
    # `make stress` runs many more (LM_BILLING_FUZZ_EXAMPLES; docs/operations.md).
    max_examples=int(os.environ.get("LM_BILLING_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FUZZ_SETTINGS = ClientSettings(
    connect_timeout=0.5, read_timeout=0.15, operation_timeout=0.25, max_reply_bytes=512
)
_TAIL = b"x" * (4 * 1024 * 1024)

_VALID = {
    "server_info": b"product ListManager version 12.3 hostname h started 2026-01-01T06:00:00Z",
    "logging": b"mode lists label {" + LISTS_LABEL + b"}",
    "sites": b"{name s1 title {Site 1}} {name s2 title {}}",
    "lists": b"total 2 items {{name a site {} descr {} created 2026-01-02 members 5 admin {}} "
             b"{name b site s descr d created {} members 0 admin x@y}}",
    "usage": b"{list a site s messages 1 recipients 2 bytes 3}",
}
_CALLS = {
    "server_info": (), "logging": (), "sites": (), "lists": (),
    "usage": (date(2026, 1, 1), date(2026, 1, 31)),
}


@st.composite
def fuzzed_body(draw: st.DrawFn, valid: bytes) -> bytes:
    kind = draw(st.sampled_from(["valid", "mutated", "binary", "syntax"]))
    if kind == "valid":
        return valid
    if kind == "binary":
        return draw(st.binary(max_size=80))
    if kind == "syntax":
        pieces = st.sampled_from([b"{", b"}", b'"', b"\\", b" ", b"\n", b"a", b"\xc3\xa9",
                                  b"\xff", b"0", b"name", b"total", b"items"])
        return b"".join(draw(st.lists(pieces, max_size=30)))
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        if draw(st.booleans()) and at < len(data):
            del data[at]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
    return bytes(data)


@st.composite
def fuzzed_reply(draw: st.DrawFn, valid: bytes) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=100))
    body = draw(fuzzed_body(valid))
    status = draw(st.sampled_from([b"OK", b"OK", b"ERR", b"ok", b"", b"MAYBE"]))
    if status == b"ERR" and draw(st.booleans()):
        body = b"BUSY {try later}"
    n = len(body)
    length = draw(st.sampled_from([
        str(n).encode(), str(n).encode(), str(n + 1).encode(), str(max(0, n - 1)).encode(),
        b"0" + str(n).encode(), b"+" + str(n).encode(), b"", b"99999999999", b"513",
    ]))
    sep = draw(st.sampled_from([b" ", b" ", b"  ", b"\t"]))
    end = draw(st.sampled_from([b"\n", b"\n", b"", b"\r\n", b"\n\n", b"\nOK 0\n\n"]))
    return status + sep + length + b"\n" + body + end


@st.composite
def client_case(draw: st.DrawFn) -> tuple[str, list[bytes], bool, bool]:
    call = draw(st.sampled_from(sorted(_CALLS)))
    fuzz_greeting = draw(st.integers(0, 5)) == 0
    greeting = draw(fuzzed_reply(b"protocol 1 product ListManager")) if fuzz_greeting else GREETING
    replies = [greeting, AUTH_OK, draw(fuzzed_reply(_VALID[call]))]
    hang = draw(st.integers(0, 9)) == 0
    tail = draw(st.integers(0, 9)) == 0
    return call, replies, hang, tail


@FUZZ
@given(case=client_case())
def test_fuzz_client_reply_parser(case: tuple[str, list[bytes], bool, bool]) -> None:
    """F10, F8: only TclPortError, never past the deadline, never more than the limit in
    memory (a 4 MiB tail the server pushes after its reply is never read)."""
    call, replies, hang, tail = case
    tracemalloc.start()
    try:
        with raw_server(replies, close_after=not hang, tail=_TAIL if tail else b"") as server:
            c = TclPortClient(*server.address, settings=FUZZ_SETTINGS)
            started = time.monotonic()
            try:
                c.connect()
                getattr(c, call)(*_CALLS[call])
                event("answered")
            except TclPortError as exc:
                assert exc.code and exc.message and str(exc).startswith("127.0.0.1:")
                event(f"{exc.phase.partition(':')[0]} {exc.code}")
            finally:
                c.close()
            elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # connect, at most two lists pages (the second finds the script ended), and quit: each
    # has its own operation deadline.
    assert elapsed < 3 * FUZZ_SETTINGS.operation_timeout + 0.3
    assert peak < 1024 * 1024


_REQUEST_PIECES = st.sampled_from([
    b"auth", b"TCLPORTPasswd", b"quit", b"server_info", b"logging", b"logging_set", b"lists",
    b"usage", b"sites", b"0", b"1", b"5000", b"5001", b"010", b"-1", b"2026-01-01", b"no",
    b"lists", b" ", b"  ", b"\t", b"\r", b"\n", b"\r\n", b"{", b"}", b'"', b"\\", b"\\n",
    b"\\uD800", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"\x00", b"#", b"[x]", b"$y",
])


@st.composite
def request_bytes(draw: st.DrawFn) -> tuple[bool, bytes]:
    login = draw(st.booleans())
    if draw(st.integers(0, 4)) == 0:
        data = draw(st.binary(max_size=300))
    else:
        data = b"".join(draw(st.lists(_REQUEST_PIECES, max_size=40)))
    return login, data


def _lines(data: bytes) -> list[bytes]:
    return [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")[:-1]]


@FUZZ
@given(case=request_bytes())
def test_fuzz_simulator_request_parser(
    fresh: HostSim, case: tuple[bool, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """F9, F11: every request line gets exactly one well-formed reply, in order, until a rule
    closes the session (AUTH_FAILED, quit); never a crash, a hang or a leaked session."""
    login, data = case
    caplog.set_level(logging.ERROR, logger="lm_billing_plugin.tclport.simulator")
    with Wire(fresh.address) as wire:
        if login:
            wire.login()
        else:
            wire.expect(b"OK 30\nprotocol 1 product ListManager\n")
        wire.send(data)
        wire.sock.shutdown(socket.SHUT_WR)
        authenticated = login
        for line in _lines(data):
            status, body = wire.status_body()
            assert status in (b"OK", b"ERR")
            if status == b"ERR":
                words = decode_list(body.decode("utf-8"))
                assert len(words) == 2 and words[0] in {
                    "AUTH_REQUIRED", "AUTH_FAILED", "UNKNOWN_COMMAND", "BAD_REQUEST",
                    "BAD_ARGS", "NOT_PERMITTED", "LOGGING_OFF",
                }, words
                if words[0] == "AUTH_FAILED":
                    break
                continue
            try:
                first = decode_list(line.decode("utf-8"))[0]
            except (ValueError, IndexError):
                pytest.fail(f"OK to a request that is no list: {line!r}")
            if first == "auth":
                authenticated = True
            if first == "quit":
                assert authenticated
                break
        assert wire.buf == b"" and wire.closed()
    settle(fresh)
    assert fresh.active_sessions == 0
    assert not caplog.records


def test_fuzzing_left_no_sockets_or_threads() -> None:
    """F10: after many fuzz sessions (above, module sim fixtures torn down per test), a run
    of hostile byte streams leaves no sockets or threads behind."""
    fds, threads = fd_count(), thread_count()
    with HostSim(Dataset.generate(lists=5)) as sim:
        for data in (b"\xff" * 70_000, b"{" * 65_537 + b"\n", b"auth x\n", b"\n" * 100):
            with contextlib.suppress(OSError), RawConn(sim.address) as conn:
                conn.sock.sendall(data)
                conn.sock.shutdown(socket.SHUT_WR)
                while conn.sock.recv(65536):
                    pass
        settle(sim)
    assert sockets_back_to(fds)
    assert thread_count() <= threads
