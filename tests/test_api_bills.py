"""The bills API (bill runs and invoices) against a simulated server with a month of usage, and
the bills_issued / bill_voided signals: each sent once, from the API, the pages and the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import pytest
from _pages import post
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin import signals
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import HostSim
from lm_billing_plugin.web.views.runs import shutdown_executor, wait_for_batches
from tests._billing import add_server, billed_customer, dataset, month_of_sending, plan

API = "/billing/api/v1"
TOKEN = {"Authorization": "Bearer robot"}
NOV = {"start": "2026-11-01", "end": "2026-11-30"}


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(dataset()) as server:
        month_of_sending(server)
        yield server


@pytest.fixture
def app(make_app: Callable[..., Flask], sim: HostSim) -> Iterator[Flask]:
    app = make_app(WTF_CSRF_ENABLED=True)
    get_state(app).extension.token_checker(lambda t: "robot" if t == "robot" else None)
    with app.app_context():
        sid = add_server(sim)
        billed_customer(sid, "Acme", plan_id=plan())
    yield app
    shutdown_executor(app, wait=True)


class Heard:
    def __init__(self, app: Flask) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._keep: list[Any] = []
        for name in ("bills_issued", "bill_voided"):
            def receiver(sender: Any, _name: str = name, **kwargs: Any) -> None:
                assert sender is app
                self.calls.append((_name, kwargs))

            self._keep.append(receiver)
            getattr(signals, name).connect(receiver, sender=app)

    def only(self, name: str) -> dict[str, Any]:
        mine = [kw for n, kw in self.calls if n == name]
        assert len(mine) == 1, self.calls
        return mine[0]


@pytest.fixture
def heard(app: Flask) -> Heard:
    return Heard(app)


def _run(app: Flask, api: FlaskClient, body: dict[str, Any]) -> dict[str, Any]:
    started = api.post(f"{API}/bill-runs", json=body, headers=TOKEN)
    assert started.status_code == 202, started.get_json()
    doc = started.get_json()
    assert started.headers["Location"] == doc["url"]
    wait_for_batches(app)
    got = api.get(doc["url"], headers=TOKEN)
    assert got.status_code == 200
    result: dict[str, Any] = got.get_json()
    assert result["finished"] and result["status"] == "done"
    return result


def test_run_poll_list_show_void_and_run_again(app: Flask, heard: Heard) -> None:
    api = app.test_client()
    dry = _run(app, api, {**NOV, "dry_run": True})
    assert [(o["status"], o["total"]) for o in dry["outcomes"]] == [("dry_run", "32.00")]
    assert heard.calls == []

    run = _run(app, api, NOV)
    [outcome] = run["outcomes"]
    assert (outcome["status"], outcome["number"], outcome["total"]) == (
        "invoiced", "2026-00001", "32.00")
    assert (run["invoiced"], run["done"], run["customers"]) == (1, 1, 1)
    issued = heard.only("bills_issued")
    assert issued == {"run_id": run["id"], "invoice_ids": [outcome["invoice_id"]],
                      "start": date(2026, 11, 1),
                      "end": date(2026, 11, 30), "actor": "robot"}
    runs = api.get(f"{API}/bill-runs", headers=TOKEN).get_json()
    assert [r["id"] for r in runs["items"]] == [dry["id"], run["id"]]

    listed = api.get(f"{API}/invoices?status=issued&start=2026-11-01&end=2026-11-30",
                     headers=TOKEN).get_json()
    assert [i["number"] for i in listed["items"]] == ["2026-00001"]
    assert api.get(f"{API}/invoices?start=2026-12-01", headers=TOKEN).get_json()["items"] == []
    assert api.get(f"{API}/invoices?status=void", headers=TOKEN).get_json()["items"] == []
    assert api.get(f"{API}/invoices?status=paid", headers=TOKEN).status_code == 400

    url = outcome["invoice_url"]
    got = api.get(url, headers=TOKEN)
    inv = got.get_json()
    assert inv["total"] == "32.00" and inv["status"] == "issued"
    assert [(li["kind"], li["amount"]) for li in inv["lines"]] == [("plan", "30.00"),
                                                                    ("overage", "2.00")]
    assert sum(u["recipients"] for u in inv["usage"]) == 2000
    assert inv["pdf_url"].endswith(".pdf")

    void_url = f"{url}/void"
    assert api.post(void_url, json={"reason": "x"}, headers=TOKEN).status_code == 428
    assert api.post(void_url, json={"reason": " "},
                    headers={**TOKEN, "If-Match": "*"}).status_code == 422
    stale = api.post(void_url, json={"reason": "x"}, headers={**TOKEN, "If-Match": '"old"'})
    assert stale.status_code == 412 and stale.headers["ETag"] == got.headers["ETag"]
    assert heard.calls[1:] == []
    voided = api.post(void_url, json={"reason": "wrong plan"},
                      headers={**TOKEN, "If-Match": got.headers["ETag"]})
    assert voided.status_code == 200, voided.get_json()
    assert voided.get_json()["status"] == "void"
    assert voided.get_json()["void_reason"] == "wrong plan"
    assert heard.only("bill_voided") == {"invoice_id": inv["id"], "number": "2026-00001",
                                         "reason": "wrong plan", "actor": "robot"}
    again = api.post(void_url, json={"reason": "twice"}, headers={**TOKEN, "If-Match": "*"})
    assert again.status_code == 409 and "already void" in again.get_json()["error"]["message"]

    rerun = _run(app, api, {**NOV, "customer_ids": [inv["customer_id"]]})
    assert rerun["outcomes"][0]["number"] == "2026-00002"
    assert len([n for n, _ in heard.calls if n == "bills_issued"]) == 2


def test_bad_requests_are_json(app: Flask) -> None:
    api = app.test_client()
    bad = api.post(f"{API}/bill-runs", json={"start": "2026-11-31", "extra": 1}, headers=TOKEN)
    assert bad.status_code == 422
    assert set(bad.get_json()["error"]["field_errors"]) == {"start", "end", "extra"}
    backwards = api.post(f"{API}/bill-runs", json={"start": "2026-11-30", "end": "2026-11-01"},
                         headers=TOKEN)
    assert backwards.status_code == 422
    unknown = api.post(f"{API}/bill-runs", json={**NOV, "customer_ids": [999]}, headers=TOKEN)
    assert unknown.status_code == 404
    assert api.get(f"{API}/bill-runs/999", headers=TOKEN).status_code == 404
    assert api.get(f"{API}/invoices/999", headers=TOKEN).status_code == 404
    assert api.post(f"{API}/invoices/999/void", json={"reason": "x"},
                    headers={**TOKEN, "If-Match": "*"}).status_code == 404


def test_signals_from_the_pages(app: Flask, heard: Heard) -> None:
    client = app.test_client()
    response = post(client, "/billing/bills/run", {**NOV, "run_all": "1"},
                    token_from="/billing/bills/run")
    assert response.status_code == 302
    wait_for_batches(app)
    issued = heard.only("bills_issued")
    assert issued["actor"] and len(issued["invoice_ids"]) == 1
    [invoice_id] = issued["invoice_ids"]
    response = post(client, f"/billing/invoices/{invoice_id}/void", {"reason": "page void"},
                    token_from=f"/billing/invoices/{invoice_id}")
    assert response.status_code == 302
    voided = heard.only("bill_voided")
    assert (voided["invoice_id"], voided["reason"]) == (invoice_id, "page void")
    # Run again from the invoice page: a second run, a second bills_issued.
    post(client, f"/billing/invoices/{invoice_id}/rerun", {},
         token_from=f"/billing/invoices/{invoice_id}")
    wait_for_batches(app)
    assert len([n for n, _ in heard.calls if n == "bills_issued"]) == 2


def test_signals_from_the_cli(app: Flask, heard: Heard) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["lm-billing", "bills", "run", "--start", NOV["start"],
                                 "--end", NOV["end"], "--json"])
    assert result.exit_code == 0, result.output
    number = json.loads(result.output)["invoices"][0]["number"]
    issued = heard.only("bills_issued")
    assert issued["actor"].startswith("cli:")
    # A second run of the period bills nothing: no signal.
    runner.invoke(args=["lm-billing", "bills", "run", "--start", NOV["start"],
                        "--end", NOV["end"]])
    assert len(heard.calls) == 1
    result = runner.invoke(args=["lm-billing", "bills", "void", number, "--reason", "cli"])
    assert result.exit_code == 0, result.output
    voided = heard.only("bill_voided")
    assert (voided["number"], voided["reason"]) == (number, "cli")
    assert voided["invoice_id"] == issued["invoice_ids"][0]
