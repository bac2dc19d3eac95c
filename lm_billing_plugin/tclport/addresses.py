"""Where billing may connect: host syntax, refused address classes and the allow-list (SSRF).
Forms and CLI judge a host without DNS; the client judges every address a name resolves to."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from .errors import N_

__all__ = [
    "METADATA_ADDRESSES",
    "METADATA_NAMES",
    "AddressPolicy",
    "HostRefused",
    "IPAddress",
    "Network",
    "check_address",
    "check_host",
    "host_error",
    "parse_networks",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Kind = Literal["malformed", "never", "allow_list", "loopback"]

MAX_HOST: Final = 253
# Cloud metadata services outside the link-local range (Alibaba, AWS over IPv6); the
# link-local ones (169.254.169.254, 169.254.170.2, fe80::a9fe:a9fe) are refused as a class.
METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(a) for a in ("100.100.100.200", "fd00:ec2::254")
)
# Names that only ever mean a metadata service; refused without asking DNS what they are.
METADATA_NAMES: Final = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
     "instance-data.ec2.internal"}
)
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE: Final = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED: Final = ipaddress.ip_network("::ffff:0:0:0/96")
_THIS_NETWORK: Final = ipaddress.ip_network("0.0.0.0/8")
_CLASS_E: Final = ipaddress.ip_network("240.0.0.0/4")
_BROADCAST: Final = ipaddress.ip_address("255.255.255.255")
_LABEL_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
# C0, DEL, C1 and the Unicode line/bidi controls: none belongs in a host name.
_CONTROL_RE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e"
                                "\u2066-\u2069]")
# A final label that is a number (decimal, or 0x hex as inet_aton reads it) makes the
# whole string an IPv4 shorthand to the C library, never a DNS name.
_NUMERIC_LABEL_RE: Final = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*", re.ASCII)

FOUR_NUMBERS: Final = "write the address as four decimal numbers, e.g. 192.0.2.10"
# The refusals as templates with named values (N_ puts them in the plugin's catalog): the
# English sentences are these filled in; a page shows them translated (i18n.say), the CLI,
# the JSON API and the logs keep the English. ``what`` is one of the class names below.
_NEVER: Final = N_(
    "%(subject)s is %(what)s; billing never connects there. Use the hosting server's own "
    "address (these addresses are refused even when LM_BILLING_ALLOWED_NETWORKS lists them)."
)
_NEVER_NAME: Final = N_(
    "%(host)s is the name of a cloud metadata service; billing never connects there. Use "
    "the hosting server's own address (these addresses are refused even when "
    "LM_BILLING_ALLOWED_NETWORKS lists them)."
)
_NOT_LISTED: Final = N_(
    "%(subject)s is not in an allowed network; billing connects only to the networks in "
    "LM_BILLING_ALLOWED_NETWORKS. Use the hosting server's own address, or add its network "
    "to LM_BILLING_ALLOWED_NETWORKS."
)
_NO_LOOPBACK: Final = N_(
    "%(subject)s is a loopback address (this billing server itself); "
    "LM_BILLING_ALLOW_LOOPBACK is off, so billing does not connect to itself. Use the hosting "
    "server's own address, or set LM_BILLING_ALLOW_LOOPBACK = True if it runs on this machine."
)
_EMBEDDED: Final = N_("the %(form)s form of %(address)s, %(what)s")
_BAD_IPV4: Final = N_(
    "%(host)s is not a valid IPv4 address: write the address as four decimal numbers, e.g. "
    "192.0.2.10 (each 0 to 255, no leading zeros)."
)
_BAD_IPV4_DOT: Final = N_(
    "%(host)s is not a valid IPv4 address: write the address as four decimal numbers, e.g. "
    "192.0.2.10 (each 0 to 255, no leading zeros) (without a final dot)."
)
_ZONE: Final = N_("%(host)s has a zone (%%%(zone)s); write the IPv6 address without it.")
_TOO_LONG: Final = N_("A host name has at most %(max)s characters.")
_BAD_LABEL: Final = N_(
    "%(label)s is not a valid part of a host name: letters, digits and hyphens only, at most "
    "63, not starting or ending with a hyphen."
)


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses may be connected to, besides the classes that are always refused.

    ``allowed_networks`` empty = any other address; ``allow_loopback`` decides 127.0.0.0/8
    and ::1 on its own (billing and ListManager on one machine is a documented setup).
    """

    allowed_networks: tuple[Network, ...] = ()
    allow_loopback: bool = True


class HostRefused(ValueError):
    """A host or address billing will not connect to; ``str()`` says why and what to do.

    ``kind`` is ``malformed`` (not a host name or address as written), ``never`` (a class
    that is always refused), ``allow_list`` or ``loopback`` (refused by the settings).
    """

    def __init__(self, message: str, kind: Kind) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


def parse_networks(value: object) -> tuple[Network, ...]:
    """LM_BILLING_ALLOWED_NETWORKS as networks: a list, or a comma-separated string, of CIDRs."""
    if value is None:
        return ()
    items: Iterable[object]
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, Iterable):
        items = value
    else:
        raise ValueError(
            f"LM_BILLING_ALLOWED_NETWORKS must be a list of networks such as 10.20.0.0/16, "
            f"not {type(value).__name__}"
        )
    networks: list[Network] = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"LM_BILLING_ALLOWED_NETWORKS: {str(item)!r} is not a network in CIDR form; "
                "write it like 10.20.0.0/16 or 2001:db8::/48 (a single address like 192.0.2.10)"
            ) from None
    return tuple(networks)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for, and the name of that form, if any."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    packed = address.packed
    if address in _IPV4_TRANSLATED:
        return "IPv4-translated", ipaddress.IPv4Address(packed[12:])
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(packed[12:])
    if address in _NAT64_LOCAL:
        # RFC 6052 /48 layout: 16 bits, then the reserved u octet, then 16 bits.
        return "NAT64", ipaddress.IPv4Address(packed[6:8] + packed[9:11])
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return "IPv4-compatible", ipaddress.IPv4Address(packed[12:])
    return None


def _never(address: IPAddress) -> str | None:
    """What ``address`` is when it belongs to a class that is always refused, else None."""
    if address in METADATA_ADDRESSES:
        return N_("a cloud metadata service address")
    if isinstance(address, ipaddress.IPv4Address):
        if address in _THIS_NETWORK:
            return N_("an unspecified address (0.0.0.0/8 reaches this billing server itself)")
        if address.is_link_local:
            return N_("a link-local address (cloud metadata)")
        if address.is_multicast:
            return N_("a multicast address")
        if address == _BROADCAST:
            return N_("the broadcast address")
        if address in _CLASS_E:
            return N_("a reserved address (240.0.0.0/4, not routed)")
        return None
    if address.is_unspecified:
        return N_("the unspecified address (it reaches this billing server itself)")
    if address.is_link_local:
        return N_("a link-local address")
    if address.is_multicast:
        return N_("a multicast address")
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        form, inner = embedded
        what = _never(inner)
        if what is not None:
            return _EMBEDDED % {"form": form, "address": inner, "what": what}
    return None


def _effective(address: IPAddress) -> IPAddress:
    # An IPv4-mapped address is the IPv4 host itself on a dual-stack socket.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_address(address: IPAddress, policy: AddressPolicy, *, subject: str) -> None:
    """Raise HostRefused unless billing may connect to ``address``.

    ``subject`` starts the message: the address as typed, or "the host name 'x' resolves
    to 192.0.2.1, which".
    """
    address = ipaddress.ip_address(str(address).split("%", 1)[0])
    what = _never(address)
    if what is not None:
        raise HostRefused(_NEVER % {"subject": subject, "what": what}, "never")
    effective = _effective(address)
    if effective.is_loopback:
        if not policy.allow_loopback:
            raise HostRefused(_NO_LOOPBACK % {"subject": subject}, "loopback")
        return
    if policy.allowed_networks and not any(
        effective.version == net.version and effective in net for net in policy.allowed_networks
    ):
        raise HostRefused(_NOT_LISTED % {"subject": subject}, "allow_list")


def _malformed(message: str) -> HostRefused:
    return HostRefused(message, "malformed")


def _ipv6(host: str) -> IPAddress:
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        raise _malformed(
            N_("Enter the host name without a port; the port has its own field.")
        ) from None
    if address.scope_id is not None and not address.is_link_local:
        raise _malformed(_ZONE % {"host": repr(host), "zone": address.scope_id})
    return address


def _ipv4_shorthand(name: str) -> bool:
    """True when the C library would read ``name`` as an IPv4 address (127.1, 0x7f.1, ...)."""
    try:
        socket.inet_aton(name)
    except (OSError, ValueError):
        return False
    return True


def check_host(host: str, policy: AddressPolicy) -> IPAddress | None:
    """Judge a host as written, with no DNS: raise HostRefused, or return its IP when it is
    an address literal (None for a name, whose addresses the client checks after resolving).

    A name that the C library would read as a number (``0x7f.1``, ``2130706433``) is refused
    as malformed, so no string reaches an address the same address in dotted form would not.
    """
    if not host:
        raise _malformed(N_("Enter the hosting server's host name or IP address."))
    if len(host) > MAX_HOST:
        raise _malformed(_TOO_LONG % {"max": MAX_HOST})
    if any(ch.isspace() for ch in host) or _CONTROL_RE.search(host):
        raise _malformed(N_("A host name has no spaces or control characters."))
    if "://" in host:
        raise _malformed(N_("Enter only the host name (e.g. lists.example.com), not a URL."))
    if "/" in host or "\\" in host:
        raise _malformed(N_("Enter only the host name, without a path."))
    if "@" in host:
        raise _malformed(N_("Enter only the host name, without a user name."))
    if host.startswith("[") and host.endswith("]"):
        raise _malformed(N_("Write an IPv6 address without brackets (e.g. 2001:db8::1)."))
    if ":" in host:
        address = _ipv6(host)
        check_address(address, policy, subject=host)
        return address
    if not host.isascii():
        raise _malformed(N_("Write an international domain name in its ASCII (xn--) form."))
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if _NUMERIC_LABEL_RE.fullmatch(labels[-1]) or _ipv4_shorthand(name):
        try:
            v4 = ipaddress.IPv4Address(host)
        except ValueError:
            template = _BAD_IPV4_DOT if host.endswith(".") else _BAD_IPV4
            raise _malformed(template % {"host": repr(host)}) from None
        check_address(v4, policy, subject=host)
        return v4
    for label in labels:
        if not label:
            raise _malformed(
                N_("A host name has no empty parts (two dots in a row, or a leading dot).")
            )
        if not _LABEL_RE.fullmatch(label):
            raise _malformed(_BAD_LABEL % {"label": repr(label)})
    lowered = name.lower()
    if lowered in METADATA_NAMES:
        raise HostRefused(_NEVER_NAME % {"host": host}, "never")
    if lowered == "localhost" or lowered.endswith(".localhost"):
        # RFC 6761: these names are loopback wherever they are resolved.
        check_address(ipaddress.IPv4Address("127.0.0.1"), policy, subject=host)
    return None


def host_error(host: str, policy: AddressPolicy) -> str | None:
    """The field error for ``host`` (None when it may be saved); no DNS is asked."""
    try:
        check_host(host, policy)
    except HostRefused as exc:
        return exc.message
    return None
