"""Connection and Enable Logging checks against the simulator: each step, each failure's
guidance, and the JSON form the pages and the CLI show."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from _sim import FAST, PATIENT, blackhole, closed_port

from lm_billing_plugin.engine.checks import (
    CONNECTION_STEPS,
    ConnectionReport,
    check_connection,
    check_logging,
    check_server,
    enable_logging,
)
from lm_billing_plugin.testing.simulator import Dataset, HostSim

LISTS_LABEL = "Yes, Log All Messages that ListManager Sends to Mailing Lists"
SECRET = "s3cret-Pa55"


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(lists=20), password=SECRET) as server:
        yield server


def test_healthy_server_passes_every_step(sim: HostSim) -> None:
    report = check_connection(sim.host, sim.port, SECRET, name="Lists", settings=PATIENT)
    assert report.ok
    assert [s.step for s in report.steps] == list(CONNECTION_STEPS)
    assert all(s.status == "ok" and s.elapsed_ms is not None for s in report.steps)
    assert (report.version, report.product) == ("12.3", "ListManager")
    assert report.round_trip_ms is not None and report.round_trip_ms >= 0
    data = json.loads(report.to_json())
    assert data["ok"] and data["version"] == "12.3" and data["code"] is None
    assert data["server"] == f"Lists (127.0.0.1:{sim.port})"
    assert SECRET not in report.to_json()


def statuses(report: ConnectionReport) -> dict[str, str]:
    return {s.step: s.status for s in report.steps}


@pytest.mark.parametrize(
    ("failing", "code"),
    [
        ("greeting", "NOT_TCLPORT"),
        ("password", "AUTH_FAILED"),
        ("version", "MALFORMED"),
    ],
)
def test_check_stops_at_the_first_failing_step(sim: HostSim, failing: str, code: str) -> None:
    password = SECRET
    if failing == "greeting":
        sim.set_hostile("bad_status", on="greeting")
    elif failing == "password":
        password = "wrong"
    else:
        sim.set_hostile("malformed_list", on="command")
    report = check_connection(sim.host, sim.port, password, settings=PATIENT)
    assert not report.ok
    index = CONNECTION_STEPS.index(failing)
    expected = {s: "ok" for s in CONNECTION_STEPS[:index]}
    expected[failing] = "failed"
    expected.update({s: "not_run" for s in CONNECTION_STEPS[index + 1 :]})
    assert statuses(report) == expected
    failed = report.failed_step
    assert failed is not None and failed.code == code
    assert report.error is not None and failed.message == report.error.message
    assert report.as_dict()["code"] == code
    assert "wrong" not in report.to_json()


def test_dns_failure_is_the_resolve_step() -> None:
    report = check_connection("billing-test.invalid", 2021, settings=PATIENT)
    assert statuses(report)["resolve"] == "failed"
    assert report.failed_step is not None and report.failed_step.code == "DNS"
    assert "does not resolve" in report.message
    assert statuses(report)["connect"] == "not_run"


def test_refused_is_the_connect_step() -> None:
    port = closed_port()
    report = check_connection("127.0.0.1", port, settings=PATIENT)
    assert statuses(report) == {"resolve": "ok", "connect": "failed", "greeting": "not_run",
                                "password": "not_run", "version": "not_run"}
    assert f"nothing listens on 127.0.0.1:{port}" in report.message


def test_timeouts_say_how_long(sim: HostSim) -> None:
    with blackhole() as (host, port):
        report = check_connection(host, port, settings=FAST)
    assert report.failed_step is not None and report.failed_step.step == "connect"
    assert report.failed_step.code == "TIMEOUT" and "0.5 s" in report.message
    sim.set_hostile("silent")
    report = check_connection(sim.host, sim.port, SECRET, settings=FAST)
    assert report.failed_step is not None and report.failed_step.step == "greeting"
    assert report.failed_step.code == "TIMEOUT" and "0.4 s" in report.message


def test_host_denied_is_the_greeting_step_with_what_to_do(sim: HostSim) -> None:
    sim.set_allowed_hosts(["10.0.0.0/8"])
    report = check_connection(sim.host, sim.port, SECRET, settings=PATIENT)
    assert report.failed_step is not None
    assert (report.failed_step.step, report.failed_step.code) == ("greeting", "HOST_DENIED")
    assert "TCLPORT Hosts" in report.message and "lm tclport 127.0.0.1" in report.message


def test_logging_lists_is_ok(sim: HostSim) -> None:
    report = check_logging(sim.host, sim.port, SECRET, settings=PATIENT)
    assert report.ok and report.mode == "lists" and report.label == LISTS_LABEL
    assert json.loads(report.to_json())["ok"] is True


def test_logging_no_is_not_ok_and_says_what_to_set(sim: HostSim) -> None:
    sim.set_logging("no")
    report = check_logging(sim.host, sim.port, SECRET, settings=PATIENT)
    assert not report.ok and (report.mode, report.label) == ("no", "No")
    assert LISTS_LABEL in report.message
    assert "Server Settings: Automatic Maintenance: Logging" in report.message
    assert "cannot count messages" in report.message


def test_unknown_logging_mode_is_shown_with_its_label(sim: HostSim) -> None:
    sim.set_logging("errors", "Log Errors Only (custom build)")
    report = check_logging(sim.host, sim.port, SECRET, settings=PATIENT)
    assert not report.ok and report.mode == "errors"
    assert "Log Errors Only (custom build)" in report.message


def test_logging_check_on_unreachable_server_reports_the_connection_error() -> None:
    report = check_logging("127.0.0.1", closed_port(), settings=PATIENT)
    assert not report.ok and report.mode is None and report.code == "REFUSED"


def test_enable_logging_switches_it_on(sim: HostSim) -> None:
    sim.set_logging("no")
    report = enable_logging(sim.host, sim.port, SECRET, settings=PATIENT)
    assert report.ok and report.changed and report.mode == "lists"
    assert sim.dataset.logging_mode == "lists"
    again = enable_logging(sim.host, sim.port, SECRET, settings=PATIENT)
    assert again.ok and not again.changed
    assert sim.requests["logging_set"] == 1


def test_enable_logging_not_permitted_says_to_do_it_on_the_server(sim: HostSim) -> None:
    sim.set_logging("no")
    sim.allow_logging_set = False
    report = enable_logging(sim.host, sim.port, SECRET, settings=PATIENT)
    assert not report.ok and report.code == "NOT_PERMITTED"
    assert report.mode == "no"
    assert "on the hosting server itself" in report.message
    assert "Automatic Maintenance: Logging" in report.message and LISTS_LABEL in report.message
    assert sim.dataset.logging_mode == "no"


def test_check_server_combines_both_over_one_connection(sim: HostSim) -> None:
    result = check_server(sim.host, sim.port, SECRET, name="Lists", settings=PATIENT)
    assert result.ok and result.logging is not None and result.logging.ok
    assert sim.sessions == 1
    sim.set_logging("no")
    result = check_server(sim.host, sim.port, SECRET, settings=PATIENT)
    assert result.connection.ok and not result.ok
    data = json.loads(result.to_json())
    assert data["logging"]["mode"] == "no" and data["connection"]["ok"] is True
    failed = check_server(sim.host, sim.port, "wrong", settings=PATIENT)
    assert not failed.ok and failed.logging is None
    assert failed.as_dict()["connection"]["code"] == "AUTH_FAILED"
