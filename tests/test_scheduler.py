"""Scheduled background validation: exactly one run per interval across real processes (two
`flask lm-billing scheduler` on PostgreSQL and SQLite), SIGKILL mid-run, misfires, long runs,
a database outage, `run-due`, the disabled switch and the lazy autostart."""

from __future__ import annotations

import itertools
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa
from conftest import EXTERNAL_DATABASES, reset_schema, skip_or_fail
from flask import Flask

from lm_billing_plugin.models import Base, Batch, TaskRun, TaskState, utcnow
from lm_billing_plugin.schedule.autostart import should_autostart
from lm_billing_plugin.schedule.claims import TASK, next_slot, tick_seconds
from lm_billing_plugin.schedule.service import (
    SERVICE_EXTRA,
    SchedulerService,
    WorkRequest,
    default_work,
)
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.load import gunicorn_command

ROOT = Path(__file__).resolve().parent.parent
FLASK = Path(sys.executable).parent / "flask"
SECOND = timedelta(seconds=1)


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database the test's scheduler processes share, with the plugin's tables."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    else:
        env = EXTERNAL_DATABASES["postgresql"]
        url = os.environ.get(env, "")
        if not url:
            skip_or_fail(f"postgresql: set {env} to run this test there", external_db=True)
        try:
            reset_schema(url)
        except sa.exc.OperationalError as exc:
            skip_or_fail(f"postgresql at {env} is unreachable: {exc.orig}")
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    yield url
    if request.param != "sqlite":
        reset_schema(url)


class Proc:
    """One `flask lm-billing scheduler` process of the test app, its output in a file."""

    def __init__(self, url: str, log: Path, **env: str) -> None:
        self.log = log
        full_env = {
            **os.environ,
            "SCHED_DB_URL": url,
            "SCHED_INTERVAL": "1",
            "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
            **env,
        }
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                [str(FLASK), "--app", "tests.sched_app:create_app", "lm-billing", "scheduler"],
                cwd=ROOT,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def started(self) -> bool:
        return "started (validate every" in self.output() or "started (sync every" in self.output()

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            output = self.output()
            raise AssertionError(f"scheduler {self.pid} ignored SIGTERM:\n{output}") from None


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(url: str, name: str, **env: str) -> Proc:
        proc = Proc(url, tmp_path / f"{name}.log", **env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()


def wait_for(what: str, check: Callable[[], Any], timeout: float, *procs: Proc) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    logs = "\n".join(f"--- {p.pid}\n{p.output()[-3000:]}" for p in procs)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def task_runs(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(
                    TaskRun.id,
                    TaskRun.scheduled_for,
                    TaskRun.status,
                    TaskRun.pid,
                    TaskRun.started_at,
                    TaskRun.finished_at,
                    TaskRun.error_message,
                    TaskRun.summary,
                ).order_by(TaskRun.scheduled_for, TaskRun.id)
            ).all()
        )


def describe(runs: list[Any]) -> str:
    return "\n".join(
        f"{r.id} slot {r.scheduled_for:%H:%M:%S.%f}"
        f" late {(r.started_at - r.scheduled_for).total_seconds():.3f}"
        f" took {((r.finished_at or r.started_at) - r.started_at).total_seconds():.3f}"
        f" {r.status} pid {r.pid} missed {(r.summary or {}).get('missed')}"
        for r in runs
    )


def assert_each_slot_once(runs: list[Any], interval: timedelta = SECOND) -> None:
    """Every slot of the grid from the first run's to the last run's is covered exactly once:
    run on its own, or coalesced into the run before it (whose summary counts it as missed, as
    it happens when a run or a stalled machine makes a slot pass unclaimed). Never run twice,
    never lost silently."""
    slots = [r.scheduled_for for r in runs]
    assert len(set(slots)) == len(slots), f"a slot ran twice:\n{describe(runs)}"
    for before, run in itertools.pairwise(runs):
        covered = before.summary["missed"] + 1
        assert run.scheduled_for == before.scheduled_for + covered * interval, (
            f"slots lost between runs {before.id} and {run.id}:\n{describe(runs)}"
        )


def grid_slots(anchor: datetime, after: datetime, count: int) -> list[datetime]:
    """The first ``count`` slots of the 1-second grid through ``anchor`` that come after
    ``after``."""
    first = anchor + math.ceil((after - anchor) / SECOND) * SECOND
    return [first + k * SECOND for k in range(count)]


def finished_from(engine: sa.Engine, slot: datetime) -> bool:
    """Whether the schedule has moved past ``slot``: a run of it or a later one finished."""
    return any(r.scheduled_for >= slot and r.finished_at for r in task_runs(engine))


# --- two real processes ----------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_run_each_interval_exactly_once(
    shared_db: str, procs: Callable[..., Proc]
) -> None:
    """A runs alone, then A and B compete for 10 slots, then B runs alone once A is stopped.
    Each phase's slots follow from the task's grid and the processes' lifetimes, so who wins
    is never left to chance: A's first run is A's, the slots after A exits are B's."""
    engine = sa.create_engine(shared_db)
    try:
        a = procs(shared_db, "a")
        first = wait_for(
            "A's first run", lambda: [r for r in task_runs(engine) if r.finished_at], 30, a
        )
        b = procs(shared_db, "b")
        wait_for("B to start", b.started, 30, a, b)
        # B's ticker starts right after its "started" line; half a second more lets both
        # processes settle into ticking before the observed slots begin.
        window = grid_slots(first[0].scheduled_for, utcnow() + SECOND / 2, 10)
        wait_for(
            "10 slots with both processes", lambda: finished_from(engine, window[-1]), 40, a, b
        )
        assert a.stop() == 0
        a_gone = utcnow()
        (after_a,) = grid_slots(first[0].scheduled_for, a_gone, 1)
        wait_for("B alone for two slots", lambda: finished_from(engine, after_a + SECOND), 20, b)
        assert b.stop() == 0
        runs = task_runs(engine)
    finally:
        engine.dispose()

    assert_each_slot_once(runs)
    observed = [r for r in runs if window[0] <= r.scheduled_for <= window[-1]]
    # Exactly 10 runs for the 10 slots both processes saw, none duplicated, none missing.
    assert [r.scheduled_for for r in observed] == window, describe(runs)
    assert {r.status for r in runs} == {"ok"}, [(r.id, r.status, r.error_message) for r in runs]
    assert runs[0].pid == a.pid  # A ran alone at first
    alone = [r for r in runs if r.started_at > a_gone]
    assert alone and {r.pid for r in alone} == {b.pid}  # B takes over when A is gone
    assert "lm-billing scheduler stopped." in a.output() and "stopped." in b.output()


@pytest.mark.slow
def test_a_process_killed_mid_run_is_marked_interrupted_and_the_schedule_goes_on(
    shared_db: str, procs: Callable[..., Proc]
) -> None:
    # Runs take about an interval, so the victim is surely mid-run when the signal lands; the
    # lease (renewed every second) outlives a stalled heartbeat on a loaded machine.
    env = {"SCHED_WORK_SECONDS": "1.0", "SCHED_LEASE": "3.0"}
    a = procs(shared_db, "a", **env)
    b = procs(shared_db, "b", **env)
    by_pid = {a.pid: a, b.pid: b}
    wait_for("both schedulers to start", lambda: a.started() and b.started(), 30, a, b)
    engine = sa.create_engine(shared_db)
    try:

        def running_run() -> Any:
            return next((r for r in task_runs(engine) if r.status == "running"), None)

        victim_run = wait_for("a run in progress", running_run, 20, a, b)
        victim = by_pid[victim_run.pid]
        os.kill(victim.pid, signal.SIGKILL)
        victim.popen.wait()
        survivor = b if victim is a else a
        assert running_run() is not None and running_run().id == victim_run.id

        def interrupted() -> bool:
            return any(
                r.id == victim_run.id and r.status == "interrupted" for r in task_runs(engine)
            )

        wait_for("the killed run to be marked interrupted", interrupted, 20, survivor)
        wait_for(
            "two runs after the interruption",
            lambda: (
                sum(1 for r in task_runs(engine) if r.id > victim_run.id and r.status == "ok") >= 2
            ),
            30,
            survivor,
        )
        assert survivor.stop() == 0
        runs = task_runs(engine)
        with engine.connect() as conn:
            state = conn.execute(sa.select(TaskState).where(TaskState.name == TASK)).one()
    finally:
        engine.dispose()

    killed = next(r for r in runs if r.id == victim_run.id)
    assert killed.status == "interrupted"
    assert f":{victim.pid}:" in killed.error_message and "lease" in killed.error_message
    assert killed.finished_at is not None
    after = [r for r in runs if r.id > victim_run.id]
    assert after and {r.pid for r in after} == {survivor.pid}
    assert {r.status for r in after} == {"ok"}
    # The slots that passed while the dead process's lease ran out are run once, coalesced
    # into the survivor's first run, and the schedule goes on.
    assert_each_slot_once(runs)
    assert after[0].summary["missed"] >= 1
    assert state.lease_owner is None


@pytest.mark.slow
def test_sigterm_waits_for_the_run_and_a_second_one_abandons_it(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    url = f"sqlite:///{tmp_path / 'stop.sqlite'}"
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    proc = procs(url, "stop", SCHED_WORK_SECONDS="5")
    try:
        run = wait_for(
            "a run in progress",
            lambda: next((r for r in task_runs(engine) if r.status == "running"), None),
            30,
            proc,
        )
        proc.popen.send_signal(signal.SIGTERM)
        wait_for("the wait message", lambda: "Waiting for scheduled run" in proc.output(), 5, proc)
        assert proc.popen.poll() is None  # still finishing the run
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=5) == 0
        (after,) = task_runs(engine)
        with engine.connect() as conn:
            owner = conn.scalar(sa.select(TaskState.lease_owner))
    finally:
        engine.dispose()
    assert after.id == run.id and after.status == "interrupted"
    assert "stopped during the run" in after.error_message
    assert owner is None  # released at once: the next process need not wait for expiry


@pytest.mark.slow
def test_gunicorn_workers_start_lazily_and_share_the_schedule(tmp_path: Path) -> None:
    """Single-host mode: two gunicorn workers with autostart. Nothing runs before the first
    request; then the workers' tickers share the schedule, each slot run once."""
    from _sim import closed_port

    url = f"sqlite:///{tmp_path / 'web.sqlite'}"
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    port = closed_port()
    log = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "SCHED_DB_URL": url,
        "SCHED_INTERVAL": "1",
        "SCHED_AUTOSTART": "1",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
    }
    with log.open("wb") as out:
        server = subprocess.Popen(
            gunicorn_command("--workers", "2", "--bind", f"127.0.0.1:{port}",
                             "tests.sched_app:create_app()"),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        import urllib.request

        def get() -> int:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/billing/background") as r:
                return int(r.status)

        def booted() -> bool:
            text = log.read_text(errors="replace")
            return text.count("Booting worker") >= 2

        deadline = time.monotonic() + 30
        while not booted():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(1.5)  # the workers are up and idle: nothing may have started
        assert task_runs(engine) == []
        with engine.connect() as conn:
            assert conn.scalar(sa.select(sa.func.count()).select_from(TaskState)) == 0
        threads = [threading.Thread(target=get) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        deadline = time.monotonic() + 20
        while len([r for r in task_runs(engine) if r.finished_at]) < 4:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
        runs = task_runs(engine)
        engine.dispose()
    assert_each_slot_once(runs)
    assert server.pid not in {r.pid for r in runs}  # workers run it, not the arbiter
    assert {r.status for r in runs} <= {"ok", "interrupted"}


# --- one process, driven tick by tick ----------------------------------------------------


def _quick_work(request: WorkRequest) -> Any:
    return default_work(request)


def _state(app: Flask) -> TaskState:
    with app.app_context():
        session = get_state(app).session
        state = session.get(TaskState, TASK)
        assert state is not None
        session.expunge(state)
        return state


def _runs(app: Flask) -> list[TaskRun]:
    with app.app_context():
        session = get_state(app).session
        runs = list(session.scalars(sa.select(TaskRun).order_by(TaskRun.id)))
        session.expunge_all()
        return runs


def _set_state(app: Flask, **values: Any) -> None:
    with app.app_context():
        session = get_state(app).session
        session.execute(sa.update(TaskState).where(TaskState.name == TASK).values(**values))
        session.commit()


def test_next_slot_coalesces_missed_slots() -> None:
    due = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert next_slot(due, due - SECOND, 60) == (due, 0)
    assert next_slot(due, due, 60) == (due + timedelta(minutes=1), 0)
    assert next_slot(due, due + timedelta(minutes=5, seconds=30), 60) == (
        due + timedelta(minutes=6),
        5,
    )
    assert tick_seconds(3600) == 1.0 and tick_seconds(1) == pytest.approx(0.2)


def test_a_run_missed_while_every_process_was_down_runs_once(
    make_app: Callable[..., Flask], db_url: str
) -> None:
    app = make_app(db_url, LM_BILLING_VALIDATE_INTERVAL=1.0)
    service = SchedulerService(app, work=_quick_work)
    assert service.tick(synchronous=True) == "ran"  # first tick: the first run is due now
    first = _state(app)
    missed_since = utcnow() - timedelta(seconds=5.5)
    _set_state(app, next_run_at=missed_since)

    # "Restart" after 5.5 intervals down: one run for the lot, then nothing until the next slot.
    restarted = SchedulerService(app, work=_quick_work)
    assert restarted.tick(synchronous=True) == "ran"
    assert restarted.tick(synchronous=True) == "idle"
    runs = _runs(app)
    assert len(runs) == 2 and [r.status for r in runs] == ["ok", "ok"]
    coalesced = runs[1]
    assert coalesced.scheduled_for == missed_since
    # 5 slots passed while "down" (more if this machine was slow to get to the tick).
    missed = coalesced.summary["missed"]
    assert missed == (coalesced.started_at - missed_since) // SECOND >= 5
    after = _state(app)
    assert after.next_run_at == missed_since + (missed + 1) * SECOND > utcnow() - SECOND
    assert after.lease_owner is None and after.last_run_id == coalesced.id
    assert first.next_run_at != after.next_run_at


def test_an_expired_lease_is_taken_over_and_its_run_marked_interrupted(
    any_db_app: Flask,
) -> None:
    app = any_db_app
    now = utcnow()
    with app.app_context():
        session = get_state(app).session
        run = TaskRun(task=TASK, scheduled_for=now, started_at=now, host="elsewhere", pid=4242)
        session.add(run)
        session.flush()
        session.add(
            TaskState(
                name=TASK,
                next_run_at=now - SECOND,
                lease_owner="elsewhere:4242:0123456789ab",
                lease_expires_at=now + timedelta(seconds=0.8),
                current_run_id=run.id,
            )
        )
        session.commit()
        dead_id = run.id
    service = SchedulerService(app, work=_quick_work)
    assert service.tick(synchronous=True) == "idle"  # the lease still holds: no overlap
    time.sleep(0.85)
    assert service.tick(synchronous=True) == "ran"
    runs = {r.id: r for r in _runs(app)}
    assert runs[dead_id].status == "interrupted"
    assert "elsewhere:4242" in (runs[dead_id].error_message or "")
    assert [r.status for i, r in runs.items() if i != dead_id] == ["ok"]


@pytest.mark.slow
def test_a_run_longer_than_the_interval_never_overlaps_itself(
    make_app: Callable[..., Flask],
) -> None:
    # Run 2 s, interval 0.5 s, lease 1.5 s: only the heartbeat (every 0.5 s) keeps the other
    # ticker off, with room for a heartbeat delayed by a loaded machine (0.9 s failed at load 6).
    app = make_app(LM_BILLING_VALIDATE_INTERVAL=0.5, LM_BILLING_LEASE_SECONDS=1.5)

    def long_work(request: WorkRequest) -> Any:
        time.sleep(2.0)
        return default_work(request)

    services = [SchedulerService(app, work=long_work) for _ in range(2)]
    for service in services:
        service.start(blocking=False)
    try:
        time.sleep(4.4)
    finally:
        for service in services:
            service.stop()
        for service in services:
            assert service.wait_idle(timeout=10)
    runs = [r for r in _runs(app) if r.finished_at is not None]
    assert len(runs) >= 2
    spans = sorted((r.started_at, r.finished_at or r.started_at) for r in runs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"runs overlap: {spans}"
    assert {r.status for r in runs} == {"ok"}
    # Each run after the first covered the slots that passed while the previous one worked.
    assert all(r.summary["missed"] >= 1 for r in runs[1:])


def test_stop_waits_for_a_tick_in_flight_and_the_run_it_claims(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    """A tick that began before stop() may still claim a run (here it waits on a database
    lock held by another connection); wait_idle() must not report idle before that run ends,
    or a stopping scheduler exits and leaves the run "running"."""
    url = f"sqlite:///{tmp_path / 'inflight.sqlite'}"
    app = make_app(url, LM_BILLING_VALIDATE_INTERVAL=60)
    service = SchedulerService(app, work=_quick_work)
    blocker = sqlite3.connect(tmp_path / "inflight.sqlite", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    ticker = threading.Thread(target=service.tick)
    ticker.start()
    wait_for("the tick to begin", service._ticking.locked, 5)
    time.sleep(0.2)  # past its stop check, waiting for the database
    service.stop()
    assert not service.wait_idle(timeout=0.2)  # not idle: the tick is still in flight
    blocker.execute("COMMIT")
    blocker.close()
    assert service.wait_idle(timeout=10)
    ticker.join(timeout=5)
    (run,) = _runs(app)
    assert run.status == "ok"  # the claimed run was waited for, not left "running"
    assert service.tick() == "stopping"


def test_a_failing_run_is_recorded_and_the_next_interval_still_runs(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(LM_BILLING_VALIDATE_INTERVAL=0.2)
    calls: list[int] = []

    def flaky(request: WorkRequest) -> Any:
        calls.append(request.run_id)
        if len(calls) == 1:
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return default_work(request)

    service = SchedulerService(app, work=flaky)
    assert service.tick(synchronous=True) == "ran"
    time.sleep(0.25)
    assert service.tick(synchronous=True) == "ran"
    first, second = _runs(app)
    message = first.error_message or ""
    assert first.status == "failed" and "server closed the connection" in message
    assert "next run is scheduled as usual" in message
    assert second.status == "ok"
    assert any(
        r.levelname == "ERROR" and f"run {first.id} failed" in r.getMessage()
        for r in caplog.records
    )


def test_outcome_written_later_when_the_database_fails_during_the_run(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    """The run table disappears mid-run (SQLite): the run fails, its outcome cannot be
    written, is kept, and is written by the first tick after the table is back."""
    app = make_app(LM_BILLING_VALIDATE_INTERVAL=0.2)
    with app.app_context():
        engine = get_state(app).db.engine

    def rename(old: str, new: str) -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))

    def breaking_work(request: WorkRequest) -> Any:
        rename("lm_billing_task_run", "lm_billing_task_run_away")
        return default_work(request)  # recording the batch on the run fails

    service = SchedulerService(app, work=breaking_work)
    assert service.tick(synchronous=True) == "ran"
    assert service.tick(synchronous=True) == "error"  # the outcome still cannot be written
    rename("lm_billing_task_run_away", "lm_billing_task_run")
    service.work = _quick_work
    time.sleep(0.2)
    assert service.tick(synchronous=True) == "ran"  # late outcome written, next slot runs
    first, second = _runs(app)
    assert first.status == "failed" and "lm_billing_task_run" in (first.error_message or "")
    assert second.status == "ok"
    assert _state(app).lease_owner is None
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not record its outcome" in m for m in messages)
    assert any(f"scheduled run {first.id}: outcome failed recorded late" in m for m in messages)


def _pg_admin(url: str) -> tuple[sa.Engine, str]:
    parsed = sa.engine.make_url(url)
    return sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT"), str(
        parsed.database
    )


@pytest.mark.slow
def test_database_outage_during_a_run_fails_it_and_the_next_interval_runs(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    """A real outage: PostgreSQL refuses and drops every connection to the database while a
    run is working; the run fails with a logged error and the schedule resumes."""
    url = os.environ.get(EXTERNAL_DATABASES["postgresql"], "")
    if not url:
        skip_or_fail(
            "postgresql: set LM_BILLING_TEST_POSTGRES_URL to run the outage test", external_db=True
        )
    reset_schema(url)
    app = make_app(url, LM_BILLING_VALIDATE_INTERVAL=1.0, LM_BILLING_LEASE_SECONDS=5.0)
    admin, dbname = _pg_admin(url)
    in_run = threading.Event()

    def slow_work(request: WorkRequest) -> Any:
        in_run.set()
        time.sleep(0.8)
        return default_work(request)

    service = SchedulerService(app, work=slow_work)
    service.start(blocking=False)
    try:
        assert in_run.wait(10)
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false'))
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": dbname},
            )
        time.sleep(2.0)
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true'))

        def after_outage() -> list[TaskRun]:
            runs = _runs(app)
            return runs if len(runs) >= 2 and runs[1].status == "ok" else []

        # Generous: after the outage the failed run's outcome is written late and the pool
        # reconnects; on a loaded machine that once took longer than 10 s (the full suite).
        runs = wait_for("a good run after the outage", after_outage, 30)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true'))
        admin.dispose()
        service.stop()
        service.wait_idle(timeout=5)
    first = runs[0]
    assert first.status == "failed"
    assert "OperationalError" in (first.error_message or "")
    assert runs[1].scheduled_for > first.scheduled_for
    messages = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(f"run {first.id} failed" in m for m in messages)
    reset_schema(url)


# --- run-due, sync, disabled ---------------------------------------------------------------


def test_run_due_runs_once_then_reports_nothing_due(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["lm-billing", "run-due"])
    assert result.exit_code == 0, result.output
    assert "Scheduled validate run 1: ok." in result.output
    again = runner.invoke(args=["lm-billing", "run-due"])
    assert again.exit_code == 0 and "Nothing due" in again.output
    assert "next run at" in again.output
    runs = _runs(app)
    assert len(runs) == 1
    with app.app_context():
        batch = get_state(app).session.get(Batch, runs[0].batch_id)
        assert batch is not None and batch.kind == "validate" and batch.triggered_by == "scheduler"


def test_scheduled_sync_setting_syncs_for_real(make_app: Callable[..., Flask]) -> None:
    app = make_app(LM_BILLING_SCHEDULED_SYNC=True)
    result = app.test_cli_runner().invoke(args=["lm-billing", "run-due"])
    assert result.exit_code == 0 and "Scheduled sync run 1: ok." in result.output
    with app.app_context():
        batch = get_state(app).session.scalars(sa.select(Batch)).one()
        assert batch.kind == "sync" and batch.dry_run is False


def test_run_due_on_an_unreachable_database_says_what_to_check(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.sqlite'}", create_tables=False)
    result = app.test_cli_runner().invoke(args=["lm-billing", "run-due"])
    assert result.exit_code == 2
    assert "SQLALCHEMY_DATABASE_URI" in result.output and "db upgrade" in result.output


@pytest.mark.parametrize("command", ["run-due", "scheduler"])
def test_disabled_scheduler_runs_nothing(make_app: Callable[..., Flask], command: str) -> None:
    app = make_app(LM_BILLING_SCHEDULER_ENABLED=False)
    result = app.test_cli_runner().invoke(args=["lm-billing", command])
    assert result.exit_code == 1
    assert "LM_BILLING_SCHEDULER_ENABLED" in result.output
    assert SchedulerService(app).tick(synchronous=True) == "disabled"
    with app.app_context():
        assert get_state(app).session.get(TaskState, TASK) is None
    assert _runs(app) == []


# --- lazy autostart --------------------------------------------------------------------------


def _ticker_threads() -> list[str]:
    names = [t.name for t in threading.enumerate()]
    return [n for n in names if "APScheduler" in n or "lm-billing" in n]


def test_init_app_and_test_requests_start_nothing(make_app: Callable[..., Flask]) -> None:
    before = _ticker_threads()
    app = make_app(LM_BILLING_SCHEDULER_AUTOSTART=True)
    assert app.testing
    assert app.test_client().get("/billing/background").status_code == 200
    assert get_state(app).extras[SERVICE_EXTRA] is None
    assert _ticker_threads() == before


def test_no_autostart_under_a_cli_command(make_app: Callable[..., Flask]) -> None:
    app = make_app(LM_BILLING_SCHEDULER_AUTOSTART=True, TESTING=False)
    seen: list[bool] = []

    @app.cli.command("probe")
    def probe() -> None:
        seen.append(should_autostart(app))
        click.echo("probed")

    result = app.test_cli_runner().invoke(args=["probe"])
    assert result.output == "probed\n"
    assert seen == [False]


def test_autostart_in_a_serving_process_on_first_request(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["gunicorn", "host:app"])
    # A short interval: on a fresh database the first run waits one interval.
    app = make_app(
        LM_BILLING_SCHEDULER_AUTOSTART=True, TESTING=False, LM_BILLING_VALIDATE_INTERVAL=1.0
    )
    assert SERVICE_EXTRA not in get_state(app).extras  # init_app started nothing
    assert app.test_client().get("/billing/background").status_code == 200
    service = get_state(app).extras[SERVICE_EXTRA]
    assert isinstance(service, SchedulerService)
    try:
        runs = wait_for("the autostarted scheduler's first run", lambda: _runs(app), 10)
        assert runs[0].pid == os.getpid()
        app.test_client().get("/billing/background")
        assert get_state(app).extras[SERVICE_EXTRA] is service  # started once
    finally:
        service.shutdown(abandon=True)
        service.wait_idle(timeout=5)


def test_autostart_off_or_disabled_starts_nothing(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "argv", ["gunicorn", "host:app"])
    off = make_app(LM_BILLING_SCHEDULER_AUTOSTART=False, TESTING=False)
    assert not should_autostart(off)
    disabled = make_app(
        f"sqlite:///{tmp_path / 'other.sqlite'}",
        LM_BILLING_SCHEDULER_AUTOSTART=True,
        LM_BILLING_SCHEDULER_ENABLED=False,
        TESTING=False,
    )
    assert not should_autostart(disabled)
    monkeypatch.setattr(sys, "argv", ["/usr/bin/flask", "lm-billing", "db", "upgrade"])
    serving = make_app(
        f"sqlite:///{tmp_path / 'third.sqlite'}",
        LM_BILLING_SCHEDULER_AUTOSTART=True,
        TESTING=False,
    )
    assert not should_autostart(serving)
    monkeypatch.setattr(sys, "argv", ["/usr/bin/flask", "run", "--port", "5000"])
    assert should_autostart(serving)
