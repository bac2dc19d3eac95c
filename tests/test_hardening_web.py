"""The web face's defaults: security headers on every answer under the prefix (404 and 405 too),
a CSP the pages live with, no-store on data, bidi isolation, and no start without secrets."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _pages import post
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from lm_billing_plugin import LMBilling
from lm_billing_plugin.models import BillingGroup, Customer, HostingPlan, Problem, Server
from lm_billing_plugin.secrets import generate_key
from lm_billing_plugin.settings import CONTENT_SECURITY_POLICY
from lm_billing_plugin.state import get_state

TEMPLATES = Path(__file__).resolve().parent.parent / "lm_billing_plugin" / "templates"
DEMO_TEMPLATES = TEMPLATES.parent / "demo" / "templates"


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/billing/", 200),
    ("GET", "/billing/no-such-page", 404),
    ("GET", "/billing/servers/999", 404),
    ("DELETE", "/billing/", 405),
    ("GET", "/billing/servers/validate", 405),
])
def test_every_answer_under_the_prefix_has_the_security_headers(
    app: Flask, method: str, path: str, status: int
) -> None:
    response = app.test_client().open(path, method=method)
    assert response.status_code == status
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cache-Control"] == "no-store"


def test_static_files_may_be_cached_and_the_hosts_pages_are_left_alone(app: Flask) -> None:
    @app.get("/host-page")
    def host_page() -> str:
        return "host"

    client = app.test_client()
    with client.get("/billing/static/lm_billing.css") as static:
        assert static.status_code == 200
        assert "no-store" not in static.headers.get("Cache-Control", "")
        assert "Content-Security-Policy" in static.headers
    host = client.get("/host-page")
    assert "Content-Security-Policy" not in host.headers and "Cache-Control" not in host.headers


def test_the_policy_is_a_setting(make_app: Callable[..., Flask]) -> None:
    app = make_app(LM_BILLING_CONTENT_SECURITY_POLICY="default-src 'self' 'unsafe-inline'")
    response = app.test_client().get("/billing/")
    assert response.headers["Content-Security-Policy"] == "default-src 'self' 'unsafe-inline'"


@pytest.mark.parametrize("folder", [TEMPLATES, DEMO_TEMPLATES])
def test_no_template_has_inline_script_or_style(folder: Path) -> None:
    """The CSP allows no inline script or style: every page must work with it."""
    for path in folder.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), path
        assert "<style" not in text and " style=" not in text, path
        assert not re.search(r"\son[a-z]+=", text), path


def test_bidi_overrides_in_server_data_are_isolated(app: Flask) -> None:
    """Text beside other text is wrapped in <bdi>; table cells isolate by the stylesheet."""
    evil = "\u202etxt.exe"
    with app.app_context():
        session = get_state().session
        server = Server(name="Mixed", host="127.0.0.1", port=1, version=evil)
        session.add(server)
        session.flush()
        session.add(Problem(fingerprint="f" * 64, server_id=server.id, kind="unknown_site",
                            object_type="site", object_name=evil, detail=f"Site {evil} is new",
                            data={}))
        session.commit()
        sid = server.id
    client = app.test_client()
    html = client.get(f"/billing/servers/{sid}").get_data(as_text=True)
    assert f"<bdi>{evil}</bdi> — <bdi>Site {evil} is new</bdi>" in html
    assert f"<dd><bdi>{evil}</bdi></dd>" in html  # the version the server reported
    with client.get("/billing/static/lm_billing.css") as css:
        assert ".lmb-table th, .lmb-table td, .lmb-fields dd { unicode-bidi: plaintext; }" in (
            css.get_data(as_text=True))


def bare_app(tmp_path: Path, **config: object) -> Flask:
    app = Flask("production_like")
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'p.sqlite'}", **config)
    SQLAlchemy(app)
    return app


@pytest.mark.parametrize("secret", [None, ""])
def test_a_host_without_secret_key_is_refused_at_start(tmp_path: Path, secret: object) -> None:
    config: dict[str, object] = {"LM_BILLING_ENCRYPTION_KEYS": [generate_key()]}
    if secret is not None:
        config["SECRET_KEY"] = secret
    with pytest.raises(RuntimeError, match=r"no SECRET_KEY .*secrets.token_hex"):
        LMBilling(bare_app(tmp_path, **config))


def test_a_host_without_encryption_key_is_refused_with_the_command(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"LM_BILLING_ENCRYPTION_KEYS is empty.*"
                                           "flask lm-billing generate-key"):
        LMBilling(bare_app(tmp_path, SECRET_KEY="s" * 32))


@pytest.mark.parametrize("mode", ["TESTING", "DEBUG"])
def test_debug_and_testing_start_without_secrets(tmp_path: Path, mode: str) -> None:
    app = bare_app(tmp_path, **{mode: True})
    LMBilling(app)
    assert "lm_billing" in app.extensions


def test_a_complete_production_app_starts(tmp_path: Path) -> None:
    app = bare_app(tmp_path, SECRET_KEY="s" * 32, LM_BILLING_ENCRYPTION_KEYS=generate_key())
    LMBilling(app)
    assert "lm_billing" in app.extensions


# --- No mass assignment: only a form's own fields are written ------------------------------

FORGED_SERVER = {"id": "999", "status": "ok", "status_message": "forged", "active": "",
                 "password_encrypted": "forged", "version": "forged", "lease_owner": "forged",
                 "hostname_reported": "forged", "created_at": "2000-01-01T00:00:00"}


def _row(app: Flask, model: type[Any], row_id: int) -> dict[str, Any]:
    with app.app_context():
        session = get_state(app).session
        row = session.get(model, row_id)
        assert row is not None, (model, row_id)
        values = {c.key: getattr(row, c.key) for c in sa.inspect(model).column_attrs}
        session.commit()
        return values


def test_extra_form_fields_are_ignored_on_create_and_edit(app: Flask) -> None:
    """Columns a form does not show (status, the password's ciphertext, active, lease, the
    id, a group's customer, name keys), posted beside a real change to the server create and
    edit, customer, hosting plan and billing group forms: the change is saved, the rest is
    as it was."""
    client = app.test_client()
    created = post(client, "/billing/servers/new",
                   {"name": "Lists", "host": "127.0.0.1", "port": "2021", **FORGED_SERVER},
                   token_from="/billing/servers/new")
    assert created.status_code == 302, created.get_data(as_text=True)[:2000]
    with app.app_context():
        session = get_state(app).session
        [sid] = session.scalars(sa.select(Server.id)).all()
        session.commit()
    fresh = _row(app, Server, sid)
    assert sid != 999 and fresh["status"] == "unchecked" and fresh["active"] is True
    assert fresh["password_encrypted"] is None and fresh["status_message"] == ""
    assert (fresh["version"], fresh["lease_owner"], fresh["hostname_reported"]) == (None,) * 3

    edit = f"/billing/servers/{sid}/edit"
    saved = post(client, edit, {"name": "Lists", "host": "127.0.0.1", "port": "2021",
                                "comments": "changed", **FORGED_SERVER}, token_from=edit)
    assert saved.status_code == 302, saved.get_data(as_text=True)[:2000]
    after = _row(app, Server, sid)
    assert after["comments"] == "changed"
    assert {k: v for k, v in after.items() if k not in ("comments", "updated_at")} == {
        k: v for k, v in fresh.items() if k not in ("comments", "updated_at")}

    with app.app_context():
        session = get_state(app).session
        acme, other = Customer(company="Acme"), Customer(company="Other")
        plan = HostingPlan(name="Gold", monthly_price=10)
        session.add_all([acme, other, plan])
        session.flush()
        group = BillingGroup(customer_id=acme.id, name="Main")
        session.add(group)
        session.commit()
        cid, oid, pid, gid = acme.id, other.id, plan.id, group.id
    cases: list[tuple[str, type[Any], int, dict[str, str], str, str]] = [
        (f"/billing/customers/{cid}/edit", Customer, cid,
         {"company": "Acme", "email_template_id": "0", "web_template_id": "0",
          "is_active": "y", "id": "999", "company_key": "forged"}, "notes", "changed"),
        (f"/billing/plans/{pid}/edit", HostingPlan, pid,
         {"name": "Gold", "billing_method": "standard", "monthly_price": "10",
          **dict.fromkeys(("max_members", "max_members_per_list", "max_lists",
                           "max_lists_per_site", "max_sites", "overage_cpm",
                           "included_messages", "max_message_size_kb",
                           "monthly_price_per_server", "cost_per_gb", "included_gb"), "0"),
          "id": "999", "name_key": "forged"}, "description", "changed"),
        (f"/billing/groups/{gid}/edit", BillingGroup, gid,
         {"plan_id": "0", "id": "999", "customer_id": str(oid), "name_key": "forged"},
         "name", "changed"),
    ]
    for url, model, row_id, form, field, value in cases:
        before = _row(app, model, row_id)
        saved = post(client, url, {**form, field: value}, token_from=url)
        assert saved.status_code == 302, (url, saved.get_data(as_text=True)[:2000])
        after = _row(app, model, row_id)
        assert after[field] == value, url
        changed = {k for k in after if after[k] != before[k]}
        # The field and what follows from it (a name's key, the update time), nothing else.
        assert changed <= {field, "name_key", "updated_at"}, (url, changed)
        if "name_key" in changed:
            assert after["name_key"] != "forged"
