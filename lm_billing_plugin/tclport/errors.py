"""The one exception the TclPort client raises, with a message that tells the user what to do.

Codes are the client's own (DNS, REFUSED, ...) or the server's ERR code exactly as sent.
"""

from __future__ import annotations

import ipaddress

__all__ = [
    "ADDRESS_REFUSED",
    "BAD_TEXT",
    "CLIENT_CODES",
    "CLOSED",
    "DNS",
    "LOOKUP_COMMANDS",
    "MALFORMED",
    "MESSAGES",
    "NOT_TCLPORT",
    "OVERSIZED",
    "REFUSED",
    "REQUEST_TOO_LONG",
    "SERVER_CODES",
    "TIMEOUT",
    "UNREACHABLE",
    "TclPortError",
    "guidance",
]

# Failures the client detects itself.
DNS = "DNS"
REFUSED = "REFUSED"
TIMEOUT = "TIMEOUT"
UNREACHABLE = "UNREACHABLE"
NOT_TCLPORT = "NOT_TCLPORT"
MALFORMED = "MALFORMED"
OVERSIZED = "OVERSIZED"
CLOSED = "CLOSED"
# A request the client refuses to send because the profile caps request lines at 65,536 bytes.
REQUEST_TOO_LONG = "REQUEST_TOO_LONG"
# A request the client refuses to send because its text has no UTF-8 form (lone surrogates).
BAD_TEXT = "BAD_TEXT"
# A host the client will not connect to (cloud metadata, link-local, outside the allow-list,
# malformed): refused before any packet leaves; the detail says why (tclport/addresses.py).
ADDRESS_REFUSED = "ADDRESS_REFUSED"
CLIENT_CODES = frozenset(
    {DNS, REFUSED, TIMEOUT, UNREACHABLE, NOT_TCLPORT, MALFORMED, OVERSIZED, CLOSED,
     REQUEST_TOO_LONG, BAD_TEXT, ADDRESS_REFUSED}
)
# Codes a server sends in ERR replies (spec section 5); any other code is shown as sent.
SERVER_CODES = frozenset(
    {"HOST_DENIED", "AUTH_REQUIRED", "AUTH_FAILED", "UNKNOWN_COMMAND", "BAD_REQUEST",
     "BAD_ARGS", "NOT_PERMITTED", "LOGGING_OFF", "BUSY", "INTERNAL"}
)

# The optional commands of spec 4b, whose absence means "cannot be searched", not a fault.
LOOKUP_COMMANDS = frozenset({"find_admin", "find_member", "delete_member"})
TCLPORT_HOSTS_PATH = "Utilities: Administration: Server: Server Settings: Security: GUI Hosts"
LOGGING_PATH = "Server Settings: Automatic Maintenance: Logging"


class TclPortError(Exception):
    """A TclPort call failed; ``str()`` gives ``"<server>: <message>"`` for the user.

    ``phase`` is ``resolve``, ``connect``, ``greeting``, ``auth`` or ``command:<name>``;
    ``detail`` is the server's own ERR message or the client's technical finding, if any.
    """

    def __init__(
        self, server: str, phase: str, code: str, message: str, *, detail: str = ""
    ) -> None:
        super().__init__(server, phase, code, message)
        self.server = server
        self.phase = phase
        self.code = code
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.server}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"TclPortError(server={self.server!r}, phase={self.phase!r}, "
            f"code={self.code!r}, message={self.message!r})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Keep errors picklable (process pools, multiprocessing test helpers).
        return (_rebuild, (self.server, self.phase, self.code, self.message, self.detail))

    def as_dict(self) -> dict[str, str]:
        return {
            "server": self.server,
            "phase": self.phase,
            "code": self.code,
            "message": self.message,
            "detail": self.detail,
        }


def _rebuild(server: str, phase: str, code: str, message: str, detail: str) -> TclPortError:
    return TclPortError(server, phase, code, message, detail=detail)


def _seconds(value: float) -> str:
    return f"{value:g} s"


def host_port(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals bracketed."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def denied_ip(server_message: str) -> str | None:
    """The caller IP from a HOST_DENIED message (``<caller ip> is not in TCLPORT Hosts``)."""
    first = server_message.split(None, 1)[0] if server_message.strip() else ""
    try:
        return str(ipaddress.ip_address(first.strip("[]")))
    except ValueError:
        return None


def N_(template: str) -> str:
    """Marks a guidance template for the plugin's catalog (``make translations`` extracts
    N_); tclport has no Flask, so the page translates the finished English sentence by
    finding its template again (i18n.say, which reads MESSAGES)."""
    return template


# What guidance() says, as templates with named values: the English sentences are these
# filled in; the pages translate them (i18n.say), the CLI and the JSON API keep the English.
_DNS = N_("the host name %(host)s does not resolve; check the Host Name of this server.")
_ADDRESS_REFUSED = N_("billing does not connect to %(host)s; check the Host Name.")
_REFUSED = N_(
    "nothing listens on %(where)s: is ListManager running there, does its "
    "\"TCLPORT IP addresses\" setting (Server Settings: Machine Settings: IP Addresses) "
    "include this address, and does the firewall pass TCP %(port)s?"
)
_TIMEOUT = N_(
    "no answer from %(where)s; check that the host is up and that no firewall drops TCP "
    "%(port)s."
)
_TIMEOUT_WAITED = N_(
    "no answer from %(where)s within %(seconds)s; check that the host is up and that no "
    "firewall drops TCP %(port)s."
)
_TIMEOUT_DETAIL = N_(
    "no answer from %(where)s (%(detail)s); check that the host is up and that no firewall "
    "drops TCP %(port)s."
)
_TIMEOUT_WAITED_DETAIL = N_(
    "no answer from %(where)s within %(seconds)s (%(detail)s); check that the host is up and "
    "that no firewall drops TCP %(port)s."
)
_UNREACHABLE = N_("%(where)s cannot be reached (%(detail)s); check the network.")
_UNREACHABLE_PLAIN = N_("%(where)s cannot be reached (network error); check the network.")
_NOT_TCLPORT = N_(
    "%(where)s answered, but not as a ListManager TclPort; check the Host Name and that "
    "ListManager's TclPort runs on this port."
)
_NOT_TCLPORT_DETAIL = N_(
    "%(where)s answered, but not as a ListManager TclPort (%(detail)s); check the Host Name "
    "and that ListManager's TclPort runs on this port."
)
_UNREADABLE = N_(
    "the server sent a reply this client cannot read: %(detail)s. The connection was "
    "closed; if this repeats, check the server's ListManager version."
)
_CLOSED = N_(
    "the server closed the connection (%(detail)s); try again, and check the server's "
    "ListManager log if this repeats."
)
_CLOSED_PLAIN = N_(
    "the server closed the connection (without a reply); try again, and check the server's "
    "ListManager log if this repeats."
)
_NOT_SENT = N_(
    "the %(command)s request was not sent: %(detail)s; shorten or correct what was entered "
    "for it and try again."
)
_NOT_SENT_PLAIN = N_(
    "the request request was not sent: %(detail)s; shorten or correct what was entered for "
    "it and try again."
)
_HOST_DENIED = N_(
    "the hosting server refused this billing server's address %(ip)s: add %(ip)s to "
    "TCLPORT Hosts (%(path)s) on the hosting server, or run `lm tclport %(ip)s` there."
)
_HOST_DENIED_UNKNOWN = N_(
    "the hosting server refused this billing server's address this billing server's "
    "address: add this billing server's address to TCLPORT Hosts (%(path)s) on the hosting "
    "server, or run `lm tclport this billing server's address` there."
)
_AUTH_FAILED = N_(
    "the TclPort password was rejected; enter the hosting server's TclPort password "
    "(the default is TCLPORTPasswd; all servers should share one)."
)
_AUTH_REQUIRED = N_(
    "the server asked for the TclPort password first; this is a client bug, retry."
)
_NO_LOOKUP = N_(
    "this server cannot be searched (it does not offer %(command)s); its ListManager build "
    "has no cross-server look-ups: do this on the hosting server itself, or map the command "
    "name if its build spells it differently (the client's command mapping)."
)
_NO_DELETE = N_(
    "this server cannot be asked to delete members (it does not offer %(command)s); its "
    "ListManager build has no cross-server look-ups: do this on the hosting server itself, "
    "or map the command name if its build spells it differently (the client's command "
    "mapping)."
)
_DELETE_NOT_PERMITTED = N_(
    "this server does not allow remote deletions of members (%(server_message)s); remove "
    "the member on the hosting server itself, or allow remote deletions there."
)
_UNKNOWN_COMMAND = N_(
    "the server does not know the command %(command)s; its ListManager build may use other "
    "command names (see the client's command mapping)."
)
_NOT_PERMITTED = N_(
    "the server does not allow %(command)s from here (%(server_message)s); change the "
    "setting on the hosting server itself."
)
_LOGGING_OFF = N_(
    "the server does not log mailings, so there is no usage to read: set Enable Logging to "
    "\"Yes, Log All Messages that ListManager Sends to Mailing Lists\" (%(path)s) on that "
    "server."
)
_BUSY = N_("the server is busy (%(server_message)s); try again later.")
_REJECTED = N_(
    "the server rejected the %(command)s request (%(code)s: %(server_message)s); this "
    "client and the server's ListManager build disagree on TclPort profile 1: check the "
    "server's ListManager version, and report it if this repeats."
)
_INTERNAL = N_(
    "the server reported an internal error (%(server_message)s); try again later, and check "
    "the hosting server's ListManager log if it repeats."
)
MESSAGES: tuple[str, ...] = tuple(  # every template above, for tests and tools
    value for name, value in list(globals().items())
    if name.startswith("_") and name.isupper() and isinstance(value, str)
)


def guidance(
    code: str,
    *,
    host: str,
    port: int,
    command: str = "",
    server_message: str = "",
    detail: str = "",
    timeout: float | None = None,
    local_ip: str | None = None,
) -> str:
    """The user-facing message for a failure: what happened and what to do about it.

    Always one of the MESSAGES templates filled in (or an unknown code as the server sent
    it), so a page can show it translated."""
    where = host_port(host, port)
    if code == DNS:
        return _DNS % {"host": repr(host)}
    if code == ADDRESS_REFUSED:
        # The detail is the whole finding and its remedy (addresses.HostRefused).
        return detail or _ADDRESS_REFUSED % {"host": repr(host)}
    if code == REFUSED:
        return _REFUSED % {"where": where, "port": port}
    if code == TIMEOUT:
        values = {"where": where, "port": port, "detail": detail}
        if timeout is not None:
            values["seconds"] = _seconds(timeout)
            return (_TIMEOUT_WAITED_DETAIL if detail else _TIMEOUT_WAITED) % values
        return (_TIMEOUT_DETAIL if detail else _TIMEOUT) % values
    if code == UNREACHABLE:
        return _UNREACHABLE % {"where": where, "detail": detail} if detail else (
            _UNREACHABLE_PLAIN % {"where": where})
    if code == NOT_TCLPORT:
        return (_NOT_TCLPORT_DETAIL if detail else _NOT_TCLPORT) % {
            "where": where, "detail": detail}
    if code in (MALFORMED, OVERSIZED):
        return _UNREADABLE % {"detail": detail}
    if code == CLOSED:
        return _CLOSED % {"detail": detail} if detail else _CLOSED_PLAIN
    if code in (REQUEST_TOO_LONG, BAD_TEXT):
        if command:
            return _NOT_SENT % {"command": command, "detail": detail}
        return _NOT_SENT_PLAIN % {"detail": detail}
    if code == "HOST_DENIED":
        ip = denied_ip(server_message) or local_ip
        if ip is None:
            return _HOST_DENIED_UNKNOWN % {"path": TCLPORT_HOSTS_PATH}
        return _HOST_DENIED % {"ip": ip, "path": TCLPORT_HOSTS_PATH}
    if code == "AUTH_FAILED":
        return _AUTH_FAILED
    if code == "AUTH_REQUIRED":
        return _AUTH_REQUIRED
    if code == "UNKNOWN_COMMAND" and command in LOOKUP_COMMANDS:
        # Spec 4b: the look-ups are optional; a server without them is skipped, not broken.
        return (_NO_DELETE if command == "delete_member" else _NO_LOOKUP) % {"command": command}
    if code == "NOT_PERMITTED" and command == "delete_member":
        return _DELETE_NOT_PERMITTED % {"server_message": server_message}
    if code == "UNKNOWN_COMMAND":
        return _UNKNOWN_COMMAND % {"command": repr(command)}
    if code == "NOT_PERMITTED":
        return _NOT_PERMITTED % {"command": repr(command), "server_message": server_message}
    if code == "LOGGING_OFF":
        return _LOGGING_OFF % {"path": LOGGING_PATH}
    if code == "BUSY":
        return _BUSY % {"server_message": server_message}
    if code in ("BAD_ARGS", "BAD_REQUEST"):
        return _REJECTED % {"command": repr(command), "code": code,
                            "server_message": server_message}
    if code == "INTERNAL":
        return _INTERNAL % {"server_message": server_message}
    # An unknown code is shown with its message as it is (spec section 5).
    return f"{code}: {server_message}"
