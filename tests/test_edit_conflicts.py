"""Lost updates on the edit forms (issue 14, item 7): two operators editing one server,
customer, hosting plan or billing group — the second save is refused with "changed by
someone else" and the current values, never a silent overwrite; a sync writing a server's
status and inventory while an operator edits it is not a conflict, and both changes stay.
On SQLite, PostgreSQL and MariaDB (db_url)."""

from __future__ import annotations

import contextlib
import html
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa
from _pages import PAGES_CONFIG
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin.engine import batches
from lm_billing_plugin.models import BillingGroup, Customer, HostingPlan, MailingList, Server
from lm_billing_plugin.state import get_state
from lm_billing_plugin.tclport.records import ListRecord, SiteRecord
from lm_billing_plugin.testing.simulator import Dataset, HostSim

CHANGED = "was changed by someone else since you opened it"


def _hidden(page: str, name: str) -> str:
    for match in re.finditer(r"<input[^>]*>", page):
        tag = match.group(0)
        if f'name="{name}"' in tag:
            value = re.search(r'value="([^"]*)"', tag)
            return html.unescape(value.group(1)) if value else ""
    raise AssertionError(f"no hidden {name} in the page")


def _value(page: str, name: str) -> str:
    """The value an <input name=...> shows (text inputs) or a <textarea>'s text."""
    area = re.search(rf'<textarea[^>]*name="{name}"[^>]*>(.*?)</textarea>', page, re.S)
    if area:
        return html.unescape(area.group(1)).strip()
    return _hidden(page, name)


class Editor:
    """One operator's browser: opens an edit page, later posts it back with what it loaded."""

    def __init__(self, client: FlaskClient, url: str) -> None:
        self.client, self.url = client, url
        self.fields: dict[str, Any] = {}

    def open(self, **fields: Any) -> str:
        page = self.client.get(self.url)
        assert page.status_code == 200, page.status_code
        text = page.get_data(as_text=True)
        self.fields = {"csrf_token": _hidden(text, "csrf_token"),
                       "loaded_version": _hidden(text, "loaded_version"), **fields}
        assert self.fields["loaded_version"], "the edit form carries its version"
        return text

    def save(self, **changes: Any) -> Any:
        return self.client.post(self.url, data={**self.fields, **changes})


@pytest.fixture
def sim() -> Iterator[HostSim]:
    dataset = Dataset(sites=[SiteRecord("s1", "Site 1")],
                      lists=[ListRecord(f"l{i}", "s1", "", date(2020, 1, 1), 10, "o@example.com")
                             for i in range(5)])
    with HostSim(dataset) as server:
        yield server


@pytest.fixture
def edit_app(make_app: Callable[..., Flask], db_url: str) -> Flask:
    # No app context held around the requests: each request gets its own (and its own g,
    # where Flask-WTF keeps the CSRF token), as in a real server.
    app: Flask = make_app(db_url, **PAGES_CONFIG)
    return app


@contextlib.contextmanager
def ctx(app: Flask) -> Iterator[Any]:
    with app.app_context():
        session = get_state().session
        yield session
        session.commit()


def _server(app: Flask, host: str, port: int) -> int:
    with ctx(app) as session:
        server = Server(name="Lists", host=host, port=port, comments="first")
        session.add(server)
        session.flush()
        return int(server.id)


class Row:
    """A row's values as stored now, read in a context of its own."""

    def __init__(self, app: Flask, model: Any, row_id: int) -> None:
        with ctx(app) as session:
            row = session.get(model, row_id)
            self.__dict__.update({c.key: getattr(row, c.key)
                                  for c in sa.inspect(model).column_attrs})


def _fresh(app: Flask, model: Any, row_id: int) -> Any:
    return Row(app, model, row_id)


def _sync(app: Flask, sid: int) -> int:
    with app.app_context():
        return batches.sync_servers([sid], actor="sync").exit_code


SERVER_FORM = {"name": "Lists"}


def test_second_server_edit_is_refused_with_the_current_values(
    edit_app: Flask, sim: HostSim
) -> None:
    sid = _server(edit_app, sim.host, sim.port)
    url = f"/billing/servers/{sid}/edit"
    alice = Editor(edit_app.test_client(), url)
    bob = Editor(edit_app.test_client(), url)
    alice.open(**SERVER_FORM, host=sim.host, port=str(sim.port))
    bob.open(**SERVER_FORM, host=sim.host, port=str(sim.port))

    assert alice.save(comments="alice was here").status_code == 302
    refused = bob.save(comments="bob was here")
    assert refused.status_code == 200, refused.get_data(as_text=True)[:3000]
    page = refused.get_data(as_text=True)
    assert "This server " + CHANGED in html.unescape(page)
    # The form shows what is stored now (Alice's), not what Bob typed, and nothing was
    # overwritten.
    assert _value(page, "comments") == "alice was here"
    assert _fresh(edit_app, Server, sid).comments == "alice was here"

    # Bob reviews and saves again with the version the refusal gave him: that one passes.
    bob.fields["loaded_version"] = _hidden(page, "loaded_version")
    bob.fields["csrf_token"] = _hidden(page, "csrf_token")
    assert bob.save(comments="bob, after review").status_code == 302
    assert _fresh(edit_app, Server, sid).comments == "bob, after review"


def test_a_forged_or_stale_version_is_refused_and_a_field_error_keeps_the_old_version(
    edit_app: Flask, sim: HostSim
) -> None:
    sid = _server(edit_app, sim.host, sim.port)
    url = f"/billing/servers/{sid}/edit"
    alice = Editor(edit_app.test_client(), url)
    alice.open(**SERVER_FORM, host=sim.host, port=str(sim.port))
    # A field error re-renders the form with the version Alice loaded (not the current one:
    # that would let her next save overwrite a change made meanwhile).
    bad = alice.save(host="bad host name")
    assert bad.status_code == 200
    assert _hidden(bad.get_data(as_text=True), "loaded_version") == alice.fields["loaded_version"]
    forged = alice.save(loaded_version="0" * 32, comments="forged")
    assert forged.status_code == 200
    assert CHANGED in html.unescape(forged.get_data(as_text=True))
    assert _fresh(edit_app, Server, sid).comments == "first"


def test_a_sync_between_opening_and_saving_is_not_a_conflict(
    edit_app: Flask, sim: HostSim
) -> None:
    """The sync writes status, version, synced_at and the lists: none of them is a field the
    operator edits, so the save passes and both the sync's and the operator's changes stay."""
    sid = _server(edit_app, sim.host, sim.port)
    editor = Editor(edit_app.test_client(), f"/billing/servers/{sid}/edit")
    editor.open(**SERVER_FORM, host=sim.host, port=str(sim.port))
    sim.set_version("9.9-sync")
    assert _sync(edit_app, sid) in (0, 1)  # 1: problems found, still synced
    synced = _fresh(edit_app, Server, sid)
    assert synced.synced_at is not None and synced.version == "9.9-sync"

    assert editor.save(comments="edited during the sync").status_code == 302
    after = _fresh(edit_app, Server, sid)
    assert after.comments == "edited during the sync"
    assert after.version == "9.9-sync" and after.synced_at == synced.synced_at
    with ctx(edit_app) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(MailingList)
                              .where(MailingList.server_id == sid)) == 5


def test_edits_while_real_syncs_run_keep_every_change(edit_app: Flask, sim: HostSim) -> None:
    """Syncs of the server run back to back in a thread (a slow peer) while an operator
    opens and saves the form again and again (at least five saves, spanning at least three
    syncs): every save passes and every sync completes."""
    sid = _server(edit_app, sim.host, sim.port)
    sim.set_latency(0.02)
    stop = threading.Event()
    outcomes: list[int] = []
    errors: list[BaseException] = []

    def syncing() -> None:
        try:
            with edit_app.app_context():
                while not stop.is_set():
                    outcomes.append(batches.sync_servers([sid], actor="sync").exit_code)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=syncing)
    thread.start()
    try:
        editor = Editor(edit_app.test_client(), f"/billing/servers/{sid}/edit")
        n, deadline = 0, time.monotonic() + 30
        while (n < 5 or len(outcomes) < 3) and time.monotonic() < deadline:
            sim.set_members("l1", 100 + n)
            editor.open(**SERVER_FORM, host=sim.host, port=str(sim.port))
            saved = editor.save(comments=f"edit {n}")
            assert saved.status_code == 302, html.unescape(saved.get_data(as_text=True))[:2000]
            n += 1
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors
    assert len(outcomes) >= 3 and set(outcomes) <= {0, 1}, outcomes
    # One more sync after the last edit: the sync's data and the operator's field both stay.
    assert _sync(edit_app, sid) in (0, 1)  # 1: problems found, still synced
    assert _fresh(edit_app, Server, sid).comments == f"edit {n - 1}"
    with ctx(edit_app) as session:
        members = session.scalar(sa.select(MailingList.members).where(
            MailingList.server_id == sid, MailingList.name == "l1"))
    assert members == 100 + n - 1


def _customer(app: Flask) -> int:
    with ctx(app) as session:
        customer = Customer(company="Acme", email="billing@acme.example")
        session.add(customer)
        session.flush()
        return int(customer.id)


CUSTOMER_FORM = {"company": "Acme", "email": "billing@acme.example", "is_active": "y",
                 "email_template_id": "0", "web_template_id": "0"}


def test_second_customer_edit_is_refused_with_the_current_values(edit_app: Flask) -> None:
    cid = _customer(edit_app)
    url = f"/billing/customers/{cid}/edit"
    alice = Editor(edit_app.test_client(), url)
    bob = Editor(edit_app.test_client(), url)
    alice.open(**CUSTOMER_FORM)
    bob.open(**CUSTOMER_FORM)
    assert alice.save(contact_name="Alice Smith").status_code == 302
    refused = bob.save(contact_name="Bob Jones", notes="bob's note")
    assert refused.status_code == 200
    page = html.unescape(refused.get_data(as_text=True))
    assert "This customer " + CHANGED in page
    assert _value(page, "contact_name") == "Alice Smith"
    after = _fresh(edit_app, Customer, cid)
    assert (after.contact_name, after.notes) == ("Alice Smith", "")


def test_customer_edit_while_a_sync_runs_keeps_both(edit_app: Flask, sim: HostSim) -> None:
    """A sync never writes a customer: the edit made around one passes, the sync's lists
    arrive."""
    cid = _customer(edit_app)
    sid = _server(edit_app, sim.host, sim.port)
    editor = Editor(edit_app.test_client(), f"/billing/customers/{cid}/edit")
    editor.open(**CUSTOMER_FORM)
    assert _sync(edit_app, sid) in (0, 1)  # 1: problems found, still synced
    assert editor.save(notes="called on Monday").status_code == 302
    assert _fresh(edit_app, Customer, cid).notes == "called on Monday"
    assert _fresh(edit_app, Server, sid).synced_at is not None


PLAN_FORM = {"name": "Gold", "billing_method": "standard", "monthly_price": "10",
             **{k: "0" for k in ("max_members", "max_members_per_list", "max_lists",
                                 "max_lists_per_site", "max_sites", "overage_cpm",
                                 "included_messages", "max_message_size_kb",
                                 "monthly_price_per_server", "cost_per_gb", "included_gb")}}


def test_second_plan_and_group_edits_are_refused(edit_app: Flask) -> None:
    with ctx(edit_app) as session:
        plan = HostingPlan(name="Gold", monthly_price=10)
        customer = Customer(company="Acme")
        session.add_all([plan, customer])
        session.flush()
        group = BillingGroup(customer_id=customer.id, name="Main")
        session.add(group)
        session.flush()
        pid, gid = plan.id, group.id

    plan_form = PLAN_FORM
    alice = Editor(edit_app.test_client(), f"/billing/plans/{pid}/edit")
    bob = Editor(edit_app.test_client(), f"/billing/plans/{pid}/edit")
    alice.open(**plan_form)
    bob.open(**plan_form)
    assert alice.save(monthly_price="12.50").status_code == 302
    refused = bob.save(monthly_price="99")
    assert refused.status_code == 200
    assert "This hosting plan " + CHANGED in html.unescape(refused.get_data(as_text=True))
    assert str(_fresh(edit_app, HostingPlan, pid).monthly_price) in ("12.50", "12.5")

    alice = Editor(edit_app.test_client(), f"/billing/groups/{gid}/edit")
    bob = Editor(edit_app.test_client(), f"/billing/groups/{gid}/edit")
    alice.open(name="Main", plan_id="0")
    bob.open(name="Main", plan_id="0")
    assert alice.save(name="Main contract").status_code == 302
    refused = bob.save(name="Bob's name")
    assert refused.status_code == 200
    page = html.unescape(refused.get_data(as_text=True))
    assert "This billing group " + CHANGED in page
    assert _value(page, "name") == "Main contract"
    assert _fresh(edit_app, BillingGroup, gid).name == "Main contract"


# --- A POST without the form's version (a stale page, a script): refused, never unchecked ---


def _plan_and_group(app: Flask) -> tuple[int, int]:
    with ctx(app) as session:
        plan = HostingPlan(name="Gold", monthly_price=10)
        customer = Customer(company="Groups Ltd")
        session.add_all([plan, customer])
        session.flush()
        group = BillingGroup(customer_id=customer.id, name="Main")
        session.add(group)
        session.flush()
        return int(plan.id), int(group.id)


def test_every_edit_form_posted_without_its_version_is_refused(
    edit_app: Flask, sim: HostSim
) -> None:
    """The server, customer, hosting plan and billing group forms, each posted with a valid
    CSRF token and a real change but no ``loaded_version``: the form comes back (200) with
    "changed by someone else", the stored values and their version; nothing is saved. Saved
    again with that version (the reviewed form), the change goes through."""
    sid = _server(edit_app, sim.host, sim.port)
    cid = _customer(edit_app)
    pid, gid = _plan_and_group(edit_app)
    cases: list[tuple[str, str, dict[str, Any], str, str, Any, int]] = [
        ("server", f"/billing/servers/{sid}/edit",
         {**SERVER_FORM, "host": sim.host, "port": str(sim.port)}, "comments", "script",
         Server, sid),
        ("customer", f"/billing/customers/{cid}/edit", CUSTOMER_FORM, "notes", "script",
         Customer, cid),
        ("hosting plan", f"/billing/plans/{pid}/edit", PLAN_FORM, "name", "Platinum",
         HostingPlan, pid),
        ("billing group", f"/billing/groups/{gid}/edit", {"name": "Main", "plan_id": "0"},
         "name", "Script's name", BillingGroup, gid),
    ]
    for kind, url, form, field, typed, model, row_id in cases:
        before = getattr(_fresh(edit_app, model, row_id), field)
        editor = Editor(edit_app.test_client(), url)
        editor.open(**form)
        version = editor.fields.pop("loaded_version")
        refused = editor.save(**{field: typed})
        assert refused.status_code == 200, (kind, refused.status_code)
        page = html.unescape(refused.get_data(as_text=True))
        assert f"This {kind} {CHANGED}" in page, kind
        assert getattr(_fresh(edit_app, model, row_id), field) == before, kind
        # The form shows the stored value (not what was typed) and the current version.
        assert _value(page, field) != typed, kind
        assert _hidden(page, "loaded_version") == version, kind

        editor.fields["loaded_version"] = _hidden(page, "loaded_version")
        saved = editor.save(**{field: typed})
        assert saved.status_code == 302, (kind, html.unescape(saved.get_data(as_text=True))[:2000])
        assert str(getattr(_fresh(edit_app, model, row_id), field)) == typed, kind


def test_a_server_form_without_its_version_is_refused_after_a_sync_and_the_sync_stays(
    edit_app: Flask, sim: HostSim
) -> None:
    """The page is opened, a sync writes the server's version, status and lists, then the
    form comes back without ``loaded_version``: refused, the operator's field and the sync's
    columns as they were; the reviewed save keeps the sync's data too."""
    sid = _server(edit_app, sim.host, sim.port)
    editor = Editor(edit_app.test_client(), f"/billing/servers/{sid}/edit")
    editor.open(**SERVER_FORM, host=sim.host, port=str(sim.port))
    del editor.fields["loaded_version"]
    sim.set_version("9.9-sync")
    assert _sync(edit_app, sid) in (0, 1)  # 1: problems found, still synced
    synced = _fresh(edit_app, Server, sid)
    assert synced.version == "9.9-sync" and synced.synced_at is not None

    refused = editor.save(comments="from a stale page")
    assert refused.status_code == 200
    page = html.unescape(refused.get_data(as_text=True))
    assert "This server " + CHANGED in page
    after = _fresh(edit_app, Server, sid)
    assert after.comments == "first"
    assert (after.version, after.synced_at) == ("9.9-sync", synced.synced_at)

    editor.fields["loaded_version"] = _hidden(page, "loaded_version")
    assert editor.save(comments="reviewed").status_code == 302
    after = _fresh(edit_app, Server, sid)
    assert after.comments == "reviewed"
    assert (after.version, after.synced_at) == ("9.9-sync", synced.synced_at)
    with ctx(edit_app) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(MailingList)
                              .where(MailingList.server_id == sid)) == 5


# --- The JSON API: If-Match on PATCH /servers/{id} (428 without, 412 when stale) ----------

API = "/billing/api/v1"
TOKEN = {"Authorization": "Bearer robot"}


def test_api_update_needs_if_match_and_a_sync_in_between_makes_it_stale(
    edit_app: Flask, sim: HostSim
) -> None:
    """The API's ETag is of the whole server document (status, version, synced_at
    included), so a sync between the GET and the PATCH makes the PATCH 412: nothing written,
    the sync's data kept. Without If-Match it is 428. With the ETag the 412 hands back, the
    change passes and the sync's data stays."""
    get_state(edit_app).extension.token_checker(lambda t: "robot" if t == "robot" else None)
    sid = _server(edit_app, sim.host, sim.port)
    api = edit_app.test_client()
    url = f"{API}/servers/{sid}"
    etag = api.get(url, headers=TOKEN).headers["ETag"]

    missing = api.patch(url, json={"comments": "no if-match"}, headers=TOKEN)
    assert missing.status_code == 428
    assert _fresh(edit_app, Server, sid).comments == "first"

    sim.set_version("9.9-sync")
    assert _sync(edit_app, sid) in (0, 1)  # 1: problems found, still synced
    synced = _fresh(edit_app, Server, sid)
    assert synced.version == "9.9-sync"

    stale = api.patch(url, json={"comments": "stale"}, headers={**TOKEN, "If-Match": etag})
    assert stale.status_code == 412
    assert stale.get_json()["error"]["code"] == "precondition_failed"
    assert stale.headers["ETag"] != etag
    after = _fresh(edit_app, Server, sid)
    assert after.comments == "first" and after.version == "9.9-sync"

    fresh = api.patch(url, json={"comments": "after re-reading"},
                      headers={**TOKEN, "If-Match": stale.headers["ETag"]})
    assert fresh.status_code == 200, fresh.get_json()
    after = _fresh(edit_app, Server, sid)
    assert after.comments == "after re-reading"
    assert (after.version, after.synced_at) == ("9.9-sync", synced.synced_at)
