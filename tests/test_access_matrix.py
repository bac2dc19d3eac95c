"""Access matrix generated from the app's URL map: every lm_billing route, anonymous → login,
no permission → 403, the route's own permission → 200; new routes are covered automatically."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from _login_host import (
    as_user,
    build_url,
    csrf_token,
    fingerprint,
    login_host_app,
    plugin_rules,
    required_action,
    seed_rows,
)
from flask import Flask
from werkzeug.routing import Rule

from lm_billing_plugin.web.access import ACTIONS

# Public on purpose: the stylesheet (the host's login page may use it); it holds no data.
PUBLIC = {"lm_billing.static"}


def _rules() -> list[Rule]:
    app = login_host_app("sqlite://")
    try:
        return plugin_rules(app)
    finally:
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


RULES = _rules()
CASES = [
    pytest.param(rule, method, id=f"{rule.endpoint}-{method}")
    for rule in RULES
    for method in ("GET", "POST")
    if method in (rule.methods or ()) and rule.endpoint not in PUBLIC
]
GET_RULES = [pytest.param(r, id=r.endpoint) for r in RULES if "GET" in (r.methods or ())]
POST_ONLY = [
    pytest.param(r, id=r.endpoint)
    for r in RULES
    if "POST" in (r.methods or ()) and "GET" not in (r.methods or ())
]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, dict[str, Any]]]:
    path = tmp_path_factory.mktemp("matrix") / "billing.sqlite"
    app = login_host_app(f"sqlite:///{path}")
    samples = seed_rows(app)
    yield app, samples
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


def test_the_matrix_covers_the_plugin() -> None:
    """Guard against a vacuous matrix: the URL map holds the pages we know of, with both
    kinds of routes, and every route declares an action the callback understands."""
    endpoints = {r.endpoint for r in RULES}
    assert {
        "lm_billing.servers",
        "lm_billing.customers",
        "lm_billing.customer_detail",
        "lm_billing.plans",
        "lm_billing.assign",
        "lm_billing.unassign",
    } <= endpoints
    assert len(CASES) >= 20 and POST_ONLY


def _request(app: Flask, method: str, url: str, user: str | None, **kw: Any) -> Any:
    client = app.test_client()
    response = client.open(url, method=method, headers=as_user(client, user), **kw)
    response.get_data()  # buffer the body, then release the file a static route opened
    response.close()
    return response


def test_only_the_stylesheet_is_public(matrix: tuple[Flask, dict[str, Any]]) -> None:
    app, _ = matrix
    assert {r.endpoint for r in RULES} & PUBLIC == PUBLIC
    response = _request(app, "GET", "/billing/static/lm_billing.css", None)
    assert response.status_code == 200 and response.mimetype == "text/css"


@pytest.mark.parametrize(("rule", "method"), CASES)
def test_anonymous_is_sent_to_login(
    matrix: tuple[Flask, dict[str, Any]], rule: Rule, method: str
) -> None:
    app, samples = matrix
    url = build_url(app, rule, samples)
    before = fingerprint(app)
    response = _request(app, method, url, None)
    assert response.status_code == 302, (rule.endpoint, response.status_code)
    location = urlsplit(response.headers["Location"])
    assert location.path == "/login"
    assert urlsplit(url).path in location.query.replace("%2F", "/")
    assert fingerprint(app) == before


@pytest.mark.parametrize(("rule", "method"), CASES)
def test_without_the_permission_is_403(
    matrix: tuple[Flask, dict[str, Any]], rule: Rule, method: str
) -> None:
    app, samples = matrix
    url = build_url(app, rule, samples)
    action = required_action(app, rule)
    assert action in ACTIONS
    before = fingerprint(app)
    # Logged in with nothing, and logged in with everything except this route's action.
    for user in ("nobody", f"all_but_{action}"):
        client = app.test_client()
        data: dict[str, str] = {}
        if method == "POST":
            # With a valid token, so the refusal is the permission's, not the CSRF check's.
            data["csrf_token"] = csrf_token(client)
        response = client.open(url, method=method, data=data, headers=as_user(client, user))
        assert response.status_code == 403, (rule.endpoint, user, response.status_code)
        body = response.get_data(as_text=True)
        assert "Acme" not in body and "news" not in body  # no data behind the refusal
    assert fingerprint(app) == before


@pytest.mark.parametrize("rule", GET_RULES)
def test_permitted_get_is_200(matrix: tuple[Flask, dict[str, Any]], rule: Rule) -> None:
    app, samples = matrix
    url = build_url(app, rule, samples)
    action = required_action(app, rule)
    before = fingerprint(app)
    response = _request(app, "GET", url, f"only_{action}")
    assert response.status_code == 200, (rule.endpoint, response.get_data(as_text=True)[:500])
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if response.mimetype == "text/html":
        assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    # No change on GET.
    assert fingerprint(app) == before


@pytest.mark.parametrize("rule", POST_ONLY)
def test_permitted_post_is_accepted(tmp_path: Path, rule: Rule) -> None:
    """A POST-only route, with its permission and a valid token, is handled by the view
    (a redirect or a page with its message), not refused and not crashing."""
    app = login_host_app(f"sqlite:///{tmp_path / 'billing.sqlite'}")
    try:
        samples = seed_rows(app)
        url = build_url(app, rule, samples)
        action = required_action(app, rule)
        client = app.test_client()
        token = csrf_token(client)
        response = client.post(
            url, data={"csrf_token": token}, headers=as_user(client, f"only_{action}")
        )
        assert response.status_code not in (401, 403, 405), rule.endpoint
        assert response.status_code < 500, rule.endpoint
        # A CSRF refusal would also be a 400: make sure this is the view speaking.
        assert "CSRF" not in response.get_data(as_text=True)
        if response.status_code == 302:
            assert urlsplit(response.headers["Location"]).path != "/login"
    finally:
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


# --- the JSON API: same callback, JSON refusals, session or bearer token ------------------


def _api_rules() -> list[Rule]:
    from _login_host import api_rules

    app = login_host_app("sqlite://")
    try:
        return api_rules(app)
    finally:
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


API_RULES = _api_rules()
API_CASES = [
    pytest.param(rule, method, id=f"{rule.endpoint}-{method}")
    for rule in API_RULES
    for method in sorted(set(rule.methods or ()) - {"HEAD", "OPTIONS"})
]
API_GETS = [pytest.param(r, id=r.endpoint) for r in API_RULES if "GET" in (r.methods or ())]
API_WRITES = [case for case in API_CASES if case.values[1] != "GET"]


def test_every_billing_url_is_in_one_of_the_matrices() -> None:
    app = login_host_app("sqlite://")
    try:
        prefixed = {r.endpoint for r in app.url_map.iter_rules() if r.rule.startswith("/billing")}
    finally:
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()
    assert prefixed == {r.endpoint for r in RULES} | {r.endpoint for r in API_RULES}
    assert len(API_CASES) >= 25 and API_WRITES


def _json_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (status, response.get_data(as_text=True)[:300])
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert set(error) <= {"code", "message", "field_errors"} and error["message"]
    return dict(error)


@pytest.mark.parametrize(("rule", "method"), API_CASES)
def test_api_anonymous_is_401_json(
    matrix: tuple[Flask, dict[str, Any]], rule: Rule, method: str
) -> None:
    from _login_host import as_token

    app, samples = matrix
    url = build_url(app, rule, samples)
    before = fingerprint(app)
    client = app.test_client()
    _json_error(client.open(url, method=method, json={}), 401)
    # A token nobody issued, or a malformed header, is no better.
    _json_error(client.open(url, method=method, json={}, headers=as_token("stranger")), 401)
    bad_scheme = {"Authorization": "Basic b3BlcmF0b3I6eA=="}
    _json_error(client.open(url, method=method, json={}, headers=bad_scheme), 401)
    assert fingerprint(app) == before


@pytest.mark.parametrize(("rule", "method"), API_CASES)
def test_api_without_the_permission_is_403_json(
    matrix: tuple[Flask, dict[str, Any]], rule: Rule, method: str
) -> None:
    from _login_host import as_token

    app, samples = matrix
    url = build_url(app, rule, samples)
    action = required_action(app, rule)
    assert action in ACTIONS
    before = fingerprint(app)
    for user in ("nobody", f"all_but_{action}"):
        client = app.test_client()
        token = csrf_token(client)
        session = {**as_user(client, user), "X-CSRFToken": token}
        for headers in (session, as_token(user)):
            response = client.open(url, method=method, json={}, headers=headers)
            error = _json_error(response, 403)
            assert "Acme" not in str(error) and "news" not in str(error)
    assert fingerprint(app) == before


@pytest.mark.parametrize("rule", API_GETS)
def test_api_permitted_get_is_200_json(matrix: tuple[Flask, dict[str, Any]], rule: Rule) -> None:
    from _login_host import as_token

    app, samples = matrix
    url = build_url(app, rule, samples)
    action = required_action(app, rule)
    before = fingerprint(app)
    for headers in (as_user(app.test_client(), f"only_{action}"), as_token(f"only_{action}")):
        response = _request_with(app, "GET", url, headers)
        assert response.status_code == 200, (rule.endpoint, response.get_data(as_text=True)[:300])
        assert response.mimetype == "application/json"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert fingerprint(app) == before


def _request_with(app: Flask, method: str, url: str, headers: dict[str, str], **kw: Any) -> Any:
    response = app.test_client().open(url, method=method, headers=headers, **kw)
    response.get_data()
    response.close()
    return response


@pytest.mark.parametrize(("rule", "method"), API_WRITES)
def test_api_permitted_write_is_handled(tmp_path: Path, rule: Rule, method: str) -> None:
    """With its permission (token, no CSRF token), each write reaches its view: the view's
    own answer (done, or 4xx JSON about the body), never a refusal, a crash or HTML."""
    from _login_host import as_token

    from lm_billing_plugin.web.views.runs import shutdown_executor

    app = login_host_app(f"sqlite:///{tmp_path / 'billing.sqlite'}")
    try:
        samples = seed_rows(app)
        url = build_url(app, rule, samples)
        action = required_action(app, rule)
        # If-Match: * ("whatever it is now"), so an update reaches its view.
        headers = {**as_token(f"only_{action}"), "If-Match": "*"}
        response = _request_with(app, method, url, headers, json={})
        assert response.status_code not in (401, 403, 405, 428), rule.endpoint
        assert response.status_code < 500, (rule.endpoint, response.get_data(as_text=True))
        assert response.mimetype == "application/json"
        if response.status_code >= 400:
            assert response.get_json()["error"]["code"] != "csrf_failed"
    finally:
        shutdown_executor(app, wait=True)
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()
