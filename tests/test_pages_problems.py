"""The Errors page, Fix Selected Objects, background validate/sync batches and assigning an owner
from the server page, with the Flask test client against simulated hosting servers."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from _pages import PAGES_CONFIG, add_group, add_server, plain, post, text_of
from _sim import closed_port
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape

from lm_billing_plugin.models import Assignment, Batch, MailingList, Problem, Server
from lm_billing_plugin.state import get_state
from lm_billing_plugin.tclport.records import LOGGING_NO
from lm_billing_plugin.testing.simulator import Dataset, HostSim
from lm_billing_plugin.web.views.runs import shutdown_executor, wait_for_batches


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    app = make_app(**PAGES_CONFIG)
    yield app
    shutdown_executor(app)


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=2, lists=6, seed=3)) as server:
        yield server


def _validate(client: FlaskClient, app: Flask, *ids: int, scope: str = "selected") -> str:
    response = post(
        client, "/billing/servers/validate", {"server_ids": [str(i) for i in ids], "scope": scope}
    )
    assert response.status_code == 302, text_of(response)
    assert re.fullmatch(r"/billing/batches/\d+", response.location)
    wait_for_batches(app)
    return str(response.location)


def _open(app: Flask, **where: object) -> list[Problem]:
    with app.app_context():
        query = sa.select(Problem).where(Problem.status == "open")
        for key, value in where.items():
            query = query.where(getattr(Problem, key) == value)
        return list(get_state(app).session.scalars(query.order_by(Problem.id)))


def _ids(text: str) -> list[str]:
    return re.findall(r'name="problem_ids" value="(\d+)"', text)


def test_validate_selected_runs_in_background_and_shows_errors(
    app: Flask, client: FlaskClient, sim: HostSim
) -> None:
    sid = add_server(app, "Sim", port=sim.port)
    batch_url = _validate(client, app, sid)
    page = plain(client.get(batch_url))
    assert "Finished: 1 of 1 server done." in page
    assert "Errors Were Found, Click Here to Fix" in page
    assert '<meta http-equiv="refresh"' not in page
    data = client.get(batch_url + ".json").get_json()
    assert data["finished"] is True and data["done"] == 1 and data["total"] == 1
    index = plain(client.get("/billing/"))
    assert "Errors Were Found, Click Here to Fix" in index and "never" in index  # not synced
    errors = plain(client.get("/billing/errors"))
    assert "Fixing adds the list to billing (unassigned)" in errors
    assert len(_ids(errors)) == 8  # 2 sites + 6 lists


def test_a_running_batch_page_refreshes_itself(app: Flask, client: FlaskClient) -> None:
    sid = add_server(app, "Queued")
    from lm_billing_plugin.engine import batches

    with app.app_context():
        batch_id = batches.create_batch("validate", [sid], actor="test")
    page = plain(client.get(f"/billing/batches/{batch_id}"))
    assert '<meta http-equiv="refresh" content="2">' in page
    assert "Running: 0 of 1 server done." in page
    data = client.get(f"/billing/batches/{batch_id}.json").get_json()
    # The page's script puts this sentence in place while the batch runs: the same words.
    assert data["finished"] is False and data["progress_text"] == "Running: 0 of 1 server done."
    assert client.get("/billing/batches/999").status_code == 404
    assert client.get("/billing/batches/999.json").status_code == 404


def test_the_progress_sentence_is_in_the_page_language(make_app: Callable[..., Flask]) -> None:
    german = make_app(LM_BILLING_DEFAULT_LOCALE="de", **PAGES_CONFIG)
    sid = add_server(german, "Queued")
    from lm_billing_plugin.engine import batches

    with german.app_context():
        one = batches.create_batch("validate", [sid], actor="test")
        two = batches.create_batch("validate", [sid, add_server(german, "Other")], actor="test")
    client = german.test_client()
    assert client.get(f"/billing/batches/{one}.json").get_json()["progress_text"] == (
        "Läuft: 0 von 1 Server erledigt.")
    assert client.get(f"/billing/batches/{two}.json").get_json()["progress_text"] == (
        "Läuft: 0 von 2 Servern erledigt.")
    assert "Läuft: 0 von 2 Servern erledigt." in plain(client.get(f"/billing/batches/{two}"))


def test_validate_all_and_unreachable_server_shows_failure_not_500(
    app: Flask, client: FlaskClient, sim: HostSim
) -> None:
    add_server(app, "Sim", port=sim.port)
    dead = add_server(app, "Dead", port=closed_port())
    batch_url = _validate(client, app, scope="all")
    page = plain(client.get(batch_url))
    assert "Finished: 2 of 2 servers done, 1 failed." in page
    assert "nothing listens on 127.0.0.1" in page
    detail = plain(client.get(f"/billing/servers/{dead}"))
    assert "unreachable" in detail and "Nothing listens on" in detail


def test_validate_all_without_servers_says_what_to_do(app: Flask, client: FlaskClient) -> None:
    text = plain(post(client, "/billing/servers/validate", {"scope": "all"}, follow=True))
    assert 'There is no server to validate yet: click "Create New Server" first.' in text


def test_sync_all_servers_syncs_every_active_one_in_one_batch(
    app: Flask, client: FlaskClient, sim: HostSim
) -> None:
    """Sync All Servers beside Validate All Servers: the batch of `sync --all` (every active
    server, a deactivated one left out), so the lists become billing's at once."""
    sid = add_server(app, "Sim", port=sim.port)
    add_server(app, "Gone", active=False)
    assert "Sync All Servers" in plain(client.get("/billing/"))
    response = post(client, "/billing/servers/sync", {"scope": "all"})
    assert response.status_code == 302 and re.fullmatch(r"/billing/batches/\d+", response.location)
    wait_for_batches(app)
    assert "Finished: 1 of 1 server done." in plain(client.get(response.location))
    with app.app_context():
        batch = get_state(app).session.scalars(sa.select(Batch)).one()
        synced = get_state(app).session.get(Server, sid)
        assert batch.kind == "sync" and synced is not None and synced.synced_at is not None
    assert {p.kind for p in _open(app)} == {"unassigned_list"}


def test_sync_all_without_servers_says_what_to_do(app: Flask, client: FlaskClient) -> None:
    text = plain(post(client, "/billing/servers/sync", {"scope": "all"}, follow=True))
    assert 'There is no server to sync yet: click "Create New Server" first.' in text
    with app.app_context():
        assert get_state(app).session.scalar(sa.select(sa.func.count(Batch.id))) == 0


def test_no_batch_thread_outlives_the_executor(
    app: Flask, client: FlaskClient, sim: HostSim
) -> None:
    sid = add_server(app, "Sim", port=sim.port)
    _validate(client, app, sid)
    assert any(t.name.startswith("lm-billing-batch") for t in threading.enumerate())
    shutdown_executor(app)
    assert not any(t.name.startswith("lm-billing-batch") for t in threading.enumerate())


def test_validate_and_sync_need_a_selection(app: Flask, client: FlaskClient) -> None:
    add_server(app, "A")
    text = plain(post(client, "/billing/servers/validate", {"scope": "selected"}, follow=True))
    assert "Nothing was validated: tick the servers" in text
    text = plain(post(client, "/billing/servers/sync", {}, follow=True))
    assert "Nothing was synced: tick the servers" in text
    text = plain(post(client, "/billing/servers/validate", {"server_ids": "x"}, follow=True))
    assert "Nothing was started" in text
    # Unknown ids are dropped, not an error page.
    text = plain(post(client, "/billing/servers/sync", {"server_ids": "999"}, follow=True))
    assert "Nothing was synced" in text
    gone = add_server(app, "Gone", active=False)
    text = plain(post(client, "/billing/servers/sync", {"server_ids": str(gone)}, follow=True))
    assert "Skipped a deactivated server: Gone" in text and "Nothing was synced" in text
    with app.app_context():
        assert get_state(app).session.scalar(sa.select(sa.func.count(Batch.id))) == 0


def test_fix_selected_objects_then_assign_owner_then_sync_clears_errors(
    app: Flask, client: FlaskClient, sim: HostSim
) -> None:
    sid = add_server(app, "Sim", port=sim.port)
    gid = add_group(app, "Acme", "Gold")
    _validate(client, app, sid)
    errors = plain(client.get("/billing/errors"))
    done = plain(
        post(
            client,
            "/billing/errors/fix",
            {"problem_ids": _ids(errors)},
            token_from="/billing/errors",
            follow=True,
        )
    )
    assert "Fix Selected Objects: 8 fixed." in done
    assert "the list was added to billing, unassigned" in done
    # Fixing twice changes nothing.
    again = plain(
        post(
            client,
            "/billing/errors/fix",
            {"problem_ids": _ids(errors)},
            token_from="/billing/errors",
            follow=True,
        )
    )
    assert "8 left as they are" in again
    with app.app_context():
        list_ids = [
            str(i)
            for i in get_state(app).session.scalars(
                sa.select(MailingList.id).where(MailingList.server_id == sid)
            )
        ]
    assert len(list_ids) == 6
    detail = f"/billing/servers/{sid}"
    assigned = plain(
        post(
            client,
            f"{detail}/assign",
            {"list_ids": list_ids, "group_id": str(gid)},
            token_from=detail,
            follow=True,
        )
    )
    assert '6 lists assigned to the billing group "Gold".' in assigned
    assert "Acme: Gold" in assigned
    sync = post(client, "/billing/servers/sync", {"server_ids": str(sid)})
    wait_for_batches(app)
    assert "Sync was successful: no errors found." in plain(client.get(sync.location))
    assert _open(app) == []
    assert "Errors Were Found" not in plain(client.get("/billing/"))
    assert "No open problems." in plain(client.get("/billing/errors"))


def test_assign_before_validation_shows_the_gate_message(app: Flask, client: FlaskClient) -> None:
    sid = add_server(app, "Fresh")
    gid = add_group(app)
    with app.app_context():
        session = get_state(app).session
        ml = MailingList(server_id=sid, name="news")
        session.add(ml)
        session.commit()
        list_id = ml.id
    detail = f"/billing/servers/{sid}"
    text = plain(
        post(
            client,
            f"{detail}/assign",
            {"list_ids": str(list_id), "group_id": str(gid)},
            token_from=detail,
            follow=True,
        )
    )
    assert "Nothing was assigned: Validate and sync server 'Fresh' first" in text
    with app.app_context():
        assert get_state(app).session.scalar(sa.select(sa.func.count(Assignment.id))) == 0


def test_assign_form_errors(app: Flask, client: FlaskClient) -> None:
    sid = add_server(app, "S")
    gid = add_group(app)
    other = add_server(app, "Other")
    with app.app_context():
        session = get_state(app).session
        ml = MailingList(server_id=other, name="elsewhere")
        session.add(ml)
        session.add(MailingList(server_id=sid, name="here"))
        session.commit()
        foreign = ml.id
    detail = f"/billing/servers/{sid}"
    text = plain(
        post(client, f"{detail}/assign", {"group_id": str(gid)}, token_from=detail, follow=True)
    )
    assert "tick at least one list first" in text
    text = plain(
        post(
            client,
            f"{detail}/assign",
            {"list_ids": str(foreign), "group_id": str(gid)},
            token_from=detail,
            follow=True,
        )
    )
    assert "the ticked lists are not on this server" in text
    text = plain(
        post(
            client,
            f"{detail}/assign",
            {"list_ids": str(foreign), "group_id": "999"},
            token_from=detail,
            follow=True,
        )
    )
    assert "Nothing was assigned: Not a valid choice" in text


def test_fix_needs_a_selection(app: Flask, client: FlaskClient) -> None:
    text = plain(post(client, "/billing/errors/fix", {}, token_from="/billing/", follow=True))
    assert "Nothing was fixed: tick the problems" in text
    text = plain(post(client, "/billing/errors/fix", {"problem_ids": "abc"}, follow=True))
    assert "Nothing was fixed: the form expired or the selection is not valid" in text
    assert client.post("/billing/errors/fix", data={"problem_ids": "1"}).status_code == 400


def test_logging_off_is_fixed_only_with_the_explicit_checkbox(
    app: Flask, client: FlaskClient
) -> None:
    data = Dataset.generate(sites=1, lists=2, seed=5)
    data.logging_mode = LOGGING_NO
    with HostSim(data) as nolog:
        sid = add_server(app, "NoLog", port=nolog.port)
        _validate(client, app, sid)
        [problem] = _open(app, kind="logging_off")
        page = plain(client.get("/billing/errors?kind=logging_off"))
        assert "also switch Enable Logging on through TclPort" in page
        assert _ids(page) == [str(problem.id)]
        left = plain(
            post(
                client,
                "/billing/errors/fix?kind=logging_off",
                {"problem_ids": str(problem.id)},
                token_from="/billing/errors",
                follow=True,
            )
        )
        assert "1 left as they are" in left
        assert nolog.dataset.logging_mode == LOGGING_NO
        fixed = plain(
            post(
                client,
                "/billing/errors/fix?kind=logging_off",
                {"problem_ids": str(problem.id), "enable_logging": "y"},
                token_from="/billing/errors",
                follow=True,
            )
        )
        assert "1 fixed" in fixed
        assert nolog.dataset.logging_mode != LOGGING_NO


def test_filter_by_server_and_kind_and_links_to_solve(app: Flask, client: FlaskClient) -> None:
    a = add_server(app, "Alpha")
    b = add_server(app, "Beta")
    gid = add_group(app)
    with app.app_context():
        session = get_state(app).session
        session.add_all(
            [
                Problem(
                    fingerprint="1",
                    server_id=a,
                    kind="unassigned_list",
                    object_type="list",
                    object_name="<script>alert(1)</script>",
                ),
                Problem(
                    fingerprint="2",
                    server_id=b,
                    kind="unknown_list",
                    object_type="list",
                    object_name='"><img src=x onerror=alert(1)>',
                ),
                Problem(
                    fingerprint="3",
                    server_id=None,
                    group_id=gid,
                    kind="over_max_lists",
                    object_type="group",
                    object_name="Acme lists",
                ),
            ]
        )
        session.commit()
    all_rows = text_of(client.get("/billing/errors"))
    assert len(_ids(all_rows)) == 3
    assert "<script>alert(1)</script>" not in all_rows
    assert str(escape("<script>alert(1)</script>")) in all_rows
    assert '"><img' not in all_rows
    only_a = plain(client.get(f"/billing/errors?server={a}"))
    assert len(_ids(only_a)) == 1 and "Assign an owner" in only_a
    assert f"/billing/servers/{a}?q=" in only_a
    only_kind = plain(client.get("/billing/errors?kind=unknown_list"))
    assert len(_ids(only_kind)) == 1 and "Beta" in only_kind
    plan = plain(client.get("/billing/errors?kind=over_max_lists"))
    assert "change the group's hosting plan" in plan
    assert f'<a href="/billing/groups/{gid}/edit">Change the plan</a>' in plan
    nothing = plain(client.get(f"/billing/errors?server={a}&kind=unknown_list"))
    assert "No open problems match this filter." in nothing
    # Bad filter values are ignored, not errors.
    assert client.get("/billing/errors?server=x&kind=evil&page=-3").status_code == 200


def test_problems_page_paging(make_app: Callable[..., Flask]) -> None:
    app = make_app(LM_BILLING_PAGE_SIZE=2, **PAGES_CONFIG)
    client = app.test_client()
    sid = add_server(app, "S")
    with app.app_context():
        session = get_state(app).session
        session.add_all(
            [
                Problem(
                    fingerprint=str(i),
                    server_id=sid,
                    kind="unknown_list",
                    object_type="list",
                    object_name=f"l{i}",
                )
                for i in range(5)
            ]
        )
        session.commit()
    first = plain(client.get("/billing/errors?sort=object"))
    assert "Page 1 of 3 (5 in all)" in first and "l0" in first and "l2" not in first
    last = plain(client.get("/billing/errors?sort=object&page=9"))
    assert "l4" in last and "Page 3 of 3" in last
    # Every page in turn, both directions: each problem once, in order (the page's ids are
    # sorted and cut first, then only their rows are read).
    for direction, expected in (("asc", [f"l{i}" for i in range(5)]),
                                ("desc", [f"l{i}" for i in reversed(range(5))])):
        seen = []
        for number in (1, 2, 3):
            text = plain(client.get(f"/billing/errors?sort=object&dir={direction}&page={number}"))
            seen += dict.fromkeys(re.findall(r"\bl\d\b", text))  # a row names it twice
        assert seen == expected, (direction, seen)


def test_the_password_never_reaches_a_page(app: Flask, client: FlaskClient) -> None:
    secret = "Pw-that-must-not-leak"
    with HostSim(Dataset.generate(sites=1, lists=2), password="other-password") as sim:
        post(
            client,
            "/billing/servers/new",
            {"name": "S", "host": "127.0.0.1", "port": str(sim.port), "password": secret},
            token_from="/billing/servers/new",
        )
        with app.app_context():
            sid = get_state(app).session.scalars(sa.select(Server.id)).one()
        batch = _validate(client, app, sid)
        detail = f"/billing/servers/{sid}"
        pages = [
            client.get(batch),
            client.get(detail),
            client.get("/billing/errors"),
            post(client, f"{detail}/check", token_from=detail, follow=True),
            client.get(f"{detail}/edit"),
            client.get("/billing/"),
        ]
    for page in pages:
        assert secret not in page.get_data(as_text=True)
    assert "password rejected" in plain(pages[-1])
