"""SQLite under concurrent writers: WAL and busy_timeout on the host's engine, BEGIN IMMEDIATE
for the plugin's write transactions (no lock upgrade to fail), a batch clean-up that waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin import sqlite
from lm_billing_plugin.engine import batches
from lm_billing_plugin.models import Batch, Run, Server
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim


def pragma(app: Flask, name: str) -> Any:
    with app.app_context():
        session = get_state().session
        value = session.execute(sa.text(f"PRAGMA {name}")).scalar()
        session.commit()
        return value


def test_the_hosts_engine_gets_wal_and_a_busy_timeout(make_app: Callable[..., Flask]) -> None:
    app = make_app(LM_BILLING_SQLITE_BUSY_TIMEOUT=12.5)
    assert pragma(app, "journal_mode") == "wal"
    assert pragma(app, "busy_timeout") == 12500


def test_the_tuning_can_be_turned_off(make_app: Callable[..., Flask]) -> None:
    app = make_app(LM_BILLING_SQLITE_TUNING=False)
    assert pragma(app, "journal_mode") == "delete"
    with app.app_context():
        assert not sqlite.is_tuned(get_state().db.engine)


def test_other_databases_are_left_alone() -> None:
    engine = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert sqlite.tune_engine(engine, busy_timeout=1.0) is False
    assert not sqlite.is_tuned(engine)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    app = make_app(LM_BILLING_SQLITE_BUSY_TIMEOUT=10.0)
    with app.app_context():
        session = get_state().session
        session.add(Server(name="s", host="127.0.0.1", port=1))
        session.commit()
    yield app


def hold_write_lock(app: Flask, seconds: float, held: threading.Event) -> threading.Thread:
    """Another connection writes and keeps the lock ``seconds``, as a concurrent run would."""
    with app.app_context():
        engine = get_state().db.engine

    def writer() -> None:
        with sqlite.writes(), engine.begin() as conn:
            conn.exec_driver_sql("UPDATE lm_billing_server SET comments = 'other writer'")
            held.set()
            time.sleep(seconds)

    thread = threading.Thread(target=writer)
    thread.start()
    assert held.wait(5)
    return thread


def read_then_write(app: Flask, *, intent: bool) -> str:
    """What claim_server does: read the row, then update it, in one transaction."""
    with app.app_context():
        session = get_state().session
        try:
            if intent:
                with sqlite.writes():
                    session.execute(sa.select(Server.lease_owner)).all()
                    time.sleep(0.3)
                    session.execute(sa.update(Server).values(lease_owner="me"))
                    session.commit()
            else:
                session.execute(sa.select(Server.lease_owner)).all()
                time.sleep(0.3)
                session.execute(sa.update(Server).values(lease_owner="me"))
                session.commit()
        except sa.exc.OperationalError as exc:
            session.rollback()
            return str(exc.orig)
        finally:
            get_state().session.remove()
    return "ok"


def test_a_deferred_read_then_write_fails_at_once_and_begin_immediate_waits(app: Flask) -> None:
    # Without the intent (a page's or a host's transaction): the upgrade cannot wait, whatever
    # busy_timeout says. This is the failure the issue saw while servers were claimed.
    held = threading.Event()
    other = hold_write_lock(app, 1.0, held)
    started = time.monotonic()
    assert "database is locked" in read_then_write(app, intent=False)
    assert time.monotonic() - started < 1.0  # it did not wait for the other writer
    other.join()
    # With it (every engine batch, the scheduler, commands, POSTs): BEGIN IMMEDIATE waits.
    held.clear()
    other = hold_write_lock(app, 1.0, held)
    started = time.monotonic()
    assert read_then_write(app, intent=True) == "ok"
    assert time.monotonic() - started >= 0.6
    other.join()


def test_page_views_stay_deferred_and_plugin_posts_begin_immediate(app: Flask) -> None:
    with app.app_context():
        engine = get_state().db.engine
    begins: list[tuple[str, str]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("BEGIN"):
            from flask import has_request_context, request

            begins.append((request.method if has_request_context() else "-", statement))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        client = app.test_client()
        assert client.get("/billing/").status_code == 200
        # A POST without its token is refused (400) before any work: the guard is what runs.
        client.post("/billing/servers/validate", data={"scope": "all"})
        with app.app_context():
            get_state().session.execute(sa.select(Server.id)).all()
            get_state().session.commit()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert ("GET", "BEGIN") in begins
    assert ("GET", "BEGIN IMMEDIATE") not in begins
    assert all(stmt == "BEGIN IMMEDIATE" for method, stmt in begins if method == "POST")
    assert ("-", "BEGIN") in begins  # the host's own code outside requests: SQLite's default


def test_a_failing_batch_is_closed_even_while_another_process_writes(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch stops on an error while another writer holds the lock: its clean-up waits
    for the lock (BEGIN IMMEDIATE + busy_timeout) instead of failing the same way, so no run
    stays queued or running and no server stays leased."""
    app = make_app(LM_BILLING_SQLITE_BUSY_TIMEOUT=10.0, LM_BILLING_SERVER_DEADLINE=3.0)
    sims = [HostSim(Dataset.generate(sites=1, lists=5, seed=i)).start() for i in range(4)]
    try:
        with app.app_context():
            session = get_state().session
            session.add_all([Server(name=f"s{i}", host=s.host, port=s.port)
                             for i, s in enumerate(sims)])
            session.commit()
            batch_id = batches.create_batch("validate", None, actor="t")
            real_claim, real_claims = batches.claim_server, batches.claim_servers
            calls: list[int] = []
            held = threading.Event()
            others: list[threading.Thread] = []

            def meet_error(servers: int) -> None:
                calls.extend([1] * servers)
                if len(calls) >= 3:
                    # Claiming the third server, another process grabs the lock, and this
                    # batch meets an error. Longer than the driver's default 5 s wait,
                    # shorter than ours.
                    others.append(hold_write_lock(app, 5.5, held))
                    raise RuntimeError("the batch stops here")

            def claim(*args: Any, **kwargs: Any) -> bool:
                meet_error(1)
                return real_claim(*args, **kwargs)

            def claims(session: Any, runs: Any, *args: Any, **kwargs: Any) -> Any:
                # (The servers handed ahead at the start are claimed together.)
                meet_error(len(runs))
                return real_claims(session, runs, *args, **kwargs)

            monkeypatch.setattr(batches, "claim_server", claim)
            monkeypatch.setattr(batches, "claim_servers", claims)
            with pytest.raises(RuntimeError):
                batches.run_batch(batch_id)
            for t in others:
                t.join()
            session = get_state().session
            assert session.get(Batch, batch_id).status == "failed"
            assert session.scalar(sa.select(sa.func.count()).select_from(Run).where(
                Run.status.in_(("queued", "running")))) == 0
            assert session.scalar(sa.select(sa.func.count()).select_from(Server).where(
                Server.lease_owner.is_not(None))) == 0
            failed = session.scalars(sa.select(Run.error_code).where(Run.status == "failed"))
            assert set(failed) == {"BATCH_FAILED"}
            session.commit()
    finally:
        for sim in sims:
            sim.stop()
