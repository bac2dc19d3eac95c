"""A small host app for the send tests in child processes, run as
`flask --app tests.send_app:create_app lm-billing bills send ...` with its settings in the env:
SEND_DB_URL (required), SEND_SMTP_PORT (required: the test's aiosmtpd), SEND_SMTP_HOST
(default 127.0.0.1), SEND_SMTP_TIMEOUT (seconds, default 10), SEND_LEASE
(LM_BILLING_LEASE_SECONDS, default the plugin's) and SEND_AT (a time.time(): the app factory
waits for it, so two processes start their sends at the same moment instead of a Python
start-up apart)."""

from __future__ import annotations

import os
import time

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from lm_billing_plugin import LMBilling
from lm_billing_plugin.secrets import generate_key


def create_app() -> Flask:
    app = Flask("send_app")
    app.config.update(
        SECRET_KEY="send-test",
        LM_BILLING_ENCRYPTION_KEYS=[generate_key()],
        LM_BILLING_SCHEDULER_AUTOSTART=False,
        SQLALCHEMY_DATABASE_URI=os.environ["SEND_DB_URL"],
        LM_BILLING_SMTP_HOST=os.environ.get("SEND_SMTP_HOST", "127.0.0.1"),
        LM_BILLING_SMTP_PORT=int(os.environ["SEND_SMTP_PORT"]),
        LM_BILLING_SMTP_TIMEOUT=float(os.environ.get("SEND_SMTP_TIMEOUT", "10")),
        LM_BILLING_BILL_FROM_NAME="Acme Hosting Billing",
        LM_BILLING_BILL_FROM_EMAIL="billing@hosting.example",
        LM_BILLING_BILL_BOUNCE_EMAIL="bounces@hosting.example",
    )
    if os.environ.get("SEND_LEASE"):
        app.config["LM_BILLING_LEASE_SECONDS"] = float(os.environ["SEND_LEASE"])
    db = SQLAlchemy()
    db.init_app(app)
    LMBilling(app, permission_check=lambda user, action: True)
    at = float(os.environ.get("SEND_AT", "0"))
    while time.time() < at:
        time.sleep(0.002)
    return app
