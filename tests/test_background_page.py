"""The Background validation page: schedule, last run, the run going on with its progress,
paged history with links to problems, and "Run now" (which only moves next_run_at)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin.models import AuditEntry, Batch, TaskRun, TaskState, utcnow
from lm_billing_plugin.schedule.claims import TASK, schedule_summary
from lm_billing_plugin.state import get_state

URL = "/billing/background"


def _token(client: FlaskClient) -> str:
    page = client.get(URL).get_data(as_text=True)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def _add(app: Flask, *rows: Any) -> None:
    with app.app_context():
        session = get_state(app).session
        for row in rows:
            session.add(row)
            session.flush()
        session.commit()
        for row in rows:  # keep them readable after the app context ends
            session.refresh(row)
            session.expunge(row)


def _run(minutes_ago: float, status: str, **extra: Any) -> TaskRun:
    started = utcnow() - timedelta(minutes=minutes_ago)
    finished = None if status == "running" else started + timedelta(seconds=42.5)
    return TaskRun(
        task=TASK,
        scheduled_for=started,
        started_at=started,
        finished_at=finished,
        status=status,
        host=extra.pop("host", "web1"),
        pid=extra.pop("pid", 1234),
        **extra,
    )


def test_empty_schedule_renders(client: FlaskClient) -> None:
    response = client.get(URL)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<h1>Background validation</h1>" in html
    assert "not scheduled yet" in html and "none yet" in html and "No scheduled run yet." in html
    assert ">Run now</button>" in html
    assert "every 1 hour<" in html


def test_last_run_running_now_and_history(app: Flask, client: FlaskClient) -> None:
    batch = Batch(kind="validate", status="running", total=7, done=3, failed=1)
    done = Batch(kind="validate", status="finished", total=7, done=7, failed=1)
    _add(app, batch, done)
    failed = _run(120, "failed", error_message="<script>alert(1)</script> database gone")
    found = _run(
        60,
        "problems",
        summary={
            "servers": 7,
            "ok": 6,
            "failed": 1,
            "failed_servers": ["far away"],
            "problems_new": 4,
            "missed": 2,
        },
        batch_id=done.id,
    )
    running = _run(0.5, "running", host="worker-2", pid=777, batch_id=batch.id)
    _add(app, failed, found, running)
    _add(
        app,
        TaskState(
            name=TASK,
            next_run_at=utcnow() + timedelta(minutes=59),
            lease_owner="worker-2:777:abcdef",
            lease_expires_at=utcnow() + timedelta(minutes=10),
            current_run_id=running.id,
            last_run_id=found.id,
        ),
    )
    html = client.get(URL).get_data(as_text=True)
    running_now = html.split('id="lmb-running">')[1].split("</dd>")[0]
    assert "on worker-2 (pid 777)" in running_now
    assert "3 of 7 servers done, 1 failed" in running_now
    assert '<progress max="7" value="3">' in running_now
    last = html.split('id="lmb-last-run">')[1].split("</dd>")[0]
    assert "problems found" in last and "took 42.5 s" in last
    # History: newest first, escaped messages, a link to the run's problems.
    history = html.split('id="lmb-history"')[1]
    assert history.index("running") < history.index("problems found") < history.index("failed")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; database gone" in history
    assert "<script>alert(1)" not in html
    assert f'<a href="/billing/errors?batch={done.id}">4 new</a>' in history
    assert "(+2 missed, run once)" in history
    assert "6 of 7 OK; failed: far away" in history
    assert "42.5 s" in history


def test_history_is_paged(make_app: Callable[..., Flask]) -> None:
    app = make_app(LM_BILLING_PAGE_SIZE=2)
    _add(app, *[_run(10 * i, "ok", pid=100 + i) for i in range(5)])
    client = app.test_client()
    first = client.get(URL).get_data(as_text=True)
    assert "Page 1 of 3 (5 in all)" in first
    assert "(pid 100)" in first and "(pid 101)" in first and "(pid 102)" not in first
    third = client.get(URL + "?page=3").get_data(as_text=True)
    assert "(pid 104)" in third and "(pid 100)" not in third
    beyond = client.get(URL + "?page=99").get_data(as_text=True)
    assert "(pid 104)" in beyond


def test_run_now_only_moves_the_next_run(app: Flask, client: FlaskClient) -> None:
    later = utcnow() + timedelta(hours=1)
    _add(app, TaskState(name=TASK, next_run_at=later))
    before = utcnow()
    response = client.post(URL + "/run-now", data={"csrf_token": _token(client)})
    assert response.status_code == 302 and response.headers["Location"].endswith(URL)
    with app.app_context():
        session = get_state(app).session
        state = session.get(TaskState, TASK)
        assert state is not None and before <= state.next_run_at <= utcnow()
        assert state.lease_owner is None
        # No work in the request: no run, no batch.
        assert session.scalar(sa.select(sa.func.count()).select_from(TaskRun)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(Batch)) == 0
        audit = session.scalars(sa.select(AuditEntry)).one()
        assert audit.action == "schedule_run_now"
    page = client.get(URL).get_data(as_text=True)
    assert "The next scheduled run is due now" in page


def test_run_now_while_a_run_is_going_on(app: Flask, client: FlaskClient) -> None:
    lease = utcnow() + timedelta(minutes=5)
    later = utcnow() + timedelta(hours=1)
    _add(app, TaskState(name=TASK, next_run_at=later, lease_owner="w:1:a", lease_expires_at=lease))
    client.post(URL + "/run-now", data={"csrf_token": _token(client)})
    assert "the next one starts as soon as it ends" in client.get(URL).get_data(as_text=True)
    with app.app_context():
        state = get_state(app).session.get(TaskState, TASK)
        assert state is not None and state.next_run_at <= utcnow()
        assert state.lease_owner == "w:1:a"  # the running run keeps its lease


def test_run_now_creates_the_schedule_when_there_is_none(app: Flask, client: FlaskClient) -> None:
    client.post(URL + "/run-now", data={"csrf_token": _token(client)})
    with app.app_context():
        assert get_state(app).session.get(TaskState, TASK) is not None


def test_run_now_needs_the_run_permission(make_app: Callable[..., Flask]) -> None:
    app = make_app(permission_check=lambda user, action: action == "view")
    later = utcnow() + timedelta(hours=1)
    _add(app, TaskState(name=TASK, next_run_at=later))
    client = app.test_client()
    html = client.get(URL).get_data(as_text=True)
    assert "Run now" not in html
    assert client.post(URL + "/run-now", data={}).status_code in (400, 403)
    with app.app_context():
        state = get_state(app).session.get(TaskState, TASK)
        assert state is not None and state.next_run_at == later


def test_disabled_and_overdue_banners(make_app: Callable[..., Flask], tmp_path: Any) -> None:
    disabled = make_app(LM_BILLING_SCHEDULER_ENABLED=False)
    html = disabled.test_client().get(URL).get_data(as_text=True)
    assert "Scheduled validation is disabled" in html
    client = disabled.test_client()
    client.post(URL + "/run-now", data={"csrf_token": _token(client)})
    assert "nothing will run until it is enabled" in client.get(URL).get_data(as_text=True)

    stalled = make_app(f"sqlite:///{tmp_path / 'stalled.sqlite'}")
    _add(stalled, TaskState(name=TASK, next_run_at=utcnow() - timedelta(minutes=10)))
    html = stalled.test_client().get(URL).get_data(as_text=True)
    assert "no scheduler process seems to be running" in html
    assert "flask lm-billing scheduler" in html


def test_schedule_summary_for_the_servers_page(app: Flask) -> None:
    _add(app, _run(5, "ok"), TaskState(name=TASK, next_run_at=utcnow() + timedelta(minutes=55)))
    with app.app_context():
        summary = schedule_summary(get_state(app).session)
    assert summary["enabled"] is True and summary["kind"] == "validate"
    assert summary["running"] is None and summary["overdue"] is False
    assert summary["last_run"]["status"] == "ok"
    assert summary["last_run"]["duration"] == 42.5
    assert summary["next_run_at"] > utcnow()


def test_long_runs_read_in_minutes_and_hours(client: FlaskClient, app: Flask) -> None:
    long = _run(200, "ok")
    long.finished_at = long.started_at + timedelta(hours=1, minutes=30, seconds=20)
    medium = _run(300, "failed")
    medium.finished_at = medium.started_at + timedelta(minutes=2, seconds=5)
    _add(app, medium, long)
    html = client.get(URL).get_data(as_text=True)
    last = html.split('id="lmb-last-run">', 1)[1].split("</dd>", 1)[0]
    assert "took 1 h 30 min" in last
    history = html.split('id="lmb-history"', 1)[1]
    assert "1 h 30 min" in history and "2 min 5 s" in history
