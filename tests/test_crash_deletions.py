"""A delete run whose process is killed (SIGKILL) after the server deleted a member but before
the outcome was stored: the run stays "running" with nothing moving, and once the lease's time
has passed the next delete run marks it interrupted, its memberships "may or may not have been
deleted" (true: the server did delete this one), on every database; so do its page, the API's
reads and the next validate or sync batch, without another delete run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin.engine import deletions
from lm_billing_plugin.engine.lookups import Membership
from lm_billing_plugin.models import DeleteRun, DeleteRunItem, Server, utcnow
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim

ROOT = Path(__file__).resolve().parent.parent
# Long enough that no sweep before _backdate can take the dead run for stale however slow the
# machine is (a 1 s lease once let the first, "too early" sweep close it under load).
LEASE = 30.0
PAT = "pat.jones@example.org"

# The child deletes the memberships and stops for good at the first write of an outcome,
# inside its transaction (the server has answered; billing has not stored it).
CHILD = """
import os, time
import sqlalchemy as sa
from tests.sched_app import create_app
from lm_billing_plugin.engine import deletions
from lm_billing_plugin.engine.lookups import Membership

app = create_app()
with app.app_context():
    from lm_billing_plugin.state import get_state
    def pause(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE LM_BILLING_DELETE_RUN_ITEM"):
            print("mid-store", flush=True)
            time.sleep(120)
    sa.event.listen(get_state().db.engine, "after_cursor_execute", pause)
    wanted = [Membership(int(os.environ["SERVER_ID"]), name, os.environ["EMAIL"])
              for name in os.environ["LISTS"].split(",")]
    deletions.delete_memberships(wanted, actor="doomed")
    print("finished", flush=True)
"""


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(Dataset.generate(sites=1, lists=12, seed=7)) as server:
        yield server


@pytest.fixture
def crash_app(make_app: Callable[..., Flask], db_url: str) -> Iterator[Flask]:
    app = make_app(db_url, LM_BILLING_LEASE_SECONDS=LEASE)
    with app.app_context():
        yield app


def _killed_mid_store(db_url: str, sim: HostSim) -> tuple[int, int, list[str]]:
    """A child process deletes one membership and is SIGKILLed before it stores the outcome;
    returns the dead run's id, the server's id and the lists the address is on."""
    session = get_state().session
    server = Server(name="Lists", host=sim.host, port=sim.port)
    session.add(server)
    session.commit()
    sid = server.id
    session.commit()  # reading the id began a transaction: end it before the child writes
    lists = [m.list for m in sim.members_of(PAT)]
    assert len(lists) >= 2
    env = dict(os.environ, SCHED_DB_URL=db_url, SCHED_LEASE=str(LEASE), SERVER_ID=str(sid),
               EMAIL=PAT, LISTS=",".join(lists[:1]))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        assert line == "mid-store", child.stderr.read() if child.stderr else line
        child.send_signal(signal.SIGKILL)
        assert child.wait(20) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(20)
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()

    # The server deleted it; billing stored no outcome: the run is still "running".
    assert lists[0] not in [m.list for m in sim.members_of(PAT)]
    (dead,) = session.scalars(sa.select(DeleteRun)).all()
    dead_id = dead.id
    assert (dead.status, dead.actor, dead.finished_at) == ("running", "doomed", None)
    assert set(session.scalars(sa.select(DeleteRunItem.outcome))) == {"pending"}
    session.commit()
    return dead_id, sid, lists


def _backdate(dead_id: int) -> None:
    """As if the lease had passed since the dead run last moved (instead of waiting for it)."""
    session = get_state().session
    session.execute(sa.update(DeleteRun).where(DeleteRun.id == dead_id).values(
        updated_at=utcnow() - timedelta(seconds=LEASE + 1)))
    session.commit()


def _is_interrupted(dead_id: int, lists: list[str]) -> None:
    old = deletions.delete_outcomes(dead_id)
    assert old.status == "interrupted" and old.finished
    assert [(d.list, d.outcome) for d in old.deletions] == [(lists[0], "interrupted")]
    assert "may or may not have been deleted" in (old.deletions[0].message or "")


def test_sigkill_mid_delete_run_is_marked_interrupted_by_the_next(
    crash_app: Flask, db_url: str, sim: HostSim
) -> None:
    dead_id, sid, lists = _killed_mid_store(db_url, sim)
    _backdate(dead_id)
    result = deletions.delete_memberships([Membership(sid, lists[1], PAT)], actor="t")
    assert [d.outcome for d in result.deletions] == ["deleted"]
    _is_interrupted(dead_id, lists)


@pytest.mark.parametrize("where", ["page", "api", "batch"])
def test_sigkill_mid_delete_run_is_swept_without_another_delete_run(
    crash_app: Flask, db_url: str, sim: HostSim, where: str
) -> None:
    """Where other stale work is swept: the run's own page (and the Utilities page), the
    API's reads, the next validate or sync batch. Before the lease has passed they leave the
    run alone (a slow run is not a dead one)."""
    from lm_billing_plugin.engine import batches

    dead_id, sid, lists = _killed_mid_store(db_url, sim)
    client = crash_app.test_client()

    def sweep() -> None:
        if where == "page":
            page = client.get(f"/billing/utilities/deletions/{dead_id}")
            assert page.status_code == 200
            assert client.get("/billing/utilities").status_code == 200
        elif where == "api":
            got = client.get(f"/billing/api/v1/delete-runs/{dead_id}")
            assert got.status_code == 200, got.get_json()
        else:
            batches.create_batch("validate", [sid], actor="t")

    sweep()
    assert deletions.delete_outcomes(dead_id).status == "running"
    _backdate(dead_id)
    sweep()
    _is_interrupted(dead_id, lists)
    if where == "page":
        page = client.get(f"/billing/utilities/deletions/{dead_id}").get_data(as_text=True)
        assert "1 interrupted (the run stopped" in page
        assert '<meta http-equiv="refresh"' not in page
    elif where == "api":
        doc = client.get(f"/billing/api/v1/delete-runs/{dead_id}").get_json()
        assert doc["status"] == "interrupted" and doc["finished"]
        assert doc["outcomes"]["interrupted"] == 1 and doc["outcomes"]["pending"] == 0
