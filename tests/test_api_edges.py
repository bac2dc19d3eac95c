"""The API's edges: unknown URLs and wrong methods answer JSON (the host's own error pages
untouched), If-Match and the write in one locked transaction, and sync's dry run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin.engine import servers as registry
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim
from lm_billing_plugin.web.views.runs import shutdown_executor

API = "/billing/api/v1"
TOKEN = {"Authorization": "Bearer robot"}


def with_token(app: Flask) -> Flask:
    get_state(app).extension.token_checker(lambda token: "robot" if token == "robot" else None)
    return app


@pytest.fixture
def api_app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    app = with_token(make_app(WTF_CSRF_ENABLED=True, LM_BILLING_INLINE_BATCHES=True))

    @app.errorhandler(404)
    def host_page(exc: Exception) -> tuple[str, int]:
        return "<h1>The portal's own 404 page</h1>", 404

    @app.route("/portal/only-get")
    def portal_view() -> str:
        return "portal"

    yield app
    shutdown_executor(app, wait=True)


@pytest.fixture
def api(api_app: Flask) -> FlaskClient:
    return api_app.test_client()


@pytest.mark.parametrize("headers", [TOKEN, {}], ids=["token", "anonymous"])
@pytest.mark.parametrize("method,path", [("GET", "/nope"), ("POST", "/servers/1/nope"),
                                         ("GET", ""), ("DELETE", "/v2/servers")])
def test_unknown_api_urls_answer_json_404(
    api: FlaskClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = api.open(API + path, method=method, headers=headers)
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == "not_found" and "openapi.json" in error["message"]
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("method,path,allowed", [
    ("PUT", "/servers/1", {"GET", "PATCH", "DELETE"}),
    ("DELETE", "/servers", {"GET", "POST"}),
    ("GET", "/validate", {"POST"}),
])
def test_wrong_methods_answer_json_405_with_allow(
    api: FlaskClient, method: str, path: str, allowed: set[str]
) -> None:
    response = api.open(API + path, method=method, headers=TOKEN)
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


def test_the_hosts_error_pages_stay_its_own(api: FlaskClient) -> None:
    for path in ("/nowhere", "/billing/nope", "/billing/api", "/billing/api/v1x/servers"):
        response = api.get(path)
        assert response.status_code == 404, path
        assert response.mimetype == "text/html", path
        assert b"The portal's own 404 page" in response.data, path
    # A wrong method outside the API: Flask's own 405 page, not JSON.
    response = api.post("/portal/only-get")
    assert response.status_code == 405 and response.mimetype == "text/html"


def test_two_patches_with_one_etag_give_one_200_and_one_412(
    make_app: Callable[..., Flask], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On each backend, two threads: the first holds the row while it writes; the second
    waits for that commit and then finds a new ETag."""
    app = with_token(make_app(db_url))
    created = app.test_client().post(f"{API}/servers", json={"name": "Lists", "host": "h1"},
                                     headers=TOKEN)
    url, etag = created.get_json()["url"], created.headers["ETag"]

    real_update = registry.update_server

    def slow_update(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.4)  # both requests are in flight: the second one reaches its check now
        return real_update(*args, **kwargs)

    monkeypatch.setattr(registry, "update_server", slow_update)
    start = threading.Barrier(2)
    statuses: list[int] = []

    def patch(comment: str) -> None:
        client = app.test_client()
        start.wait()
        response = client.patch(url, json={"comments": comment},
                                headers={**TOKEN, "If-Match": etag})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=patch, args=(c,)) for c in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(statuses) == [200, 412]
    final = app.test_client().get(url, headers=TOKEN)
    assert final.get_json()["comments"] in ("first", "second")
    with app.app_context():
        from lm_billing_plugin.models import AuditEntry

        updates = [a for a in get_state().session.query(AuditEntry).all()
                   if a.action == "server_update"]
    assert len(updates) == 1


def test_stale_delete_is_412_and_keeps_the_server(api: FlaskClient) -> None:
    created = api.post(f"{API}/servers", json={"name": "Lists", "host": "h1"}, headers=TOKEN)
    url, etag = created.get_json()["url"], created.headers["ETag"]
    changed = api.patch(url, json={"comments": "x"}, headers={**TOKEN, "If-Match": etag})
    assert changed.status_code == 200
    stale = api.delete(url, headers={**TOKEN, "If-Match": etag})
    assert stale.status_code == 412 and stale.headers["ETag"] == changed.headers["ETag"]
    assert api.get(url, headers=TOKEN).status_code == 200
    gone = api.delete(url, headers={**TOKEN, "If-Match": changed.headers["ETag"]})
    assert gone.status_code == 200 and gone.get_json() == {"outcome": "erased"}
    assert api.patch(url, json={}, headers={**TOKEN, "If-Match": etag}).status_code == 404


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=1, lists=5, seed=9)) as server:
        yield server


def test_sync_dry_run_says_what_would_change_and_writes_nothing(
    api: FlaskClient, sim: HostSim
) -> None:
    created = api.post(f"{API}/servers", json={"name": "Lists", "host": sim.host,
                                               "port": sim.port}, headers=TOKEN)
    server = created.get_json()
    started = api.post(f"{API}/sync", json={"dry_run": True}, headers=TOKEN)
    assert started.status_code == 202, started.get_json()
    batch = api.get(started.headers["Location"], headers=TOKEN).get_json()
    assert batch["dry_run"] is True and batch["kind"] == "sync" and batch["finished"]
    run = api.get(batch["runs_url"], headers=TOKEN).get_json()["items"][0]
    assert run["status"] in ("ok", "problems") and run["created"] > 0
    after = api.get(server["url"], headers=TOKEN).get_json()
    assert after["synced_at"] is None and after["validated_at"] is None
    with api.application.app_context():
        from lm_billing_plugin.models import MailingList

        assert get_state().session.query(MailingList).count() == 0

    real = api.post(f"{API}/sync", json={"dry_run": False}, headers=TOKEN)
    assert real.status_code == 202
    assert api.get(server["url"], headers=TOKEN).get_json()["synced_at"] is not None


@pytest.mark.parametrize("kind,body,field", [
    ("validate", {"dry_run": True}, "dry_run"),
    ("sync", {"dry_run": "yes"}, "dry_run"),
    ("sync", {"dryrun": True}, "dryrun"),
])
def test_dry_run_field_errors(api: FlaskClient, kind: str, body: dict[str, Any],
                              field: str) -> None:
    response = api.post(f"{API}/{kind}", json=body, headers=TOKEN)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["field_errors"]
