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
    """The user-facing message for a failure: what happened and what to do about it."""
    where = host_port(host, port)
    if code == DNS:
        return f"the host name {host!r} does not resolve; check the Host Name of this server."
    if code == ADDRESS_REFUSED:
        # The detail is the whole finding and its remedy (addresses.HostRefused).
        return detail or f"billing does not connect to {host!r}; check the Host Name."
    if code == REFUSED:
        return (
            f"nothing listens on {where}: is ListManager running there, does its "
            "\"TCLPORT IP addresses\" setting (Server Settings: Machine Settings: IP Addresses) "
            f"include this address, and does the firewall pass TCP {port}?"
        )
    if code == TIMEOUT:
        waited = f" within {_seconds(timeout)}" if timeout is not None else ""
        what = f" ({detail})" if detail else ""
        return (
            f"no answer from {where}{waited}{what}; check that the host is up and that no "
            f"firewall drops TCP {port}."
        )
    if code == UNREACHABLE:
        return f"{where} cannot be reached ({detail or 'network error'}); check the network."
    if code == NOT_TCLPORT:
        what = f" ({detail})" if detail else ""
        return (
            f"{where} answered, but not as a ListManager TclPort{what}; check the Host Name "
            "and that ListManager's TclPort runs on this port."
        )
    if code in (MALFORMED, OVERSIZED):
        return (
            f"the server sent a reply this client cannot read: {detail}. The connection was "
            "closed; if this repeats, check the server's ListManager version."
        )
    if code == CLOSED:
        return (
            f"the server closed the connection ({detail or 'without a reply'}); try again, "
            "and check the server's ListManager log if this repeats."
        )
    if code in (REQUEST_TOO_LONG, BAD_TEXT):
        return (
            f"the {command or 'request'} request was not sent: {detail}; shorten or correct "
            "what was entered for it and try again."
        )
    if code == "HOST_DENIED":
        ip = denied_ip(server_message) or local_ip or "this billing server's address"
        return (
            f"the hosting server refused this billing server's address {ip}: add {ip} to "
            f"TCLPORT Hosts ({TCLPORT_HOSTS_PATH}) on the hosting server, or run "
            f"`lm tclport {ip}` there."
        )
    if code == "AUTH_FAILED":
        return (
            "the TclPort password was rejected; enter the hosting server's TclPort password "
            "(the default is TCLPORTPasswd; all servers should share one)."
        )
    if code == "AUTH_REQUIRED":
        return "the server asked for the TclPort password first; this is a client bug, retry."
    if code == "UNKNOWN_COMMAND" and command in LOOKUP_COMMANDS:
        # Spec 4b: the look-ups are optional; a server without them is skipped, not broken.
        what = "searched" if command != "delete_member" else "asked to delete members"
        return (
            f"this server cannot be {what} (it does not offer {command}); its ListManager "
            "build has no cross-server look-ups: do this on the hosting server itself, or map "
            "the command name if its build spells it differently (the client's command mapping)."
        )
    if code == "NOT_PERMITTED" and command == "delete_member":
        return (
            f"this server does not allow remote deletions of members ({server_message}); "
            "remove the member on the hosting server itself, or allow remote deletions there."
        )
    if code == "UNKNOWN_COMMAND":
        return (
            f"the server does not know the command {command!r}; its ListManager build may use "
            "other command names (see the client's command mapping)."
        )
    if code == "NOT_PERMITTED":
        return (
            f"the server does not allow {command!r} from here ({server_message}); change the "
            "setting on the hosting server itself."
        )
    if code == "LOGGING_OFF":
        return (
            "the server does not log mailings, so there is no usage to read: set Enable "
            "Logging to \"Yes, Log All Messages that ListManager Sends to Mailing Lists\" "
            f"({LOGGING_PATH}) on that server."
        )
    if code == "BUSY":
        return f"the server is busy ({server_message}); try again later."
    if code in ("BAD_ARGS", "BAD_REQUEST"):
        return (
            f"the server rejected the {command!r} request ({code}: {server_message}); "
            "this client and the server's ListManager build disagree on TclPort profile 1: "
            "check the server's ListManager version, and report it if this repeats."
        )
    if code == "INTERNAL":
        return (
            f"the server reported an internal error ({server_message}); try again later, and "
            "check the hosting server's ListManager log if it repeats."
        )
    # An unknown code is shown with its message as it is (spec section 5).
    return f"{code}: {server_message}"
