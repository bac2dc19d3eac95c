"""Billing: Utilities in a Flask-Login host with CSRF on, against simulated servers on 127.0.0.1:
Find Administrator, Find Member, Delete Them (confirm, a background delete run with its
progress page, audit, CSV) and field errors."""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _login_host import as_user, csrf_token, login_host_app
from _sim import closed_port
from flask import Flask

from lm_billing_plugin.engine import batches as engine
from lm_billing_plugin.engine import servers as registry
from lm_billing_plugin.models import AuditEntry, DeleteRun
from lm_billing_plugin.state import get_state
from lm_billing_plugin.tclport.records import MAX_MATCHES
from lm_billing_plugin.testing.simulator import Dataset, HostSim
from lm_billing_plugin.web.views.runs import shutdown_executor, wait_for_batches

PAT = "pat.jones@example.org"
# No test here waits for a deadline to pass (the server that is down refuses at once), so the
# deadline is patient: a round of DELETE_CHUNK deletions must not outlive it on a loaded CI
# machine (3 s did once, and part of a round failed).
PATIENT = {"LM_BILLING_SERVER_DEADLINE": 30.0}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = login_host_app(f"sqlite:///{tmp_path / 'billing.sqlite'}", **PATIENT)
    yield app
    shutdown_executor(app, wait=True)
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


@pytest.fixture
def sims() -> Iterator[tuple[HostSim, HostSim]]:
    with HostSim(Dataset.generate(sites=2, lists=20, seed=7)) as one, \
            HostSim(Dataset.generate(sites=2, lists=20, seed=8)) as two:
        yield one, two


def add(app: Flask, name: str, port: int) -> int:
    with app.app_context():
        return registry.create_server(name, "127.0.0.1", port, actor="test").id


def get(app: Flask, url: str, user: str = "operator", **kw: Any) -> Any:
    client = app.test_client()
    return client.get(url, headers=as_user(client, user), **kw)


def text(response: Any) -> str:
    return html.unescape(response.get_data(as_text=True))


def memberships(response: Any) -> list[str]:
    """The checkbox values of the result rows (from the raw page: they hold quotes)."""
    raw = response.get_data(as_text=True)
    return [html.unescape(v) for v in re.findall(r'name="membership" value="([^"]+)"', raw)]


def finish(app: Flask, client: Any, headers: dict[str, str], posted: Any) -> Any:
    """Follow "Delete Them" to its run's page once the background run has finished."""
    assert posted.status_code == 303, text(posted)
    location = posted.headers["Location"]
    assert re.search(r"/billing/utilities/deletions/\d+$", location)
    wait_for_batches(app)
    return client.get(location, headers=headers)


def test_find_admin_searches_every_server_and_names_the_one_that_failed(
    app: Flask, sims: tuple[HostSim, HostSim]
) -> None:
    one, two = sims
    one_id = add(app, "one", one.port)
    add(app, "two", two.port)
    add(app, "down", closed_port())
    one.set_admin("list-00001", "boss@acme.example", "Ada Smith")
    with app.app_context():
        assert engine.sync_servers([one_id], actor="test").servers[0].ok
    response = get(app, "/billing/utilities/find-admin?pattern=boss@ACME|nobody-at-all")
    page = text(response)
    assert response.status_code == 200
    row = re.search(r"<tr>\s*<td>one</td>.*?</tr>", page, re.S)
    assert row and "list-00001" in row.group(0) and "Ada Smith" in row.group(0)
    # The list links to its server's page, filtered to it.
    assert f'/billing/servers/{one_id}?q=list-00001"' in row.group(0)
    assert "1 list found on 1 server; 2 of 3 active servers searched." in page
    failures = page[page.index('id="lmb-not-searched"'):]
    assert "down</a>: nothing listens on 127.0.0.1:" in failures and "(REFUSED)" in failures


def test_find_member_shows_type_and_join_date(app: Flask, sims: tuple[HostSim, HostSim]) -> None:
    one, two = sims
    add(app, "one", one.port)
    add(app, "two", two.port)
    response = get(app, f"/billing/utilities/find-member?email=%20{PAT.upper()}%20")
    page = text(response)
    assert response.status_code == 200
    expected = [*one.members_of(PAT), *two.members_of(PAT)]
    assert len(memberships(response)) == len(expected) >= 4
    member = one.members_of(PAT)[0]
    row = re.search(rf"<td>one</td>\s*<td[^>]*>[^<]*</td>\s*<th[^>]*><a[^>]*>{member.list}</a>"
                    r".*?</tr>", page, re.S)
    assert row, page
    assert f"<td>{member.email}</td>" in row.group(0) and f"<td>{member.type}</td>" in row.group(0)
    assert member.joined and member.joined.isoformat() in row.group(0)


def test_delete_them_confirms_then_deletes_audits_and_offers_csv(
    app: Flask, sims: tuple[HostSim, HostSim]
) -> None:
    one, two = sims
    add(app, "one", one.port)
    add(app, "two", two.port)
    client = app.test_client()
    headers = as_user(client, "operator")
    ticked = memberships(client.get(f"/billing/utilities/find-member?email={PAT}",
                                    headers=headers))
    chosen = [ticked[0], ticked[-1]]  # one on each server
    token = csrf_token(client)
    ask = client.post("/billing/utilities/find-member/delete", headers=headers,
                      data={"csrf_token": token, "email": PAT, "membership": chosen})
    assert ask.status_code == 200
    assert "Delete 2 memberships of pat.jones@example.org on 2 servers?" in text(ask)
    # Asking deleted nothing.
    assert len(one.members_of(PAT)) + len(two.members_of(PAT)) == len(ticked)
    with app.app_context():
        assert not get_state().session.scalars(
            sa.select(AuditEntry).where(AuditEntry.action == "delete_member")).all()

    posted = client.post("/billing/utilities/find-member/delete", headers=headers,
                         data={"csrf_token": token, "email": PAT, "membership": memberships(ask),
                               "confirmed": "y"})
    done = finish(app, client, headers, posted)
    result = text(done)
    assert done.status_code == 200, result
    assert "Deleted 2; 0 already gone; 0 failed." in result
    assert "one: 1 deleted, 0 already gone, 0 failed" in result
    assert '<meta http-equiv="refresh"' not in result  # finished: it stops refreshing
    assert "asked for by operator" in result
    assert len(one.members_of(PAT)) + len(two.members_of(PAT)) == len(ticked) - 2
    with app.app_context():
        rows = get_state().session.scalars(
            sa.select(AuditEntry).where(AuditEntry.action == "delete_member")).all()
        assert [(r.actor, r.detail["outcome"]) for r in rows] == [("operator", "deleted")] * 2
        (run,) = get_state().session.scalars(sa.select(DeleteRun)).all()
        assert (run.status, run.total, run.servers, run.deleted, run.actor) == (
            "finished", 2, 2, 2, "operator")

    link = re.search(r'href="(/billing/utilities/deletions/\d+\.csv)"', result)
    assert link
    download = client.get(html.unescape(link.group(1)), headers=headers)
    assert download.mimetype == "text/csv"
    assert "attachment" in download.headers["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(download.get_data(as_text=True))))
    assert sorted(r["server"] for r in table) == ["one", "two"]
    assert {r["outcome"] for r in table} == {"deleted"} and {r["actor"] for r in table} == {
        "operator"}
    assert all(r["at"] and r["email"].lower() == PAT for r in table)

    # Deleting the same again: the server has no such member any more, and says so.
    again = finish(app, client, headers, client.post(
        "/billing/utilities/find-member/delete", headers=headers,
        data={"csrf_token": token, "email": PAT, "membership": chosen, "confirmed": "y"}))
    assert "Deleted 0; 2 already gone; 0 failed." in text(again)


def test_a_running_delete_run_refreshes_and_a_dead_one_is_marked_interrupted(
    app: Flask, sims: tuple[HostSim, HostSim]
) -> None:
    """A run's page refreshes while it is pending; once nothing moved for the lease (its
    process died) the page itself marks it interrupted, item by item (no other run needed),
    and stops refreshing; a later delete run goes on as usual."""
    from lm_billing_plugin.engine import deletions, lookups
    from lm_billing_plugin.models import utcnow

    one, _two = sims
    sid = add(app, "one", one.port)
    with app.app_context():
        chosen = lookups.find_member(PAT).memberships()
        run_id = deletions.create_delete_run(chosen, actor="operator", email=PAT)
    client = app.test_client()
    headers = as_user(client, "operator")
    page = text(client.get(f"/billing/utilities/deletions/{run_id}", headers=headers))
    assert '<meta http-equiv="refresh" content="2">' in page
    assert f"Deleting: 0 of {len(chosen)} memberships done on 1 server." in page
    assert "waiting" in page
    with app.app_context():
        assert deletions.delete_outcomes(run_id).status == "running"  # the GET left it
    # Its process "died": nothing moved for longer than the lease.
    with app.app_context():
        session = get_state().session
        lease = get_state().settings.lease_seconds
        session.execute(sa.update(DeleteRun).where(DeleteRun.id == run_id).values(
            updated_at=utcnow() - timedelta(seconds=lease + 5)))
        session.commit()
    closed = text(client.get(f"/billing/utilities/deletions/{run_id}", headers=headers))
    assert f"{len(chosen)} interrupted (the run stopped" in closed
    assert '<meta http-equiv="refresh"' not in closed
    with app.app_context():
        old = deletions.delete_outcomes(run_id)
    assert old.status == "interrupted" and old.finished
    assert {d.outcome for d in old.deletions} == {"interrupted"}
    assert all("may or may not have been deleted" in (d.message or "") for d in old.deletions)
    with app.app_context():
        later = deletions.delete_memberships(chosen[:1], actor="operator")
    assert later.status == "finished" and later.count("deleted") == 1
    assert one.requests["delete_member"] == 1  # the dead run asked nothing
    assert sid


def test_a_refused_deletion_says_what_to_do(app: Flask) -> None:
    with HostSim(Dataset.generate(lists=9, seed=3), allow_delete_member=False) as sim:
        add(app, "locked", sim.port)
        client = app.test_client()
        headers = as_user(client, "operator")
        found = client.get(f"/billing/utilities/find-member?email={PAT}", headers=headers)
        done = finish(app, client, headers, client.post(
            "/billing/utilities/find-member/delete", headers=headers, data={
                "csrf_token": csrf_token(client), "email": PAT,
                "membership": memberships(found)[:1], "confirmed": "y"}))
    result = text(done)
    assert "Deleted 0; 0 already gone; 1 failed." in result
    assert "(NOT_PERMITTED)" in result


def test_one_unreachable_server_fails_alone_and_many_memberships_go_in_rounds(
    app: Flask, sims: tuple[HostSim, HostSim]
) -> None:
    """More memberships on one server than one session deletes (DELETE_CHUNK): every one is
    asked in rounds; a server that is down fails its own items and stops nothing else."""
    from lm_billing_plugin.engine import deletions, lookups

    one, two = sims
    one_id = add(app, "one", one.port)
    add(app, "two", two.port)
    with app.app_context():
        chosen = lookups.find_member(PAT).memberships()
    on_two = [m for m in chosen if m.server_id != one_id]
    # Many memberships on "one" (most are not there: not_found), in several rounds.
    extra = [lookups.Membership(one_id, f"no-such-list-{i}", PAT)
             for i in range(deletions.DELETE_CHUNK * 2 + 5)]
    two.stop()
    with app.app_context():
        result = deletions.delete_memberships(
            [m for m in chosen if m.server_id == one_id] + extra + on_two, actor="cli:test")
    assert result.status == "finished"
    assert result.by_server["two"]["failed"] == len(on_two) > 0
    assert {d.code for d in result.deletions if d.server == "two"} == {"REFUSED"}
    assert result.by_server["one"]["not_found"] == len(extra)
    assert result.by_server["one"]["deleted"] == len(chosen) - len(on_two)
    assert one.requests["delete_member"] == len(chosen) - len(on_two) + len(extra)
    assert result.exit_code == 1


def test_viewers_see_results_without_the_delete_button(
    app: Flask, sims: tuple[HostSim, HostSim]
) -> None:
    add(app, "one", sims[0].port)
    page = text(get(app, f"/billing/utilities/find-member?email={PAT}", "only_view"))
    assert "lists that have pat.jones@example.org as a member" in page.lower()
    assert "Delete Them" not in page and 'name="membership"' not in page
    assert 'deleting memberships needs the billing "run" permission' in page


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/billing/utilities/find-admin?pattern=", "Enter part of an admin's email address"),
        ("/billing/utilities/find-admin?pattern=%20%20", "Enter part of an admin's email"),
        ("/billing/utilities/find-admin?pattern=" + "x" * 500, "is 500 characters long"),
        ("/billing/utilities/find-admin?pattern=smith%0Ajones", "holds a control character"),
        ("/billing/utilities/find-admin?pattern=smith||jones", "has an empty part"),
        ("/billing/utilities/find-member?email=", "Enter the member's email address"),
        ("/billing/utilities/find-member?email=pat.jones", "is not an email address"),
        ("/billing/utilities/find-member?email=pat%09@example.org", "control character"),
        ("/billing/utilities/find-member?email=" + "a" * 500 + "@x.org", "an address has at most"),
    ],
)
def test_bad_input_is_a_field_error_next_to_the_field(
    app: Flask, url: str, message: str
) -> None:
    with HostSim(Dataset.generate(lists=3)) as sim:
        add(app, "one", sim.port)
        response = get(app, url)
        assert sim.requests["find_admin"] == sim.requests["find_member"] == 0  # nothing asked
    page = text(response)
    assert response.status_code == 200
    field = "pattern" if "find-admin" in url else "email"
    error = re.search(rf'<ul class="lmb-errors" id="{field}-error">\s*<li>([^<]+)</li>', page)
    assert error and message in error.group(1), page
    assert re.search(rf'<input[^>]*aria-invalid="true"[^>]*id="{field}"|'
                     rf'<input[^>]*id="{field}"[^>]*aria-invalid="true"', page)


def test_delete_refuses_an_empty_or_oversized_selection(app: Flask) -> None:
    client = app.test_client()
    headers = as_user(client, "operator")
    token = csrf_token(client)
    nothing = client.post("/billing/utilities/find-member/delete", headers=headers,
                          data={"csrf_token": token, "email": PAT})
    assert nothing.status_code == 400
    assert "Tick the memberships to delete first" in text(nothing)
    # More on one server than Find Member can show there: a forged or stale form.
    too_many = [f'[1, "list-{i}", "{PAT}"]' for i in range(MAX_MATCHES + 1)]
    big = client.post("/billing/utilities/find-member/delete", headers=headers,
                      data={"csrf_token": token, "email": PAT, "membership": too_many,
                            "confirmed": "y"})
    assert big.status_code == 409
    assert f"Find Member finds at most {MAX_MATCHES:,} per server" in text(big)
    with app.app_context():
        assert get_state().session.scalars(sa.select(DeleteRun)).all() == []
    forged = client.post("/billing/utilities/find-member/delete", headers=headers,
                         data={"csrf_token": token, "email": PAT, "membership": "1:news"})
    assert forged.status_code == 400 and "The selection is not valid" in text(forged)


def test_the_utilities_page_lists_the_latest_delete_runs_for_those_who_may_delete(
    app: Flask, sims: tuple[HostSim, HostSim]
) -> None:
    from lm_billing_plugin.engine import deletions, lookups

    add(app, "one", sims[0].port)
    with app.app_context():
        chosen = lookups.find_member(PAT).memberships()[:2]
        result = deletions.delete_memberships(chosen, actor="cli:ops", email=PAT)
    page = text(get(app, "/billing/utilities"))
    table = page[page.index('id="lmb-delete-runs"'):]
    assert f'href="/billing/utilities/deletions/{result.run_id}"' in table
    assert f'href="/billing/utilities/deletions/{result.run_id}.csv"' in table
    assert "cli:ops" in table and PAT in table and "Deleted 2; 0 already gone; 0 failed." in table
    # Who may only look sees no one's erasure requests.
    assert 'id="lmb-delete-runs"' not in text(get(app, "/billing/utilities", "only_view"))


def test_utilities_menu_holds_the_three_utilities(app: Flask) -> None:
    page = text(get(app, "/billing/utilities"))
    for link in ("/billing/utilities/find-admin", "/billing/utilities/find-member",
                 "/billing/assign"):
        assert f'href="{link}"' in page
    assert 'href="/billing/utilities"' in page  # the menu entry


def test_the_demo_servers_have_members_and_admins_to_find(app: Flask) -> None:
    from lm_billing_plugin.demo.__main__ import register, start_simulators, stop_simulators

    demo = start_simulators()
    try:
        register(app, demo)
        members = get(app, f"/billing/utilities/find-member?email={PAT}")
        admins = get(app, "/billing/utilities/find-admin?pattern=Pat%20Jones")
    finally:
        stop_simulators(demo)
    found = text(members)
    # The healthy and the logging-off servers answer; the refusing one is named with why.
    assert re.search(r"\d+ memberships found on 2 servers; 2 of 3 active servers searched",
                     found), found
    assert "Demo: refuses billing</a>: " in found and "TCLPORT Hosts" in found
    assert "Pat Jones" in text(admins)
