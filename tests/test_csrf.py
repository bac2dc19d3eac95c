"""CSRF on every POST route of the lm_billing blueprint, generated from the URL map: without a
token, or with a forged one, the answer is 400 and no row changes; with it, the change happens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _login_host import (
    as_user,
    build_url,
    csrf_token,
    fingerprint,
    login_host_app,
    plugin_rules,
    seed_rows,
)
from flask import Flask
from werkzeug.routing import Rule


def _rules() -> list[Rule]:
    app = login_host_app("sqlite://")
    try:
        return [r for r in plugin_rules(app) if "POST" in (r.methods or ())]
    finally:
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


POST_RULES = [pytest.param(r, id=r.endpoint) for r in _rules()]

# Form data that WOULD change something when the token is right, so "nothing changed"
# without it means the CSRF check stopped a real change. Routes not listed are posted with
# a plausible empty form; the 400 and the unchanged database are checked all the same.
VALID_FORMS: dict[str, Any] = {
    "lm_billing.customer_new": lambda s: {"company": "Forged Ltd", "is_active": "y"},
    "lm_billing.customer_edit": lambda s: {"company": "Forged Ltd", "is_active": "y"},
    "lm_billing.group_new": lambda s: {"name": "Forged group", "plan_id": str(s["plan_id"])},
    "lm_billing.group_edit": lambda s: {"name": "Forged group", "plan_id": str(s["plan_id"])},
    "lm_billing.plan_new": lambda s: _plan("Forged plan"),
    "lm_billing.plan_edit": lambda s: _plan("Forged plan"),
    "lm_billing.server_new": lambda s: {"name": "Forged", "host": "192.0.2.7", "port": "2021"},
    "lm_billing.server_delete": lambda s: {},
}


def _plan(name: str) -> dict[str, str]:
    numbers = [
        "max_members",
        "max_members_per_list",
        "max_lists",
        "max_lists_per_site",
        "max_sites",
        "monthly_price",
        "overage_cpm",
        "included_messages",
        "max_message_size_kb",
        "monthly_price_per_server",
        "cost_per_gb",
        "included_gb",
    ]
    return {"name": name, "billing_method": "standard", **dict.fromkeys(numbers, "0")}


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[Flask, dict[str, Any]]]:
    app = login_host_app(f"sqlite:///{tmp_path / 'billing.sqlite'}")
    yield app, seed_rows(app)
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


def test_every_post_route_is_listed() -> None:
    endpoints = {p.values[0].endpoint for p in POST_RULES}  # type: ignore[union-attr]
    assert {"lm_billing.customer_new", "lm_billing.assign", "lm_billing.unassign"} <= endpoints
    assert len(endpoints) >= 10


@pytest.mark.parametrize("rule", POST_RULES)
def test_post_without_token_is_400_and_changes_nothing(
    seeded: tuple[Flask, dict[str, Any]], rule: Rule
) -> None:
    app, samples = seeded
    url = build_url(app, rule, samples)
    data = VALID_FORMS.get(rule.endpoint, lambda s: {})(samples)
    client = app.test_client()
    headers = as_user(client, "operator")
    real_token = csrf_token(client)  # the session has a token; the request just lacks it
    before = fingerprint(app)

    missing = client.post(url, data=data, headers=headers)
    assert missing.status_code == 400, (rule.endpoint, missing.status_code)
    assert "CSRF token is missing" in missing.get_data(as_text=True)
    assert "Reload the page" in missing.get_data(as_text=True)

    forged = client.post(
        url, data={**data, "csrf_token": real_token[:-4] + "AAAA"}, headers=headers
    )
    assert forged.status_code == 400, (rule.endpoint, forged.status_code)

    # A token from another browser session is no good either.
    other = app.test_client()
    stolen = csrf_token(other)
    cross = client.post(url, data={**data, "csrf_token": stolen}, headers=headers)
    # Flask-WTF ties the token to the session; a fresh session has no CSRF secret to match.
    assert cross.status_code == 400, (rule.endpoint, cross.status_code)

    assert fingerprint(app) == before


@pytest.mark.parametrize("endpoint", sorted(VALID_FORMS))
def test_the_same_post_with_the_token_does_change(
    seeded: tuple[Flask, dict[str, Any]], endpoint: str
) -> None:
    """The counterpart that keeps the test above honest: its form data is a real change."""
    app, samples = seeded
    rules = [p.values[0] for p in POST_RULES if p.values[0].endpoint == endpoint]  # type: ignore[union-attr]
    if not rules:
        pytest.fail(f"{endpoint} is in VALID_FORMS but not in the URL map: update the table")
    url = build_url(app, rules[0], samples)
    client = app.test_client()
    headers = as_user(client, "operator")
    data = {**VALID_FORMS[endpoint](samples), "csrf_token": csrf_token(client)}
    before = fingerprint(app)
    response = client.post(url, data=data, headers=headers)
    assert response.status_code in (200, 302, 303), (endpoint, response.status_code)
    assert fingerprint(app) != before, f"{endpoint}: the sample form changed nothing"
