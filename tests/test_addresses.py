"""Where billing may connect (issue 14, item 1): hostile hosts refused alike by the forms, `servers
add` and the client, with no connect or lookup; resolve-once; non-TclPort peers never quoted."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from _pages import PAGES_CONFIG, add_server, post, text_of
from _sim import GREETING, PATIENT, frame
from flask import Flask

from lm_billing_plugin.models import Server
from lm_billing_plugin.settings import Settings
from lm_billing_plugin.state import get_state
from lm_billing_plugin.tclport import ClientSettings, TclPortClient, TclPortError
from lm_billing_plugin.tclport.addresses import (
    AddressPolicy,
    HostRefused,
    check_host,
    host_error,
    parse_networks,
)
from lm_billing_plugin.tclport.codec import encode_list
from lm_billing_plugin.testing.simulator import Dataset, HostSim

_LOOPBACK_NAMES = frozenset({"localhost"})
_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(host: object) -> bool:
    try:
        address = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class Net:
    """Every lookup and connect attempt of this process; only loopback ever goes out.

    A lookup of a name in ``answers`` returns those addresses (this machine's resolver cannot
    be made to answer 169.254.169.254); any other non-loopback lookup or connect is recorded
    and failed here, so a bug in the code under test still sends nothing.
    """

    def __init__(self) -> None:
        self.lookups: list[str] = []
        self.connects: list[tuple[Any, ...]] = []
        self.answers: dict[str, list[list[str]]] = {}

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        self.lookups.append(str(host))
        if str(host) in self.answers:
            queue = self.answers[str(host)]
            addresses = queue.pop(0) if len(queue) > 1 else queue[0]
            out = []
            for text in addresses:
                family = socket.AF_INET6 if ":" in text else socket.AF_INET
                sockaddr: tuple[Any, ...] = (
                    (text, int(port), 0, 0) if family == socket.AF_INET6 else (text, int(port))
                )
                out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
            return out
        if not (_is_loopback(host) or str(host) in _LOOPBACK_NAMES):
            raise socket.gaierror(socket.EAI_NONAME, "blocked by the test: not loopback")
        return _real_getaddrinfo(host, port, *args, **kwargs)

    def connect(self, sock: socket.socket, address: Any) -> None:
        self.connects.append(tuple(address) if isinstance(address, tuple) else (address,))
        if not (isinstance(address, tuple) and _is_loopback(address[0])):
            raise OSError(101, "blocked by the test: not loopback")
        _real_connect(sock, address)

    def connect_ex(self, sock: socket.socket, address: Any) -> int:
        self.connects.append(tuple(address) if isinstance(address, tuple) else (address,))
        if not (isinstance(address, tuple) and _is_loopback(address[0])):
            return 101
        return int(_real_connect_ex(sock, address))

    def forget(self) -> Net:
        """Start recording afresh (the simulator's own start-up looks up 127.0.0.1)."""
        self.lookups.clear()
        self.connects.clear()
        return self

    def outside(self) -> list[object]:
        """What went (or tried to go) anywhere but loopback."""
        hosts = [h for h in self.lookups if not (_is_loopback(h) or h in _LOOPBACK_NAMES)]
        return [*hosts, *(c for c in self.connects if not _is_loopback(c[0]))]


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> Net:
    recorder = Net()
    monkeypatch.setattr(socket, "getaddrinfo", recorder.getaddrinfo)
    # Plain functions: set on the class they become methods, so ``sock`` is passed.
    monkeypatch.setattr(socket.socket, "connect", lambda s, a: recorder.connect(s, a))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda s, a: recorder.connect_ex(s, a))
    return recorder


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(**PAGES_CONFIG)


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=1, lists=3, seed=1)) as server:
        yield server


# Every hostile entry of the issue and more: (host, kind, words the message must hold).
NEVER = "never"
MALFORMED = "malformed"
HOSTILE: list[tuple[str, str, str]] = [
    ("169.254.169.254", NEVER, "link-local address (cloud metadata)"),
    ("169.254.170.2", NEVER, "link-local address (cloud metadata)"),
    ("0.0.0.0", NEVER, "unspecified"),
    ("0.1.2.3", NEVER, "unspecified"),
    ("::", NEVER, "unspecified"),
    ("::ffff:169.254.169.254", NEVER, "IPv4-mapped form of 169.254.169.254, a link-local"),
    ("::ffff:a9fe:a9fe", NEVER, "IPv4-mapped form of 169.254.169.254"),
    ("::ffff:0.0.0.0", NEVER, "IPv4-mapped form of 0.0.0.0"),
    ("::ffff:0:a9fe:a9fe", NEVER, "IPv4-translated form of 169.254.169.254"),
    ("64:ff9b::a9fe:a9fe", NEVER, "NAT64 form of 169.254.169.254"),
    ("64:ff9b::169.254.169.254", NEVER, "NAT64 form of 169.254.169.254"),
    ("64:ff9b:1:a9fe:a9:fe00::", NEVER, "NAT64 form of 169.254.169.254"),
    ("2002:a9fe:a9fe::1", NEVER, "6to4 form of 169.254.169.254"),
    ("::a9fe:a9fe", NEVER, "IPv4-compatible form of 169.254.169.254"),
    ("fd00:ec2::254", NEVER, "cloud metadata service address"),
    ("100.100.100.200", NEVER, "cloud metadata service address"),
    ("fe80::1", NEVER, "link-local address"),
    ("fe80::1%eth0", NEVER, "link-local address"),
    ("fe80::a9fe:a9fe", NEVER, "link-local address"),
    ("224.0.0.1", NEVER, "multicast"),
    ("239.255.255.250", NEVER, "multicast"),
    ("ff02::1", NEVER, "multicast"),
    ("::ffff:224.0.0.1", NEVER, "multicast"),
    ("255.255.255.255", NEVER, "broadcast"),
    ("240.0.0.1", NEVER, "reserved"),
    ("metadata.google.internal", NEVER, "name of a cloud metadata service"),
    ("metadata.google.internal.", NEVER, "name of a cloud metadata service"),
    ("METADATA.Google.Internal", NEVER, "name of a cloud metadata service"),
    ("metadata", NEVER, "name of a cloud metadata service"),
    ("0xa9fea9fe", MALFORMED, "four decimal numbers, e.g. 192.0.2.10"),
    ("0xa9.0xfe.0xa9.0xfe", MALFORMED, "four decimal numbers"),
    ("0x7f.1", MALFORMED, "four decimal numbers"),
    ("127.1", MALFORMED, "four decimal numbers"),
    ("2130706433", MALFORMED, "four decimal numbers"),
    ("2852039166", MALFORMED, "four decimal numbers"),
    ("0177.0.0.1", MALFORMED, "four decimal numbers"),
    ("169.254.169.254.", MALFORMED, "without a final dot"),
    ("127.0.0.1.", MALFORMED, "without a final dot"),
    ("1.2.3.4.5", MALFORMED, "four decimal numbers"),
    ("lists.123", MALFORMED, "four decimal numbers"),
    ("256.0.0.1", MALFORMED, "four decimal numbers"),
    ("http://x", MALFORMED, "not a URL"),
    ("http://169.254.169.254/latest/meta-data", MALFORMED, "not a URL"),
    ("x:22", MALFORMED, "without a port"),
    ("169.254.169.254:80", MALFORMED, "without a port"),
    ("127.0.0.1:2021", MALFORMED, "without a port"),
    ("[::1]", MALFORMED, "without brackets"),
    ("[fe80::1]", MALFORMED, "without brackets"),
    ("2001:db8::1%eth0", MALFORMED, "zone"),
    ("x\r\nY", MALFORMED, "control characters"),
    ("lists\x1b]0;owned\x07", MALFORMED, "control characters"),
    ("lists.example.com\u202e", MALFORMED, "control characters"),
    ("lists\x85example", MALFORMED, "control characters"),
    ("a" * 300, MALFORMED, "at most 253"),
    ("a" * 64 + ".example", MALFORMED, "not a valid part"),
    ("bad_name.example", MALFORMED, "not a valid part"),
    ("lists.exa!mple.com", MALFORMED, "not a valid part"),
    ("lists..example.com", MALFORMED, "no empty parts"),
    ("user@169.254.169.254", MALFORMED, "without a user name"),
    ("169.254.169.254/32", MALFORMED, "without a path"),
    ("b\u00fccher.example", MALFORMED, "ASCII (xn--) form"),
]


@pytest.mark.parametrize(("host", "kind", "words"), HOSTILE)
def test_hostile_hosts_are_refused_everywhere_with_no_connect_or_lookup(
    app: Flask, net: Net, host: str, kind: str, words: str
) -> None:
    policy = AddressPolicy()
    with pytest.raises(HostRefused) as judged:
        check_host(host, policy)
    assert judged.value.kind == kind
    expected = judged.value.message
    assert words in expected
    if kind == NEVER:
        assert "billing never connects there" in expected and "own address" in expected

    # The client: refused at the resolve step, before any packet.
    client = TclPortClient(host, 2021, name="Hostile", settings=PATIENT)
    with pytest.raises(TclPortError) as failed:
        client.connect()
    assert (failed.value.code, failed.value.phase) == ("ADDRESS_REFUSED", "resolve")
    assert failed.value.message == expected
    assert str(failed.value).startswith("Hostile (")

    # The create form and the edit form: a field error next to Host Name, nothing saved.
    web = app.test_client()
    data = {"name": "Hostile", "host": host, "port": "2021", "comments": "", "password": ""}
    response = post(web, "/billing/servers/new", data, token_from="/billing/servers/new")
    assert response.status_code == 200
    assert _host_field_error(text_of(response)) == expected.strip()
    sid = add_server(app, "Kept", host="127.0.0.1")
    edit = f"/billing/servers/{sid}/edit"
    response = post(web, edit, {**data, "name": "Kept"}, token_from=edit)
    assert response.status_code == 200
    assert _host_field_error(text_of(response)) == expected.strip()

    # flask lm-billing servers add: the same message, exit 2.
    result = app.test_cli_runner().invoke(
        args=["lm-billing", "servers", "add", "--name", "Cli", "--host", host]
    )
    assert result.exit_code == 2, result.output
    assert f"Error: --host: {expected}" in result.output or _escaped(expected) in result.output
    with app.app_context():
        hosts = get_state(app).session.scalars(sa.select(Server.host)).all()
        assert hosts == ["127.0.0.1"]
    assert net.lookups == [] and net.connects == [], (net.lookups, net.connects)


def _escaped(text: str) -> str:
    return "".join(repr(c)[1:-1] if not c.isprintable() else c for c in text)


def _host_field_error(page: str) -> str:
    import html
    import re

    match = re.search(r'<ul class="lmb-errors" id="host-error">(.*?)</ul>', page, re.S)
    assert match, "no field error next to Host Name"
    return re.sub(r"<[^>]+>", "", html.unescape(match.group(1))).strip()


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "localhost", "10.1.2.3", "192.0.2.10",
     "2001:db8::8a2e:370:7334", "fd12:3456::1", "lists.example.com", "lists.example.com.",
     "xn--bcher-kva.example", "a" * 63 + ".example", "host-1.example"],
)
def test_ordinary_hosts_are_accepted_without_a_lookup(net: Net, host: str) -> None:
    assert host_error(host, AddressPolicy()) is None
    assert net.lookups == [] and net.connects == []


def test_a_literal_loopback_host_connects_to_that_address(net: Net, sim: HostSim) -> None:
    net.forget()
    with TclPortClient("127.0.0.1", sim.port, settings=PATIENT) as client:
        assert client.server_info().product == "ListManager"
    assert net.connects == [("127.0.0.1", sim.port)]
    assert net.outside() == []


def test_a_name_is_resolved_once_and_the_checked_address_is_connected(
    net: Net, sim: HostSim
) -> None:
    net.forget()
    # DNS rebinding: a second lookup would get the metadata address; there is none.
    net.answers["rebind.test"] = [["127.0.0.1"], ["169.254.169.254"]]
    with TclPortClient("rebind.test", sim.port, settings=PATIENT) as client:
        assert client.peer == ("127.0.0.1", sim.port)
    assert net.lookups == ["rebind.test"]
    assert net.connects == [("127.0.0.1", sim.port)]


def test_refused_addresses_among_the_resolved_ones_are_skipped(net: Net, sim: HostSim) -> None:
    net.forget()
    net.answers["mixed.test"] = [["169.254.169.254", "::ffff:169.254.169.254", "127.0.0.1"]]
    with TclPortClient("mixed.test", sim.port, settings=PATIENT) as client:
        assert client.connected
    assert net.connects == [("127.0.0.1", sim.port)]


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (["169.254.169.254"],
         "resolves to 169.254.169.254, which is a link-local address (cloud metadata)"),
        (["fd00:ec2::254"], "resolves to fd00:ec2::254, which is a cloud metadata service address"),
        (["0.0.0.0", "::"], "resolves to 0.0.0.0, which is an unspecified address"),
        (["64:ff9b::a9fe:a9fe"],
         "resolves to 64:ff9b::a9fe:a9fe, which is the NAT64 form of 169.254.169.254"),
    ],
)
def test_a_name_that_resolves_only_to_refused_addresses_is_not_connected(
    net: Net, answer: list[str], words: str
) -> None:
    net.answers["evil.test"] = [answer]
    client = TclPortClient("evil.test", 2021, name="Evil", settings=PATIENT)
    with pytest.raises(TclPortError) as failed:
        client.connect()
    assert failed.value.code == "ADDRESS_REFUSED"
    assert "the host name 'evil.test' " + words in failed.value.message
    assert "billing never connects there" in failed.value.message
    assert net.lookups == ["evil.test"] and net.connects == []


def test_loopback_can_be_refused(net: Net, sim: HostSim) -> None:
    net.forget()
    settings = ClientSettings(
        connect_timeout=0.5, read_timeout=0.4, operation_timeout=0.8, allow_loopback=False
    )
    net.answers["here.test"] = [["127.0.0.1"]]
    for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "localhost", "here.test"):
        with pytest.raises(TclPortError) as failed:
            TclPortClient(host, sim.port, settings=settings).connect()
        assert failed.value.code == "ADDRESS_REFUSED", host
        assert "loopback address" in failed.value.message
        assert "LM_BILLING_ALLOW_LOOPBACK" in failed.value.message
    assert net.connects == [] and net.lookups == ["here.test"]
    assert sim.requests.get("auth", 0) == 0


def test_the_allow_list_narrows_every_other_address(net: Net, sim: HostSim) -> None:
    net.forget()
    policy = AddressPolicy(parse_networks("192.0.2.0/24, 2001:db8::/32"))
    assert check_host("192.0.2.10", policy) == ipaddress.ip_address("192.0.2.10")
    assert check_host("2001:db8::5", policy) is not None
    assert check_host("::ffff:192.0.2.10", policy) is not None  # the same IPv4 host
    for host in ("198.51.100.7", "10.0.0.1", "2001:db9::1"):
        with pytest.raises(HostRefused) as refused:
            check_host(host, policy)
        assert refused.value.kind == "allow_list"
        assert "add its network to LM_BILLING_ALLOWED_NETWORKS" in refused.value.message
    # Always-refused classes stay refused even when an allowed network covers them.
    wide = AddressPolicy(parse_networks(["0.0.0.0/0", "::/0"]))
    for host in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254", "224.0.0.1"):
        with pytest.raises(HostRefused) as refused:
            check_host(host, wide)
        assert refused.value.kind == "never"
    # Loopback follows LM_BILLING_ALLOW_LOOPBACK, not the list: this connects.
    settings = ClientSettings(
        connect_timeout=0.5, read_timeout=0.4, operation_timeout=0.8,
        allowed_networks=policy.allowed_networks,
    )
    with TclPortClient("127.0.0.1", sim.port, settings=settings) as client:
        assert client.connected
    net.answers["outside.test"] = [["198.51.100.7"]]
    with pytest.raises(TclPortError) as failed:
        TclPortClient("outside.test", 2021, settings=settings).connect()
    assert "resolves to 198.51.100.7, which is not in an allowed network" in failed.value.message
    assert net.outside() == ["outside.test"]  # looked up (faked), never connected


def test_settings_parse_the_two_keys_and_say_what_is_wrong() -> None:
    settings = Settings.from_config(
        {"LM_BILLING_ALLOWED_NETWORKS": "10.20.0.0/16, 192.0.2.10", "LM_BILLING_ALLOW_LOOPBACK":
         "false"}
    )
    assert settings.client.allowed_networks == (
        ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("192.0.2.10/32")
    )
    assert settings.client.allow_loopback is False
    defaults = Settings.from_config({})
    assert defaults.client.allowed_networks == () and defaults.client.allow_loopback is True
    for bad in ("10.0.0.0/33", "lists.example.com", ["10.0.0.0/8", "x"]):
        with pytest.raises(ValueError, match=r"CIDR form; write it like 10\.20\.0\.0/16"):
            Settings.from_config({"LM_BILLING_ALLOWED_NETWORKS": bad})
    with pytest.raises(ValueError, match="must be a list of networks"):
        Settings.from_config({"LM_BILLING_ALLOWED_NETWORKS": 10})


def test_the_app_settings_reach_the_forms_and_the_check(
    make_app: Callable[..., Flask], net: Net, sim: HostSim
) -> None:
    net.forget()
    app = make_app(**PAGES_CONFIG, LM_BILLING_ALLOW_LOOPBACK=False)
    web = app.test_client()
    data = {"name": "Here", "host": "127.0.0.1", "port": str(sim.port), "password": ""}
    page = text_of(post(web, "/billing/servers/new", data, token_from="/billing/servers/new"))
    assert "loopback address" in _host_field_error(page)
    # A row saved before the setting changed is refused when it is checked.
    sid = add_server(app, "Old", host="127.0.0.1", port=sim.port)
    detail = f"/billing/servers/{sid}"
    page = text_of(post(web, f"{detail}/check", token_from=detail, follow=True))
    assert "LM_BILLING_ALLOW_LOOPBACK is off" in page
    with app.app_context():
        server = get_state(app).session.get(Server, sid)
        assert server is not None and "loopback address" in server.status_message
    assert net.connects == [] and sim.requests.get("auth", 0) == 0


def test_a_hostile_row_saved_earlier_is_refused_by_check_page_and_cli(
    app: Flask, net: Net
) -> None:
    for name, host in (("Meta", "169.254.169.254"), ("Hex", "0x7f.1"), ("Dot", "metadata.")):
        sid = add_server(app, name, host=host, port=80)
        web = app.test_client()
        detail = f"/billing/servers/{sid}"
        page = text_of(post(web, f"{detail}/check", token_from=detail, follow=True))
        assert "billing never connects there" in page or "four decimal numbers" in page
        result = app.test_cli_runner().invoke(args=["lm-billing", "servers", "check", name])
        assert result.exit_code == 2
        assert "ADDRESS_REFUSED" in result.output
    assert net.lookups == [] and net.connects == []


# --- (c) a peer that is not a TclPort is never quoted; the password waits for a greeting ------


class RawPeer:
    """A TCP server on 127.0.0.1 that sends ``banner`` and records everything it receives."""

    def __init__(self, banner: bytes, then: bytes = b"") -> None:
        self.banner = banner
        self.then = then
        self.received = b""
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self._listener.settimeout(5)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(3)
            with contextlib.suppress(OSError):
                conn.sendall(self.banner)
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    self.received += data
                    if self.then:
                        conn.sendall(self.then)
                        self.then = b""

    def __enter__(self) -> RawPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        self._thread.join(5)


PASSWORD = "Pw-n0t-f0r-str4ngers"
BANNERS = [
    b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n",
    b"HTTP/1.1 400 Bad Request\r\nServer: nginx/1.25.3\r\n\r\n",
    b"220 mail.internal ESMTP Postfix\r\n",
    b"\x4a\x00\x00\x00\x0a8.0.36-mysql-secret-build\x00",
    frame("OK", b"banner {secret internal build 7.1}"),
    frame("OK", encode_list(["protocol", "SSH-2.0-OpenSSH_9.2p1", "product", "x"]).encode()),
    frame("OK", b"protocol 2 product MailServer"),
    frame("OK", b"product {ListManager"),
    b"OK " + b"7" * 80 + b"\n",
    frame("ERR", b"not-a-list {"),
]


@pytest.mark.parametrize("banner", BANNERS)
def test_a_peer_that_is_not_a_tclport_is_counted_not_quoted_and_gets_no_password(
    banner: bytes,
) -> None:
    with RawPeer(banner) as peer:
        client = TclPortClient("127.0.0.1", peer.port, PASSWORD, settings=PATIENT)
        with pytest.raises(TclPortError) as failed:
            client.connect()
        client.close()
    error = failed.value
    assert error.code == "NOT_TCLPORT", error
    assert "answered, but not as a ListManager TclPort" in error.message
    assert "bytes, not shown" in error.message
    for word in (b"SSH", b"OpenSSH", b"nginx", b"Postfix", b"mysql", b"secret", b"MailServer",
                 b"777"):
        if word in banner:
            for text in (error.message, error.detail, repr(error)):
                assert word.decode() not in text
    assert peer.received == b""  # not a word, let alone the password


def test_the_password_goes_only_to_a_peer_that_greeted_as_tclport() -> None:
    # Positive control: the same raw server, greeting as a TclPort, does get the auth line.
    with RawPeer(GREETING, then=frame("OK", b"")) as peer:
        client = TclPortClient("127.0.0.1", peer.port, PASSWORD, settings=PATIENT)
        client.connect()
        client.close()
    assert peer.received.startswith(f"auth {PASSWORD}\n".encode())
    denied = frame("ERR", encode_list(["HOST_DENIED", "127.0.0.1 is not in TCLPORT Hosts"])
                   .encode())
    with RawPeer(denied) as peer, pytest.raises(TclPortError):
        TclPortClient("127.0.0.1", peer.port, PASSWORD, settings=PATIENT).connect()
    assert peer.received == b""
    with pytest.raises(RuntimeError, match="before a valid TclPort greeting"):
        TclPortClient("127.0.0.1", 1, PASSWORD, settings=PATIENT)._auth(0.0)
