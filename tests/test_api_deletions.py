"""The delete-run API (Find Member's "Delete Them" for scripts) against simulated servers on
127.0.0.1: start a run (202, its URL), poll it, page through its memberships' outcomes, list
runs; the ``run`` permission, CSRF for session requests, bearer tokens, the audit's actor and
every refusal (nothing stored)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin.engine import servers as registry
from lm_billing_plugin.models import AuditEntry, DeleteRun
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim
from lm_billing_plugin.web.views.runs import shutdown_executor, wait_for_batches

API = "/billing/api/v1"
TOKEN = {"Authorization": "Bearer robot"}
PAT = "pat.jones@example.org"


class Robot:
    username = "robot-7"


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=1, lists=12, seed=7)) as server:
        yield server


@pytest.fixture
def make(make_app: Callable[..., Flask]) -> Iterator[Callable[..., Flask]]:
    made: list[Flask] = []

    def build(**kw: Any) -> Flask:
        app = make_app(WTF_CSRF_ENABLED=True, LM_BILLING_SERVER_DEADLINE=30.0, **kw)
        get_state(app).extension.token_checker(lambda t: Robot() if t == "robot" else None)
        made.append(app)
        return app

    yield build
    for app in made:
        shutdown_executor(app, wait=True)


def _server(app: Flask, sim: HostSim) -> int:
    with app.app_context():
        return registry.create_server("one", "127.0.0.1", sim.port, actor="test").id


def _runs(app: Flask) -> int:
    with app.app_context():
        n = get_state().session.scalar(sa.select(sa.func.count()).select_from(DeleteRun))
        get_state().session.commit()
        return int(n or 0)


def test_start_poll_page_and_list_a_delete_run(make: Callable[..., Flask], sim: HostSim
                                               ) -> None:
    app = make()
    sid = _server(app, sim)
    lists = [m.list for m in sim.members_of(PAT)]
    assert len(lists) >= 2
    api = app.test_client()
    body = {"email": PAT, "memberships": [{"server_id": sid, "list": name} for name in lists]
            + [{"server_id": sid, "list": "no-such-list", "email": "x@example.org"}]}
    started = api.post(f"{API}/delete-runs", json=body, headers=TOKEN)
    assert started.status_code == 202, started.get_json()
    doc = started.get_json()
    assert started.headers["Location"] == doc["url"]
    assert (doc["email"], doc["total"], doc["servers"], doc["actor"]) == (
        PAT, len(lists) + 1, 1, "robot-7")
    wait_for_batches(app)
    run = api.get(doc["url"], headers=TOKEN).get_json()
    assert run["finished"] and run["status"] == "finished"
    # The server has no such list, so no such member there: "not_found" (already gone).
    assert run["outcomes"] == {"pending": 0, "deleted": len(lists), "not_found": 1,
                               "failed": 0, "interrupted": 0}
    assert (run["deleted"], run["not_found"], run["failed"]) == (len(lists), 1, 0)
    assert sim.members_of(PAT) == []
    # Its memberships, in the order asked, one per page: the cursor walks them all.
    seen: list[dict[str, Any]] = []
    url: str | None = f"{doc['items_url']}?limit=1"
    while url:
        got = api.get(url, headers=TOKEN)
        assert got.status_code == 200
        page = got.get_json()
        assert len(page["items"]) == 1
        seen += page["items"]
        cursor = page["next_cursor"]
        url = f"{doc['items_url']}?limit=1&cursor={cursor}" if cursor else None
    assert [i["list_name"] for i in seen] == [*lists, "no-such-list"]
    assert [i["position"] for i in seen] == sorted(i["position"] for i in seen)
    assert {i["outcome"] for i in seen[:-1]} == {"deleted"}
    assert (seen[-1]["email"], seen[-1]["outcome"]) == ("x@example.org", "not_found")
    assert all(i["server_id"] == sid and i["server_name"] == "one" for i in seen)
    # The list of runs, newest last (id order), with their URLs.
    listed = api.get(f"{API}/delete-runs", headers=TOKEN).get_json()
    assert [r["id"] for r in listed["items"]] == [doc["id"]]
    assert listed["items"][0]["url"] == doc["url"] and listed["next_cursor"] is None
    # Audited as the page does: one entry per membership, the token's user the actor.
    with app.app_context():
        rows = get_state().session.scalars(
            sa.select(AuditEntry).where(AuditEntry.action == "delete_member")).all()
        assert len(rows) == len(lists) + 1 and {r.actor for r in rows} == {"robot-7"}
        started_entry = get_state().session.scalars(
            sa.select(AuditEntry).where(AuditEntry.action == "delete_run")).all()
        assert [r.actor for r in started_entry] == ["robot-7"]
        get_state().session.commit()


@pytest.mark.parametrize(("body", "field"), [
    ({}, "email"),
    ({"email": PAT}, "memberships"),
    ({"email": PAT, "memberships": []}, "memberships"),
    ({"email": PAT, "memberships": "all"}, "memberships"),
    ({"email": PAT, "memberships": [7]}, "memberships[0]"),
    ({"email": PAT, "memberships": [{"list": "a"}]}, "memberships[0].server_id"),
    ({"email": PAT, "memberships": [{"server_id": True, "list": "a"}]},
     "memberships[0].server_id"),
    ({"email": PAT, "memberships": [{"server_id": -1, "list": "a"}]},
     "memberships[0].server_id"),
    ({"email": PAT, "memberships": [{"server_id": 1, "list": " "}]}, "memberships[0].list"),
    ({"email": PAT, "memberships": [{"server_id": 1, "list": "a", "admin": 1}]},
     "memberships[0].admin"),
    ({"email": PAT, "memberships": [{"server_id": 1, "list": "a"}], "force": True}, "force"),
])
def test_field_errors_are_422_and_store_nothing(make: Callable[..., Flask], body: dict[str, Any],
                                                 field: str) -> None:
    app = make()
    got = app.test_client().post(f"{API}/delete-runs", json=body, headers=TOKEN)
    assert got.status_code == 422, got.get_json()
    assert field in got.get_json()["error"]["field_errors"]
    assert _runs(app) == 0


@pytest.mark.parametrize(("membership", "why"), [
    ({"server_id": 999, "list": "a"}, "server"),
    ({"server_id": "SID", "list": "a", "email": "not an address"}, "address"),
])
def test_refusals_of_the_service_are_422_and_store_nothing(
    make: Callable[..., Flask], sim: HostSim, membership: dict[str, Any], why: str
) -> None:
    app = make()
    sid = _server(app, sim)
    if membership["server_id"] == "SID":
        membership = {**membership, "server_id": sid}
    got = app.test_client().post(f"{API}/delete-runs", headers=TOKEN,
                                 json={"email": PAT, "memberships": [membership]})
    assert got.status_code == 422, got.get_json()
    message = got.get_json()["error"]["message"]
    assert message.startswith("Nothing was deleted:") and why in message, message
    assert _runs(app) == 0
    assert sim.requests.get("delete_member", 0) == 0


def test_unknown_runs_are_404(make: Callable[..., Flask]) -> None:
    api = make().test_client()
    for url in (f"{API}/delete-runs/41", f"{API}/delete-runs/41/items"):
        got = api.get(url, headers=TOKEN)
        assert got.status_code == 404 and "no delete run 41" in got.get_json()["error"][
            "message"]


def test_every_route_needs_the_run_permission(make: Callable[..., Flask], sim: HostSim) -> None:
    """A user who may view (and edit) billing but not run it sees no delete run and starts
    none: the pages' rule."""
    app = make(permission_check=lambda user, action: action != "run")
    sid = _server(app, sim)
    api = app.test_client()
    for url in (f"{API}/delete-runs", f"{API}/delete-runs/1", f"{API}/delete-runs/1/items"):
        got = api.get(url, headers=TOKEN)
        assert got.status_code == 403, url
    got = api.post(f"{API}/delete-runs", headers=TOKEN,
                   json={"email": PAT, "memberships": [{"server_id": sid, "list": "a"}]})
    assert got.status_code == 403 and _runs(app) == 0


def test_a_session_request_needs_the_csrf_token(make: Callable[..., Flask], sim: HostSim
                                                ) -> None:
    app = make()
    sid = _server(app, sim)
    name = sim.members_of(PAT)[0].list
    body = {"email": PAT, "memberships": [{"server_id": sid, "list": name}]}
    api = app.test_client()
    refused = api.post(f"{API}/delete-runs", json=body)
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "csrf_failed"
    assert _runs(app) == 0 and sim.requests.get("delete_member", 0) == 0
    # With the token a plugin form carries for this session, it starts.
    page = api.get("/billing/customers/new")
    assert page.status_code == 200
    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.get_data(True))
    assert found
    ok = api.post(f"{API}/delete-runs", json=body, headers={"X-CSRFToken": found.group(1)})
    assert ok.status_code == 202, ok.get_json()
    wait_for_batches(app)
    assert _runs(app) == 1 and sim.requests["delete_member"] == 1
