"""The Servers pages with the Flask test client: index (sorting, paging, statuses, banner, statement
count at 1,000 servers), the server form's every error, delete, detail, check and enable logging."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa
from _pages import (
    PAGES_CONFIG,
    add_group,
    add_server,
    count_statements,
    plain,
    post,
    text_of,
)
from _sim import closed_port
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape

from lm_billing_plugin.models import (
    Assignment,
    AuditEntry,
    MailingList,
    Problem,
    Run,
    Server,
    Site,
    Usage,
)
from lm_billing_plugin.state import get_state
from lm_billing_plugin.tclport.records import LOGGING_NO
from lm_billing_plugin.testing.simulator import Dataset, HostSim

SECRET = "s3cret-Tcl-pw"


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(**PAGES_CONFIG)


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=2, lists=12, seed=3), password=SECRET) as server:
        yield server


def _names_in_table(text: str) -> list[str]:
    body = text[text.index("<tbody>") : text.index("</tbody>")]
    return [
        html.unescape(n) for n in re.findall(r'<th scope="row"><a href="[^"]+">([^<]*)</a>', body)
    ]


# --- index ----------------------------------------------------------------------------------


def test_index_lists_servers_with_status_words_and_no_banner_when_clean(
    app: Flask, client: FlaskClient
) -> None:
    add_server(app, "Lists", comments="main box")
    add_server(app, "Denied", status="host_denied")
    add_server(app, "Auth", status="auth_failed")
    add_server(app, "Dead", status="unreachable")
    add_server(app, "NoLog", status="logging_off")
    add_server(
        app,
        "Good",
        status="ok",
        version="12.3",
        validated_at=datetime(2026, 11, 1, 8, 30, tzinfo=UTC),
    )
    text = text_of(client.get("/billing/"))
    for label in (
        "Create New Server",
        "Validate All Servers",
        "Validate Selected Servers",
        "Sync Selected Servers",
        "Name",
        "Host Name",
        "Comments",
        "Version",
        "Validated",
    ):
        assert label in text
    for words in (
        "not checked yet",
        "refused: not in TCLPORT Hosts",
        "password rejected",
        "unreachable",
        "logging off",
        "reachable",
    ):
        assert words in text
    assert "2026-11-01 08:30 UTC" in text and "main box" in text
    assert "Errors Were Found" not in text
    # Every row checkbox has its own label.
    for server_id in re.findall(r'id="server-(\d+)"', text):
        assert f'<label for="server-{server_id}"' in text


def test_banner_links_to_errors_when_problems_are_open(app: Flask, client: FlaskClient) -> None:
    sid = add_server(app, "Lists")
    with app.app_context():
        session = get_state(app).session
        session.add(
            Problem(
                fingerprint="f1",
                server_id=sid,
                kind="unknown_list",
                object_type="list",
                object_name="news",
            )
        )
        session.add(
            Problem(
                fingerprint="f2",
                server_id=sid,
                kind="unknown_list",
                object_type="list",
                object_name="old",
                status="resolved",
            )
        )
        session.commit()
    text = text_of(client.get("/billing/"))
    assert '<a href="/billing/errors">Errors Were Found, Click Here to Fix</a>' in text
    assert "(1 open)" in text
    assert f'href="/billing/errors?server={sid}">1</a>' in text


def test_sorting_and_paging(make_app: Callable[..., Flask]) -> None:
    app = make_app(LM_BILLING_PAGE_SIZE=3, **PAGES_CONFIG)
    client = app.test_client()
    for name, host in (("b", "h3"), ("a", "h2"), ("e", "h1"), ("c", "h5"), ("d", "h4")):
        add_server(app, name, host=host)
    first = text_of(client.get("/billing/"))
    assert _names_in_table(first) == ["a", "b", "c"]
    assert "Page 1 of 2 (5 in all)" in first and 'rel="next"' in first
    second = text_of(client.get("/billing/?page=2"))
    assert _names_in_table(second) == ["d", "e"]
    assert _names_in_table(text_of(client.get("/billing/?sort=name&dir=desc"))) == ["e", "d", "c"]
    assert _names_in_table(text_of(client.get("/billing/?sort=host"))) == ["e", "a", "b"]
    # A page past the end shows the last page; nonsense arguments fall back to defaults.
    assert _names_in_table(text_of(client.get("/billing/?page=99"))) == ["d", "e"]
    assert _names_in_table(text_of(client.get("/billing/?sort=evil&dir=x&page=zz"))) == [
        "a",
        "b",
        "c",
    ]
    assert 'aria-sort="ascending"' in first


def test_sort_by_open_problems(app: Flask, client: FlaskClient) -> None:
    quiet = add_server(app, "quiet")
    busy = add_server(app, "busy")
    with app.app_context():
        session = get_state(app).session
        for i in range(3):
            session.add(
                Problem(
                    fingerprint=f"p{i}",
                    server_id=busy,
                    kind="unknown_list",
                    object_type="list",
                    object_name=f"l{i}",
                )
            )
        session.commit()
    assert quiet
    assert _names_in_table(text_of(client.get("/billing/?sort=problems&dir=desc"))) == [
        "busy",
        "quiet",
    ]


def _bulk_servers(app: Flask, count: int) -> None:
    with app.app_context():
        session = get_state(app).session
        session.execute(
            sa.insert(Server),
            [
                {
                    "name": f"srv-{i:04d}",
                    "host": f"10.0.{i // 250}.{i % 250}",
                    "port": 2021,
                    "comments": "",
                    "status": "ok",
                }
                for i in range(count)
            ],
        )
        ids = session.scalars(sa.select(Server.id)).all()
        session.execute(
            sa.insert(Problem),
            [
                {
                    "fingerprint": f"fp-{sid}",
                    "server_id": sid,
                    "kind": "unknown_list",
                    "object_type": "list",
                    "object_name": "x",
                    "detail": "",
                    "data": {},
                    "status": "open",
                }
                for sid in ids[::3]
            ],
        )
        session.commit()


def test_index_statement_count_does_not_grow_with_servers(
    make_app: Callable[..., Flask], tmp_path: object
) -> None:
    counts = []
    for n, count in enumerate((5, 1000)):
        app = make_app(f"sqlite:///{tmp_path}/count{n}.sqlite", **PAGES_CONFIG)
        _bulk_servers(app, count)
        client = app.test_client()
        client.get("/billing/")  # warm-up: first-request work is not the page's
        with count_statements(app) as statements:
            response = client.get("/billing/?sort=problems&dir=desc")
        assert response.status_code == 200
        counts.append(len(statements))
        if count == 1000:
            assert "Page 1 of 20 (1000 in all)" in text_of(response)
            assert "(334 open)" in text_of(response)
    assert counts[0] == counts[1], counts
    assert counts[1] <= 6, counts


# --- create / edit --------------------------------------------------------------------------


def _errors(text: str, field: str) -> str:
    match = re.search(rf'<ul class="lmb-errors" id="{field}-error">(.*?)</ul>', text, re.S)
    return html.unescape(match.group(1)) if match else ""


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("host", "https://lists.example.com/", "not a URL"),
        ("host", "lists.example.com/admin", "without a path"),
        ("host", "lists.example.com:2021", "without a port"),
        ("host", "bad host", "no spaces"),
        ("host", "", "Enter the hosting server's host name"),
        ("host", "a" * 300, "at most 253"),
        ("port", "0", "1 to 65535"),
        ("port", "70000", "1 to 65535"),
        ("port", "abc", "1 to 65535"),
        ("name", "", "Enter a name"),
        ("name", "n" * 101, "at most 100"),
        ("comments", "c" * 2001, "at most 2000"),
        ("password", "p" * 300, "at most"),
    ],
)
def test_server_form_field_errors(
    app: Flask, client: FlaskClient, field: str, value: str, message: str
) -> None:
    data = {
        "name": "Lists",
        "host": "lists.example.com",
        "port": "2021",
        "comments": "",
        "password": "",
    }
    data[field] = value
    response = post(client, "/billing/servers/new", data, token_from="/billing/servers/new")
    assert response.status_code == 200
    text = text_of(response)
    assert message in _errors(text, field), _errors(text, field)
    # The error is tied to its input for screen readers.
    assert re.search(rf'id="{field}"[^>]*aria-describedby="[^"]*{field}-error', text) or re.search(
        rf'aria-describedby="[^"]*{field}-error[^"]*"[^>]*id="{field}"', text
    )
    with app.app_context():
        assert get_state(app).session.scalar(sa.select(sa.func.count(Server.id))) == 0


def test_duplicate_name_is_a_field_error(app: Flask, client: FlaskClient) -> None:
    add_server(app, "Lists")
    response = post(
        client,
        "/billing/servers/new",
        {"name": "Lists", "host": "h.example.com", "port": "2021"},
        token_from="/billing/servers/new",
    )
    assert "already exists" in _errors(text_of(response), "name")


def test_create_stores_password_encrypted_and_never_shows_it(
    app: Flask, client: FlaskClient
) -> None:
    response = post(
        client,
        "/billing/servers/new",
        {
            "name": "Lists",
            "host": "lists.example.com",
            "port": "2021",
            "comments": "first",
            "password": SECRET,
        },
        token_from="/billing/servers/new",
        follow=True,
    )
    text = text_of(response)
    assert response.status_code == 200 and 'Server "Lists" created' in plain(response)
    assert SECRET not in text
    with app.app_context():
        server = get_state(app).session.scalars(sa.select(Server)).one()
        assert server.password_encrypted and SECRET not in server.password_encrypted
        sid = server.id
    for url in ("/billing/", f"/billing/servers/{sid}", f"/billing/servers/{sid}/edit"):
        assert SECRET not in text_of(client.get(url))
    # A form re-rendered with errors does not echo the typed password either.
    again = post(
        client,
        "/billing/servers/new",
        {"name": "Lists", "host": "x y", "port": "2021", "password": SECRET},
        token_from="/billing/servers/new",
    )
    assert SECRET not in text_of(again)


def test_edit_blank_password_keeps_it_and_host_change_asks_again(
    app: Flask, client: FlaskClient
) -> None:
    post(
        client,
        "/billing/servers/new",
        {"name": "Lists", "host": "lists.example.com", "port": "2021", "password": SECRET},
        token_from="/billing/servers/new",
    )
    with app.app_context():
        server = get_state(app).session.scalars(sa.select(Server)).one()
        sid, stored = server.id, server.password_encrypted
    url = f"/billing/servers/{sid}/edit"
    saved = post(
        client,
        url,
        {
            "name": "Lists2",
            "host": "lists.example.com",
            "port": "2022",
            "comments": "x",
            "password": "",
        },
        token_from=url,
    )
    assert saved.status_code == 302
    with app.app_context():
        saved_row = get_state(app).session.get(Server, sid)
        assert saved_row is not None
        assert (saved_row.name, saved_row.port, saved_row.password_encrypted) == (
            "Lists2",
            2022,
            stored,
        )
    moved = post(
        client,
        url,
        {"name": "Lists2", "host": "other.example.com", "port": "2022", "password": ""},
        token_from=url,
    )
    assert moved.status_code == 200
    assert "enter the TclPort password" in _errors(text_of(moved), "password")
    with_password = post(
        client,
        url,
        {"name": "Lists2", "host": "other.example.com", "port": "2022", "password": "new-one"},
        token_from=url,
    )
    assert with_password.status_code == 302
    reset = post(
        client,
        url,
        {"name": "Lists2", "host": "third.example.com", "port": "2022", "default_password": "y"},
        token_from=url,
    )
    assert reset.status_code == 302
    with app.app_context():
        reset_row = get_state(app).session.get(Server, sid)
        assert reset_row is not None and reset_row.host == "third.example.com"
        assert reset_row.password_encrypted is None


def test_edit_and_delete_of_unknown_server_is_404(client: FlaskClient) -> None:
    for url in ("/billing/servers/999", "/billing/servers/999/edit", "/billing/servers/999/delete"):
        assert client.get(url).status_code == 404


# --- delete ---------------------------------------------------------------------------------


def test_delete_asks_then_erases_a_server_without_history(app: Flask, client: FlaskClient) -> None:
    sid = add_server(app, "Spare")
    url = f"/billing/servers/{sid}/delete"
    confirm = client.get(url)
    assert confirm.status_code == 200 and "Delete Spare" in text_of(confirm)
    with app.app_context():
        assert get_state(app).session.get(Server, sid) is not None  # GET changed nothing
    done = post(client, url, token_from=url, follow=True)
    assert 'Server "Spare" deleted.' in plain(done)
    with app.app_context():
        assert get_state(app).session.get(Server, sid) is None


def test_delete_of_an_assigned_server_deactivates_it(app: Flask, client: FlaskClient) -> None:
    sid = add_server(app, "Paid")
    gid = add_group(app)
    with app.app_context():
        session = get_state(app).session
        session.add(
            Assignment(
                group_id=gid, object_type="server", server_id=sid, start_date=date(2026, 1, 1)
            )
        )
        session.commit()
    url = f"/billing/servers/{sid}/delete"
    assert "deactivates" in text_of(client.get(url))
    done = post(client, url, token_from=url, follow=True)
    assert "deactivated, not erased" in text_of(done)
    assert "deactivated" in text_of(client.get("/billing/"))
    # Deleting again says why it cannot.
    again = post(client, url, token_from=url, follow=True)
    assert "already deactivated" in plain(again)
    with app.app_context():
        server = get_state(app).session.get(Server, sid)
        assert server is not None and server.active is False


def test_post_without_csrf_changes_nothing(app: Flask, client: FlaskClient) -> None:
    sid = add_server(app, "Keep")
    for url, data in (
        (f"/billing/servers/{sid}/delete", {}),
        ("/billing/servers/new", {"name": "X", "host": "x.example.com", "port": "2021"}),
        (f"/billing/servers/{sid}/edit", {"name": "Y", "host": "y.example.com", "port": "2021"}),
    ):
        assert client.post(url, data=data).status_code == 400
    with app.app_context():
        names = get_state(app).session.scalars(sa.select(Server.name)).all()
    assert names == ["Keep"]


# --- detail, check, enable logging ----------------------------------------------------------


def test_check_connection_ok_shows_steps_and_records_version(
    app: Flask, client: FlaskClient, sim: HostSim
) -> None:
    sid = add_server(app, "Sim", port=sim.port)
    url = f"/billing/servers/{sid}/edit"
    post(
        client,
        url,
        {"name": "Sim", "host": "127.0.0.1", "port": str(sim.port), "password": SECRET},
        token_from=url,
    )
    detail = f"/billing/servers/{sid}"
    response = post(client, f"{detail}/check", token_from=detail)
    # Post/redirect/get: the steps show on the page the POST redirects to, once.
    assert response.status_code == 302 and response.location == f"{detail}#lmb-check-h"
    text = text_of(client.get(detail))
    reloaded = text_of(client.get(detail))
    assert "lmb-check-h" in text and "lmb-check-h" not in reloaded
    for step in ("resolve", "connect", "greeting", "password", "version"):
        assert f"<strong>{step}</strong>:\n      ok" in text
    assert "Connected" in text and "12.3" in text and SECRET not in text
    with app.app_context():
        server = get_state(app).session.get(Server, sid)
        assert server is not None and server.status == "ok" and server.version == "12.3"
        assert (
            get_state(app).session.scalar(
                sa.select(sa.func.count(Run.id)).where(Run.kind == "check")
            )
            == 1
        )
    assert "reachable" in text_of(client.get("/billing/"))


def test_check_of_refused_server_shows_tclport_hosts_guidance(
    app: Flask, client: FlaskClient
) -> None:
    with HostSim(Dataset.generate(sites=1, lists=2), allowed_hosts=("192.0.2.1",)) as denied:
        sid = add_server(app, "Denied", port=denied.port)
        detail = f"/billing/servers/{sid}"
        text = text_of(post(client, f"{detail}/check", token_from=detail, follow=True))
    assert "TCLPORT Hosts" in text and "Cannot connect." in text
    # The guidance once, as a sentence, its command as code (not in backticks).
    assert text.count("to TCLPORT Hosts") == 1
    assert re.search(r'<p class="lmb-guidance"[^>]*>The hosting server refused', text)
    assert '<code class="lmb-code">lm tclport 127.0.0.1</code>' in text and "`" not in text
    assert "<strong>password</strong>:\n      not run" in text
    page = text_of(client.get(detail))
    assert "refused: not in TCLPORT Hosts" in page and "TCLPORT Hosts" in page


def test_check_of_wrong_password_and_unreachable_server(
    app: Flask, client: FlaskClient, sim: HostSim
) -> None:
    wrong = add_server(app, "Wrong", port=sim.port)  # default password, sim wants SECRET
    dead = add_server(app, "Dead", port=closed_port())
    text = text_of(
        post(
            client,
            f"/billing/servers/{wrong}/check",
            token_from=f"/billing/servers/{wrong}",
            follow=True,
        )
    )
    assert "<strong>password</strong>:\n      failed" in text
    text = text_of(
        post(
            client,
            f"/billing/servers/{dead}/check",
            token_from=f"/billing/servers/{dead}",
            follow=True,
        )
    )
    assert "<strong>connect</strong>:\n      failed" in text
    index = text_of(client.get("/billing/"))
    assert "password rejected" in index and "unreachable" in index


def test_logging_off_shows_guidance_and_enable_button_then_switches_it_on(
    app: Flask, client: FlaskClient
) -> None:
    data = Dataset.generate(sites=1, lists=3)
    data.logging_mode = LOGGING_NO
    with HostSim(data) as nolog:
        sid = add_server(app, "NoLog", port=nolog.port)
        detail = f"/billing/servers/{sid}"
        checked = text_of(post(client, f"{detail}/check", token_from=detail, follow=True))
        assert "Enable Logging is off" in checked
        assert "Enable logging on this server" in checked
        assert "Yes, Log All Messages that ListManager Sends to Mailing Lists" in checked
        done = post(client, f"{detail}/enable-logging", token_from=detail, follow=True)
        text = text_of(done)
        assert "billing can count messages" in text
        assert "Enable logging on this server" not in text


def test_enable_logging_refused_remotely_says_what_to_do(app: Flask, client: FlaskClient) -> None:
    data = Dataset.generate(sites=1, lists=3)
    data.logging_mode = LOGGING_NO
    with HostSim(data, allow_logging_set=False) as locked:
        sid = add_server(
            app, "Locked", port=locked.port, status="logging_off", logging_mode=LOGGING_NO
        )
        detail = f"/billing/servers/{sid}"
        text = text_of(post(client, f"{detail}/enable-logging", token_from=detail, follow=True))
    assert "does not allow Enable Logging to be changed remotely" in html.unescape(text)
    assert "Enable logging on this server" in text


def test_check_on_get_is_not_allowed(app: Flask, client: FlaskClient) -> None:
    sid = add_server(app, "X")
    for suffix in ("check", "enable-logging", "assign"):
        assert client.get(f"/billing/servers/{sid}/{suffix}").status_code == 405
    for url in ("/billing/servers/validate", "/billing/servers/sync", "/billing/errors/fix"):
        assert client.get(url).status_code == 405


def test_detail_shows_lists_with_owner_usage_search_paging_and_escapes_names(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(LM_BILLING_PAGE_SIZE=4, **PAGES_CONFIG)
    client = app.test_client()
    sid = add_server(app, "Lists", status="ok")
    gid = add_group(app, "Acme <Ltd>", "Gold")
    month = datetime.now(UTC).date().replace(day=1)
    hostile = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']
    with app.app_context():
        session = get_state(app).session
        site = Site(server_id=sid, name="site1", title="Site One")
        session.add(site)
        session.flush()
        lists = [
            MailingList(server_id=sid, name=name, site_name="site1", members=7)
            for name in [*hostile, "alpha", "beta", "gamma", "news-a", "news-b"]
        ]
        session.add_all(lists)
        session.flush()
        session.add(
            Assignment(
                group_id=gid,
                object_type="site",
                server_id=sid,
                site_id=site.id,
                start_date=date(2026, 1, 1),
            )
        )
        session.add(
            Usage(server_id=sid, list_id=lists[2].id, period=month, messages=11, recipients=222)
        )
        session.commit()
    page1 = text_of(client.get(f"/billing/servers/{sid}?sort=name"))
    assert "Lists (7)" in page1 and "Page 1 of 2" in page1
    for name in hostile:
        assert name not in page1
        assert str(escape(name)) in page1
    assert "Acme &lt;Ltd&gt;: Gold" in page1 and "(through its site)" in page1
    search = text_of(client.get(f"/billing/servers/{sid}?q=news"))
    assert "Lists (2)" in search and "news-a" in search and "alpha" not in search
    alpha = text_of(client.get(f"/billing/servers/{sid}?q=alpha"))
    assert '<td class="lmb-num">11</td>' in alpha and '<td class="lmb-num">222</td>' in alpha
    page2 = text_of(client.get(f"/billing/servers/{sid}?sort=name&lpage=2"))
    assert "news-b" in page2 and "alpha" not in page2


def test_detail_history_and_problems(app: Flask, client: FlaskClient) -> None:
    sid = add_server(app, "Lists")
    with app.app_context():
        session = get_state(app).session
        session.add(
            Run(
                server_id=sid,
                kind="validate",
                status="failed",
                triggered_by="ops",
                error_message="connection refused: check the port",
            )
        )
        session.add(
            Problem(
                fingerprint="x",
                server_id=sid,
                kind="unassigned_list",
                object_type="list",
                object_name="orphans",
            )
        )
        session.commit()
    text = text_of(client.get(f"/billing/servers/{sid}"))
    assert "connection refused: check the port" in text and "orphans" in text
    assert "Open problems (1)" in text


def test_view_only_user_sees_no_buttons_and_cannot_post(make_app: Callable[..., Flask]) -> None:
    app = make_app(permission_check=lambda user, action: action == "view", **PAGES_CONFIG)
    client = app.test_client()
    sid = add_server(app, "Lists")
    text = text_of(client.get("/billing/"))
    assert "Create New Server" not in text and "Validate All Servers" not in text
    detail = text_of(client.get(f"/billing/servers/{sid}"))
    assert "Check connection" not in detail and "Edit" not in detail
    # The access guard answers before the CSRF check: 403, not 400.
    for url in (
        f"/billing/servers/{sid}/check",
        f"/billing/servers/{sid}/delete",
        "/billing/servers/validate",
        "/billing/servers/new",
    ):
        assert client.post(url, data={}).status_code == 403
    with app.app_context():
        assert get_state(app).session.scalar(sa.select(sa.func.count(AuditEntry.id))) == 0


def test_pages_render_on_every_database(any_db_app: Flask) -> None:
    """The window-function total, the problem-count join and the owner query on each backend."""
    app = any_db_app
    client = app.test_client()
    sid = add_server(app, "Lists", status="ok")
    add_server(app, "Other")
    gid = add_group(app)
    with app.app_context():
        session = get_state(app).session
        ml = MailingList(server_id=sid, name="news", members=5)
        session.add(ml)
        session.flush()
        session.add(
            Assignment(
                group_id=gid,
                object_type="list",
                server_id=sid,
                list_id=ml.id,
                start_date=date(2026, 1, 1),
            )
        )
        session.add(
            Problem(
                fingerprint="db",
                server_id=sid,
                kind="unknown_list",
                object_type="list",
                object_name="x",
            )
        )
        session.commit()
    index = plain(client.get("/billing/?sort=problems&dir=desc"))
    assert _names_in_table(index) == ["Lists", "Other"] and "(1 open)" in index
    assert "Page" not in index or "2 in all" in index
    detail = plain(client.get(f"/billing/servers/{sid}?q=new"))
    assert "Lists (1)" in detail and "Acme Ltd: Acme lists" in detail
    errors = plain(client.get(f"/billing/errors?server={sid}&sort=seen&dir=desc"))
    assert "list not in billing" in errors
