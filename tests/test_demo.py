"""The demo host portal: factory with its instance folder and FLASK_* overrides, the login in
front of Billing, the demo accounts, and a login that only redirects to local paths."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from lm_billing_plugin import upgrade
from lm_billing_plugin.demo import DEMO_PASSWORD, create_app


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    monkeypatch.setenv("FLASK_LM_BILLING_PAGE_SIZE", "7")
    threads_before = {thread.ident for thread in threading.enumerate()}
    app = create_app({"TESTING": True}, instance_path=str(tmp_path / "instance"))
    # Building the app starts nothing: no threads, servers or simulators.
    assert {thread.ident for thread in threading.enumerate()} == threads_before
    yield app
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="csrf_token" value="([^"]+)"', html
    )
    assert match, html
    return match.group(1)


def log_in(client: FlaskClient, username: str, password: str, next_url: str = "") -> TestResponse:
    url = f"/login?next={next_url}" if next_url else "/login"
    token = csrf_token(client.get(url).get_data(as_text=True))
    return client.post(url, data={"username": username, "password": password, "csrf_token": token})


def test_factory_uses_the_given_instance_folder_and_flask_env(demo: Flask, tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    assert demo.instance_path == str(instance)
    assert demo.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{instance / 'demo.sqlite'}"
    assert (instance / "secret_key").exists() and (instance / "fernet_key").exists()
    upgrade(demo)  # what `make demo` runs first
    assert (instance / "demo.sqlite").stat().st_size > 0
    assert demo.config["LM_BILLING_PAGE_SIZE"] == 7  # FLASK_LM_BILLING_PAGE_SIZE


def test_instance_folder_from_flask_instance_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASK_INSTANCE_PATH", str(tmp_path / "from-env"))
    monkeypatch.setenv("FLASK_SQLALCHEMY_DATABASE_URI", f"sqlite:///{tmp_path / 'env.sqlite'}")
    app = create_app()
    assert app.instance_path == str(tmp_path / "from-env")
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'env.sqlite'}"
    # Its keys are kept: a second app on the same folder reads the same ones.
    again = create_app()
    assert again.config["SECRET_KEY"] == app.config["SECRET_KEY"]
    assert again.config["LM_BILLING_ENCRYPTION_KEYS"] == app.config["LM_BILLING_ENCRYPTION_KEYS"]


def test_anonymous_billing_goes_to_the_login_page(demo: Flask) -> None:
    client = demo.test_client()
    response = client.get("/billing/")
    assert response.status_code == 302
    assert response.location == "/login?next=%2Fbilling%2F"
    login = client.get(response.location).get_data(as_text=True)
    assert "<h1>Log in</h1>" in login
    assert 'name="password"' in login


@pytest.mark.parametrize("username", ["operator", "viewer"])
def test_demo_accounts_see_the_billing_servers_page_with_the_menu(
    demo: Flask, username: str
) -> None:
    upgrade(demo)
    client = demo.test_client()
    response = log_in(client, username, DEMO_PASSWORD, next_url="/billing/")
    assert response.status_code == 302
    assert response.location == "/billing/"
    page = client.get("/billing/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "<h1>Billing: Servers</h1>" in html
    assert "<summary>Billing</summary>" in html  # the portal's menu, with Billing mounted
    assert re.search(r'<a href="/billing/">Servers</a>', html)
    assert f"<span>{username}</span>" in html


def test_bad_password_shows_an_error_next_to_the_field(demo: Flask) -> None:
    client = demo.test_client()
    response = log_in(client, "operator", "wrong")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert re.search(
        r'name="password"[^>]*>\s*<br><span class="lmb-error" role="alert">'
        r"Unknown user name or wrong password\.</span>",
        html,
    ), html
    assert "wrong" not in html.replace("wrong password", "")  # the password is not echoed
    assert client.get("/billing/").status_code == 302  # still logged out


def test_login_next_only_allows_local_paths(demo: Flask) -> None:
    from urllib.parse import quote

    cases = {
        "/billing/": "/billing/",
        "https://evil.example/": "/",
        "//evil.example/": "/",
        "/\\evil.example/": "/",
        "javascript:alert(1)": "/",
        "\\\\evil.example": "/",
        "https:evil.example": "/",
        "///evil.example/": "/",
        "HTTPS://EVIL.EXAMPLE/": "/",
        "data:text/html,<script>alert(1)</script>": "/",
        # Browsers drop tabs and newlines from URLs: these would become //evil.example/.
        "/\t/evil.example/": "/",
        "/\n/evil.example/": "/",
        "\t//evil.example/": "/",
    }
    for next_url, lands_on in cases.items():
        response = log_in(demo.test_client(), "viewer", DEMO_PASSWORD, next_url=quote(next_url))
        assert response.location == lands_on, next_url


def test_flashed_outcomes_keep_their_category_and_are_announced(demo: Flask) -> None:
    upgrade(demo)
    client = demo.test_client()
    assert log_in(client, "operator", DEMO_PASSWORD).status_code == 302
    token = csrf_token(client.get("/billing/").get_data(as_text=True))
    # Sync with nothing ticked: an error the page must show as one.
    page = client.post(
        "/billing/servers/sync", data={"csrf_token": token}, follow_redirects=True
    ).get_data(as_text=True)
    assert '<li class="lmb-flash lmb-flash-error" role="alert">Nothing was synced' in page


def test_the_demo_has_a_favicon(demo: Flask) -> None:
    """Browsers ask for /favicon.ico on every page; the demo answers it (no 404 per load)."""
    client = demo.test_client()
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response.mimetype == "image/svg+xml"
    assert b"<svg" in response.data
    assert 'rel="icon" href="/favicon.ico"' in client.get("/login").get_data(as_text=True)


def test_workers_starting_at_once_share_one_instance_secret(tmp_path: Path) -> None:
    """gunicorn's workers create the app at the same moment on a fresh instance folder: each
    must end with the same, whole secret (a worker once read the other's empty file and
    refused to start without SECRET_KEY; two could each keep a key of their own)."""
    from lm_billing_plugin.demo import _instance_secret

    app = Flask("host", instance_path=str(tmp_path))
    both_made = threading.Barrier(2, timeout=10)
    made = iter(["first-secret", "second-secret"])
    lock = threading.Lock()

    def make() -> str:
        with lock:
            value = next(made)
        both_made.wait()  # both found no file and made a secret before either wrote
        return value

    got: list[str] = []
    workers = [threading.Thread(target=lambda: got.append(_instance_secret(app, "k", make)))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert len(got) == 2 and got[0] == got[1] and got[0] in ("first-secret", "second-secret")
    assert (tmp_path / "k").read_text(encoding="utf-8") == got[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no temporary file left
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
