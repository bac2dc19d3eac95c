"""The background batch page when the process running the batch has died: it says so and
stops refreshing, without writing anything on the GET."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin.models import Batch, Run, Server, utcnow
from lm_billing_plugin.state import get_state


def _batch(app: Flask, started_ago: timedelta) -> int:
    with app.app_context():
        session = get_state().session
        server = Server(name="Lists", host="lists.example.com")
        batch = Batch(kind="validate", status="running", total=1, started_at=utcnow() - started_ago)
        session.add_all([server, batch])
        session.flush()
        session.add(Run(batch_id=batch.id, server_id=server.id, kind="validate", status="queued",
                        started_at=batch.started_at))
        session.commit()
        return batch.id


def test_a_batch_that_stopped_moving_says_so_and_stops_refreshing(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(LM_BILLING_LEASE_SECONDS=60)
    batch_id = _batch(app, timedelta(hours=2))
    page = app.test_client().get(f"/billing/batches/{batch_id}").get_data(as_text=True)
    assert "seems to have stopped" in page
    assert 'http-equiv="refresh"' not in page
    assert 'data-lmb-finished="true"' in page
    with app.app_context():  # nothing written on the GET
        status = get_state().session.scalar(sa.select(Batch.status).where(Batch.id == batch_id))
    assert status == "running"


def test_a_live_batch_keeps_refreshing(make_app: Callable[..., Flask]) -> None:
    app = make_app(LM_BILLING_LEASE_SECONDS=60)
    batch_id = _batch(app, timedelta(seconds=5))
    page = app.test_client().get(f"/billing/batches/{batch_id}").get_data(as_text=True)
    assert "seems to have stopped" not in page
    assert 'http-equiv="refresh"' in page
