"""`flask lm-billing servers ...` against real simulated hosting servers: adding with each
password source, listing, every failure cause of the protocol spec's section 6, exit codes."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import Result
from flask import Flask
from flask.testing import FlaskCliRunner

from lm_billing_plugin.models import AuditEntry, Run, Server
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim

# A password that must never appear in any output, log line or audit row.
SECRET = "s3cr3t-Tcl\u00fcPort-pw"
FAST = {
    "LM_BILLING_CONNECT_TIMEOUT": 0.5,
    "LM_BILLING_READ_TIMEOUT": 0.4,
    "LM_BILLING_OPERATION_TIMEOUT": 0.8,
}


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """Short timeouts; conftest's ``runner`` runs the CLI on this app."""
    return make_app(**FAST)


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=2, lists=20)) as server:
        yield server


def run(runner: FlaskCliRunner, *args: str, **kwargs: object) -> Result:
    return runner.invoke(args=["lm-billing", "servers", *args], **kwargs)


def add(
    runner: FlaskCliRunner, name: str, host: str, port: int, *extra: str, input: str | None = None
) -> Result:
    return run(
        runner, "add", "--name", name, "--host", host, "--port", str(port), *extra, input=input
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stored(app: Flask, name: str) -> Server:
    with app.app_context():
        server = get_state().session.scalars(sa.select(Server).where(Server.name == name)).one()
        get_state().session.expunge(server)
        return server


def password_of(app: Flask, name: str) -> str | None:
    server = stored(app, name)
    if server.password_encrypted is None:
        return None
    with app.app_context():
        return get_state().secrets.decrypt(server.password_encrypted)


# --- add -------------------------------------------------------------------------------------


def test_add_without_password_uses_default_and_stores_nothing(
    app: Flask, runner: FlaskCliRunner, sim: HostSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LM_BILLING_TCLPORT_PASSWORD", raising=False)
    result = add(runner, "Main", sim.host, sim.port, "--comments", "first one")
    assert result.exit_code == 0, result.output
    assert "ListManager's default" in result.output
    assert password_of(app, "Main") is None
    assert run(runner, "check", "Main").exit_code == 0


def test_add_password_from_file(
    app: Flask, runner: FlaskCliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LM_BILLING_TCLPORT_PASSWORD", "not-this-one")
    path = tmp_path / "pw"
    path.write_text(SECRET + "\n", encoding="utf-8")
    with HostSim(Dataset.generate(lists=3), password=SECRET) as server:
        result = add(runner, "Filed", server.host, server.port, "--password-file", str(path))
        assert result.exit_code == 0, result.output
        assert password_of(app, "Filed") == SECRET  # trailing newline dropped, file wins
        check = run(runner, "check", "Filed")
        assert check.exit_code == 0, check.output
    assert SECRET not in result.output + check.output


def test_add_password_from_env(
    app: Flask, runner: FlaskCliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LM_BILLING_TCLPORT_PASSWORD", SECRET)
    with HostSim(Dataset.generate(lists=3), password=SECRET) as server:
        result = add(runner, "Env", server.host, server.port)
        assert result.exit_code == 0, result.output
        assert "from LM_BILLING_TCLPORT_PASSWORD, stored encrypted" in result.output
        assert run(runner, "check", "Env").exit_code == 0
    assert password_of(app, "Env") == SECRET
    assert SECRET not in result.output


def test_add_ask_password_prompts_hidden_and_confirms(
    app: Flask, runner: FlaskCliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LM_BILLING_TCLPORT_PASSWORD", "env-loses-to-prompt")
    result = add(
        runner,
        "Asked",
        "lists.example.com",
        2021,
        "--ask-password",
        input=f"{SECRET}\n{SECRET}\n",
    )
    assert result.exit_code == 0, result.output
    assert "TclPort password" in result.output
    assert SECRET not in result.output  # hidden input is not echoed
    assert password_of(app, "Asked") == SECRET


def test_add_has_no_plain_password_option(runner: FlaskCliRunner) -> None:
    result = add(runner, "X", "lists.example.com", 2021, "--password", SECRET)
    assert result.exit_code == 2
    assert "No such option" in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--ask-password", "--password-file", "/dev/null"), "not both"),
        (("--password-file", "/nonexistent/pw"), "cannot read the password file"),
        (("--password-file", "/dev/null"), "is empty"),
    ],
)
def test_add_password_source_errors(
    app: Flask, runner: FlaskCliRunner, extra: tuple[str, ...], message: str
) -> None:
    result = add(runner, "Bad", "lists.example.com", 2021, *extra)
    assert result.exit_code == 2
    assert message in result.output
    with app.app_context():
        assert get_state().session.scalars(sa.select(Server)).all() == []


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("http://lists.example.com/", "not a URL"),
        ("lists.example.com/admin", "without a path"),
        ("lists.example.com:2021", "without a port"),
        ("lists example.com", "no spaces"),
        ("[::1]", "without brackets"),
        ("-bad-.example.com", "not a valid part"),
        ("300.1.1.1", "not a valid IPv4 address"),
        ("a" * 254, "at most 253"),
    ],
)
def test_add_rejects_bad_host_names(runner: FlaskCliRunner, host: str, message: str) -> None:
    result = add(runner, "Bad", host, 2021)
    assert result.exit_code == 2
    assert "--host:" in result.output and message in result.output


def test_add_duplicate_name_and_bad_port(runner: FlaskCliRunner) -> None:
    assert add(runner, "Dup", "lists.example.com", 2021).exit_code == 0
    result = add(runner, "Dup", "other.example.com", 70000)
    assert result.exit_code == 2
    assert "--name: A server named 'Dup' already exists" in result.output
    assert "--port: The port is a number from 1 to 65535" in result.output
    # Names compare exactly: another case is another server.
    assert add(runner, "dup", "other.example.com", 2021).exit_code == 0


# --- list ------------------------------------------------------------------------------------


def test_list_table_and_json_never_show_passwords(
    app: Flask, runner: FlaskCliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "No hosting servers yet" in run(runner, "list").output
    monkeypatch.setenv("LM_BILLING_TCLPORT_PASSWORD", SECRET)
    assert add(runner, "With", "ipv6.example.com", 2021).exit_code == 0
    monkeypatch.delenv("LM_BILLING_TCLPORT_PASSWORD")
    assert add(runner, "Without", "2001:db8::1", 2022, "--comments", "<b>&</b>").exit_code == 0

    text = run(runner, "list")
    assert text.exit_code == 0
    lines = text.output.splitlines()
    assert lines[0].split()[:3] == ["Name", "Host", "Name"]
    with_row = next(line for line in lines if line.startswith("With "))
    without_row = next(line for line in lines if line.startswith("Without "))
    assert with_row.split()[-1] == "set"
    assert without_row.split()[-2:] == ["default", "<b>&</b>"]
    assert "2001:db8::1" in without_row and "<b>&</b>" in without_row

    result = run(runner, "list", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert [s["name"] for s in doc] == ["With", "Without"]
    assert [s["password_set"] for s in doc] == [True, False]
    assert doc[1]["port"] == 2022 and doc[1]["status"] == "unchecked"
    for output in (text.output, result.output):
        assert SECRET not in output and "gAAAA" not in output  # nor the Fernet token
    assert not any("password_encrypted" in s for s in doc)


# --- check: every failure cause of the spec's section 6 --------------------------------------


def check(runner: FlaskCliRunner, name: str) -> tuple[Result, dict[str, object]]:
    text = run(runner, "check", name)
    as_json = run(runner, "check", name, "--json")
    assert as_json.exit_code == text.exit_code
    return text, json.loads(as_json.output)


def test_check_ok_prints_step_table_and_records_run(
    app: Flask, runner: FlaskCliRunner, sim: HostSim
) -> None:
    add(runner, "Good", sim.host, sim.port)
    text, doc = check(runner, "Good")
    assert text.exit_code == 0, text.output
    for step in ("resolve", "connect", "greeting", "password", "version", "logging"):
        assert any(line.split()[:2] == [step, "ok"] for line in text.output.splitlines())
    assert "ListManager 12.3" in text.output
    assert doc["ok"] is True and doc["status"] == "ok"
    assert doc["connection"]["version"] == "12.3"  # type: ignore[index]
    assert doc["logging"]["mode"] == "lists"  # type: ignore[index]
    server = stored(app, "Good")
    assert (server.status, server.version, server.logging_mode) == ("ok", "12.3", "lists")
    assert server.checked_at is not None
    with app.app_context():
        session = get_state().session
        runs = session.scalars(sa.select(Run).where(Run.server_id == server.id)).all()
        assert [(r.kind, r.status) for r in runs] == [("check", "ok"), ("check", "ok")]
        audit = session.scalars(sa.select(AuditEntry.action)).all()
        assert audit.count("server_check") == 2 and "server_create" in audit


def test_check_logging_off_exits_1_with_guidance(
    app: Flask, runner: FlaskCliRunner, sim: HostSim
) -> None:
    sim.set_logging("no")
    add(runner, "Quiet", sim.host, sim.port)
    text, doc = check(runner, "Quiet")
    assert text.exit_code == 1
    assert "LOGGING OFF" in text.output
    assert '"Yes, Log All Messages that ListManager Sends to Mailing Lists"' in text.output
    assert "Server Settings: Automatic Maintenance: Logging" in text.output
    assert doc["status"] == "logging_off" and doc["ok"] is False
    assert stored(app, "Quiet").status == "logging_off"


@pytest.mark.parametrize(
    ("setup", "status", "step", "guidance"),
    [
        ("dns", "unreachable", "resolve", "does not resolve"),
        ("refused", "unreachable", "connect", "nothing listens on 127.0.0.1:"),
        ("silent", "unreachable", "greeting", "no answer from 127.0.0.1:"),
        ("garbage_greeting", "error", "greeting", "answered, but not as a ListManager TclPort"),
        ("host_denied", "host_denied", "greeting", "add 127.0.0.1 to TCLPORT Hosts"),
        ("auth_failed", "auth_failed", "password", "the TclPort password was rejected"),
        ("malformed_list", "error", "version", "sent a reply this client cannot read"),
        ("oversized_body", "error", "version", "104,857,600 bytes"),
        ("oversized_header", "error", "version", "cannot read"),
    ],
)
def test_check_failure_causes_print_guidance_and_exit_2(
    app: Flask,
    runner: FlaskCliRunner,
    setup: str,
    status: str,
    step: str,
    guidance: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LM_BILLING_TCLPORT_PASSWORD", SECRET)
    server = HostSim(Dataset.generate(lists=3), password=SECRET)
    if setup == "host_denied":
        server = HostSim(Dataset.generate(lists=3), password=SECRET, allowed_hosts=["10.9.8.7"])
    elif setup == "auth_failed":
        server = HostSim(Dataset.generate(lists=3), password="another one")
    elif setup in ("malformed_list", "oversized_body", "oversized_header"):
        server = HostSim(
            Dataset.generate(lists=3), password=SECRET, hostile=setup, hostile_on="command"
        )
    elif setup in ("silent", "garbage_greeting"):
        server = HostSim(Dataset.generate(lists=3), password=SECRET, hostile=setup)
    with server:
        host, port = server.host, server.port
        if setup == "dns":
            host = "billing-test.invalid"
        elif setup == "refused":
            port = closed_port()
        assert add(runner, "Sick", host, port).exit_code == 0
        text = run(runner, "check", "Sick")
        as_json = run(runner, "check", "Sick", "--json")
    assert text.exit_code == 2, text.output
    assert as_json.exit_code == 2
    assert f"FAILED at {step}" in text.output
    assert guidance in text.output
    if setup == "host_denied":
        assert "TCLPORT Hosts" in text.output and "lm tclport 127.0.0.1" in text.output
    doc = json.loads(as_json.output)
    assert doc["status"] == status and doc["ok"] is False
    assert guidance in str(doc["message"])
    failed = [s for s in doc["connection"]["steps"] if s["status"] == "failed"]
    assert [s["step"] for s in failed] == [step]
    saved = stored(app, "Sick")
    assert saved.status == status and guidance in saved.status_message
    assert SECRET not in text.output + as_json.output


def test_check_unknown_server(runner: FlaskCliRunner) -> None:
    result = run(runner, "check", "Nobody {here}")
    assert result.exit_code == 2
    assert "unknown server: 'Nobody {here}'" in result.output


# --- enable-logging --------------------------------------------------------------------------


def test_enable_logging_switches_it_on(app: Flask, runner: FlaskCliRunner, sim: HostSim) -> None:
    sim.set_logging("no")
    add(runner, "Quiet", sim.host, sim.port)
    assert run(runner, "check", "Quiet").exit_code == 1
    result = run(runner, "enable-logging", "Quiet")
    assert result.exit_code == 0, result.output
    assert "switched on" in result.output
    assert sim.dataset.logging_mode == "lists"
    assert run(runner, "check", "Quiet").exit_code == 0
    again = run(runner, "enable-logging", "Quiet")
    assert again.exit_code == 0 and "already on" in again.output
    with app.app_context():
        actions = get_state().session.scalars(sa.select(AuditEntry.action)).all()
    assert actions.count("enable_logging") == 2


def test_enable_logging_not_permitted_exits_1(app: Flask, runner: FlaskCliRunner) -> None:
    with HostSim(Dataset.generate(lists=3), allow_logging_set=False) as server:
        server.set_logging("no")
        add(runner, "Locked", server.host, server.port)
        result = run(runner, "enable-logging", "Locked")
        doc = json.loads(run(runner, "enable-logging", "Locked", "--json").output)
        assert server.dataset.logging_mode == "no"
    assert result.exit_code == 1
    assert "does not allow Enable Logging to be changed remotely" in result.output
    assert doc["code"] == "NOT_PERMITTED" and doc["ok"] is False
    assert stored(app, "Locked").status == "logging_off"


def test_enable_logging_unreachable_exits_2(app: Flask, runner: FlaskCliRunner) -> None:
    add(runner, "Gone", "127.0.0.1", closed_port())
    result = run(runner, "enable-logging", "Gone")
    assert result.exit_code == 2
    assert "nothing listens" in result.output
    assert stored(app, "Gone").status == "unreachable"


def test_list_all_shows_deactivated_servers(app: Flask, runner: FlaskCliRunner) -> None:
    assert add(runner, "Old", "old.example.com", 2021).exit_code == 0
    assert add(runner, "New", "new.example.com", 2021).exit_code == 0
    with app.app_context():
        session = get_state().session
        old = session.scalars(sa.select(Server).where(Server.name == "Old")).one()
        old.active = False
        session.commit()
    assert [s["name"] for s in json.loads(run(runner, "list", "--json").output)] == ["New"]
    everything = json.loads(run(runner, "list", "--all", "--json").output)
    assert [(s["name"], s["active"]) for s in everything] == [("New", True), ("Old", False)]
    text = run(runner, "list", "--all").output.splitlines()
    assert text[0].split()[-1] == "Active"
    assert next(line for line in text if line.startswith("Old")).split()[-1] == "no"
    # A deactivated server is not checked by name any more.
    assert run(runner, "check", "Old").exit_code == 2
