"""The scheduler starts only where asked (issue #13): off by default, on the first Billing
request only, a fresh database waits one interval, shutdown(app), inline batches, idle cost."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin.models import TaskState, utcnow
from lm_billing_plugin.schedule.claims import TASK
from lm_billing_plugin.schedule.service import SERVICE_EXTRA, SchedulerService
from lm_billing_plugin.settings import Settings
from lm_billing_plugin.state import get_state
from lm_billing_plugin.web.views.runs import EXECUTOR_KEY


def _threads(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def test_autostart_is_off_unless_the_host_asks() -> None:
    assert Settings.from_config({}).scheduler_autostart is False
    assert Settings.from_config({"LM_BILLING_SCHEDULER_AUTOSTART": "true"}).scheduler_autostart


def _serving_app(make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch,
                 **config: object) -> Flask:
    monkeypatch.setattr(sys, "argv", ["gunicorn", "host:app"])
    app = make_app(LM_BILLING_SCHEDULER_AUTOSTART=True, TESTING=False, **config)

    @app.get("/login")
    def login() -> str:
        return "the host's login page"

    return app


def test_only_a_billing_request_starts_it_and_a_fresh_database_waits_one_interval(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _serving_app(make_app, monkeypatch)
    client = app.test_client()
    assert client.get("/login").status_code == 200
    assert client.get("/nowhere").status_code == 404
    assert SERVICE_EXTRA not in get_state(app).extras  # the host's pages start nothing
    started = utcnow()
    assert client.get("/billing/").status_code == 200
    service = get_state(app).extras[SERVICE_EXTRA]
    assert isinstance(service, SchedulerService)
    try:
        def row() -> TaskState | None:
            with app.app_context():
                return get_state(app).session.get(TaskState, TASK)

        deadline = time.monotonic() + 10
        while (task := row()) is None:
            assert time.monotonic() < deadline, "the ticker never created the schedule"
            time.sleep(0.05)
        # Due one interval (3600 s) after the start, not at once.
        assert task.next_run_at >= started + timedelta(seconds=3590)
        assert task.last_run_id is None
        get_state(app).extension.shutdown(app)
        assert SERVICE_EXTRA not in get_state(app).extras
        assert not service._scheduler.running
    finally:
        service.shutdown(abandon=True)


def test_the_api_starts_it_too(make_app: Callable[..., Flask],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    app = _serving_app(make_app, monkeypatch)
    assert app.test_client().get("/billing/api/v1/servers").status_code == 200
    service = get_state(app).extras[SERVICE_EXTRA]
    try:
        assert isinstance(service, SchedulerService)
    finally:
        get_state(app).extension.shutdown(app)


def test_shutdown_stops_the_batch_pool(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    from _pages import add_server, post
    from _sim import closed_port

    apps = [make_app(f"sqlite:///{tmp_path / f'app{i}.sqlite'}") for i in range(3)]
    for app in apps:
        sid = add_server(app, "Gone", port=closed_port())
        post(app.test_client(), "/billing/servers/validate", {"server_ids": str(sid)})
        assert EXECUTOR_KEY in get_state(app).extras
    assert _threads("lm-billing-batch")
    for app in apps:
        get_state(app).extension.shutdown(app)
        assert EXECUTOR_KEY not in get_state(app).extras
    deadline = time.monotonic() + 5
    while _threads("lm-billing-batch"):
        assert time.monotonic() < deadline, _threads("lm-billing-batch")
        time.sleep(0.05)


def test_inline_batches_finish_inside_the_request(make_app: Callable[..., Flask]) -> None:
    from _pages import add_server
    from _sim import closed_port

    app = make_app(LM_BILLING_INLINE_BATCHES=True)
    get_state(app).extension.token_checker(lambda token: "robot")
    sid = add_server(app, "Gone", port=closed_port())
    response = app.test_client().post(
        "/billing/api/v1/validate", json={"server_ids": [sid]},
        headers={"Authorization": "Bearer x"},
    )
    assert response.status_code == 202
    batch = response.get_json()
    assert batch["finished"] and batch["done"] == 1 and batch["failed"] == 1
    assert EXECUTOR_KEY not in get_state(app).extras  # no pool, no thread


def test_idle_cost_statements_per_minute(any_db_app: Flask) -> None:
    """What an idle ticker costs the database (the README quotes it): at most 4 statements
    per tick, one tick a second with the default interval, so <= 240 a minute per process."""
    app = any_db_app
    service = SchedulerService(app, first_run_delay=3600.0)
    assert service.tick_seconds == 1.0
    with app.app_context():
        engine = get_state(app).db.engine
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    service.tick()  # creates the schedule row: not the idle cost
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        ticks = 20
        for _ in range(ticks):
            assert service.tick() == "idle"
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    per_tick = len(statements) / ticks
    print(f"idle: {per_tick:.1f} statements per tick, {per_tick * 60 / service.tick_seconds:.0f}"
          " per minute per process")
    assert per_tick <= 4
