"""A Flask-Login host app with CSRF on, users with chosen permissions, and one real row of
every kind the Billing pages take as a URL argument (for the URL-map generated tests)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from conftest import build_app
from flask import Flask, request
from flask.testing import FlaskClient
from flask_login import LoginManager, UserMixin
from werkzeug.routing import Rule

from lm_billing_plugin.models import (
    AdditionalCharge,
    Assignment,
    AuditEntry,
    Base,
    Batch,
    BillingGroup,
    BillRun,
    ChargeAssignment,
    Customer,
    DeleteRun,
    HostingPlan,
    Invoice,
    InvoiceTemplate,
    MailingList,
    Problem,
    Run,
    SendRun,
    Server,
    Site,
    invoice_active_key,
)
from lm_billing_plugin.state import get_state
from lm_billing_plugin.web.access import ACTIONS, action_of

# Who may do what. "nobody" is logged in but has no permission at all; "all_but_<a>" has
# every action except <a>, so each route's own action is what lets it in.
USERS: dict[str, tuple[str, ...]] = {
    "nobody": (),
    "operator": ACTIONS,
    **{f"all_but_{a}": tuple(x for x in ACTIONS if x != a) for a in ACTIONS},
    **{f"only_{a}": (a,) for a in ACTIONS},
}
USER_HEADER = "X-Test-User"


class TestUser(UserMixin):
    def __init__(self, name: str) -> None:
        self.id = name
        self.username = name
        self.actions = USERS[name]


# No test of this host waits for a silent peer, so the client is patient: a loaded CI machine
# can leave a simulator thread unscheduled for longer than a short timeout allows, and a
# patient timeout costs nothing when the answer comes. A test that needs a short one passes it.
PATIENT_CLIENT = {
    "LM_BILLING_CONNECT_TIMEOUT": 10.0,
    "LM_BILLING_READ_TIMEOUT": 10.0,
    "LM_BILLING_OPERATION_TIMEOUT": 20.0,
}


def login_host_app(db_url: str, **config: Any) -> Flask:
    """The plugin in a host with Flask-Login (users picked by a request header) and CSRF on."""

    def may(user: Any, action: str) -> bool:
        return bool(getattr(user, "is_authenticated", False)) and action in user.actions

    app = build_app(
        db_url,
        permission_check=may,
        WTF_CSRF_ENABLED=True,
        **{**PATIENT_CLIENT, **config},
    )
    manager = LoginManager(app)
    manager.login_view = "login"

    @manager.request_loader
    def load(req: Any) -> TestUser | None:
        name = req.headers.get(USER_HEADER)
        return TestUser(name) if name in USERS else None

    @app.get("/login")
    def login() -> str:
        return f"host login page for {request.args.get('next', '')}"

    @get_state(app).extension.token_checker
    def check_token(token: str) -> TestUser | None:
        # "token-<user>" is that user's API token; anything else is unknown.
        name = token.removeprefix(TOKEN_PREFIX) if token.startswith(TOKEN_PREFIX) else None
        return TestUser(name) if name in USERS else None

    return app


TOKEN_PREFIX = "token-"


def as_token(name: str) -> dict[str, str]:
    """Headers of an API request with ``name``'s bearer token (no session user)."""
    return {"Authorization": f"Bearer {TOKEN_PREFIX}{name}"}


def as_user(client: FlaskClient, name: str | None) -> dict[str, str]:
    """Headers that make a request come from ``name`` (None = anonymous)."""
    return {USER_HEADER: name} if name else {}


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed_rows(app: Flask) -> dict[str, Any]:
    """One real row of each kind; returns the sample value of every URL argument name."""
    with app.app_context():
        s = get_state(app).session
        server = Server(name="Lists", host="127.0.0.1", port=closed_port(), comments="")
        s.add(server)
        s.flush()
        site = Site(server_id=server.id, name="site1", title="Site One")
        lst = MailingList(server_id=server.id, name="news", site_name="site1", members=10)
        customer = Customer(company="Acme Ltd", email="billing@acme.example")
        plan = HostingPlan(name="Gold", max_lists=10, monthly_price=Decimal("19.95"))
        s.add_all([site, lst, customer, plan])
        s.flush()
        group = BillingGroup(customer_id=customer.id, name="Acme lists", plan_id=plan.id)
        batch = Batch(kind="validate", total=1)
        s.add_all([group, batch])
        s.flush()
        run = Run(server_id=server.id, kind="validate", batch_id=batch.id, status="problems")
        s.add(run)
        s.flush()
        assignment = Assignment(
            group_id=group.id,
            object_type="list",
            server_id=server.id,
            list_id=lst.id,
            start_date=date(2026, 1, 1),
        )
        problem = Problem(
            fingerprint="sample-unassigned-news",
            server_id=server.id,
            kind="unassigned_list",
            object_type="list",
            object_name="news",
            detail="List news is not assigned to any billing group.",
            first_run_id=run.id,
            last_run_id=run.id,
        )
        charge = AdditionalCharge(name="Setup Fee", default_amount=Decimal("50.00"))
        template = InvoiceTemplate(kind="email", name="Plain", body="Invoice {{ invoice.number }}")
        s.add_all([assignment, problem, charge, template])
        s.flush()
        group_charge = ChargeAssignment(
            group_id=group.id, charge_id=charge.id, start_date=date(2026, 1, 1)
        )
        s.add(group_charge)
        bill_run = BillRun(period_start=date(2026, 1, 1), period_end=date(2026, 1, 31),
                           status="done", customers=1)
        s.add(bill_run)
        s.flush()
        invoice = Invoice(number="2026-00001", year=2026, seq=1, customer_id=customer.id,
                          run_id=bill_run.id, period_start=date(2026, 1, 1),
                          period_end=date(2026, 1, 31), status="issued",
                          active_key=invoice_active_key(customer.id, date(2026, 1, 1),
                                                        date(2026, 1, 31)),
                          currency="USD", total=Decimal("19.95"), company="Acme Ltd")
        s.add(invoice)
        send_run = SendRun(is_test=True, status="finished", test_email="qa@example.com")
        s.add(send_run)
        # The Audit log shows one entry (its words in German on the translations test).
        s.add(AuditEntry(actor="operator", action="assign", object_type="group",
                         object_id=group.id, server_id=server.id, detail={"created": 1}))
        delete_run = DeleteRun(email="pat@example.org", status="finished", actor="test",
                               finished_at=datetime.now(UTC))
        s.add(delete_run)
        s.commit()
        return {
            "send_run_id": send_run.id,
            "delete_run_id": delete_run.id,
            "bill_run_id": bill_run.id,
            "invoice_id": invoice.id,
            "server_id": server.id,
            "site_id": site.id,
            "list_id": lst.id,
            "customer_id": customer.id,
            "group_id": group.id,
            "plan_id": plan.id,
            "batch_id": batch.id,
            "run_id": run.id,
            "problem_id": problem.id,
            "assignment_id": assignment.id,
            "charge_id": charge.id,
            "group_charge_id": group_charge.id,
            "template_id": template.id,
            "filename": "lm_billing.css",
        }


def plugin_rules(app: Flask) -> list[Rule]:
    return sorted(
        (r for r in app.url_map.iter_rules() if r.endpoint.startswith("lm_billing.")),
        key=lambda r: (r.endpoint, r.rule),
    )


def api_rules(app: Flask) -> list[Rule]:
    """The JSON API's routes (blueprint lm_billing_api)."""
    return sorted(
        (r for r in app.url_map.iter_rules() if r.endpoint.startswith("lm_billing_api.")),
        key=lambda r: (r.endpoint, r.rule),
    )


def api_methods(rule: Rule) -> list[str]:
    return sorted(set(rule.methods or ()) - {"HEAD", "OPTIONS"})


def build_url(app: Flask, rule: Rule, samples: dict[str, Any]) -> str:
    missing = sorted(set(rule.arguments) - set(samples))
    assert not missing, (
        f"{rule.endpoint} ({rule.rule}) takes {missing}: add a sample row for it to "
        "seed_rows() in tests/_login_host.py so the access and CSRF tests cover this route"
    )
    with app.test_request_context():
        from flask import url_for

        return url_for(rule.endpoint, **{a: samples[a] for a in rule.arguments})


def required_action(app: Flask, rule: Rule) -> str:
    return action_of(app.view_functions[rule.endpoint])


def csrf_token(client: FlaskClient, user: str = "operator") -> str:
    """The token a rendered plugin form carries for this client's session."""
    page = client.get("/billing/customers/new", headers=as_user(client, user))
    assert page.status_code == 200, page.status_code
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.get_data(True))
    assert match, "no csrf_token field on the Create New Customer page"
    return match.group(1)


def fingerprint(app: Flask) -> str:
    """A digest of every row of every plugin table: equal before and after = nothing changed."""
    digest = hashlib.sha256()
    with app.app_context():
        session = get_state(app).session
        for table in Base.metadata.sorted_tables:
            rows = session.execute(sa.select(table).order_by(*table.primary_key.columns)).all()
            digest.update(table.name.encode())
            digest.update(json.dumps([list(r) for r in rows], default=str).encode())
        session.rollback()
    return digest.hexdigest()


def now() -> datetime:
    return datetime.now(UTC)
