"""A small admin portal of its own that mounts the Billing plugin: login, menu, SQLite in the
instance folder. `create_app` only builds the app; `python -m lm_billing_plugin.demo` serves it."""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, flash, redirect, render_template, request, url_for
from flask_login import LoginManager, UserMixin, login_required, login_user, logout_user
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFProtect
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired

from .. import LMBilling
from ..secrets import generate_key

# The demo's accounts: an operator who may do everything, a viewer who may only look.
DEMO_PASSWORD = "billing-demo"  # noqa: S105 (published in the README: a demo account)
DEMO_ACCOUNTS: dict[str, tuple[str, ...]] = {
    "operator": ("view", "edit", "run"),
    "viewer": ("view",),
}


# The demo portal's icon: a small bill (served as /favicon.ico, an SVG).
FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<rect x="5" y="2" width="22" height="28" rx="3" fill="#24324a"/>'
    '<path d="M10 10h12M10 16h12M10 22h7" stroke="#fff" stroke-width="2.5"/></svg>'
)


class DemoUser(UserMixin):  # type: ignore[misc]  # flask-login ships no types
    def __init__(self, username: str) -> None:
        self.id = username
        self.username = username
        self.actions = DEMO_ACCOUNTS[username]


class LoginForm(FlaskForm):  # type: ignore[misc]  # flask-wtf ships no types
    username = StringField("User name", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


def _instance_secret(app: Flask, filename: str, make: Any) -> str:
    """A secret made once and kept in the instance folder, so restarts keep sessions and
    the stored TclPort passwords readable."""
    path = Path(app.instance_path) / filename
    if not path.exists():
        # Written whole under another name, then linked in place: gunicorn's workers start
        # the app at the same moment, and none may read a half-written (empty) secret or
        # keep a key of its own that another worker's link replaced.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{filename}.")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(make())
            with contextlib.suppress(FileExistsError):  # another worker's came first
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return path.read_text(encoding="utf-8").strip()


def _is_local_path(target: str) -> bool:
    """Only local paths after login: an open redirect would make the login page a phishing
    aid. Browsers read "//host" and "/\\host" as another site."""
    parts = urlsplit(target)
    return (
        target.startswith("/")
        and not target.startswith(("//", "/\\"))
        and not parts.scheme
        and not parts.netloc
    )


def create_app(
    test_config: dict[str, Any] | None = None, *, instance_path: str | None = None
) -> Flask:
    """The demo portal. Its instance folder (SQLite database, secret key, encryption key) is
    ``instance_path``, else ``$FLASK_INSTANCE_PATH``, else Flask's default; other settings
    come from ``FLASK_*`` variables (``FLASK_SQLALCHEMY_DATABASE_URI``), then ``test_config``.
    Builds the app only: no threads, servers or simulators start here."""
    chosen = instance_path or os.environ.get("FLASK_INSTANCE_PATH")
    app = Flask(
        __name__,
        # Flask insists on an absolute path; a relative one is taken from the cwd.
        instance_path=os.path.abspath(chosen) if chosen else None,
        instance_relative_config=True,
    )
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.update(
        SECRET_KEY=_instance_secret(app, "secret_key", lambda: secrets.token_hex(32)),
        SQLALCHEMY_DATABASE_URI="sqlite:///" + os.path.join(app.instance_path, "demo.sqlite"),
        LM_BILLING_ENCRYPTION_KEYS=[_instance_secret(app, "fernet_key", generate_key)],
        LM_BILLING_BASE_TEMPLATE="demo/base.html",
        # Short timeouts: the simulated servers are local, and the refused one should
        # show its guidance at once.
        LM_BILLING_CONNECT_TIMEOUT=3.0,
        LM_BILLING_VALIDATE_INTERVAL=600.0,
        # One process, no separate scheduler: the demo runs the schedule in its web process.
        LM_BILLING_SCHEDULER_AUTOSTART=True,
    )
    app.config.from_prefixed_env()
    if test_config:
        app.config.update(test_config)

    db = SQLAlchemy()
    db.init_app(app)
    CSRFProtect(app)

    login_manager = LoginManager(app)
    login_manager.login_view = "login"

    @login_manager.user_loader  # type: ignore[untyped-decorator]
    def load_user(user_id: str) -> DemoUser | None:
        return DemoUser(user_id) if user_id in DEMO_ACCOUNTS else None

    billing = LMBilling()

    @billing.permission_checker
    def may(user: Any, action: str) -> bool:
        return bool(getattr(user, "is_authenticated", False)) and action in user.actions

    billing.init_app(app)

    @app.get("/")
    @login_required  # type: ignore[untyped-decorator]
    def home() -> str:
        return render_template("demo/home.html")

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        form = LoginForm()
        if form.validate_on_submit():
            username = form.username.data or ""
            if username in DEMO_ACCOUNTS and hmac.compare_digest(
                (form.password.data or "").encode(), DEMO_PASSWORD.encode()
            ):
                login_user(DemoUser(username))
                target = request.args.get("next", "")
                return redirect(target if _is_local_path(target) else url_for("home"))
            form.password.errors.append("Unknown user name or wrong password.")
        return render_template("demo/login.html", form=form)

    @app.post("/logout")
    @login_required  # type: ignore[untyped-decorator]
    def logout() -> Any:
        logout_user()
        flash("Logged out.")
        return redirect(url_for("login"))

    @app.get("/favicon.ico")
    def favicon() -> Any:
        # Browsers ask for it on every page; a 404 each time clutters the log.
        return app.response_class(
            FAVICON_SVG, mimetype="image/svg+xml", headers={"Cache-Control": "max-age=86400"}
        )

    return app
