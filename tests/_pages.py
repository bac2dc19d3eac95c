"""Helpers for the page tests: CSRF tokens from rendered pages, fast client timeouts, servers
and billing rows made directly in the database, and a SQL statement counter."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin.models import BillingGroup, Customer, Server
from lm_billing_plugin.state import get_state

# Local simulated servers answer at once; a dead one must fail fast.
FAST_CONFIG: dict[str, Any] = {
    "LM_BILLING_CONNECT_TIMEOUT": 0.5,
    "LM_BILLING_READ_TIMEOUT": 1.0,
    "LM_BILLING_OPERATION_TIMEOUT": 2.0,
    "LM_BILLING_SERVER_DEADLINE": 10.0,
}


def csrf(client: FlaskClient, url: str = "/billing/") -> str:
    """A CSRF token as a page renders it (the same one a browser would send back)."""
    page = client.get(url)
    assert page.status_code == 200, page.status_code
    text = page.get_data(as_text=True)
    for match in re.finditer(r"<input[^>]*csrf_token[^>]*>", text):
        value = re.search(r'value="([^"]+)"', match.group(0))
        if value:
            return value.group(1)
    raise AssertionError(f"no csrf_token on {url}")


def post(
    client: FlaskClient,
    url: str,
    data: dict[str, Any] | None = None,
    *,
    token_from: str = "/billing/",
    follow: bool = False,
) -> Any:
    form = dict(data or {})
    form.setdefault("csrf_token", csrf(client, token_from))
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
