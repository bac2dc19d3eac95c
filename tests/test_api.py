"""The JSON API end to end: CRUD of servers with ETags, cursor pages, JSON errors, a validate
batch against a simulated server (202, poll), fixes, assignments and the OpenAPI document."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from lm_billing_plugin.models import Server
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim
from lm_billing_plugin.web.api.openapi import openapi_path
from lm_billing_plugin.web.views.runs import shutdown_executor, wait_for_batches

API = "/billing/api/v1"
SECRET = "s3cret-Tcl-password"
TOKEN = {"Authorization": "Bearer robot"}


@pytest.fixture
def api_app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    app = make_app(WTF_CSRF_ENABLED=True)
    get_state(app).extension.token_checker(lambda token: "robot" if token == "robot" else None)
    yield app
    shutdown_executor(app, wait=True)


@pytest.fixture
def api(api_app: Flask) -> FlaskClient:
    return api_app.test_client()


def _create(api: FlaskClient, name: str = "Lists", **extra: Any) -> Any:
    response = api.post(f"{API}/servers", json={"name": name, "host": "127.0.0.1", **extra},
                        headers=TOKEN)
    assert response.status_code == 201, response.get_json()
    return response


def test_create_get_update_with_etags(api: FlaskClient) -> None:
    created = _create(api, password=SECRET, comments="first")
    doc = created.get_json()
    assert created.headers["Location"] == doc["url"] == f"{API}/servers/{doc['id']}"
    assert doc["password_set"] is True and "password" not in doc
    got = api.get(doc["url"], headers=TOKEN)
    etag = got.headers["ETag"]
    assert etag == created.headers["ETag"] and got.get_json() == doc

    missing = api.patch(doc["url"], json={"comments": "x"}, headers=TOKEN)
    assert missing.status_code == 428
    assert missing.get_json()["error"]["code"] == "precondition_required"

    changed = api.patch(doc["url"], json={"comments": "second"},
                        headers={**TOKEN, "If-Match": etag})
    assert changed.status_code == 200 and changed.get_json()["comments"] == "second"
    assert changed.headers["ETag"] != etag

    # Someone else's write happened meanwhile: the stale ETag is refused, nothing written.
    stale = api.patch(doc["url"], json={"comments": "third"}, headers={**TOKEN, "If-Match": etag})
    assert stale.status_code == 412
    assert stale.headers["ETag"] == changed.headers["ETag"]
    assert api.get(doc["url"], headers=TOKEN).get_json()["comments"] == "second"


def test_passwords_are_write_only(api_app: Flask, api: FlaskClient) -> None:
    doc = _create(api, password=SECRET).get_json()
    headers = {**TOKEN, "If-Match": "*"}
    api.patch(doc["url"], json={"password": SECRET + "2"}, headers=headers)
    bodies = [
        api.get(f"{API}/servers", headers=TOKEN).get_data(as_text=True),
        api.get(doc["url"], headers=TOKEN).get_data(as_text=True),
        api.patch(doc["url"], json={"host": "127.0.0.2"}, headers=headers).get_data(as_text=True),
        api.get(f"{API}/openapi.json", headers=TOKEN).get_data(as_text=True),
    ]
    for body in bodies:
        assert SECRET not in body
    with api_app.app_context():
        stored = get_state(api_app).session.get(Server, doc["id"])
        assert stored is not None and stored.password_encrypted
        assert get_state(api_app).secrets.decrypt(stored.password_encrypted) == SECRET + "2"


def test_field_errors_are_422_json(api: FlaskClient) -> None:
    response = api.post(f"{API}/servers", json={"name": "", "host": "http://x/", "port": "2021",
                                                "colour": "red"}, headers=TOKEN)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "invalid"
    assert set(error["field_errors"]) == {"port", "colour"}  # types first, then the rules
    response = api.post(f"{API}/servers", json={"name": "", "host": "http://x/"}, headers=TOKEN)
    assert set(response.get_json()["error"]["field_errors"]) == {"name", "host"}
    _create(api, "Twice")
    clash = api.post(f"{API}/servers", json={"name": "Twice", "host": "127.0.0.1"}, headers=TOKEN)
    assert clash.status_code == 422 and "already exists" in clash.get_json()["error"][
        "field_errors"]["name"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/servers/999", {}, 404),
        ("GET", "/servers?limit=0", {}, 400),
        ("GET", "/servers?cursor=not-ours", {}, 400),
        ("GET", "/problems?status=bogus", {}, 400),
        ("POST", "/servers", {"data": "name=x"}, 415),
        ("POST", "/servers", {"data": "[1]", "content_type": "application/json"}, 400),
        ("POST", "/validate", {"json": {"server_ids": [12345]}}, 404),
        ("POST", "/problems/fix", {"json": {"ids": []}}, 422),
        ("DELETE", "/assignments/999", {}, 404),
    ],
)
def test_errors_are_json_never_html(
    api: FlaskClient, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = api.open(API + path, method=method, headers=TOKEN, **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert set(response.get_json()) == {"error"}


def test_cursor_pages_are_stable_in_id_order(api: FlaskClient) -> None:
    ids = [_create(api, f"S{i:02}").get_json()["id"] for i in range(7)]
    seen: list[int] = []
    url = f"{API}/servers?limit=3"
    first = True
    while url:
        body = api.get(url, headers=TOKEN).get_json()
        seen += [s["id"] for s in body["items"]]
        if first:
            # A server added while paging sorts after the cursor: it shows up, nothing twice.
            ids.append(_create(api, "Late").get_json()["id"])
            first = False
        cursor = body["next_cursor"]
        url = f"{API}/servers?limit=3&cursor={cursor}" if cursor else ""
    assert seen == sorted(ids)


def test_delete_erases_a_server_without_history(api: FlaskClient) -> None:
    doc = _create(api).get_json()
    stale = api.delete(doc["url"], headers={**TOKEN, "If-Match": '"nope"'})
    assert stale.status_code == 412
    response = api.delete(doc["url"], headers=TOKEN)
    assert response.status_code == 200 and response.get_json() == {"outcome": "erased"}
    assert api.get(doc["url"], headers=TOKEN).status_code == 404


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=1, lists=4, seed=5), password=SECRET) as server:
        yield server


def test_check_validate_poll_fix_and_assign(api_app: Flask, api: FlaskClient, sim: HostSim) -> None:
    doc = _create(api, port=sim.port, password=SECRET).get_json()
    check = api.post(f"{doc['url']}/check", headers=TOKEN)
    assert check.status_code == 200 and check.get_json()["ok"] is True
    assert [s["ok"] for s in check.get_json()["connection"]["steps"]] == [True] * 5

    started = api.post(f"{API}/sync", json={"server_ids": [doc["id"]]}, headers=TOKEN)
    assert started.status_code == 202
    batch_url = started.headers["Location"]
    assert batch_url == started.get_json()["url"]
    wait_for_batches(api_app)
    batch = api.get(batch_url, headers=TOKEN).get_json()
    assert batch["finished"] and batch["status"] == "finished" and batch["done"] == 1
    runs = api.get(batch["runs_url"], headers=TOKEN).get_json()["items"]
    assert [r["status"] for r in runs] == ["problems"]

    problems = api.get(f"{API}/problems?kind=unassigned_list&server_id={doc['id']}",
                       headers=TOKEN).get_json()["items"]
    assert len(problems) == 4
    fixed = api.post(f"{API}/problems/fix", json={"ids": [problems[0]["id"]]}, headers=TOKEN)
    assert fixed.status_code == 200
    assert fixed.get_json()["problems"][0]["outcome"] == "not_fixable"

    group_id = _group(api_app)
    list_ids = _list_ids(api_app, doc["id"])
    assigned = api.post(f"{API}/assignments", json={"group_id": group_id, "server_id": doc["id"],
                                                    "list_ids": list_ids[:2]}, headers=TOKEN)
    assert assigned.status_code == 201 and assigned.get_json() == {"created": 2}
    rows = api.get(f"{API}/assignments?group_id={group_id}&active=true",
                   headers=TOKEN).get_json()["items"]
    assert sorted(r["list_id"] for r in rows) == sorted(list_ids[:2])
    ended = api.delete(f"{API}/assignments/{rows[0]['id']}", headers=TOKEN)
    assert ended.status_code == 200 and ended.get_json() == {"ended": 1}


def test_assignment_gate_is_409(api_app: Flask, api: FlaskClient) -> None:
    doc = _create(api).get_json()
    response = api.post(f"{API}/assignments", json={"group_id": _group(api_app),
                                                    "server_id": doc["id"], "whole_server": True},
                        headers=TOKEN)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "gate"
    assert "Validate and sync server 'Lists' first" in response.get_json()["error"]["message"]


def _group(app: Flask) -> int:
    from lm_billing_plugin.models import BillingGroup, Customer

    with app.app_context():
        session = get_state(app).session
        customer = Customer(company="Acme")
        session.add(customer)
        session.flush()
        group = BillingGroup(customer_id=customer.id, name="Acme lists")
        session.add(group)
        session.commit()
        return int(group.id)


def _list_ids(app: Flask, server_id: int) -> list[int]:
    import sqlalchemy as sa

    from lm_billing_plugin.models import MailingList

    with app.app_context():
        return list(get_state(app).session.scalars(
            sa.select(MailingList.id).where(MailingList.server_id == server_id)
            .order_by(MailingList.id)))


def test_catalog_reads_keep_prices_exact(api_app: Flask, api: FlaskClient) -> None:
    from decimal import Decimal

    from lm_billing_plugin.models import HostingPlan

    with api_app.app_context():
        session = get_state(api_app).session
        session.add(HostingPlan(name="Gold", monthly_price=Decimal("19.95")))
        session.commit()
    plans = api.get(f"{API}/plans", headers=TOKEN).get_json()["items"]
    assert plans[0]["monthly_price"] == "19.95"
    assert api.get(f"{API}/plans/{plans[0]['id']}", headers=TOKEN).get_json()["name"] == "Gold"


# --- the OpenAPI document ------------------------------------------------------------------


def test_openapi_document_is_valid_and_lists_every_route(api_app: Flask, api: FlaskClient) -> None:
    response = api.get(f"{API}/openapi.json", headers=TOKEN)
    assert response.status_code == 200
    document = response.get_json()
    assert document["openapi"] == "3.1.0"
    validate(json.loads(json.dumps(document)))
    in_map = {
        (openapi_path(r.rule.removeprefix(API)), method.lower())
        for r in api_app.url_map.iter_rules()
        if r.endpoint.startswith("lm_billing_api.")
        for method in (r.methods or ()) - {"HEAD", "OPTIONS"}
    }
    in_document = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert in_map == in_document
    assert len(in_map) >= 25
    # Every operation names its permission and documents the JSON error shape.
    for ops in document["paths"].values():
        for op in ops.values():
            assert op["x-lm-billing-action"] in ("view", "edit", "run")
            assert op["responses"]["403"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"}
    assert document["servers"][0]["url"].endswith("/billing/api/v1")


def test_openapi_paths_match_flask_rules() -> None:
    assert openapi_path("/servers/<int:server_id>/check") == "/servers/{server_id}/check"
    assert re.fullmatch(r"/a/\{b\}", openapi_path("/a/<b>"))
