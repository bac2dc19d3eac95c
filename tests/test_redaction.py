"""The TclPort password never comes back out (issue 14, item 5): peers that echo it, in any
quoting, reach no page, flash, CLI output, log record or stored column; CLI output is inert."""

from __future__ import annotations

import contextlib
import html
import json
import logging
import socket
import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from _pages import PAGES_CONFIG, post, text_of
from _sim import GREETING, PATIENT, frame
from flask import Flask

from lm_billing_plugin.cli.output import echo, table
from lm_billing_plugin.engine import servers as registry
from lm_billing_plugin.models import Base
from lm_billing_plugin.state import get_state
from lm_billing_plugin.tclport import TclPortClient, TclPortError
from lm_billing_plugin.tclport.codec import decode_list, encode_list, encode_request

PASSWORDS = [
    "Zq\\9w",  # a backslash: quoting doubles it
    "Zq'9w",  # a quote: repr() switches to "..." or escapes it
    'Zq"9w',
    "Zq{9w",  # an unbalanced brace: Tcl quoting escapes it
    "Zq}9 {w",
    "\u00a4",  # one character
    "Zq" + "x7" * 49,  # 100 characters: a 40-byte excerpt would show a prefix
]

# How the peer answers: after auth (auth_*) or after a good auth, to every command (cmd_*).
MODES = [
    "auth_err_line",  # ERR {BAD_ARGS {bad request: <the request line as received>}}
    "auth_err_word",  # ERR {AUTH_FAILED {password <pw> is wrong}}
    "auth_odd_code",  # ERR {ECHO <pw>}: an unknown code is shown with its message
    "auth_err_not_list",  # ERR whose body is the raw request line (MALFORMED)
    "auth_ok_body",  # OK with the password as its body (auth must answer an empty OK)
    "auth_header",  # the request line sent back as a header line
    "cmd_err",  # ERR {INTERNAL {you said auth <pw>}}
    "cmd_not_dict",  # OK {product {x}<pw> version}: Tcl's parse error quotes 20 characters
    "cmd_header",  # a header line holding the password
]


class EchoPeer:
    """A TclPort-speaking server on 127.0.0.1 that repeats the password back (``mode``)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        # A closed listener does not wake a blocked accept() everywhere: poll a stop flag.
        self._listener.settimeout(0.05)
        self._stop = threading.Event()
        self.port = int(self._listener.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> EchoPeer:
        self._accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._accept.join(5)
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._session, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _session(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, ValueError):
            conn.settimeout(3)
            conn.sendall(GREETING)
            buf = b""
            password = ""
            while True:
                while b"\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                line, buf = buf.split(b"\n", 1)
                words = decode_list(line.decode("utf-8"))
                if words[0] == "auth":
                    password = words[1]
                    reply = self._auth_reply(line, password)
                    conn.sendall(reply)
                    if reply != frame("OK", b""):
                        return
                elif words[0] == "quit":
                    conn.sendall(frame("OK", b""))
                    return
                else:
                    conn.sendall(self._command_reply(password))
                    if self.mode == "cmd_header":
                        return

    def _auth_reply(self, line: bytes, password: str) -> bytes:
        mode = self.mode
        if mode == "auth_err_line":
            return frame("ERR", encode_list(["BAD_ARGS", f"bad request: {line.decode()}"])
                         .encode())
        if mode == "auth_err_word":
            return frame("ERR", encode_list(["AUTH_FAILED", f"password {password} is wrong"])
                         .encode())
        if mode == "auth_odd_code":
            return frame("ERR", encode_list(["ECHO", password]).encode())
        if mode == "auth_err_not_list":
            return frame("ERR", line + b" {")
        if mode == "auth_ok_body":
            return frame("OK", password.encode())
        if mode == "auth_header":
            return line + b"\n"
        return frame("OK", b"")

    def _command_reply(self, password: str) -> bytes:
        if self.mode == "cmd_not_dict":
            return frame("OK", f"product {{x}}{password} version".encode())
        if self.mode == "cmd_header":
            return f"OK {password}\n".encode()
        return frame("ERR", encode_list(["INTERNAL", f"you said auth {password}"]).encode())


def leaks(password: str, text: str) -> list[str]:
    """The forms of ``password`` found in ``text`` (raw, Tcl-, Python-, JSON-, HTML-quoted)."""
    forms = {
        password,
        encode_list([password]),
        encode_request([password]),
        repr(password)[1:-1],
        json.dumps(password)[1:-1],
        html.escape(password),
    }
    if len(password) > 20:
        forms.add(password[:20])  # a prefix of a long one counts too
    return sorted(form for form in forms if form and form in text)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("password", PASSWORDS)
def test_the_client_never_puts_an_echoed_password_in_an_error_or_log(
    mode: str, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with EchoPeer(mode) as peer:
        client = TclPortClient("127.0.0.1", peer.port, password, name="Echo", settings=PATIENT)
        with pytest.raises(TclPortError) as failed:
            client.connect()
            client.server_info()
        client.close()
    error = failed.value
    expected_phase = "auth" if mode.startswith("auth") else "command:server_info"
    assert error.phase == expected_phase, error
    seen = "\n".join(
        [str(error), repr(error), error.detail, json.dumps(error.as_dict(), ensure_ascii=False),
         *(r.getMessage() for r in caplog.records)]
    )
    assert leaks(password, seen) == [], seen
    assert "not shown" in seen  # it said that something was withheld, not nothing


def test_a_message_without_the_password_is_still_shown_after_auth() -> None:
    # Withholding is for text that holds the password, not for every server message.
    with EchoPeer("cmd_err") as peer:
        client = TclPortClient("127.0.0.1", peer.port, "Zq-other", settings=PATIENT)
        client.connect()
        client._password = "not-what-it-echoes"  # the server echoes "Zq-other"
        with pytest.raises(TclPortError) as failed:
            client.server_info()
        client.close()
    assert "you said auth Zq-other" in failed.value.message


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(**PAGES_CONFIG)


@pytest.mark.parametrize("mode", ["auth_err_line", "auth_odd_code", "auth_header", "cmd_err",
                                  "cmd_not_dict"])
@pytest.mark.parametrize("password", PASSWORDS)
def test_no_page_flash_cli_output_log_or_column_shows_an_echoed_password(
    app: Flask, mode: str, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with EchoPeer(mode) as peer:
        with app.app_context():
            server = registry.create_server("Echo", "127.0.0.1", peer.port, "", password,
                                            actor="test")
            sid = server.id
        web = app.test_client()
        detail = f"/billing/servers/{sid}"
        outputs = [
            text_of(post(web, f"{detail}/check", token_from=detail, follow=True)),
            text_of(post(web, f"{detail}/enable-logging", token_from=detail, follow=True)),
            text_of(web.get("/billing/")),
            text_of(web.get(detail)),
        ]
        cli = app.test_cli_runner()
        for args in (["servers", "check", "Echo"], ["servers", "check", "Echo", "--json"],
                     ["servers", "enable-logging", "Echo"],
                     ["servers", "enable-logging", "Echo", "--json"],
                     ["servers", "list"], ["servers", "list", "--json"],
                     ["validate", "Echo"], ["validate", "Echo", "--json"]):
            result = cli.invoke(args=["lm-billing", *args])
            assert result.exit_code != 0 or args[1] == "list", (args, result.output)
            outputs.append(result.output)
    outputs = [html.unescape(text) for text in outputs]
    assert any("not shown" in text for text in outputs)
    with app.app_context():
        engine = get_state(app).db.engine
        with engine.connect() as conn:
            for table_ in Base.metadata.sorted_tables:
                for row in conn.execute(sa.select(table_)):
                    outputs.append(" ".join(str(value) for value in row))
    outputs.extend(r.getMessage() for r in caplog.records)
    for text in outputs:
        assert leaks(password, text) == [], text[:2000]


# --- human CLI output is inert ----------------------------------------------------------------

HOSTILE_TEXT = "Lists\x1b]0;owned\x07\x1b]52;c;cm0gLXJmIH4=\x07\x9b31m\x7f\u202eevil\u2066x"


def test_echo_and_table_escape_control_and_bidi_characters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    echo(f"{HOSTILE_TEXT}\n\tnext line")
    echo(HOSTILE_TEXT, err=True)
    captured = capsys.readouterr()
    for stream in (captured.out, captured.err):
        for raw in ("\x1b", "\x07", "\x9b", "\x7f", "\u202e", "\u2066"):
            assert raw not in stream
        assert "\\x1b]0;owned\\x07" in stream and "\\u202e" in stream and "\\x9b" in stream
    assert "\n\tnext line" in captured.out  # layout characters stay
    rendered = table(["Name"], [[HOSTILE_TEXT]])
    assert "\x1b" not in rendered and "\u202e" not in rendered and "\\x1b" in rendered


def test_every_human_cli_command_escapes_what_a_server_sent(app: Flask) -> None:
    # A server named and described with escapes, and a peer whose ERR message holds them.
    bad_message = encode_list(["INTERNAL", f"oops {HOSTILE_TEXT}"]).encode()

    class Peer(EchoPeer):
        def _command_reply(self, password: str) -> bytes:
            return frame("ERR", bad_message)

    with Peer("cmd_err") as peer:
        with app.app_context():
            registry.create_server("Esc", "127.0.0.1", peer.port,
                                   "note \x1b]52;c;Zm9v\x07 \u202eend", actor="test")
        cli = app.test_cli_runner()
        results = {}
        for args in (["servers", "check", "Esc"], ["servers", "enable-logging", "Esc"],
                     ["validate", "Esc"], ["sync", "Esc"], ["servers", "list"],
                     ["problems"]):
            results[" ".join(args)] = cli.invoke(args=["lm-billing", *args])
        json_result = cli.invoke(args=["lm-billing", "servers", "check", "Esc", "--json"])
    for name, result in results.items():
        out = result.output
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, name
    assert "\\x1b" in results["servers check Esc"].output
    assert "\\x1b" in results["servers list"].output
    # JSON keeps text as it was: json.dumps writes control characters as \u escapes itself.
    assert "\x1b" not in json_result.output
    assert "\x1b]52;c;" in json.loads(json_result.output)["message"]


def test_nothing_a_peer_says_in_reply_to_auth_is_quoted_even_without_the_password() -> None:
    # Redaction at the source, not by matching: a transformed echo (here: reversed, upper
    # case) would slip past any match, so the reply to auth is never quoted at all.
    password = "Zq-source-pw"
    echoed = password[::-1].upper()
    for reply in (
        frame("ERR", encode_list(["BAD_ARGS", f"bad auth {echoed}"]).encode()),
        frame("ERR", encode_list(["ECHO", echoed]).encode()),
        frame("OK", echoed.encode()),
        f"{echoed}\n".encode(),
    ):

        class Peer(EchoPeer):
            def _auth_reply(self, line: bytes, pw: str, reply: bytes = reply) -> bytes:
                return reply

        with Peer("auth") as peer:
            client = TclPortClient("127.0.0.1", peer.port, password, settings=PATIENT)
            with pytest.raises(TclPortError) as failed:
                client.connect()
            client.close()
        error = failed.value
        assert error.phase == "auth"
        assert echoed not in str(error) and echoed not in error.detail, error
        assert "not shown" in str(error) or "not shown" in error.detail


def test_the_public_default_password_withholds_nothing() -> None:
    # "TCLPORTPasswd" shares "TCLP"/"PORT" with every HOST_DENIED message; it is documented,
    # so messages that contain pieces of it are shown.
    message = "you said auth TCLPORTPasswd near TCLPORT Hosts"

    class Peer(EchoPeer):
        def _command_reply(self, password: str) -> bytes:
            return frame("ERR", encode_list(["INTERNAL", message]).encode())

    with Peer("cmd_err") as peer:
        client = TclPortClient("127.0.0.1", peer.port, settings=PATIENT)
        client.connect()
        with pytest.raises(TclPortError) as failed:
            client.server_info()
        client.close()
    assert message in failed.value.message
