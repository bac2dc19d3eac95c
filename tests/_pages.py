"""Helpers for the page tests: CSRF tokens from rendered pages, fast client timeouts, servers
and billing rows made directly in the database, and a SQL statement counter."""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin.models import BillingGroup, Customer, Server
from lm_billing_plugin.state import get_state

# Local simulated servers answer at once and a stopped one refuses at once, so no page test
# waits for a timeout: they are patient, because a loaded CI machine can leave a simulator
# thread unscheduled for longer than a short timeout allows.
PAGES_CONFIG: dict[str, Any] = {
    "LM_BILLING_CONNECT_TIMEOUT": 10.0,
    "LM_BILLING_READ_TIMEOUT": 10.0,
    "LM_BILLING_OPERATION_TIMEOUT": 20.0,
    "LM_BILLING_SERVER_DEADLINE": 30.0,
}


def _hidden_inputs(client: FlaskClient, url: str) -> dict[str, str]:
    """The csrf_token and (on an edit page) loaded_version a page renders."""
    page = client.get(url)
    assert page.status_code == 200, page.status_code
    text = page.get_data(as_text=True)
    found: dict[str, str] = {}
    for name in ("csrf_token", "loaded_version"):
        for match in re.finditer(rf'<input[^>]*name="{name}"[^>]*>', text):
            value = re.search(r'value="([^"]+)"', match.group(0))
            if value:
                found.setdefault(name, html.unescape(value.group(1)))
    return found


def csrf(client: FlaskClient, url: str = "/billing/") -> str:
    """A CSRF token as a page renders it (the same one a browser would send back)."""
    token = _hidden_inputs(client, url).get("csrf_token")
    if token is None:
        raise AssertionError(f"no csrf_token on {url}")
    return token


def loaded_version(client: FlaskClient, url: str) -> str:
    """The version an edit page's form carries (hidden ``loaded_version``)."""
    version = _hidden_inputs(client, url).get("loaded_version")
    if version is None:
        raise AssertionError(f"no loaded_version on {url}")
    return version


def post(
    client: FlaskClient,
    url: str,
    data: dict[str, Any] | None = None,
    *,
    token_from: str = "/billing/",
    follow: bool = False,
) -> Any:
    """POST ``data`` with the CSRF token of ``token_from``; when that page is an edit form,
    also with the version it was loaded with (as a browser sends it back)."""
    form = dict(data or {})
    hidden = _hidden_inputs(client, token_from)
    if "csrf_token" not in hidden:
        raise AssertionError(f"no csrf_token on {token_from}")
    for name, value in hidden.items():
        form.setdefault(name, value)
    return client.post(url, data=form, follow_redirects=follow)


def add_server(
    app: Flask, name: str, host: str = "127.0.0.1", port: int = 2021, **fields: Any
) -> int:
    with app.app_context():
        session = get_state(app).session
        server = Server(
            name=name, host=host, port=port, comments=fields.pop("comments", ""), **fields
        )
        session.add(server)
        session.commit()
        return int(server.id)


def add_group(app: Flask, company: str = "Acme Ltd", group: str = "Acme lists") -> int:
    with app.app_context():
        session = get_state(app).session
        customer = Customer(company=company)
        session.add(customer)
        session.flush()
        billing_group = BillingGroup(customer_id=customer.id, name=group)
        session.add(billing_group)
        session.commit()
        return int(billing_group.id)


@contextlib.contextmanager
def count_statements(app: Flask) -> Iterator[list[str]]:
    """Every SQL statement the app's engine runs inside the block."""
    statements: list[str] = []
    with app.app_context():
        engine = get_state(app).db.engine

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


def text_of(response: Any) -> str:
    return str(response.get_data(as_text=True))


def plain(response: Any) -> str:
    """The page's text with entities decoded (for messages that contain quotes)."""
    import html

    return html.unescape(text_of(response))
