"""Per-app plugin state (settings, database, secrets) kept in app.extensions["lm_billing"],
and get_state to reach it: services import this, never the extension that builds it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Session

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

    @property
    def session(self) -> Session:
        return self.db.session  # type: ignore[return-value]


def get_state(app: Flask | None = None) -> BillingState:
    """The plugin's state for ``app`` (default: the current app)."""
    target = app if app is not None else current_app
    try:
        state = target.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError("lm_billing_plugin is not registered on this app") from None
    assert isinstance(state, BillingState)
    return state
