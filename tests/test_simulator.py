"""The hosting-server simulator's own rules, byte by byte over raw sockets, its live changes,
datasets, clean shutdown, and its command line as a separate process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from _sim import PATIENT, TCL_CLIENT, RawConn, settle, thread_count

from lm_billing_plugin.tclport import TclPortClient, TclPortError
from lm_billing_plugin.tclport.codec import decode_dict, decode_list
from lm_billing_plugin.testing.simulator import Dataset, HostSim, SendLogEntry


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=2, lists=40, seed=9)) as server:
        yield server


def test_greeting_is_protocol_1(sim: HostSim) -> None:
    with RawConn(sim.address) as conn:
        status, body = conn.reply()
        assert status == "OK"
        assert decode_dict(body) == {"protocol": "1", "product": "ListManager"}


def test_commands_before_auth_get_auth_required(sim: HostSim) -> None:
    with RawConn(sim.address) as conn:
        conn.reply()
        for command in ("server_info", "lists", "nonsense"):
            conn.send(command)
            assert conn.err()[0] == "AUTH_REQUIRED"
        conn.send("auth", "TCLPORTPasswd")
        assert conn.reply() == ("OK", "")
        conn.send("server_info")
        assert conn.reply()[0] == "OK"


def test_wrong_password_gets_auth_failed_then_close(sim: HostSim) -> None:
    with RawConn(sim.address) as conn:
        conn.reply()
        conn.send("auth", "wrong")
        assert conn.err()[0] == "AUTH_FAILED"
        assert conn.is_closed()


def test_caller_not_in_tclport_hosts_gets_host_denied_then_close(sim: HostSim) -> None:
    sim.set_allowed_hosts(["192.168.7.0/24"])
    with RawConn(sim.address) as conn:
        assert conn.err() == ("HOST_DENIED", "127.0.0.1 is not in TCLPORT Hosts")
        assert conn.is_closed()
    sim.set_allowed_hosts(["127.0.0.1"])
    with RawConn(sim.address) as conn:
        assert conn.reply()[0] == "OK"


@pytest.mark.parametrize(
    "request_words",
    [
        ("lists", "0", "0"),
        ("lists", "0", "5001"),
        ("lists", "-1", "10"),
        ("lists", "abc", "10"),
        ("lists", "0"),
        ("lists", "0", "1", "2"),
        ("usage", "2026-13-01", "2026-12-31"),
        ("usage", "2026-1-1", "2026-12-31"),
        ("usage", "2026-02-01", "2026-01-01"),
        ("logging_set", "sometimes"),
        ("server_info", "extra"),
    ],
)
def test_bad_arguments_get_bad_args(sim: HostSim, request_words: tuple[str, ...]) -> None:
    with RawConn(sim.address) as conn:
        conn.login()
        conn.send(*request_words)
        assert conn.err()[0] == "BAD_ARGS"
        conn.send("server_info")
        assert conn.reply()[0] == "OK"


def test_limits_at_the_edges_are_accepted(sim: HostSim) -> None:
    with RawConn(sim.address) as conn:
        conn.login()
        for offset, limit, count in (("0", "1", 1), ("0", "5000", 40), ("39", "5", 1),
                                     ("40", "5", 0), ("1000", "5", 0)):
            conn.send("lists", offset, limit)
            status, body = conn.reply()
            page = decode_dict(body)
            assert status == "OK" and page["total"] == "40"
            assert len(decode_list(page["items"])) == count


def test_unknown_command(sim: HostSim) -> None:
    with RawConn(sim.address) as conn:
        conn.login()
        conn.send("drop_everything")
        assert conn.err()[0] == "UNKNOWN_COMMAND"


def test_request_line_limit_is_65536_bytes(sim: HostSim) -> None:
    with RawConn(sim.address) as conn:
        conn.login()
        # Exactly 65,536 bytes (a CR before the LF does not count): still served.
        conn.send_line(b"server_info" + b" " * (65_536 - 11) + b"\r")
        assert conn.reply()[0] == "OK"
        conn.send_line(b"server_info" + b" " * (65_537 - 11))
        assert conn.err()[0] == "BAD_REQUEST"
        assert conn.is_closed()


def test_huge_request_line_still_gets_its_bad_request_reply(sim: HostSim) -> None:
    with RawConn(sim.address) as conn:
        conn.login()
        # The server stops reading at the limit but drains the rest, so no reset loses the reply.
        conn.send_line(b"lists " + b"9" * 2_000_000)
        assert conn.err()[0] == "BAD_REQUEST"
        assert conn.is_closed()


def test_request_that_is_not_a_list_gets_bad_request(sim: HostSim) -> None:
    with RawConn(sim.address) as conn:
        conn.login()
        conn.send_line(b"lists {0 10")
        assert conn.err()[0] == "BAD_REQUEST"
        conn.send_line(b"")
        assert conn.err()[0] == "BAD_REQUEST"
        conn.send("quit")
        assert conn.reply() == ("OK", "")
        assert conn.is_closed()


def test_usage_while_logging_is_no_gets_logging_off(sim: HostSim) -> None:
    sim.set_logging("no")
    with RawConn(sim.address) as conn:
        conn.login()
        conn.send("usage", "2026-01-01", "2026-01-31")
        assert conn.err()[0] == "LOGGING_OFF"
        conn.send("logging")
        assert decode_dict(conn.reply()[1]) == {"mode": "no", "label": "No"}


def test_logging_set_when_not_permitted(sim: HostSim) -> None:
    sim.allow_logging_set = False
    sim.set_logging("no")
    with RawConn(sim.address) as conn:
        conn.login()
        conn.send("logging_set", "lists")
        assert conn.err()[0] == "NOT_PERMITTED"
    assert sim.dataset.logging_mode == "no"


def test_unknown_logging_mode_is_reported_with_its_own_label(sim: HostSim) -> None:
    sim.set_logging("bounces", "Log Bounces Only")
    with TclPortClient(*sim.address, settings=PATIENT) as client:
        state = client.logging()
    assert (state.mode, state.label, state.counts_messages) == (
        "bounces", "Log Bounces Only", False
    )


def test_lists_are_sorted_by_utf8_bytes_and_case_sensitive() -> None:
    names = ["b", "B", "a", "é", "z", "Z", "~", "日本", "\U0001f389", " x"]
    data = Dataset(lists=[], sites=[])
    with HostSim(data) as sim:
        for name in names:
            sim.add_list(name)
        with TclPortClient(*sim.address, settings=PATIENT) as client:
            got = [r.name for r in client.lists()]
    assert got == sorted(names, key=lambda n: n.encode("utf-8"))
    assert got.index("B") < got.index("a")


def test_usage_sums_the_sending_log_over_the_inclusive_range() -> None:
    log = [
        SendLogEntry("alpha", "s1", date(2026, 3, 1), 100, 2_000),
        SendLogEntry("alpha", "s1", date(2026, 3, 31), 50, 1_000),
        SendLogEntry("alpha", "s1", date(2026, 4, 1), 999, 999),
        SendLogEntry("beta", "s2", date(2026, 2, 28), 7, 7),
        SendLogEntry("beta", "s2", date(2026, 3, 15), 10, 10),
    ]
    with HostSim(Dataset(log=log)) as sim, TclPortClient(*sim.address, settings=PATIENT) as c:
        rows = {u.list: u for u in c.usage(date(2026, 3, 1), date(2026, 3, 31))}
    assert (rows["alpha"].messages, rows["alpha"].recipients, rows["alpha"].bytes) == (
        2, 150, 100 * 2_000 + 50 * 1_000
    )
    assert (rows["beta"].site, rows["beta"].messages, rows["beta"].bytes) == ("s2", 1, 100)


def test_live_changes_show_in_the_next_command(sim: HostSim) -> None:
    with TclPortClient(*sim.address, settings=PATIENT) as client:
        before = {r.name: r for r in client.lists()}
        sim.add_list("new list", site="site1", members=3)
        sim.remove_list("list-00001")
        sim.rename_list("list-00002", "renamed")
        sim.set_members("list-00003", 12345)
        sim.add_site("site9", "Nine")
        sim.remove_site("site2")
        sim.set_version("10.2b")
        after = {r.name: r for r in client.lists()}
        assert after["new list"].members == 3
        assert "list-00001" not in after and "list-00002" not in after
        assert after["renamed"].descr == before["list-00002"].descr
        assert after["list-00003"].members == 12345
        assert [s.name for s in client.sites()] == ["site1", "site9"]
        assert client.server_info().version == "10.2b"
    sim.set_password("changed")
    with pytest.raises(TclPortError) as info:
        TclPortClient(*sim.address, settings=PATIENT).connect()
    assert info.value.code == "AUTH_FAILED"
    with TclPortClient(*sim.address, "changed", settings=PATIENT) as client:
        sim.set_latency(0.1)
        started = time.monotonic()
        client.server_info()
        assert time.monotonic() - started >= 0.1


def test_unknown_hostile_mode_is_refused(sim: HostSim) -> None:
    with pytest.raises(ValueError):
        sim.set_hostile("nasty")
    with pytest.raises(ValueError):
        sim.set_hostile("silent", on="sometimes")


def test_dataset_json_round_trip(tmp_path: Path) -> None:
    data = Dataset.generate(sites=3, lists=80, seed=4, hostile_names=True)
    path = tmp_path / "data.json"
    data.to_json(path)
    again = Dataset.from_json(path)
    assert again == data
    assert Dataset.generate(sites=3, lists=80, seed=4, hostile_names=True) == data
    assert Dataset.generate(sites=3, lists=80, seed=5, hostile_names=True) != data
    assert len({r.name for r in data.lists}) == 80


def test_stop_ends_idle_and_hostile_sessions_and_joins_threads() -> None:
    threads = thread_count()
    sim = HostSim(Dataset.generate(lists=10), hostile="oversized_body").start()
    flood = RawConn(sim.address)
    stuck = idle = None
    try:
        assert flood.sock.recv(10)
        sim.set_hostile("trickle")
        sim.trickle_interval = 30.0
        stuck = RawConn(sim.address)
        assert stuck.sock.recv(1) == b"O"
        sim.set_hostile(None)
        idle = TclPortClient(*sim.address, settings=PATIENT).connect()
        assert sim.active_sessions == 3
        started = time.monotonic()
        sim.stop()
        assert time.monotonic() - started < 2
        assert sim.active_sessions == 0
        assert thread_count() == threads
        assert stuck.is_closed()
    finally:
        for conn in (flood, stuck):
            if conn is not None:
                conn.close()
        if idle is not None:
            idle.close()


def test_many_sessions_at_once_are_served() -> None:
    with HostSim(Dataset.generate(lists=200)) as sim:
        conns = [RawConn(sim.address) for _ in range(50)]
        try:
            for conn in conns:
                conn.login()
            assert sim.active_sessions == 50
        finally:
            for conn in conns:
                conn.close()
        settle(sim)
        assert sim.active_sessions == 0


@pytest.mark.skipif(shutil.which("tclsh") is None, reason="tclsh (Tcl 8.6) is not installed")
def test_a_tcl_client_reads_the_simulators_replies_exactly(tmp_path: Path) -> None:
    data = Dataset.generate(sites=3, lists=120, seed=11, hostile_names=True)
    script = tmp_path / "client.tcl"
    script.write_text(TCL_CLIENT, encoding="utf-8")
    with HostSim(data) as sim:
        out = subprocess.run(
            ["tclsh", str(script), sim.host, str(sim.port)],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.splitlines()

    def text(h: str) -> str:
        return bytes.fromhex(h).decode("utf-8")

    assert out[0] == "total 120"
    lists = [line.split(" ") for line in out if line.startswith("list ")]
    expected = sorted(data.lists, key=lambda r: r.name.encode("utf-8"))
    assert [(text(n), text(d), int(m)) for _, n, d, m in lists] == [
        (r.name, r.descr, r.members) for r in expected
    ]
    sites = [line.split(" ") for line in out if line.startswith("site ")]
    assert [(text(n), text(t)) for _, n, t in sites] == [(s.name, s.title) for s in data.sites]


# -- the command line -------------------------------------------------------------------------


def start_cli(*args: str) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lm_billing_plugin.testing.simulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LM_BILLING_HOSTSIM_PASSWORD": "from-env"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (\S+):(\d+) ", line)
    assert match, line + proc.stderr.read() if proc.stderr else line
    return proc, (match.group(1), int(match.group(2)))


def stop_cli(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return out


@pytest.mark.timeout(30)
def test_cli_serves_a_generated_dataset_in_another_process() -> None:
    proc, address = start_cli("--generate-lists", "1234", "--generate-sites", "5", "--seed",
                              "2", "--logging", "no", "--version-string", "11.b")
    try:
        with TclPortClient(*address, "from-env", settings=PATIENT) as client:
            assert client.server_info().version == "11.b"
            assert len(client.lists()) == 1234
            assert len(client.sites()) == 5
            assert client.logging().mode == "no"
            with pytest.raises(TclPortError) as info:
                client.usage(date(2026, 1, 1), date(2026, 1, 2))
            assert info.value.code == "LOGGING_OFF"
        # Clients on several threads against the simulator process at once.
        results: list[int] = []

        def work() -> None:
            with TclPortClient(*address, "from-env", settings=PATIENT) as client:
                results.append(len(client.lists()))

        workers = [threading.Thread(target=work) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert results == [1234] * 4
    finally:
        out = stop_cli(proc)
    assert "stopped" in out


@pytest.mark.timeout(30)
def test_cli_serves_a_json_dataset_with_allow_list_and_hostile_mode(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    Dataset.generate(lists=12, hostile_names=True).to_json(path)
    proc, address = start_cli("--data", str(path), "--password", "pw", "--allow", "10.1.1.1")
    try:
        with pytest.raises(TclPortError) as info:
            TclPortClient(*address, "pw", settings=PATIENT).connect()
        assert info.value.code == "HOST_DENIED"
    finally:
        stop_cli(proc)
    proc, address = start_cli("--data", str(path), "--hostile", "garbage_greeting")
    try:
        with pytest.raises(TclPortError) as info:
            TclPortClient(*address, settings=PATIENT).connect()
        assert info.value.code == "NOT_TCLPORT"
    finally:
        stop_cli(proc)
