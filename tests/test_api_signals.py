"""The state-change signals (lm_billing_plugin.signals): each fires once, with the documented
arguments, whether the change is made from a page, the CLI or the JSON API."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa
from _pages import add_server, post
from flask import Flask

from lm_billing_plugin import signals
from lm_billing_plugin.models import BillingGroup, Customer, MailingList, Problem
from lm_billing_plugin.state import get_state
from lm_billing_plugin.tclport.records import LOGGING_NO
from lm_billing_plugin.testing.simulator import Dataset, HostSim
from lm_billing_plugin.web.views.runs import shutdown_executor, wait_for_batches

API = "/billing/api/v1"
TOKEN = {"Authorization": "Bearer robot"}

# The arguments each signal documents (its comment in signals.py, and the README table).
DOCUMENTED: dict[str, set[str]] = {
    "server_created": {"server_id", "name", "actor"},
    "server_updated": {"server_id", "name", "changes", "actor"},
    "server_deleted": {"server_id", "name", "outcome", "actor"},
    "server_validated": {"server_id", "name", "ok", "status", "run_id", "batch_id",
                         "problems_open", "problems_new", "actor"},
    "server_synced": {"server_id", "name", "ok", "status", "run_id", "batch_id",
                      "problems_open", "problems_new", "changes", "actor"},
    "problems_fixed": {"problem_ids", "changes", "actor"},
    "logging_enabled": {"server_id", "actor"},
    "assigned": {"group_id", "server_id", "created", "site_ids", "list_ids", "whole_server",
                 "start", "actor"},
    "unassigned": {"assignment_ids", "ended", "end", "actor"},
    # Their firing (page, CLI, API) is tested in test_api_bills.py.
    "bills_issued": {"run_id", "invoice_ids", "start", "end", "actor"},
    "bill_voided": {"invoice_id", "number", "reason", "actor"},
    "bill_sent": {"invoice_id", "number", "to", "refused", "actor"},
}


class Heard:
    def __init__(self, app: Flask) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        self.app = app
        self._receivers: list[Any] = []
        for name in DOCUMENTED:
            def receiver(sender: Any, _name: str = name, **kwargs: Any) -> None:
                self.calls.append((_name, sender, kwargs))

            self._receivers.append(receiver)  # blinker holds receivers weakly
            getattr(signals, name).connect(receiver, sender=app)

    def only(self, name: str) -> dict[str, Any]:
        """The one call of ``name``: sent once, by this app, with the documented kwargs."""
        mine = [c for c in self.calls if c[0] == name]
        assert len(mine) == 1, (name, self.calls)
        _, sender, kwargs = mine[0]
        assert sender is self.app
        assert set(kwargs) == DOCUMENTED[name], (name, sorted(kwargs))
        return kwargs

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def clear(self) -> None:
        self.calls.clear()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    app = make_app(WTF_CSRF_ENABLED=True)
    get_state(app).extension.token_checker(lambda t: "robot" if t == "robot" else None)
    yield app
    shutdown_executor(app, wait=True)


@pytest.fixture
def heard(app: Flask) -> Heard:
    return Heard(app)


def test_every_signal_is_documented_in_the_module_and_the_readme() -> None:
    from pathlib import Path

    assert {s.name for s in signals.SIGNALS} == {
        getattr(signals, n).name for n in DOCUMENTED
    }
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    source = inspect.getsource(signals)
    for name, kwargs in DOCUMENTED.items():
        row = re.search(rf"^\| `{name}` \|(.*)$", readme, re.M)
        assert row, f"README has no row for {name}"
        for kwarg in kwargs:
            assert f"`{kwarg}`" in row.group(1), (name, kwarg)
            assert kwarg in source


def test_server_created_updated_deleted_from_the_api(app: Flask, heard: Heard) -> None:
    client = app.test_client()
    doc = client.post(f"{API}/servers", json={"name": "Api", "host": "127.0.0.1",
                                              "password": "pw-1"}, headers=TOKEN).get_json()
    assert heard.only("server_created") == {"server_id": doc["id"], "name": "Api",
                                            "actor": "robot"}
    client.patch(doc["url"], json={"comments": "c", "password": "pw-2"},
                 headers={**TOKEN, "If-Match": "*"})
    updated = heard.only("server_updated")
    assert updated["changes"] == {"comments": {"old": "", "new": "c"}, "password": "changed"}
    assert "pw-2" not in repr(heard.calls)
    client.delete(doc["url"], headers=TOKEN)
    assert heard.only("server_deleted")["outcome"] == "erased"
    assert heard.names() == ["server_created", "server_updated", "server_deleted"]


def test_server_created_updated_deleted_from_the_pages(app: Flask, heard: Heard) -> None:
    client = app.test_client()
    post(client, "/billing/servers/new", {"name": "Page", "host": "127.0.0.1", "port": "2021"},
         token_from="/billing/servers/new")
    created = heard.only("server_created")
    sid = created["server_id"]
    post(client, f"/billing/servers/{sid}/edit",
         {"name": "Page", "host": "127.0.0.1", "port": "2021", "comments": "x"},
         token_from=f"/billing/servers/{sid}/edit")
    assert heard.only("server_updated")["changes"] == {"comments": {"old": "", "new": "x"}}
    post(client, f"/billing/servers/{sid}/delete", {}, token_from=f"/billing/servers/{sid}/delete")
    assert heard.only("server_deleted") == {"server_id": sid, "name": "Page",
                                            "outcome": "erased", "actor": "anonymous"}


def test_server_created_from_the_cli(app: Flask, heard: Heard) -> None:
    result = app.test_cli_runner().invoke(
        args=["lm-billing", "servers", "add", "--name", "Cli", "--host", "127.0.0.1"]
    )
    assert result.exit_code == 0, result.output
    assert heard.only("server_created")["name"] == "Cli"
    assert heard.only("server_created")["actor"].startswith("cli:")


def test_nothing_is_sent_when_nothing_changed(app: Flask, heard: Heard) -> None:
    client = app.test_client()
    doc = client.post(f"{API}/servers", json={"name": "Same", "host": "127.0.0.1"},
                      headers=TOKEN).get_json()
    heard.clear()
    client.patch(doc["url"], json={"name": "Same"}, headers={**TOKEN, "If-Match": "*"})
    refused = client.post(f"{API}/servers", json={"name": "Same", "host": "127.0.0.1"},
                          headers=TOKEN)
    assert refused.status_code == 422
    assert heard.calls == []


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=1, lists=3, seed=9)) as server:
        yield server


def test_validated_from_the_cli_and_synced_from_the_api(
    app: Flask, heard: Heard, sim: HostSim
) -> None:
    sid = add_server(app, "Sim", port=sim.port)
    result = app.test_cli_runner().invoke(args=["lm-billing", "validate", "Sim"])
    assert result.exit_code in (0, 1), result.output
    validated = heard.only("server_validated")
    assert validated["server_id"] == sid and validated["ok"] is True
    # Unknown to billing yet: the site and its lists, all new.
    assert validated["problems_open"] == validated["problems_new"] == 4
    heard.clear()
    response = app.test_client().post(f"{API}/sync", json={"server_ids": [sid]}, headers=TOKEN)
    assert response.status_code == 202
    wait_for_batches(app)
    synced = heard.only("server_synced")
    assert synced["changes"] == {"created": 4, "updated": 0, "removed": 0}  # a site, 3 lists
    assert synced["batch_id"] == response.get_json()["id"] and synced["actor"] == "robot"
    assert "server_validated" not in heard.names()


def test_validated_from_the_page(app: Flask, heard: Heard, sim: HostSim) -> None:
    sid = add_server(app, "Sim", port=sim.port)
    post(app.test_client(), "/billing/servers/validate", {"server_ids": str(sid)})
    wait_for_batches(app)
    assert heard.only("server_validated")["server_id"] == sid


def test_problems_fixed_from_the_api_and_the_cli(app: Flask, heard: Heard, sim: HostSim) -> None:
    sid = add_server(app, "Sim", port=sim.port)
    assert app.test_cli_runner().invoke(args=["lm-billing", "validate", "Sim"]).exit_code == 1
    with app.app_context():
        ids = list(get_state(app).session.scalars(
            sa.select(Problem.id).where(Problem.server_id == sid).order_by(Problem.id)))
    heard.clear()
    fixed = app.test_client().post(f"{API}/problems/fix", json={"ids": ids[:1]}, headers=TOKEN)
    assert fixed.status_code == 200
    assert heard.only("problems_fixed")["problem_ids"] == ids[:1]
    heard.clear()
    result = app.test_cli_runner().invoke(args=["lm-billing", "fix", str(ids[1])])
    assert result.exit_code in (0, 1), result.output
    kwargs = heard.only("problems_fixed")
    assert kwargs["problem_ids"] == [ids[1]] and kwargs["actor"].startswith("cli:")
    heard.clear()
    # Fixing again fixes nothing, and says nothing.
    app.test_cli_runner().invoke(args=["lm-billing", "fix", str(ids[1])])
    assert heard.calls == []


def test_logging_enabled_from_the_api(app: Flask, heard: Heard) -> None:
    data = Dataset.generate(sites=1, lists=2)
    data.logging_mode = LOGGING_NO
    with HostSim(data) as nolog:
        sid = add_server(app, "NoLog", port=nolog.port, status="logging_off")
        client = app.test_client()
        response = client.post(f"{API}/servers/{sid}/enable-logging", headers=TOKEN)
        assert response.status_code == 200 and response.get_json()["ok"] is True
        assert heard.only("logging_enabled") == {"server_id": sid, "actor": "robot"}
        heard.clear()
        client.post(f"{API}/servers/{sid}/enable-logging", headers=TOKEN)  # already on
    assert heard.calls == []


def test_assigned_and_unassigned_from_the_api_and_the_page(app: Flask, heard: Heard,
                                                          sim: HostSim) -> None:
    sid = add_server(app, "Sim", port=sim.port)
    assert app.test_cli_runner().invoke(args=["lm-billing", "sync", "Sim"]).exit_code in (0, 1)
    with app.app_context():
        session = get_state(app).session
        customer = Customer(company="Acme")
        session.add(customer)
        session.flush()
        group = BillingGroup(customer_id=customer.id, name="G")
        session.add(group)
        session.commit()
        group_id, customer_id = group.id, customer.id
        list_ids = list(session.scalars(sa.select(MailingList.id).order_by(MailingList.id)))
    heard.clear()
    client = app.test_client()
    response = client.post(f"{API}/assignments", json={"group_id": group_id, "server_id": sid,
                                                       "list_ids": list_ids[:1]}, headers=TOKEN)
    assert response.status_code == 201, response.get_json()
    assert heard.only("assigned") == {
        "group_id": group_id, "server_id": sid, "created": 1, "site_ids": [],
        "list_ids": list_ids[:1], "whole_server": False, "start": date.today(),
        "actor": "robot"}
    rows = client.get(f"{API}/assignments", headers=TOKEN).get_json()["items"]
    heard.clear()
    post(client, "/billing/unassign", {"assignment_id": str(rows[0]["id"]),
                                       "customer_id": str(customer_id)},
         token_from=f"/billing/customers/{customer_id}")
    unassigned = heard.only("unassigned")
    assert unassigned["assignment_ids"] == [rows[0]["id"]] and unassigned["ended"] == 1
