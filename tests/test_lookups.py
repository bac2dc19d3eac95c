"""Cross-server look-ups against real simulated servers on 127.0.0.1: the service (parallel
search, failures with guidance, links to billing, audited deletions) and the CLI's JSON shapes,
exit statuses, confirmation and escaping."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from _sim import closed_port
from click.testing import Result
from flask import Flask
from flask.testing import FlaskCliRunner

from lm_billing_plugin.engine import batches as engine
from lm_billing_plugin.engine import deletions, lookups
from lm_billing_plugin.engine import servers as registry
from lm_billing_plugin.models import AuditEntry, MailingList, Server
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim

FAST = {
    "LM_BILLING_CONNECT_TIMEOUT": 0.5,
    "LM_BILLING_READ_TIMEOUT": 0.5,
    "LM_BILLING_OPERATION_TIMEOUT": 1.0,
    "LM_BILLING_SERVER_DEADLINE": 3.0,
}
PAT = "pat.jones@example.org"
SEARCH_KEYS = {"query", "results", "servers_searched", "truncated", "failures"}
FAILURE_KEYS = {"server", "server_id", "code", "message"}
ADMIN_KEYS = {"server", "server_id", "site", "list", "list_id", "admin", "name"}
MEMBER_KEYS = {"server", "server_id", "site", "list", "list_id", "email", "type", "joined"}
DELETION_KEYS = {"server", "server_id", "list", "list_id", "email", "outcome", "code", "message",
                 "at"}
# What a delete run adds to the search document (--delete).
RUN_KEYS = {"deletions", "delete_run", "status", "finished", "deleted", "not_found", "failed",
            "interrupted"}


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(**FAST)


@pytest.fixture
def sims() -> Iterator[tuple[HostSim, HostSim]]:
    with HostSim(Dataset.generate(sites=2, lists=20, seed=7)) as one, \
            HostSim(Dataset.generate(sites=2, lists=20, seed=8)) as two:
        yield one, two


def add(app: Flask, name: str, host: str, port: int) -> int:
    with app.app_context():
        return registry.create_server(name, host, port, actor="test").id


def add_sim(app: Flask, name: str, sim: HostSim) -> int:
    return add(app, name, sim.host, sim.port)


def cli(runner: FlaskCliRunner, *args: str, input: str | None = None) -> Result:
    return runner.invoke(args=["lm-billing", *args], input=input)


def as_json(runner: FlaskCliRunner, *args: str, input: str | None = None) -> tuple[int, Any]:
    result = cli(runner, *args, "--json", input=input)
    try:
        return result.exit_code, json.loads(result.stdout_bytes.decode("utf-8"))
    except ValueError:
        raise AssertionError(result.output + repr(result.exception)) from None


def lists_of(sim: HostSim, email: str) -> list[str]:
    return sorted(m.list for m in sim.members_of(email))


def audit_rows(app: Flask) -> list[AuditEntry]:
    with app.app_context():
        session = get_state().session
        rows = list(session.scalars(
            sa.select(AuditEntry).where(AuditEntry.action == "delete_member")
            .order_by(AuditEntry.id)))
        session.expunge_all()
        return rows


# -- search ----------------------------------------------------------------------------------


def test_find_member_searches_every_active_server_and_reports_the_others(
    app: Flask, sims: tuple[HostSim, HostSim]
) -> None:
    one, two = sims
    add_sim(app, "one", one)
    add_sim(app, "two", two)
    with HostSim(Dataset.generate(lists=5), offer_lookups=False) as old:
        add_sim(app, "old build", old)
        add(app, "down", "127.0.0.1", closed_port())
        code, doc = as_json(app.test_cli_runner(), "find-member", "PAT.Jones@Example.org")
    assert code == 1  # some servers could not be searched
    assert set(doc) == SEARCH_KEYS and doc["query"] == "PAT.Jones@Example.org"
    assert doc["servers_searched"] == ["one", "two"] and doc["truncated"] == []
    for row in doc["results"]:
        assert set(row) == MEMBER_KEYS and row["email"].lower() == PAT
    found = {(r["server"], r["list"]) for r in doc["results"]}
    expected = {("one", n) for n in lists_of(one, PAT)} | {("two", n) for n in lists_of(two, PAT)}
    assert found == expected and len(found) >= 4
    assert {r["email"] for r in doc["results"]} == {PAT, PAT.upper()}  # as stored
    failures = {f["server"]: f for f in doc["failures"]}
    assert set(failures) == {"down", "old build"}
    assert all(set(f) == FAILURE_KEYS for f in failures.values())
    assert failures["old build"]["code"] == "UNKNOWN_COMMAND"
    assert "cannot be searched (it does not offer find_member)" in \
        failures["old build"]["message"]
    assert failures["down"]["code"] == "REFUSED"
    assert "nothing listens on 127.0.0.1:" in failures["down"]["message"]


def test_find_admin_links_results_to_billing_lists(
    app: Flask, sims: tuple[HostSim, HostSim]
) -> None:
    one, two = sims
    one_id = add_sim(app, "one", one)
    add_sim(app, "two", two)
    with app.app_context():
        assert engine.sync_servers([one_id], actor="test").servers[0].ok
        session = get_state().session
        known = {n: i for i, n in session.execute(
            sa.select(MailingList.id, MailingList.name).where(MailingList.server_id == one_id))}
        session.commit()
        search = lookups.find_admin("smith|JONES")
    assert search.exit_code == 0 and search.searched == ["one", "two"]
    assert search.results
    for r in search.results:
        person = f"{r.admin} {r.name}".lower()
        assert "smith" in person or "jones" in person
        # Synced server: every list is known to billing; the other is not synced yet.
        assert r.list_id == (known[r.list] if r.server == "one" else None)
    assert {r.server for r in search.results} == {"one", "two"}


def test_human_output_escapes_control_characters(
    app: Flask, sims: tuple[HostSim, HostSim]
) -> None:
    one, _two = sims
    one.add_list("evil\nlist\x1b[2J", site="site1")
    one.set_admin("evil\nlist\x1b[2J", "boss@evil.example", "Evil\tName\x1b[31m")
    add_sim(app, "one", one)
    result = cli(app.test_cli_runner(), "find-admin", "boss@evil")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\t" not in result.output
    assert "evil\\nlist\\x1b[2J" in result.output and "Evil\\tName\\x1b[31m" in result.output
    assert "1 list on 1 server; 1 server searched." in result.output


def test_human_output_names_unsearched_servers_with_guidance(app: Flask) -> None:
    with HostSim(Dataset.generate(lists=5), offer_lookups=False) as old:
        add_sim(app, "old", old)
        result = cli(app.test_cli_runner(), "find-admin", "owner")
    assert result.exit_code == 2  # no server could be searched
    assert "Not searched (1 server):" in result.output
    assert "old (UNKNOWN_COMMAND): this server cannot be searched (it does not offer " \
        "find_admin)" in result.output


def test_no_active_servers(app: Flask) -> None:
    result = cli(app.test_cli_runner(), "find-member", PAT)
    assert result.exit_code == 0
    assert "No active hosting servers" in result.output


def test_hostile_and_silent_servers_fail_alone(app: Flask, sims: tuple[HostSim, HostSim]) -> None:
    one, _two = sims
    add_sim(app, "one", one)
    small = Dataset.generate(lists=5)
    with HostSim(small, hostile="malformed_list", hostile_on="command") as bad, \
            HostSim(small, hostile="silent", hostile_on="command") as mute:
        add_sim(app, "bad", bad)
        add_sim(app, "mute", mute)
        with app.app_context():
            search = lookups.find_member(PAT)
    assert search.exit_code == 1 and search.searched == ["one"]
    assert {r.list for r in search.results} == set(lists_of(one, PAT))
    codes = {f.server: f.code for f in search.failures}
    assert codes == {"bad": "MALFORMED", "mute": "TIMEOUT"}
    assert all(str(f).startswith(f"{f.server}: ") for f in search.failures)


def test_inactive_servers_are_not_searched(app: Flask, sims: tuple[HostSim, HostSim]) -> None:
    one, two = sims
    add_sim(app, "one", one)
    two_id = add_sim(app, "two", two)
    with app.app_context():
        session = get_state().session
        session.execute(sa.update(Server).where(Server.id == two_id).values(active=False))
        session.commit()
        search = lookups.find_member(PAT)
    assert search.searched == ["one"] and two.requests["find_member"] == 0


def test_parallel_limit_of_one_still_searches_all(
    make_app: Callable[..., Flask], sims: tuple[HostSim, HostSim]
) -> None:
    app = make_app(**FAST, LM_BILLING_MAX_PARALLEL=1)
    for n, sim in enumerate(sims):
        add_sim(app, f"s{n}", sim)
    with app.app_context():
        assert lookups.find_admin("owner").searched == ["s0", "s1"]


def test_truncated_servers_are_named(app: Flask) -> None:
    with HostSim(Dataset.generate(sites=1, lists=5500, seed=3)) as big:
        add_sim(app, "big", big)
        code, doc = as_json(app.test_cli_runner(), "find-admin", "@example.com")
        result = cli(app.test_cli_runner(), "find-admin", "@example.com")
    assert code == 0 and doc["truncated"] == ["big"] and len(doc["results"]) == 5000
    assert "big: more than 5,000 matched; only the first 5,000 are shown" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["find-admin", ""], "enter part of an admin's email address or name"),
        (["find-admin", "   "], "enter part of an admin's email address or name"),
        (["find-admin", "x" * 201], "201 characters long; shorten it to at most 200"),
        (["find-admin", "smith\njones"], "control character"),
        (["find-admin", "smith||jones"], "empty part"),
        (["find-admin", "|smith"], "empty part"),
        (["find-member", ""], "enter the member's email address"),
        (["find-member", "not-an-address"], "is not an email address"),
        (["find-member", "a@localhost"], "is not an email address"),
        (["find-member", "a b@example.com"], "is not an email address"),
        (["find-member", "a@b@example.com"], "is not an email address"),
        (["find-member", "pat\n@example.org"], "control character"),
        (["find-member", "x" * 250 + "@example.com"], "at most 254"),
        (["find-member", PAT, "--yes"], "--yes only goes with --delete"),
    ],
)
def test_bad_input_exits_2_and_asks_no_server(
    app: Flask, sims: tuple[HostSim, HostSim], args: list[str], message: str
) -> None:
    one, _two = sims
    add_sim(app, "one", one)
    result = cli(app.test_cli_runner(), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert one.requests["find_admin"] == one.requests["find_member"] == 0


def test_email_is_trimmed_and_checked() -> None:
    assert lookups.check_email("  Pat@Example.org \n") == "Pat@Example.org"
    assert lookups.check_pattern("Smith|o'brien") == "Smith|o'brien"


# -- deleting --------------------------------------------------------------------------------


def test_delete_with_yes_removes_every_membership_and_audits_each(
    app: Flask, sims: tuple[HostSim, HostSim]
) -> None:
    one, two = sims
    add_sim(app, "one", one)
    add_sim(app, "two", two)
    before = len(one.members_of(PAT)) + len(two.members_of(PAT))
    code, doc = as_json(app.test_cli_runner(), "find-member", PAT, "--delete", "--yes")
    assert code == 0
    assert set(doc) == SEARCH_KEYS | RUN_KEYS
    assert doc["status"] == "finished" and doc["deleted"] == before
    assert len(doc["deletions"]) == before == len(doc["results"])
    assert all(set(d) == DELETION_KEYS and d["outcome"] == "deleted" for d in doc["deletions"])
    assert one.members_of(PAT) == [] and two.members_of(PAT) == []
    # Each deletion is its own call, per list, on one session per server.
    assert one.requests["delete_member"] + two.requests["delete_member"] == before
    rows = audit_rows(app)
    assert len(rows) == before
    assert all(r.actor.startswith("cli:") for r in rows)
    assert {(r.detail["server"], r.detail["list"]) for r in rows} == \
        {(d["server"], d["list"]) for d in doc["deletions"]}
    assert {r.detail["outcome"] for r in rows} == {"deleted"}
    code, again = as_json(app.test_cli_runner(), "find-member", PAT)
    assert code == 0 and again["results"] == []


def test_delete_asks_first_naming_how_many(app: Flask, sims: tuple[HostSim, HostSim]) -> None:
    one, two = sims
    add_sim(app, "one", one)
    add_sim(app, "two", two)
    total = len(one.members_of(PAT)) + len(two.members_of(PAT))
    runner = app.test_cli_runner()
    result = cli(runner, "find-member", PAT, "--delete", input="n\n")
    assert result.exit_code == 0, result.output
    assert f"Delete {total} memberships of {PAT} on 2 servers? [y/N]" in result.output
    assert "Nothing was deleted." in result.output
    assert len(one.members_of(PAT)) + len(two.members_of(PAT)) == total
    assert audit_rows(app) == []
    result = cli(runner, "find-member", PAT, "--delete")  # no answer at all (end of input)
    assert result.exit_code == 2 and "give --yes to delete without asking" in result.output
    assert len(one.members_of(PAT)) + len(two.members_of(PAT)) == total
    result = cli(runner, "find-member", PAT, "--delete", input="y\n")
    assert result.exit_code == 0, result.output
    assert f"Deleted {total} memberships; 0 already gone; 0 failed." in result.output
    assert one.members_of(PAT) == [] and two.members_of(PAT) == []


def test_delete_on_a_server_that_forbids_it(app: Flask, sims: tuple[HostSim, HostSim]) -> None:
    one, _two = sims
    add_sim(app, "one", one)
    with HostSim(Dataset.generate(lists=20, seed=9), allow_delete_member=False) as locked:
        add_sim(app, "locked", locked)
        kept = len(locked.members_of(PAT))
        code, doc = as_json(app.test_cli_runner(), "find-member", PAT, "--delete", "--yes")
        assert len(locked.members_of(PAT)) == kept > 0
    assert code == 1  # some deletions failed
    outcomes = {(d["server"], d["outcome"], d["code"]) for d in doc["deletions"]}
    assert outcomes == {("one", "deleted", None), ("locked", "failed", "NOT_PERMITTED")}
    locked_rows = [d for d in doc["deletions"] if d["server"] == "locked"]
    assert all("does not allow remote deletions" in d["message"] for d in locked_rows)
    assert {r.detail["outcome"] for r in audit_rows(app) if r.detail["server"] == "locked"} \
        == {"failed"}


def test_stale_selection_reports_already_gone_and_unreachable(
    app: Flask, sims: tuple[HostSim, HostSim]
) -> None:
    one, two = sims
    add_sim(app, "one", one)
    add_sim(app, "two", two)
    with app.app_context():
        search = lookups.find_member(PAT)
        chosen = search.memberships()
        first = deletions.delete_memberships(chosen[:1], actor="page:alice")
        assert [d.outcome for d in first.deletions] == ["deleted"]
        two.stop()  # gone between the search and the deletion
        result = deletions.delete_memberships(chosen, actor="page:alice")
    by_server = {}
    for d in result.deletions:
        by_server.setdefault(d.server, set()).add((d.outcome, d.code))
    assert by_server["two"] == {("failed", "REFUSED")}
    assert ("not_found", None) in by_server["one"]
    assert result.exit_code == 1
    rows = audit_rows(app)
    assert len(rows) == 1 + len(chosen) and {r.actor for r in rows} == {"page:alice"}


def test_deletions_audit_on_every_database(
    make_app: Callable[..., Flask], db_url: str, sims: tuple[HostSim, HostSim]
) -> None:
    one, _two = sims
    app = make_app(db_url, **FAST)
    server_id = add_sim(app, "Zürich {main} \"x\"", one)
    name = lists_of(one, PAT)[0]
    with app.app_context():
        result = deletions.delete_memberships(
            [lookups.Membership(server_id, name, PAT.upper()),
             lookups.Membership(server_id, name, PAT)],  # the same membership twice
            actor="page:bob")
    assert [d.outcome for d in result.deletions] == ["deleted"]
    (row,) = audit_rows(app)
    assert row.actor == "page:bob" and row.server_id == server_id and row.object_type == "list"
    assert row.detail == {"server": "Zürich {main} \"x\"", "list": name, "email": PAT.upper(),
                          "outcome": "deleted", "code": None,
                          "delete_run": result.run_id}


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ([], "choose at least one membership"),
        ([lookups.Membership(1, "", PAT)], "names no list"),
        ([lookups.Membership(1, "l", "nope")], "is not an email address"),
        ([lookups.Membership(999, "l", PAT)], "no such server id(s): [999]"),
    ],
)
def test_delete_refuses_bad_selections(
    app: Flask, sims: tuple[HostSim, HostSim], selection: list[lookups.Membership], message: str
) -> None:
    add_sim(app, "one", sims[0])
    with app.app_context(), pytest.raises(lookups.LookupInputError) as info:
        deletions.delete_memberships(selection, actor="test")
    assert message in str(info.value)
    assert sims[0].requests["delete_member"] == 0


def test_delete_refuses_deactivated_servers(app: Flask, sims: tuple[HostSim, HostSim]) -> None:
    sid = add_sim(app, "one", sims[0])
    with app.app_context():
        session = get_state().session
        session.execute(sa.update(Server).where(Server.id == sid).values(active=False))
        session.commit()
        with pytest.raises(lookups.LookupInputError, match="'one' are deactivated"):
            deletions.delete_memberships([lookups.Membership(sid, "l", PAT)], actor="test")


def test_a_silent_server_times_out_alone_while_the_others_delete(
    app: Flask, sims: tuple[HostSim, HostSim]
) -> None:
    """A server that accepts the connection and then never answers (hostile="silent") fails
    its own memberships with TIMEOUT within the client's deadline; the other server's are
    deleted in the same run, and the run ends."""
    one, _two = sims
    one_id = add_sim(app, "one", one)
    small = Dataset.generate(lists=5)
    with HostSim(small, hostile="silent", hostile_on="command") as mute:
        mute_id = add_sim(app, "mute", mute)
        mine = [lookups.Membership(one_id, name, PAT) for name in lists_of(one, PAT)]
        theirs = [lookups.Membership(mute_id, "list-00001", PAT)]
        with app.app_context():
            started = time.monotonic()
            result = deletions.delete_memberships(theirs + mine, actor="cli:test")
            took = time.monotonic() - started
    assert result.status == "finished" and result.exit_code == 1
    assert {(d.server, d.outcome, d.code) for d in result.deletions} == {
        ("mute", "failed", "TIMEOUT"), ("one", "deleted", None)}
    assert one.members_of(PAT) == []
    # The deadline (3 s here) bounds the silent server, not the read timeouts of every item.
    assert took < FAST["LM_BILLING_SERVER_DEADLINE"] + 6, took
