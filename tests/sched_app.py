"""A small host app for the scheduler's multi-process tests, started as
`flask --app tests.sched_app:create_app lm-billing scheduler` with its settings in the env."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from lm_billing_plugin import LMBilling
from lm_billing_plugin.schedule.service import WORK_EXTRA, WorkRequest, default_work
from lm_billing_plugin.secrets import generate_key
from lm_billing_plugin.state import get_state


def create_app() -> Flask:
    """SCHED_DB_URL (required), SCHED_INTERVAL, SCHED_LEASE: the schedule;
    SCHED_WORK_SECONDS: how long each run sleeps before the real work (to be killed mid-run);
    SCHED_AUTOSTART: start the ticker on the first request (served by gunicorn)."""
    app = Flask("sched_app")
    app.config.update(
        SECRET_KEY="sched-test",
        # Served by gunicorn (not app.testing), where the plugin refuses to start without one.
        LM_BILLING_ENCRYPTION_KEYS=[generate_key()],
        SQLALCHEMY_DATABASE_URI=os.environ["SCHED_DB_URL"],
        LM_BILLING_VALIDATE_INTERVAL=float(os.environ.get("SCHED_INTERVAL", "1")),
        LM_BILLING_LEASE_SECONDS=float(os.environ.get("SCHED_LEASE", "5")),
        LM_BILLING_SCHEDULER_AUTOSTART=bool(os.environ.get("SCHED_AUTOSTART")),
    )
    db = SQLAlchemy()
    db.init_app(app)
    LMBilling(app, permission_check=lambda user, action: True)
    pause = float(os.environ.get("SCHED_WORK_SECONDS", "0"))
    if pause:

        def slow_work(request: WorkRequest) -> Any:
            time.sleep(pause)
            return default_work(request)

        get_state(app).extras[WORK_EXTRA] = slow_work
    if os.environ.get("SCHED_DEBUG"):
        logging.basicConfig(level=logging.DEBUG)
    return app
