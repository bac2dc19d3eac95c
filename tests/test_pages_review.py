"""What an operator meets off the happy path: the Errors page filtered to one batch, error
pages inside the layout (403, 404, 400 CSRF), malformed query strings and ids that must never
become a 500, and what a view-only user sees instead of buttons that end in a 403."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _login_host import as_user, csrf_token, login_host_app, seed_rows
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin.models import Problem, Server
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim
from lm_billing_plugin.web.views.runs import shutdown_executor, wait_for_batches

HUGE = "9" * 30
# The problem ids of the rows an operator can tick.
ROW = r'name="problem_ids" value="(\d+)"'


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, dict[str, Any]]]:
    path = tmp_path_factory.mktemp("review") / "billing.sqlite"
    app = login_host_app(f"sqlite:///{path}")
    samples = seed_rows(app)
    yield app, samples
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


def _get(app: Flask, url: str, user: str | None = "operator") -> Any:
    client = app.test_client()
    response = client.get(url, headers=as_user(client, user))
    response.get_data()
    return response


def _text(response: Any) -> str:
    return str(response.get_data(as_text=True))


# --- The Errors page of one batch ------------------------------------------------------------


@pytest.fixture
def two_servers(db_url: str) -> Iterator[tuple[Flask, FlaskClient, int, int]]:
    # On every database: the batch filter is a subquery in an OR.
    app = login_host_app(db_url)
    with (
        HostSim(Dataset.generate(sites=1, lists=3, seed=11)) as one,
        HostSim(Dataset.generate(sites=1, lists=4, seed=12)) as two,
    ):
        with app.app_context():
            session = get_state(app).session
            first = Server(name="First", host="127.0.0.1", port=one.port, comments="")
            second = Server(name="Second", host="127.0.0.1", port=two.port, comments="")
            session.add_all([first, second])
            session.commit()
            ids = (first.id, second.id)
        try:
            yield app, app.test_client(), *ids
        finally:
            shutdown_executor(app)
            with app.app_context():
                app.extensions["sqlalchemy"].engine.dispose()


def _validate(app: Flask, client: FlaskClient, server_id: int) -> int:
    response = client.post(
        "/billing/servers/validate",
        data={"csrf_token": csrf_token(client), "server_ids": str(server_id), "scope": "selected"},
        headers=as_user(client, "operator"),
    )
    assert response.status_code == 302, _text(response)
    wait_for_batches(app)
    match = re.fullmatch(r"/billing/batches/(\d+)", response.location)
    assert match, response.location
    return int(match.group(1))


def test_errors_page_shows_the_problems_of_one_batch(
    two_servers: tuple[Flask, FlaskClient, int, int],
) -> None:
    app, client, first_id, second_id = two_servers
    first_batch = _validate(app, client, first_id)
    second_batch = _validate(app, client, second_id)
    with app.app_context():
        names = {
            server_id: {
                str(p.id)
                for p in get_state(app).session.query(Problem).filter_by(server_id=server_id)
            }
            for server_id in (first_id, second_id)
        }
    assert names[first_id] and names[second_id]
    user = as_user(client, "operator")

    # The batch page links to its own problems, and counts them.
    batch_page = _text(client.get(f"/billing/batches/{first_batch}", headers=user))
    assert f'href="/billing/errors?batch={first_batch}"' in batch_page
    assert f"({len(names[first_id])} found by this validation;" in batch_page

    page = _text(client.get(f"/billing/errors?batch={first_batch}", headers=user))
    assert re.search(rf'run\s+<a href="/billing/batches/{first_batch}">#{first_batch}</a>', page)
    rows = set(re.findall(ROW, page))
    assert rows == names[first_id]
    # Sort links and the Fix form keep the filter.
    fix_form = re.search(r'<form method="post"[^>]*>', page)
    assert fix_form and f"batch={first_batch}" in fix_form.group(0)
    assert all(
        f"batch={first_batch}" in link for link in re.findall(r'href="([^"]*sort=[^"]*)"', page)
    )

    second = _text(client.get(f"/billing/errors?batch={second_batch}", headers=user))
    assert set(re.findall(ROW, second)) == names[second_id]
    # Fixing one problem records a fix run on the others (their last run): the batch that
    # found them still lists them.
    fixed = sorted(names[first_id])[0]
    response = client.post(
        f"/billing/errors/fix?batch={first_batch}",
        data={"csrf_token": csrf_token(client), "problem_ids": fixed},
        headers=user,
    )
    # Back on the Errors page without the batch filter: the fix's own follow-up problems
    # (lists that now need an owner) belong to the fix run, and must be seen.
    assert response.location == "/billing/errors"
    flashes = re.search(
        r'<div class="lmb-flashes">(.*?)</div>',
        _text(client.get(response.location, headers=user)),
        re.S,
    )
    assert flashes, "no flashed outcome after Fix Selected Objects"
    flashed = html.unescape(flashes.group(1))
    assert "Fix Selected Objects: 1 fixed." in flashed
    assert "not in billing: " in flashed and "_site" not in flashed and "_list" not in flashed
    after_fix = _text(client.get(f"/billing/errors?batch={first_batch}", headers=user))
    assert set(re.findall(ROW, after_fix)) == names[first_id] - {fixed}
    # Validated again: the new batch lists them too; the second server's batch still does not.
    third_batch = _validate(app, client, first_id)
    third = _text(client.get(f"/billing/errors?batch={third_batch}", headers=user))
    assert set(re.findall(ROW, third)) == names[first_id] - {fixed}
    second = _text(client.get(f"/billing/errors?batch={second_batch}", headers=user))
    assert set(re.findall(ROW, second)) == names[second_id]


@pytest.mark.parametrize("arg", ["999999", "abc", HUGE, "-1", ""])
def test_unknown_batch_shows_all_problems_and_says_so(
    seeded: tuple[Flask, dict[str, Any]], arg: str
) -> None:
    app, _ = seeded
    response = _get(app, f"/billing/errors?batch={arg}")
    assert response.status_code == 200
    text = _text(response)
    assert 'class="lmb-name">news</th>' in text  # the sample problem: the filter is off
    if arg:
        assert "showing problems of all runs" in text


# --- Error pages inside the layout -------------------------------------------------------------


def test_403_renders_in_the_layout_with_the_reason(seeded: tuple[Flask, dict[str, Any]]) -> None:
    app, _ = seeded
    response = _get(app, "/billing/servers/new", "only_view")
    assert response.status_code == 403
    text = _text(response)
    assert '<nav class="lmb-menu"' in text and "<h1>Not allowed</h1>" in text
    assert "billing &#39;edit&#39; permission" in text


@pytest.mark.parametrize(
    "url",
    [
        f"/billing/servers/{HUGE}",
        f"/billing/customers/{HUGE}",
        f"/billing/groups/{HUGE}/edit",
        "/billing/batches/2147483647",
        "/billing/servers/2147483648/edit",
    ],
)
def test_missing_objects_are_404_in_the_layout(
    seeded: tuple[Flask, dict[str, Any]], url: str
) -> None:
    app, _ = seeded
    response = _get(app, url)
    assert response.status_code == 404
    assert "<h1>Not found</h1>" in _text(response) and "Billing: Servers" in _text(response)


def test_huge_ids_still_ask_strangers_to_log_in_first(
    seeded: tuple[Flask, dict[str, Any]],
) -> None:
    app, _ = seeded
    response = _get(app, f"/billing/servers/{HUGE}", None)
    assert response.status_code == 302 and response.location.startswith("/login")
    assert _get(app, f"/billing/servers/{HUGE}", "nobody").status_code == 403


def test_batch_json_404_is_json(seeded: tuple[Flask, dict[str, Any]]) -> None:
    app, _ = seeded
    response = _get(app, f"/billing/batches/{HUGE}.json")
    assert response.status_code == 404 and response.is_json and response.json["error"]


def test_csrf_failure_is_a_400_page_that_says_what_to_do(
    seeded: tuple[Flask, dict[str, Any]],
) -> None:
    app, _ = seeded
    client = app.test_client()
    response = client.post(
        "/billing/errors/fix", data={"csrf_token": "forged"}, headers=as_user(client, "operator")
    )
    assert response.status_code == 400
    text = _text(response)
    assert '<nav class="lmb-menu"' in text and "Reload the page and submit the form again" in text


@pytest.mark.parametrize(
    "url",
    [
        f"/billing/?page={HUGE}",
        "/billing/?page=-5&sort=nope&dir=sideways",
        f"/billing/errors?page={HUGE}&sort=nope&kind=no_such_kind&server=abc",
        f"/billing/errors?server={HUGE}",
        "/billing/servers/{server_id}?lpage=" + HUGE + "&spage=" + HUGE + "&sort=zz",
        "/billing/servers/{server_id}?lpage=x&spage=y&q=" + "x" * 5000,
        f"/billing/customers?page={HUGE}&show=bogus&q=" + "y" * 5000,
        f"/billing/plans?page={HUGE}&sort=nope",
        f"/billing/assign?group_id={HUGE}&list_id=abc&list_id={HUGE}",
        f"/billing/background?page={HUGE}",
        "/billing/servers/{server_id}?q=%00%FF",
    ],
)
def test_malformed_query_strings_never_500(seeded: tuple[Flask, dict[str, Any]], url: str) -> None:
    app, samples = seeded
    response = _get(app, url.format(**samples))
    assert response.status_code == 200, (url, _text(response)[:300])


def test_huge_ids_in_a_post_are_refused_with_a_message(
    seeded: tuple[Flask, dict[str, Any]],
) -> None:
    app, _ = seeded
    client = app.test_client()
    response = client.post(
        "/billing/errors/fix",
        data={"csrf_token": csrf_token(client), "problem_ids": HUGE},
        headers=as_user(client, "operator"),
        follow_redirects=True,
    )
    assert response.status_code == 200
    assert "the selection is not valid" in _text(response)


# --- View-only users ---------------------------------------------------------------------------


def test_viewer_sees_why_there_are_no_buttons(seeded: tuple[Flask, dict[str, Any]]) -> None:
    app, samples = seeded
    for url, gone in (
        ("/billing/", ("Validate All Servers", 'name="server_ids"')),
        ("/billing/errors", ("Fix Selected Objects</button>", 'name="problem_ids"')),
        (f"/billing/servers/{samples['server_id']}", ("Check connection</button>",)),
    ):
        text = _text(_get(app, url, "only_view"))
        for word in gone:
            assert word not in text, (url, word)
        assert "You may look at this page only" in text, url
        assert 'billing "run" permission' in html.unescape(text), url
    # The operator gets the buttons and no such note.
    operator = _text(_get(app, "/billing/", "operator"))
    assert "Validate All Servers" in operator and "You may look" not in operator


def test_fix_all_that_match_the_filter_fixes_every_page(db_url: str) -> None:
    app = login_host_app(db_url, LM_BILLING_PAGE_SIZE=2)
    try:
        with HostSim(Dataset.generate(sites=2, lists=5, seed=21)) as sim:
            with app.app_context():
                session = get_state(app).session
                server = Server(name="Lists", host="127.0.0.1", port=sim.port, comments="")
                session.add(server)
                session.commit()
                server_id = server.id
            client = app.test_client()
            user = as_user(client, "operator")
            _validate(app, client, server_id)
            page = _text(client.get("/billing/errors?kind=unknown_list", headers=user))
            assert 'id="lmb-all-matching"' in page and "(5), not only the ticked rows" in page
            response = client.post(
                "/billing/errors/fix?kind=unknown_list",
                data={"csrf_token": csrf_token(client), "all_matching": "y"},
                headers=user,
            )
            assert response.location == "/billing/errors?kind=unknown_list"
        with app.app_context():
            left = {
                (p.kind, p.status)
                for p in get_state(app).session.query(Problem).filter_by(server_id=server_id)
            }
        # Every list is fixed (now unassigned, a new kind); the sites, not in the filter, wait.
        assert ("unknown_list", "open") not in left
        assert ("unknown_site", "open") in left
    finally:
        shutdown_executor(app)
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


def test_tclport_passwords_appear_in_no_page_flash_or_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's real password and a wrong one typed by the operator: neither is in any
    page, flashed message, batch page, error page or log line, whatever fails."""
    real, typed = "Real-Tcl-pw-8123", "Typed-wrong-pw-5521"
    app = login_host_app(f"sqlite:///{tmp_path / 'billing.sqlite'}")
    caplog.set_level("DEBUG")
    seen: list[str] = []
    try:
        with HostSim(Dataset.generate(sites=1, lists=2, seed=5), password=real) as sim:
            client = app.test_client()
            user = as_user(client, "operator")

            def post(url: str, data: dict[str, str]) -> None:
                form = {"csrf_token": csrf_token(client), **data}
                if url.endswith("/edit"):  # the version the edit page shows, as a browser
                    page = client.get(url, headers=user).get_data(as_text=True)
                    found = re.search(r'name="loaded_version"[^>]*value="([^"]+)"', page)
                    assert found
                    form["loaded_version"] = found.group(1)
                response = client.post(url, data=form, headers=user, follow_redirects=True)
                seen.append(_text(response))

            post(
                "/billing/servers/new",
                {"name": "Lists", "host": "127.0.0.1", "port": str(sim.port), "password": typed},
            )
            with app.app_context():
                server_id = get_state(app).session.query(Server).one().id
            post(f"/billing/servers/{server_id}/check", {})
            post("/billing/servers/validate", {"server_ids": str(server_id), "scope": "selected"})
            wait_for_batches(app)
            post(f"/billing/servers/{server_id}/edit", {"name": "Lists", "host": "bad host"})
            for url in (
                "/billing/",
                f"/billing/servers/{server_id}",
                f"/billing/servers/{server_id}/edit",
                "/billing/batches/1",
                "/billing/batches/1.json",
                "/billing/errors",
            ):
                seen.append(_text(client.get(url, headers=user)))
        # The check really ran with the wrong password, and the run was logged.
        assert "password rejected" in seen[1]
        assert any("Lists" in r.getMessage() for r in caplog.records)
        everything = "\n".join(seen) + "\n".join(r.getMessage() for r in caplog.records)
        everything += "\n".join(str(r.exc_info) for r in caplog.records if r.exc_info)
        assert real not in everything and typed not in everything
    finally:
        shutdown_executor(app)
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()
