"""The TclPort client over real sockets: every command, paging, names, limits, deadlines,
typed errors with user guidance, and no leaked sockets or threads."""

from __future__ import annotations

import gc
import shutil
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from _sim import (
    AUTH_OK,
    FAST,
    GREETING,
    PATIENT,
    TCL_SERVER,
    blackhole,
    closed_port,
    fd_count,
    frame,
    scripted_server,
    settle,
    sockets_back_to,
    thread_count,
)

from lm_billing_plugin.tclport import (
    ClientSettings,
    ListRecord,
    LoggingState,
    ServerInfo,
    SiteRecord,
    TclPortClient,
    TclPortError,
)
from lm_billing_plugin.tclport.codec import encode_dict, encode_list
from lm_billing_plugin.testing.simulator import HOSTILE_MODES, Dataset, HostSim

WRONG = "not-the-password-7Q"


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return Dataset.generate(sites=4, lists=300, seed=3, hostile_names=True)


@pytest.fixture
def sim(dataset: Dataset) -> Iterator[HostSim]:
    with HostSim(dataset) as server:
        yield server


def client_for(sim: HostSim, **kw: Any) -> TclPortClient:
    kw.setdefault("settings", FAST)
    return TclPortClient(sim.host, sim.port, **kw)


# -- every command ----------------------------------------------------------------------------


def test_every_command_returns_typed_records(sim: HostSim, dataset: Dataset) -> None:
    with client_for(sim, name="Lists") as client:
        info = client.server_info()
        assert isinstance(info, ServerInfo)
        assert (info.product, info.version, info.hostname) == ("ListManager", "12.3",
                                                               "lists.example.com")
        assert info.started is not None and info.started.tzinfo is not None
        state = client.logging()
        assert state == LoggingState(
            "lists", "Yes, Log All Messages that ListManager Sends to Mailing Lists"
        )
        assert state.counts_messages
        assert client.sites() == dataset.sites
        assert client.lists() == sorted(dataset.lists, key=lambda r: r.name.encode())
        assert client.usage(date(2026, 1, 1), date(2026, 3, 31)) == dataset.usage(
            date(2026, 1, 1), date(2026, 3, 31)
        )
        assert client.logging_set("no").mode == "no"
        assert not client.logging().counts_messages
        assert client.label == f"Lists (127.0.0.1:{sim.port})"
        assert set(client.timings) == {"resolve", "connect", "greeting", "auth"}
    # close() said quit before closing the socket.
    assert sim.requests["quit"] == 1


def test_usage_range_is_inclusive_and_from_after_to_is_refused(sim: HostSim) -> None:
    sim.add_list("billing-edge", site="site1")
    sim.add_send("billing-edge", date(2026, 5, 1), 10, 100)
    sim.add_send("billing-edge", date(2026, 5, 3), 5, 1000)
    sim.add_send("billing-edge", date(2026, 5, 4), 7, 1)
    with client_for(sim) as client:
        rows = {u.list: u for u in client.usage(date(2026, 5, 1), date(2026, 5, 3))}
        edge = rows["billing-edge"]
        assert (edge.site, edge.messages, edge.recipients, edge.bytes) == (
            "site1", 2, 15, 10 * 100 + 5 * 1000
        )
        with pytest.raises(ValueError):
            client.usage(date(2026, 5, 3), date(2026, 5, 1))


def test_usage_while_logging_is_off_says_how_to_switch_it_on(sim: HostSim) -> None:
    sim.set_logging("no")
    with client_for(sim) as client, pytest.raises(TclPortError) as info:
        client.usage(date(2026, 1, 1), date(2026, 1, 31))
    assert info.value.code == "LOGGING_OFF"
    assert info.value.phase == "command:usage"
    assert "Automatic Maintenance: Logging" in info.value.message


# -- paging -----------------------------------------------------------------------------------


def test_paging_through_12345_lists_in_pages_of_5000() -> None:
    data = Dataset.generate(sites=2, lists=12_345, seed=5)
    with HostSim(data) as sim, client_for(sim, settings=ClientSettings()) as client:
        names = [r.name for r in client.iter_lists()]
        assert sim.requests["lists"] == 3
    assert len(names) == 12_345
    assert names == sorted(r.name for r in data.lists)


@pytest.mark.parametrize("page_size", [1, 7, 299, 300, 5000])
def test_paging_with_any_page_size_gives_the_same_lists(
    sim: HostSim, dataset: Dataset, page_size: int
) -> None:
    settings = ClientSettings(read_timeout=2, operation_timeout=5, page_size=page_size)
    with client_for(sim, settings=settings) as client:
        assert client.lists() == sorted(dataset.lists, key=lambda r: r.name.encode())
    assert sim.requests["lists"] == -(-300 // page_size)


def test_empty_server_needs_one_request(sim: HostSim) -> None:
    with HostSim(Dataset(sites=[], lists=[])) as empty, client_for(empty) as client:
        assert client.lists() == []
        assert client.sites() == []
        assert empty.requests["lists"] == 1


def test_lists_created_while_paging_are_not_duplicated(sim: HostSim) -> None:
    settings = ClientSettings(read_timeout=2, operation_timeout=5, page_size=50)
    with client_for(sim, settings=settings) as client:
        seen: list[str] = []
        for n, record in enumerate(client.iter_lists()):
            seen.append(record.name)
            if n == 60:
                # Sorts before everything seen so far: shifts later pages by one.
                sim.add_list("\x01 first")
        assert len(seen) == len(set(seen)) == 300
        # lists() notices the changed total and reads again, consistently.
        sim.add_list("\x01 second")
        assert len(client.lists()) == 302


class LyingSim(HostSim):
    """A server whose `lists` totals do not add up."""

    def __init__(self, *args: Any, mode: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.mode = mode
        self.calls = 0

    def handle(self, logical: str, args: Any) -> str:
        if logical != "lists":
            return super().handle(logical, args)
        self.calls += 1
        if self.mode == "empty":
            return encode_dict({"total": "10", "items": ""})
        # "growing": every page claims there are more lists than before.
        item = encode_dict({"name": f"l{self.calls:06d}", "site": "", "descr": "",
                            "created": "", "members": "1", "admin": ""})
        return encode_dict({"total": str(self.calls * 10), "items": "{" + item + "}"})


@pytest.mark.parametrize("mode", ["empty", "growing"])
def test_inconsistent_totals_end_with_an_error_not_a_loop(mode: str) -> None:
    settings = ClientSettings(read_timeout=2, operation_timeout=5, page_size=1)
    with LyingSim(Dataset(), mode=mode) as sim, client_for(sim, settings=settings) as client:
        with pytest.raises(TclPortError) as info:
            list(client.iter_lists())
        assert info.value.code == "MALFORMED"
        assert sim.calls < 20


# -- names ------------------------------------------------------------------------------------


def test_hostile_names_round_trip_byte_for_byte() -> None:
    tricky = [
        "a b", "{", "}", "{}", 'q"uote', "back\\", "\\n", "<script>alert(1)</script>",
        "Tom & Jerry", "Ünïcödé 日本語 🎉", "$x [y] ;z", "#start", "tab\there", "line\nbreak",
        "cr\rlf", " lead", "trail ", "}{", "\\{", "x" * 2000,
    ]
    with HostSim(Dataset.generate(lists=5)) as sim:
        for n, name in enumerate(tricky):
            sim.add_list(name, site=name[:10], descr=name, admin=f"{name}@example.com",
                         members=n, created=date(2020, 1, n + 1))
        with client_for(sim) as client:
            got = {r.name: r for r in client.lists()}
    for n, name in enumerate(tricky):
        assert got[name] == ListRecord(name, name[:10], name, date(2020, 1, n + 1), n,
                                       f"{name}@example.com")
        assert got[name].name.encode("utf-8") == name.encode("utf-8")


def test_hostile_site_names_and_long_password(dataset: Dataset) -> None:
    password = 'p w{d}"\\ \n ü' * 100
    with HostSim(dataset, password=password) as sim:
        sim.add_site("<b>Site & {co}</b>", 'Title "x" \\')
        with client_for(sim, password=password) as client:
            assert SiteRecord("<b>Site & {co}</b>", 'Title "x" \\') in client.sites()


@pytest.mark.skipif(shutil.which("tclsh") is None, reason="tclsh (Tcl 8.6) is not installed")
def test_reads_replies_built_by_tcl_itself(tmp_path: Path) -> None:
    names = sorted(
        {"a b", "{", "}", "{}", '"q"', "back\\", "<script>", "A & B", "Ünï 日本 🎉",
         "$x [y] ;z", "#h", "t\tab", "new\nline", " lead", "}{", "\\{", "plain"},
        key=lambda n: n.encode("utf-8"),
    )
    (tmp_path / "names.hex").write_text("\n".join(n.encode("utf-8").hex() for n in names))
    (tmp_path / "server.tcl").write_text(TCL_SERVER, encoding="utf-8")
    proc = subprocess.Popen(
        ["tclsh", str(tmp_path / "server.tcl"), str(tmp_path / "names.hex")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with TclPortClient("127.0.0.1", port, settings=PATIENT) as client:
            got = client.lists()
            sites = client.sites()
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert [r.name for r in got] == names
    assert got[0] == ListRecord(names[0], names[0], f"d {names[0]}", date(2026, 1, 2), 5,
                                f"{names[0]}@example.com")
    assert [(s.name, s.title) for s in sites] == [(n, f"Title {n}") for n in names]


# -- limits -----------------------------------------------------------------------------------


def test_request_longer_than_65536_bytes_is_not_sent(sim: HostSim) -> None:
    with client_for(sim) as client:
        with pytest.raises(TclPortError) as info:
            client.logging_set("x" * 70_000)
        assert info.value.code == "REQUEST_TOO_LONG"
        assert "65,536" in info.value.message
        # Nothing went out, so the session is still good.
        assert client.server_info().product == "ListManager"
    assert sim.requests["logging_set"] == 0


def test_reply_larger_than_the_limit_is_refused(sim: HostSim) -> None:
    settings = ClientSettings(read_timeout=1, operation_timeout=2, max_reply_bytes=1000)
    with client_for(sim, settings=settings) as client:
        with pytest.raises(TclPortError) as info:
            client.lists()
        assert info.value.code == "OVERSIZED"
        assert "1,000 bytes" in info.value.message
        assert not client.connected
        with pytest.raises(TclPortError) as again:
            client.sites()
        assert again.value.code == "CLOSED"


def test_oversized_body_of_100_mb_is_refused_without_reading_it(sim: HostSim) -> None:
    sim.set_hostile("oversized_body", on="command")
    with client_for(sim) as client:
        tracemalloc.start()
        started = time.monotonic()
        try:
            with pytest.raises(TclPortError) as info:
                client.server_info()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert info.value.code == "OVERSIZED"
    assert "104,857,600 bytes" in info.value.message
    assert time.monotonic() - started < 0.5
    assert peak < 2 * 1024 * 1024


@pytest.mark.parametrize(
    ("script", "code"),
    [
        # LENGTH has no leading zeros (Tcl 8.6 reads them as octal): a 64-byte header of
        # zeros is malformed, a 65-byte one is too long to be looked at.
        ([GREETING, AUTH_OK, b"OK " + b"0" * 61 + b"\n\n"], "MALFORMED"),
        ([GREETING, AUTH_OK, b"OK " + b"0" * 62 + b"\n\n"], "OVERSIZED"),
        ([GREETING, AUTH_OK, b"OK  5\nhello\n"], "MALFORMED"),
        ([GREETING, AUTH_OK, b"ok 0\n\n"], "MALFORMED"),
        ([GREETING, AUTH_OK, b"OK 5\r\nhello\n"], "MALFORMED"),
        ([GREETING, AUTH_OK, frame("ERR", b"ONLYCODE")], "MALFORMED"),
        ([GREETING, AUTH_OK, frame("ERR", b"A b c")], "MALFORMED"),
        ([GREETING, AUTH_OK, frame("ERR", b"BUSY {try later}")], "BUSY"),
        ([GREETING, AUTH_OK, frame("ERR", b"WEIRD_CODE {something odd}")], "WEIRD_CODE"),
        ([GREETING, AUTH_OK, frame("OK", b"a b c")], "MALFORMED"),
        ([GREETING, AUTH_OK, frame("OK", b"")], "MALFORMED"),
        ([GREETING, AUTH_OK, frame("OK", b"mode lists")], "MALFORMED"),
    ],
)
def test_framing_edge_cases(script: list[bytes], code: str) -> None:
    with scripted_server(script) as address, TclPortClient(*address, settings=PATIENT) as client:
        with pytest.raises(TclPortError) as info:
            client.logging()
        assert info.value.code == code
        if code == "WEIRD_CODE":
            assert info.value.message == "WEIRD_CODE: something odd"


def lists_reply(**fields: str) -> bytes:
    item = {"name": "x", "site": "", "descr": "", "created": "", "members": "1", "admin": ""}
    item.update(fields)
    return frame("OK", encode_dict({"total": "1", "items": encode_list([encode_dict(item)])})
                 .encode())


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"created": "2026-02-30"}, "'created'"),
        ({"created": "2026-2-3"}, "'created'"),
        ({"members": "-1"}, "'members'"),
        ({"members": "\uff11\uff12"}, "'members'"),  # full-width digits: int() takes them
        ({"members": ""}, "'members'"),
    ],
)
def test_bad_field_values_name_the_field(fields: dict[str, str], named: str) -> None:
    script = [GREETING, AUTH_OK, lists_reply(**fields)]
    with (
        scripted_server(script) as address,
        TclPortClient(*address, settings=PATIENT) as client,
        pytest.raises(TclPortError) as info,
    ):
        client.lists()
    assert info.value.code == "MALFORMED" and named in info.value.message


# -- hostile servers --------------------------------------------------------------------------

EXPECTED = {
    # mode: (code at greeting, code at a command)
    "silent": ("TIMEOUT", "TIMEOUT"),
    "trickle": ("TIMEOUT", "TIMEOUT"),
    "oversized_header": ("NOT_TCLPORT", "OVERSIZED"),
    "oversized_body": ("NOT_TCLPORT", "OVERSIZED"),
    "truncated_body": ("NOT_TCLPORT", "MALFORMED"),
    "garbage_greeting": ("NOT_TCLPORT", "MALFORMED"),
    "not_tclport": ("NOT_TCLPORT", "MALFORMED"),
    "malformed_list": ("NOT_TCLPORT", "MALFORMED"),
    "no_final_lf": ("NOT_TCLPORT", "MALFORMED"),
    "bad_status": ("NOT_TCLPORT", "MALFORMED"),
    "reset": ("CLOSED", "CLOSED"),
    "bad_utf8": ("NOT_TCLPORT", "MALFORMED"),
}


def test_every_hostile_mode_has_an_expected_outcome() -> None:
    assert set(EXPECTED) == set(HOSTILE_MODES)


@pytest.mark.parametrize("on", ["greeting", "command"])
@pytest.mark.parametrize("mode", HOSTILE_MODES)
def test_hostile_server_gives_a_typed_error_within_the_deadline(
    sim: HostSim, mode: str, on: str
) -> None:
    sim.set_hostile(mode, on=on)
    before = fd_count()
    started = time.monotonic()
    client = client_for(sim)
    with pytest.raises(TclPortError) as info:
        client.connect()
        client.server_info()
    elapsed = time.monotonic() - started
    client.close()
    settle(sim)
    error = info.value
    assert error.code == EXPECTED[mode][0 if on == "greeting" else 1]
    phases = {"greeting"} if on == "greeting" else {"command:server_info"}
    if mode == "reset" and on == "greeting":
        # A reset right after the handshake may surface from connect() itself (Linux).
        phases.add("connect")
    assert error.phase in phases
    assert elapsed < FAST.operation_timeout + 0.3
    assert str(error).startswith(f"127.0.0.1:{sim.port}: ")
    assert not client.connected
    assert sockets_back_to(before)


def test_trickling_peer_hits_the_overall_deadline_not_the_read_timeout(sim: HostSim) -> None:
    sim.set_hostile("trickle", on="greeting")
    sim.trickle_interval = 0.02
    settings = ClientSettings(connect_timeout=1, read_timeout=5, operation_timeout=0.4)
    started = time.monotonic()
    with pytest.raises(TclPortError) as info:
        TclPortClient(sim.host, sim.port, settings=settings).connect()
    assert info.value.code == "TIMEOUT"
    assert "0.4 s" in info.value.message
    assert time.monotonic() - started < 0.8


def test_slow_but_steady_server_within_the_deadline_is_fine(sim: HostSim) -> None:
    sim.set_latency(0.05)
    with client_for(sim) as client:
        assert client.server_info().version == "12.3"


# -- what the user reads (spec section 6) -------------------------------------------------------


def failure(host: str, port: int, password: str = "TCLPORTPasswd",
            settings: ClientSettings = FAST) -> TclPortError:
    client = TclPortClient(host, port, password, name="Lists", settings=settings)
    with pytest.raises(TclPortError) as info:
        client.connect()
    client.close()
    return info.value


def test_dns_failure_says_the_host_name_does_not_resolve() -> None:
    error = failure("no-such-host.invalid", 2021)
    assert (error.code, error.phase) == ("DNS", "resolve")
    assert "does not resolve" in error.message
    assert str(error).startswith("Lists (no-such-host.invalid:2021): ")


def test_refused_says_nothing_listens_and_what_to_check() -> None:
    port = closed_port()
    error = failure("127.0.0.1", port)
    assert (error.code, error.phase) == ("REFUSED", "connect")
    assert f"nothing listens on 127.0.0.1:{port}" in error.message
    assert "TCLPORT IP addresses" in error.message
    assert "firewall" in error.message


def test_timeout_says_how_long_it_waited(sim: HostSim) -> None:
    sim.set_hostile("silent")
    error = failure(sim.host, sim.port)
    assert (error.code, error.phase) == ("TIMEOUT", "greeting")
    assert "no answer" in error.message and "0.4 s" in error.message


def test_connect_timeout_says_how_long_it_waited() -> None:
    settings = ClientSettings(connect_timeout=0.3, read_timeout=0.3, operation_timeout=0.6)
    started = time.monotonic()
    with blackhole() as (host, port):
        error = failure(host, port, settings=settings)
    assert (error.code, error.phase) == ("TIMEOUT", "connect")
    assert "no answer" in error.message and "0.3 s" in error.message
    assert time.monotonic() - started < 0.6


def test_not_tclport_says_it_answered_but_not_as_tclport(sim: HostSim) -> None:
    sim.set_hostile("garbage_greeting")
    error = failure(sim.host, sim.port)
    assert error.code == "NOT_TCLPORT"
    assert f"127.0.0.1:{sim.port} answered, but not as a ListManager TclPort" in error.message
    # Its banner is counted, never quoted: the check must not be a banner grabber.
    assert "bytes, not shown" in error.message
    assert "SSH" not in error.message and "SSH" not in error.detail


def test_host_denied_names_the_address_and_how_to_allow_it(dataset: Dataset) -> None:
    with HostSim(dataset, allowed_hosts=("10.9.8.7",)) as sim:
        error = failure(sim.host, sim.port)
    assert (error.code, error.phase) == ("HOST_DENIED", "greeting")
    assert "127.0.0.1" in error.message
    assert "TCLPORT Hosts" in error.message and "Security: GUI Hosts" in error.message
    assert "lm tclport 127.0.0.1" in error.message


def test_auth_failed_says_the_password_was_rejected_and_never_shows_it(sim: HostSim) -> None:
    error = failure(sim.host, sim.port, password=WRONG)
    assert (error.code, error.phase) == ("AUTH_FAILED", "auth")
    assert "password was rejected" in error.message and "TCLPORTPasswd" in error.message
    for text in (str(error), repr(error), error.detail, repr(error.as_dict())):
        assert WRONG not in text
    assert WRONG not in repr(TclPortClient("h", password=WRONG))


def test_a_server_echoing_the_password_does_not_put_it_on_screen() -> None:
    echo = frame("ERR", encode_list(["BAD_ARGS", f"auth {WRONG} rejected"]).encode())
    with scripted_server([GREETING, echo]) as address:
        client = TclPortClient(*address, WRONG, settings=PATIENT)
        with pytest.raises(TclPortError) as info:
            client.connect()
        client.close()
    assert info.value.code == "BAD_ARGS"
    assert WRONG not in str(info.value) and WRONG not in info.value.detail
    # Redacted at the source: nothing the peer said in reply to auth is quoted.
    assert "rejected" not in info.value.detail and "not shown" in str(info.value)


def test_unknown_command_and_command_mapping(dataset: Dataset) -> None:
    with HostSim(dataset, commands={"sites": "site_list"}) as sim:
        with client_for(sim) as client:
            with pytest.raises(TclPortError) as info:
                client.sites()
            assert info.value.code == "UNKNOWN_COMMAND"
            assert "'sites'" in info.value.message and "command" in info.value.message
            # An ERR reply leaves the session usable.
            assert client.server_info().product == "ListManager"
        with client_for(sim, commands={"sites": "site_list"}) as client:
            assert client.sites() == dataset.sites
    with pytest.raises(ValueError):
        TclPortClient("h", commands={"bogus": "x"})


# -- connections, threads, processes, leaks -----------------------------------------------------


def test_ipv6_and_localhost(dataset: Dataset) -> None:
    with HostSim(dataset, host="::1") as sim, TclPortClient("::1", sim.port, settings=PATIENT) as c:
        assert c.server_info().product == "ListManager"
        assert c.label == f"[::1]:{sim.port}"
    with HostSim(dataset) as sim, TclPortClient("localhost", sim.port, settings=PATIENT) as client:
        assert client.sites() == dataset.sites


def test_many_clients_at_once(sim: HostSim, dataset: Dataset) -> None:
    expected = sorted(dataset.lists, key=lambda r: r.name.encode())
    settings = ClientSettings(read_timeout=5, operation_timeout=10, page_size=100)

    def work(_: int) -> int:
        with client_for(sim, settings=settings) as client:
            assert client.lists() == expected
            return len(client.sites())

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(work, range(32))) == [4] * 32
    assert sim.sessions == 32


def test_close_never_raises_and_is_idempotent(sim: HostSim) -> None:
    client = client_for(sim).connect()
    sim.stop()
    client.close()
    client.close()
    assert not client.connected


@pytest.mark.timeout(30)
def test_no_leaked_sockets_or_threads_after_1000_failed_sessions(dataset: Dataset) -> None:
    gc.collect()
    fds, threads = fd_count(), thread_count()
    port = closed_port()
    with HostSim(dataset, allowed_hosts=("127.0.0.1",)) as sim:
        for n in range(1000):
            kind = n % 4
            if kind == 0:
                error = failure("127.0.0.1", port)
            elif kind == 1:
                error = failure(sim.host, sim.port, password=WRONG)
            elif kind == 2:
                sim.set_hostile("bad_status")
                error = failure(sim.host, sim.port)
                sim.set_hostile(None)
            else:
                sim.set_allowed_hosts(["10.0.0.1"])
                error = failure(sim.host, sim.port)
                sim.set_allowed_hosts(["127.0.0.1"])
            assert error.code in ("REFUSED", "AUTH_FAILED", "NOT_TCLPORT", "HOST_DENIED")
        settle(sim)
    gc.collect()
    assert sockets_back_to(fds)
    assert thread_count() <= threads
    assert not [t for t in threading.enumerate() if t.name.startswith("hostsim")]
