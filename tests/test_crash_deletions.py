"""A delete run whose process is killed (SIGKILL) after the server deleted a member but before
the outcome was stored: the run stays "running" with nothing moving, and once the lease's time
has passed the next delete run marks it interrupted, its memberships "may or may not have been
deleted" (true: the server did delete this one), on every database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin.engine import deletions
from lm_billing_plugin.engine.lookups import Membership
from lm_billing_plugin.models import DeleteRun, DeleteRunItem, Server
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim

ROOT = Path(__file__).resolve().parent.parent
LEASE = 1.0
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


def test_sigkill_mid_delete_run_is_marked_interrupted_by_the_next(
    crash_app: Flask, db_url: str, sim: HostSim
) -> None:
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

    time.sleep(LEASE + 0.2)
    result = deletions.delete_memberships([Membership(sid, lists[1], PAT)], actor="t")
    assert [d.outcome for d in result.deletions] == ["deleted"]
    old = deletions.delete_outcomes(dead_id)
    assert old.status == "interrupted" and old.finished
    assert [(d.list, d.outcome) for d in old.deletions] == [(lists[0], "interrupted")]
    assert "may or may not have been deleted" in (old.deletions[0].message or "")
