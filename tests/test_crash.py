"""A sync process killed with SIGKILL in the middle of writing a server's changes: the
database keeps the server wholly as it was, and the next sync applies it in full."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin.engine import batches
from lm_billing_plugin.models import MailingList, Run, Server
from lm_billing_plugin.state import get_state
from lm_billing_plugin.tclport.records import ListRecord, SiteRecord
from lm_billing_plugin.testing.simulator import Dataset, HostSim

ROOT = Path(__file__).resolve().parent.parent
LEASE = 1.0

# The child syncs every server, and stops for good right after the first write to
# lm_billing_list has gone to the database inside the sync's transaction.
CHILD = """
import sys, time
import sqlalchemy as sa
from tests.sched_app import create_app
from lm_billing_plugin.engine import batches
from lm_billing_plugin.state import get_state

app = create_app()
with app.app_context():
    def pause(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("INSERT INTO LM_BILLING_LIST",
                                                  "UPDATE LM_BILLING_LIST")):
            print("mid-write", flush=True)
            time.sleep(120)
    sa.event.listen(get_state().db.engine, "after_cursor_execute", pause)
    batches.sync_servers(None, actor="doomed")
    print("finished", flush=True)
"""


def lst(name: str, members: int = 10) -> ListRecord:
    return ListRecord(name, "s1", f"about {name}", date(2020, 1, 1), members, "o@example.com")


@pytest.fixture
def sim() -> Iterator[HostSim]:
    dataset = Dataset(sites=[SiteRecord("s1", "Site 1")], lists=[lst(f"l{i}") for i in range(5)])
    with HostSim(dataset) as server:
        yield server


@pytest.fixture
def crash_app(make_app: Callable[..., Flask], db_url: str) -> Iterator[Flask]:
    app = make_app(db_url, LM_BILLING_LEASE_SECONDS=LEASE)
    with app.app_context():
        yield app


def lists_of(server_id: int) -> dict[str, tuple[int, str]]:
    session = get_state().session
    rows = session.execute(
        sa.select(MailingList.name, MailingList.members, MailingList.status).where(
            MailingList.server_id == server_id
        )
    ).all()
    session.commit()
    return {name: (members, status) for name, members, status in rows}


def test_sigkill_mid_sync_leaves_the_server_wholly_old(
    crash_app: Flask, db_url: str, sim: HostSim
) -> None:
    session = get_state().session
    server = Server(name="Lists", host=sim.host, port=sim.port)
    session.add(server)
    session.commit()
    sid = server.id
    assert batches.sync_servers(None, actor="t").exit_code in (0, 1)
    before = lists_of(sid)
    synced_before = session.get(Server, sid).synced_at
    session.commit()

    sim.add_list("new-one", site="s1", members=3)
    sim.set_members("l1", 999)
    sim.remove_list("l2")

    env = dict(os.environ, SCHED_DB_URL=db_url, SCHED_LEASE=str(LEASE))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        assert line == "mid-write", child.stderr.read() if child.stderr else line
        child.send_signal(signal.SIGKILL)
        assert child.wait(20) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(20)
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()

    # Wholly old: no new list, no changed member count, nothing marked removed, no Synced.
    assert lists_of(sid) == before
    assert session.get(Server, sid).synced_at == synced_before
    session.commit()

    # Once the dead process's lease has expired, the next sync applies the server in full
    # and records the dead run as interrupted.
    time.sleep(LEASE + 0.2)
    result = batches.sync_servers([sid], actor="t")
    assert result.servers[0].changes == {"created": 1, "updated": 1, "removed": 1}
    after = lists_of(sid)
    assert after["new-one"][1] == "active"
    assert after["l1"][0] == 999
    assert after["l2"][1] == "removed"
    statuses = set(session.scalars(sa.select(Run.status).where(Run.triggered_by == "doomed")))
    session.commit()
    assert statuses == {"interrupted"}
