"""The LMBilling extension object, the composition root: init_app wires settings, database,
blueprint, CLI, menu and the scheduler's autostart into a host app. Nothing imports it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from flask_babel import Babel
from flask_sqlalchemy import SQLAlchemy

from .secrets import SecretBox
from .settings import DEFAULTS, Settings
from .sqlite import tune_engine
from .state import EXTENSION_KEY, BillingState, bind_session
from .web.access import PermissionCheck

TokenCheck = Callable[[str], Any]
# () -> a zone name, a tzinfo or None (None: LM_BILLING_TIMEZONE); () -> a locale or None.
TimezoneSelector = Callable[[], Any]
LocaleSelector = Callable[[], Any]


class LMBilling:
    """The ListManager Billing: Servers plugin.

    ``LMBilling(app)`` or ``billing = LMBilling(); billing.init_app(app)``. Access is denied
    until the host grants it, with ``permission_check=`` or the ``permission_checker``
    decorator: a callable ``(user, action) -> bool`` for the actions view, edit and run.
    The JSON API also takes bearer tokens once the host says whose they are, with
    ``token_check=`` or the ``token_checker`` decorator: ``(token) -> user | None``.
    Times are shown in ``LM_BILLING_TIMEZONE`` unless the ``timezone_selector`` decorator
    names the viewer's zone; the language is the host's Flask-Babel locale, or (when the host
    has no Flask-Babel) ``locale_selector``'s, falling back on ``LM_BILLING_DEFAULT_LOCALE``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        permission_check: PermissionCheck | None = None,
        token_check: TokenCheck | None = None,
    ) -> None:
        self.permission_check = permission_check
        self.token_check = token_check
        self.timezone_select: TimezoneSelector | None = None
        self.locale_select: LocaleSelector | None = None
        if app is not None:
            self.init_app(app)

    def permission_checker(self, func: PermissionCheck) -> PermissionCheck:
        """Decorator form of ``permission_check=``."""
        self.permission_check = func
        return func

    def token_checker(self, func: TokenCheck) -> TokenCheck:
        """Decorator form of ``token_check=``: the user a bearer token stands for, or None."""
        self.token_check = func
        return func

    def timezone_selector(self, func: TimezoneSelector) -> TimezoneSelector:
        """Decorator: ``() -> zone name | tzinfo | None``, the viewer's time zone for the
        current request (None: ``LM_BILLING_TIMEZONE``)."""
        self.timezone_select = func
        return func

    def locale_selector(self, func: LocaleSelector) -> LocaleSelector:
        """Decorator: ``() -> locale | None`` for the pages, used when the plugin sets
        Flask-Babel up itself (a host with its own Flask-Babel picks the locale there)."""
        self.locale_select = func
        return func

    def shutdown(self, app: Flask) -> None:
        """Stop what the plugin runs in this process for ``app``: the autostarted scheduler
        (a run going on is recorded as interrupted) and the pages' batch pool (waiting for
        batches in progress). For app teardown in a host's tests or a long-lived process that
        builds apps; both also stop by themselves at interpreter exit."""
        from .schedule.autostart import stop_service
        from .web.views.runs import shutdown_executor

        stop_service(app)
        shutdown_executor(app, wait=True)

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "lm_billing_plugin is already registered on this app; call init_app once per app"
            )
        for key, default in DEFAULTS.items():
            app.config.setdefault(key, default)
        settings = Settings.from_config(app.config)
        _ensure_babel(app, settings, self)
        db = _host_db(app)
        _refuse_missing_secrets(app, settings)
        state = app.extensions[EXTENSION_KEY] = BillingState(
            extension=self,
            settings=settings,
            db=db,
            secrets=SecretBox(settings.encryption_keys),
        )
        if settings.bind_key is not None:
            _use_bind(app, state)
        if settings.sqlite_tuning:
            # Only the engine object is touched (listeners); no connection is opened here.
            with app.app_context():
                tune_engine(state.engine, busy_timeout=settings.sqlite_busy_timeout)

        from .cli import cli
        from .web.blueprint import blueprint
        from .web.l10n import template_context as l10n_context
        from .web.menu import menu_entries

        app.register_blueprint(blueprint, url_prefix=settings.url_prefix)
        from .web import api

        api.install(app, settings.url_prefix)
        app.cli.add_command(cli)
        app.jinja_env.globals["lm_billing_menu"] = menu_entries
        # Times, numbers and money for the viewer's locale: globals, not page context, so
        # invoices rendered outside a request (emails, PDFs) format the same way.
        app.jinja_env.globals.update(l10n_context())

        from .schedule.autostart import install_autostart

        install_autostart(app)


def _ensure_babel(app: Flask, settings: Settings, extension: LMBilling) -> None:
    """Flask-Babel for the pages: the host's when it has one (its locale selector decides),
    else one set up here with ``LM_BILLING_DEFAULT_LOCALE``. Nothing goes into app.config, so
    a host that calls ``Babel(app)`` later simply replaces ours with its own settings. The
    plugin's words are in its own domain (i18n.py) either way: host catalogs stay untouched."""
    if "babel" not in app.extensions:

        def select_locale() -> Any:
            return extension.locale_select() if extension.locale_select else None

        Babel().init_app(app, default_locale=settings.default_locale, locale_selector=select_locale)
    env = app.jinja_env
    if "jinja2.ext.InternationalizationExtension" not in env.extensions:
        # A host's Babel(configure_jinja=False): {% trans %} still has to compile. The
        # callables come from the blueprint's context (i18n.template_functions).
        env.add_extension("jinja2.ext.i18n")
        env.newstyle_gettext = True  # type: ignore[attr-defined]


def _refuse_missing_secrets(app: Flask, settings: Settings) -> None:
    """Outside debug and testing, no SECRET_KEY (every page would be a 500: sessions and CSRF
    need it) or no encryption key (no password could be stored) is refused here, at start."""
    if app.debug or app.testing:
        return
    if not app.config.get("SECRET_KEY"):
        raise RuntimeError(
            "lm_billing_plugin: the app has no SECRET_KEY (or an empty one), so no Billing page "
            "could keep a session or check a form. Set SECRET_KEY to a long random value, e.g. "
            "the output of `python -c \"import secrets; print(secrets.token_hex(32))\"`."
        )
    if not settings.encryption_keys:
        raise RuntimeError(
            "lm_billing_plugin: LM_BILLING_ENCRYPTION_KEYS is empty, so no TclPort password "
            "could be stored. Generate a key with `flask lm-billing generate-key` (with "
            "FLASK_DEBUG=1 set, since this check stops the app without one) and put it in "
            "LM_BILLING_ENCRYPTION_KEYS (e.g. FLASK_LM_BILLING_ENCRYPTION_KEYS=<key>)."
        )


def _use_bind(app: Flask, state: BillingState) -> None:
    """Put the plugin on the host's LM_BILLING_BIND_KEY bind (its engine exists once the
    host's Flask-SQLAlchemy is initialised; nothing connects here)."""
    key = state.settings.bind_key
    if key not in (app.config.get("SQLALCHEMY_BINDS") or {}):
        raise RuntimeError(
            f"LM_BILLING_BIND_KEY is {key!r}, but SQLALCHEMY_BINDS has no such bind; add "
            f"SQLALCHEMY_BINDS[{key!r}] = <database URL> before initialising the host's "
            "Flask-SQLAlchemy"
        )
    with app.app_context():
        state.bound_session = bind_session(state.engine)
    bound = state.bound_session
    app.teardown_appcontext(lambda exc: bound.remove())


def _host_db(app: Flask) -> SQLAlchemy:
    """The host's Flask-SQLAlchemy instance; one of our own only when the host has none."""
    db = app.extensions.get("sqlalchemy")
    if db is None:
        if not app.config.get("SQLALCHEMY_DATABASE_URI"):
            raise RuntimeError(
                "lm_billing_plugin needs a database: initialise the host's Flask-SQLAlchemy "
                "before LMBilling, or set SQLALCHEMY_DATABASE_URI"
            )
        db = SQLAlchemy()
        db.init_app(app)
    assert isinstance(db, SQLAlchemy)
    return db
