"""A small host app for the batch-process tests, built again in the batch's own process as
`flask --app tests.batch_app:create_app() lm-billing run-batch` with its settings in the env."""

from __future__ import annotations

import json
import os

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from lm_billing_plugin import LMBilling

APP_IMPORT = "tests.batch_app:create_app()"


def create_app() -> Flask:
    """BATCH_DB_URL and BATCH_KEY (required): the database and the encryption key, the same
    in the test's process and the batch's; BATCH_CONFIG: more settings, as JSON."""
    app = Flask("batch_app")
    app.config.update(
        TESTING=True,
        SECRET_KEY="batch-test",
        SQLALCHEMY_DATABASE_URI=os.environ["BATCH_DB_URL"],
        LM_BILLING_ENCRYPTION_KEYS=[os.environ["BATCH_KEY"]],
        LM_BILLING_BATCH_PROCESS_APP=APP_IMPORT,
        **json.loads(os.environ.get("BATCH_CONFIG", "{}")),
    )
    db = SQLAlchemy()
    db.init_app(app)
    LMBilling(app, permission_check=lambda user, action: True)
    return app
