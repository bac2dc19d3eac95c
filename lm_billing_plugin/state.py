"""Per-app plugin state (settings, database, secrets) kept in app.extensions["lm_billing"],
and get_state to reach it: services import this, never the extension that builds it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app
from flask.globals import app_ctx
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from .secrets import SecretBox
from .settings import Settings

if TYPE_CHECKING:
    from .extension import LMBilling

EXTENSION_KEY = "lm_billing"


@dataclass
class BillingState:
    """What one app's plugin needs at run time; built once by init_app."""

    extension: LMBilling
    settings: Settings
    db: SQLAlchemy
    secrets: SecretBox
    extras: dict[str, Any] = field(default_factory=dict)
    # Set only with LM_BILLING_BIND_KEY: a session of our own on that bind's engine.
    bound_session: scoped_session[Session] | None = None

    @property
    def engine(self) -> Engine:
        """The engine the plugin's tables live on: the host's default one, or the bind
        LM_BILLING_BIND_KEY names."""
        return self.db.engines[self.settings.bind_key]

    @property
    def session(self) -> Session:
        if self.bound_session is not None:
            return self.bound_session()
        return self.db.session  # type: ignore[return-value]

    def remove_session(self) -> None:
        """End this thread's (app context's) session, as at the end of a request."""
        if self.bound_session is not None:
            self.bound_session.remove()
        else:
            self.db.session.remove()


def bind_session(engine: Engine) -> scoped_session[Session]:
    """The plugin's session on a bind: db.session routes by a table's metadata only for ORM
    statements (Core selects and text would reach the host's default database), so the
    plugin's code gets a session that sends everything to the bind. Scoped to the app
    context, as db.session is."""
    return scoped_session(sessionmaker(bind=engine), scopefunc=_app_ctx_id)


def _app_ctx_id() -> int:
    return id(app_ctx._get_current_object())  # type: ignore[attr-defined]


def get_state(app: Flask | None = None) -> BillingState:
    """The plugin's state for ``app`` (default: the current app)."""
    target = app if app is not None else current_app
    try:
        state = target.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError("lm_billing_plugin is not registered on this app") from None
    assert isinstance(state, BillingState)
    return state
