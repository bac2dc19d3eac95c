"""`flask lm-billing validate|sync|problems|fix|lists` against real simulated servers: the JSON
shapes and exit statuses of issue 4, hostile names byte for byte on every database."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import Result
from flask import Flask
from flask.testing import FlaskCliRunner

from lm_billing_plugin.catalog import assignment
from lm_billing_plugin.models import BillingGroup, Customer, MailingList, Server
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim

# Every peer here answers: patient timeouts cost nothing and survive a loaded CI machine.
PATIENT = {
    "LM_BILLING_CONNECT_TIMEOUT": 10.0,
    "LM_BILLING_READ_TIMEOUT": 10.0,
    "LM_BILLING_OPERATION_TIMEOUT": 20.0,
    "LM_BILLING_SERVER_DEADLINE": 30.0,
}
SERVER_KEYS = {
    "name",
    "ok",
    "version",
    "validated_at",
    "synced_at",
    "error",
    "changes",
    "problems",
}
PROBLEM_KEYS = {"id", "kind", "object", "detail"}
LIST_KEYS = {"name", "site", "descr", "members", "admin", "status", "customer", "group"}


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """Patient timeouts; conftest's ``runner`` runs the CLI on this app."""
    return make_app(**PATIENT)


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=2, lists=12, seed=7)) as server:
        yield server


def cli(runner: FlaskCliRunner, *args: str) -> Result:
    return runner.invoke(args=["lm-billing", *args])


def as_json(runner: FlaskCliRunner, *args: str) -> tuple[int, Any]:
    result = cli(runner, *args, "--json")
    try:
        return result.exit_code, json.loads(result.stdout_bytes.decode("utf-8"))
    except ValueError:
        raise AssertionError(result.output) from None


def add(runner: FlaskCliRunner, name: str, sim: HostSim | None, port: int | None = None) -> None:
    host = sim.host if sim else "127.0.0.1"
    result = cli(
        runner,
        "servers",
        "add",
        "--name",
        name,
        "--host",
        host,
        "--port",
        str(port or (sim.port if sim else 0)),
    )
    assert result.exit_code == 0, result.output


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assign_whole_server(app: Flask, server_name: str) -> None:
    with app.app_context():
        session = get_state().session
        customer = Customer(company="ACME & Co <b>")
        session.add(customer)
        session.flush()
        group = BillingGroup(customer_id=customer.id, name="ACME {lists}")
        session.add(group)
        session.flush()
        server_id = session.scalars(sa.select(Server.id).where(Server.name == server_name)).one()
        group_id = group.id
        session.commit()
        assignment.assign(group_id, server_id=server_id, whole_server=True, actor="test")


def test_hostile_names_survive_validate_sync_lists_byte_for_byte(
    make_app: Callable[..., Flask], db_url: str
) -> None:
    app = make_app(db_url, **PATIENT)
    runner = app.test_cli_runner()
    data = Dataset.generate(sites=3, lists=40, seed=3, hostile_names=True)
    with HostSim(data) as sim:
        name = 'Hosting {1} "main" \\ <&> Zürich'
        add(runner, name, sim)

        code, doc = as_json(runner, "validate", name)
        assert code == 1  # done, problems open (everything is unknown to billing)
        assert list(doc) == ["servers"]
        (server,) = doc["servers"]
        assert set(server) == SERVER_KEYS
        assert server["name"] == name and server["ok"] is True and server["error"] is None
        assert server["version"] == "12.3" and server["synced_at"] is None
        assert server["changes"] == {"created": 0, "updated": 0, "removed": 0}
        assert all(set(p) == PROBLEM_KEYS for p in server["problems"])
        unknown = {p["object"] for p in server["problems"] if p["kind"] == "unknown_list"}
        assert unknown == {rec.name for rec in data.lists}  # exactly as the server sent them
        sites = {p["object"] for p in server["problems"] if p["kind"] == "unknown_site"}
        assert sites == {s.name for s in data.sites}

        code, dry = as_json(runner, "sync", name, "--dry-run")
        assert code == 1
        assert dry["servers"][0]["changes"]["created"] == len(data.lists) + len(data.sites)
        assert as_json(runner, "lists", name) == (0, [])  # a dry run writes nothing

        code, synced = as_json(runner, "sync", name)
        assert code == 1  # the new lists have no owner yet
        assert synced["servers"][0]["synced_at"] is not None
        kinds = {p["kind"] for p in synced["servers"][0]["problems"]}
        assert kinds == {"unassigned_list"}

        raw = cli(runner, "lists", name, "--json")
        assert raw.exit_code == 0
        assert "日本語リスト".encode() in raw.stdout_bytes  # UTF-8, not \\u escapes
        lists = json.loads(raw.stdout_bytes.decode("utf-8"))
        assert all(set(row) == LIST_KEYS for row in lists)
        by_name = {rec.name: rec for rec in sim.dataset.lists}
        assert [row["name"] for row in lists] == [rec.name for rec in sim.dataset.lists]
        for row in lists:
            rec = by_name[row["name"]]
            assert (row["site"], row["descr"], row["members"], row["admin"]) == (
                rec.site,
                rec.descr,
                rec.members,
                rec.admin,
            )
            assert (row["status"], row["customer"], row["group"]) == ("active", None, None)

        assign_whole_server(app, name)
        code, again = as_json(runner, "validate", name)
        assert code == 0, again  # validated, nothing open
        assert again["servers"][0]["problems"] == []
        code, lists = as_json(runner, "lists", name)
        assert {(row["customer"], row["group"]) for row in lists} == {
            ("ACME & Co <b>", "ACME {lists}")
        }
        assert as_json(runner, "problems") == (0, [])

        # Human output: a readable table, control characters escaped, names intact.
        table = cli(runner, "lists", name)
        assert table.exit_code == 0
        assert "new\\nline" in table.output and "tab\\tname" in table.output
        assert "<script>alert(1)</script>" in table.output
        assert "ACME {lists}" in table.output


def test_exit_2_when_one_server_cannot_be_read(
    app: Flask, runner: FlaskCliRunner, sim: HostSim
) -> None:
    add(runner, "alive", sim)
    add(runner, "dead", None, closed_port())
    with HostSim(Dataset.generate(lists=3), allowed_hosts=["10.1.2.3"]) as walled:
        add(runner, "walled", walled)
        code, doc = as_json(runner, "validate", "--all")
        text = cli(runner, "validate", "dead", "alive")
    assert code == 2
    by_name = {s["name"]: s for s in doc["servers"]}
    assert list(by_name) == ["alive", "dead", "walled"]
    assert by_name["alive"]["ok"] is True and by_name["alive"]["error"] is None
    assert by_name["dead"]["ok"] is False and by_name["dead"]["validated_at"] is None
    assert set(by_name["dead"]["error"]) == {"code", "message"}
    assert by_name["dead"]["error"]["code"] == "REFUSED"
    assert "nothing listens on 127.0.0.1:" in by_name["dead"]["error"]["message"]
    assert by_name["walled"]["error"]["code"] == "HOST_DENIED"
    assert "add 127.0.0.1 to TCLPORT Hosts" in by_name["walled"]["error"]["message"]
    assert text.exit_code == 2
    assert "dead: FAILED (REFUSED): nothing listens" in text.output
    assert any(line.split()[:2] == ["dead", "FAILED"] for line in text.output.splitlines())
    with app.app_context():
        status = dict(get_state().session.execute(sa.select(Server.name, Server.status)).all())
    assert (status["dead"], status["walled"]) == ("unreachable", "host_denied")


def test_validate_and_sync_argument_errors(runner: FlaskCliRunner, sim: HostSim) -> None:
    add(runner, "one", sim)
    for args in (("validate",), ("sync",), ("validate", "--all", "one")):
        result = cli(runner, *args)
        assert result.exit_code == 2
        assert "--all" in result.output
    result = cli(runner, "sync", "one", "Nobody", "nobody two")
    assert result.exit_code == 2
    assert "unknown servers: 'Nobody', 'nobody two'" in result.output
    empty = cli(runner, "lists", "Nobody")
    assert empty.exit_code == 2 and "unknown server: 'Nobody'" in empty.output


def test_validate_all_without_servers(runner: FlaskCliRunner) -> None:
    result = cli(runner, "validate", "--all")
    assert result.exit_code == 0
    assert "No active hosting servers" in result.output
    assert as_json(runner, "validate", "--all") == (0, {"servers": []})


def test_problems_filters_and_shape(app: Flask, runner: FlaskCliRunner, sim: HostSim) -> None:
    add(runner, "one", sim)
    sim.set_logging("no")
    assert cli(runner, "sync", "one").exit_code == 1
    code, rows = as_json(runner, "problems")
    assert code == 1
    assert rows and all(
        set(r) == {"id", "server", "kind", "object", "detail", "status"} for r in rows
    )
    assert {r["kind"] for r in rows} == {"unassigned_list", "logging_off"}
    code, logging_rows = as_json(runner, "problems", "--kind", "logging_off", "--server", "one")
    assert code == 1 and [r["object"] for r in logging_rows] == ["one"]
    assert "Enable Logging" in logging_rows[0]["detail"]
    assert as_json(runner, "problems", "--status", "resolved") == (0, [])
    bad = cli(runner, "problems", "--server", "two")
    assert bad.exit_code == 2 and "unknown server: 'two'" in bad.output
    assert cli(runner, "problems", "--kind", "nonsense").exit_code == 2
    text = cli(runner, "problems", "--kind", "logging_off")
    assert text.output.splitlines()[0].split() == [
        "ID",
        "Server",
        "Kind",
        "Object",
        "Status",
        "Detail",
    ]


def test_fix_drift_logging_and_rules(app: Flask, runner: FlaskCliRunner, sim: HostSim) -> None:
    add(runner, "one", sim)
    assert cli(runner, "sync", "one").exit_code == 1
    assign_whole_server(app, "one")
    sim.add_list("brand {new} list", site="site1", members=5)
    sim.set_logging("no")
    code, doc = as_json(runner, "validate", "one")
    assert code == 1
    by_kind = {p["kind"]: p["id"] for p in doc["servers"][0]["problems"]}
    assert set(by_kind) == {"unknown_list", "logging_off"}

    code, fixed = as_json(runner, "fix", str(by_kind["unknown_list"]))
    assert code == 0, fixed
    assert fixed["problems"][0]["outcome"] == "fixed"
    assert fixed["problems"][0]["object"] == "brand {new} list"
    with app.app_context():
        names = get_state().session.scalars(sa.select(MailingList.name)).all()
    assert "brand {new} list" in names
    code, again = as_json(runner, "fix", str(by_kind["unknown_list"]))
    assert code == 0 and again["problems"][0]["outcome"] == "already_fixed"

    # logging_off needs explicit consent to change the hosting server's settings.
    code, asked = as_json(runner, "fix", "--all", "--kind", "logging_off")
    assert code == 1 and asked["problems"][0]["outcome"] == "needs_confirmation"
    assert sim.dataset.logging_mode == "no"
    text = cli(runner, "fix", "--all", "--server", "one", "--enable-logging")
    assert text.exit_code == 0, text.output
    assert sim.dataset.logging_mode == "lists"
    assert "fixed" in text.output
    nothing = cli(runner, "fix", "--all")
    assert nothing.exit_code == 0 and "No open problems to fix" in nothing.output

    code, missing = as_json(runner, "fix", "999999")
    assert code == 2 and missing["problems"][0]["outcome"] == "not_found"


def test_servers_enable_logging_closes_the_logging_off_problem(
    runner: FlaskCliRunner, sim: HostSim
) -> None:
    add(runner, "one", sim)
    sim.set_logging("no")
    cli(runner, "validate", "one")
    code, rows = as_json(runner, "problems", "--kind", "logging_off")
    assert code == 1 and len(rows) == 1
    assert cli(runner, "servers", "enable-logging", "one").exit_code == 0
    assert as_json(runner, "problems", "--kind", "logging_off") == (0, [])
    code, closed = as_json(runner, "problems", "--kind", "logging_off", "--status", "fixed")
    assert [r["id"] for r in closed] == [rows[0]["id"]]
    # Off again: the next validation reopens the same problem, not a new one.
    sim.set_logging("no")
    cli(runner, "validate", "one")
    code, reopened = as_json(runner, "problems", "--kind", "logging_off")
    assert code == 1 and [r["id"] for r in reopened] == [rows[0]["id"]]


def test_fix_billing_rule_names_the_action(runner: FlaskCliRunner, sim: HostSim) -> None:
    add(runner, "one", sim)
    cli(runner, "sync", "one")
    _code, rows = as_json(runner, "problems", "--kind", "unassigned_list")
    text = cli(runner, "fix", str(rows[0]["id"]))
    assert text.exit_code == 1
    assert "not_fixable" in text.output and "Assign an owner" in text.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("fix",), "or give --all"),
        (("fix", "1", "--all"), "not both"),
        (("fix", "1", "--server", "one"), "narrow --all"),
        (("fix", "--all", "--server", "zzz"), "unknown server: 'zzz'"),
    ],
)
def test_fix_argument_errors(runner: FlaskCliRunner, args: tuple[str, ...], message: str) -> None:
    result = cli(runner, *args)
    assert result.exit_code == 2
    assert message in result.output
