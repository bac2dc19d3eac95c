"""LM_BILLING_BATCH_PROCESS_APP: validate/sync batches in a process of their own (`flask
lm-billing run-batch` on tests.batch_app), from the engine, the pages and the scheduler; and
every way that process can fail: it cannot start, it opens another database, it is killed."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from batch_app import APP_IMPORT
from conftest import build_app
from flask import Flask

from lm_billing_plugin.engine import batch_process, batches
from lm_billing_plugin.engine import servers as registry
from lm_billing_plugin.models import Base, Batch, Run, Server
from lm_billing_plugin.schedule.service import WorkRequest, default_work
from lm_billing_plugin.secrets import generate_key
from lm_billing_plugin.settings import Settings
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import Dataset, HostSim
from lm_billing_plugin.web.views.runs import shutdown_executor, start_batch, wait_for_batches

ROOT = Path(__file__).resolve().parent.parent
PATIENT = {"LM_BILLING_SERVER_DEADLINE": 30.0, "LM_BILLING_OPERATION_TIMEOUT": 20.0}


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Flask]:
    """The test's own host app and, through the environment, the batch process's: the same
    database and key (the child builds tests.batch_app from them)."""
    key = generate_key()
    monkeypatch.chdir(ROOT)  # where `tests.batch_app` imports from
    monkeypatch.setenv("BATCH_KEY", key)
    monkeypatch.setenv("BATCH_CONFIG", json.dumps(PATIENT))
    made: list[Flask] = []

    def make(db_url: str, *, child_db: str | None = None, **config: Any) -> Flask:
        monkeypatch.setenv("BATCH_DB_URL", child_db or db_url)
        settings = {"LM_BILLING_BATCH_PROCESS_APP": APP_IMPORT, **PATIENT, **config}
        app = build_app(db_url, LM_BILLING_ENCRYPTION_KEYS=[key], **settings)
        made.append(app)
        return app

    yield make
    for app in made:
        shutdown_executor(app, wait=True)


@pytest.fixture
def sims() -> Iterator[list[HostSim]]:
    with HostSim(Dataset.generate(sites=2, lists=6, seed=1)) as one, \
            HostSim(Dataset.generate(sites=1, lists=4, seed=2)) as two:
        yield [one, two]


def add_servers(app: Flask, sims: list[HostSim]) -> list[int]:
    with app.app_context():
        return [registry.create_server(f"s{i}", "127.0.0.1", sim.port, actor="test").id
                for i, sim in enumerate(sims)]


def batch_row(app: Flask, batch_id: int) -> Any:
    with app.app_context():
        session = get_state().session
        row = session.execute(sa.select(Batch.status, Batch.pid, Batch.done, Batch.total)
                              .where(Batch.id == batch_id)).one()
        session.commit()
        return row


def runs_of(app: Flask, batch_id: int) -> list[tuple[str, str | None, str | None]]:
    with app.app_context():
        session = get_state().session
        rows = session.execute(sa.select(Run.status, Run.error_code, Run.error_message)
                               .where(Run.batch_id == batch_id)).all()
        session.commit()
        return [tuple(r) for r in rows]


def leased(app: Flask) -> int:
    with app.app_context():
        session = get_state().session
        n = session.scalar(sa.select(sa.func.count()).select_from(Server)
                           .where(Server.lease_owner.is_not(None)))
        session.commit()
        return int(n or 0)


def shape(result: batches.BatchResult) -> list[Any]:
    return [(s.name, s.ok, s.status, s.version, [(p["kind"], p["object"]) for p in s.problems])
            for s in result.servers]


def test_a_batch_runs_in_its_own_process_and_hands_back_its_whole_result(
    host: Callable[..., Flask], db_url: str, sims: list[HostSim]
) -> None:
    app = host(db_url)
    add_servers(app, sims)
    with app.app_context():
        batch_id = batches.create_batch("sync", None, actor="test")
        there = batch_process.run_in_process(batch_id)
    row = batch_row(app, batch_id)
    assert (row.status, row.done, row.total) == ("finished", 2, 2)
    assert row.pid != os.getpid()  # claimed and run by the child
    assert there.batch_id == batch_id and there.kind == "sync" and not there.dry_run
    assert all(s.ok and s.validated_at and s.synced_at for s in there.servers)
    assert sum(s.changes["created"] for s in there.servers) == 3 + 10  # every site and list
    # Every field came back: the same batch again in this process gives the same outcomes
    # (the problems found are still open, with the same ids).
    assert there == batches.BatchResult.from_record(json.loads(json.dumps(there.as_record())))
    with app.app_context():
        here = batches.validate_servers(None, actor="test")
    assert shape(here) == shape(there)
    assert [[p["id"] for p in s.problems] for s in here.servers] == \
        [[p["id"] for p in s.problems] for s in there.servers]
    assert leased(app) == 0


def test_the_pages_and_the_scheduler_hand_their_batches_to_the_process(
    host: Callable[..., Flask], tmp_path: Path, sims: list[HostSim]
) -> None:
    app = host(f"sqlite:///{tmp_path / 'billing.sqlite'}")
    add_servers(app, sims)
    with app.test_request_context():
        page_batch = start_batch("validate", None)
    wait_for_batches(app, timeout=120)
    row = batch_row(app, page_batch)
    assert (row.status, row.done, row.total) == ("finished", 2, 2) and row.pid != os.getpid()

    recorded: list[int] = []
    with app.app_context():
        result = default_work(WorkRequest(kind="validate", run_id=0,
                                          record_batch=recorded.append))
    assert recorded == [result.batch_id] and len(result.servers) == 2
    assert all(s.ok for s in result.servers)
    assert batch_row(app, result.batch_id).pid != os.getpid()


def test_a_process_that_cannot_start_fails_its_batch_and_says_what_to_check(
    host: Callable[..., Flask], tmp_path: Path, sims: list[HostSim]
) -> None:
    app = host(f"sqlite:///{tmp_path / 'billing.sqlite'}",
               LM_BILLING_BATCH_PROCESS_APP="no_such_portal_module:create_app()")
    add_servers(app, sims)
    with app.app_context():
        batch_id = batches.create_batch("validate", None, actor="test")
        with pytest.raises(batch_process.BatchProcessError) as caught:
            batch_process.run_in_process(batch_id)
    message = str(caught.value)
    assert f"before finishing batch {batch_id} (2 server(s) not done)" in message
    assert "no_such_portal_module" in message and "LM_BILLING_BATCH_PROCESS_APP" in message
    assert batch_row(app, batch_id).status == "failed"
    runs = runs_of(app, batch_id)
    assert [(status, code) for status, code, _ in runs] == [("failed", "BATCH_FAILED")] * 2
    assert all("run it again" in (text or "") for _, _, text in runs)
    # The page's batch ends the same way: failed, not "waiting" for ever.
    with app.test_request_context():
        page_batch = start_batch("validate", None)
    wait_for_batches(app, timeout=120)
    assert batch_row(app, page_batch).status == "failed"


def test_a_process_on_another_database_runs_nothing(
    host: Callable[..., Flask], tmp_path: Path, sims: list[HostSim]
) -> None:
    # Long paths (as CI's are): the child's message is long, and its end says what to do.
    deep = tmp_path / ("d" * 100) / ("e" * 100)
    deep.mkdir(parents=True)
    other = f"sqlite:///{deep / 'other.sqlite'}"
    other_engine = sa.create_engine(other)
    Base.metadata.create_all(other_engine)
    app = host(f"sqlite:///{deep / 'billing.sqlite'}", child_db=other)
    add_servers(app, sims)
    with app.app_context():
        batch_id = batches.create_batch("validate", None, actor="test")
        with pytest.raises(batch_process.BatchProcessError,
                           match="must build an app on the same database"):
            batch_process.run_in_process(batch_id)
    assert batch_row(app, batch_id).status == "failed"
    with other_engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Batch)) == 0
    other_engine.dispose()


def test_a_killed_process_gives_its_servers_back_at_once(
    host: Callable[..., Flask], tmp_path: Path
) -> None:
    app = host(f"sqlite:///{tmp_path / 'billing.sqlite'}", LM_BILLING_BATCH_PROCESS_NICE=7)
    with HostSim(Dataset.generate(sites=1, lists=3, seed=3), latency=0.5) as slow:
        add_servers(app, [slow])
        with app.app_context():
            batch_id = batches.create_batch("validate", None, actor="test")
        seen: dict[str, Any] = {}

        def kill_when_running() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                row = batch_row(app, batch_id)
                if row.status == "running" and leased(app):
                    stat = Path(f"/proc/{row.pid}/stat").read_text()
                    seen["nice"] = int(stat.rsplit(")", 1)[1].split()[16])
                    os.kill(row.pid, signal.SIGKILL)
                    seen["killed"] = row.pid
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_running)
        killer.start()
        with app.app_context(), pytest.raises(batch_process.BatchProcessError,
                                               match=f"code -{int(signal.SIGKILL)}"):
            batch_process.run_in_process(batch_id)
        killer.join()
        assert seen.get("killed") and seen["nice"] == 7  # it ran at the lower priority
        assert batch_row(app, batch_id).status == "failed"
        assert [(s, c) for s, c, _ in runs_of(app, batch_id)] == [("failed", "BATCH_FAILED")]
        assert leased(app) == 0  # free now, not when the lease expires
        with app.app_context():
            again = batches.validate_servers(None, actor="test")
        assert [s.ok for s in again.servers] == [True]


def test_run_batch_refuses_a_batch_that_is_not_queued(
    host: Callable[..., Flask], tmp_path: Path
) -> None:
    app = host(f"sqlite:///{tmp_path / 'billing.sqlite'}")
    result = app.test_cli_runner().invoke(args=["lm-billing", "run-batch", "999"])
    assert result.exit_code == 2
    assert "batch 999 is not queued (already run, or no such batch)" in result.output


@pytest.mark.parametrize("nice", [-1, 20])
def test_the_priority_must_be_a_nice_value(nice: int) -> None:
    with pytest.raises(ValueError, match="LM_BILLING_BATCH_PROCESS_NICE must be between 0"):
        Settings.from_config({"LM_BILLING_BATCH_PROCESS_NICE": nice})
