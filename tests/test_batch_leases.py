"""Each server of a batch is claimed in the database (committed, visible to any other
connection) before its fetch begins, and the claim names the run that fetches it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from test_engine import FAST, add_server, lst, session, sims, small

from lm_billing_plugin.engine import batches as runner
from lm_billing_plugin.models import Run, Server, utcnow
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import HostSim

__all__ = ["sims"]


@pytest.fixture
def papp(make_app: Callable[..., Flask], db_url: str) -> Iterator[Flask]:
    app = make_app(db_url, LM_BILLING_MAX_PARALLEL=3, **FAST)
    with app.app_context():
        yield app


def test_each_server_is_claimed_in_the_database_while_it_is_fetched(
        papp: Flask, sims: Callable[..., HostSim], monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [add_server(f"S{i}", sims(small(lst("a")), latency=0.3)) for i in range(4)]
    engine = get_state().engine
    holders: list[tuple[Any, ...]] = []
    fetch = runner._BatchWorker.run

    def watching(self: Any, targets: Any) -> Any:
        original = self.fetch

        def fetch_and_look(target: Any, deadline: float) -> Any:
            # Another connection (another process would see the same) while we fetch.
            with engine.connect() as other:
                holders.append(other.execute(
                    sa.select(Server.lease_owner, Server.lease_run_id)
                    .where(Server.id == target.server_id)).one())
            return original(target, deadline)

        self.fetch = fetch_and_look
        return fetch(self, targets)

    monkeypatch.setattr(runner._BatchWorker, "run", watching)
    result = runner.validate_servers(ids, actor="t")
    assert len(holders) == len(ids)
    assert all(owner is not None and run_id is not None for owner, run_id in holders)
    assert {s.run_id for s in result.servers} == {run_id for _o, run_id in holders}
    session().commit()


# --- a store's commit claims the next server (one commit a server) -------------------------


@pytest.fixture
def oneapp(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    """One fetch at a time: run_parallel hands two servers ahead, so from the third on each
    server is claimed by the store commit of the one before — on SQLite only (see
    test_a_store_claims_the_next_server_only_on_sqlite)."""
    app = make_app(LM_BILLING_MAX_PARALLEL=1, **FAST)
    with app.app_context():
        yield app


def _watch_claims(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """(server id, lease owner, lease run id) as another connection sees them at each fetch."""
    engine = get_state().engine
    holders: list[tuple[Any, ...]] = []
    run = runner._BatchWorker.run

    def watching(self: Any, targets: Any) -> Any:
        original = self.fetch

        def fetch_and_look(target: Any, deadline: float) -> Any:
            with engine.connect() as other:
                holders.append((target.server_id, *other.execute(
                    sa.select(Server.lease_owner, Server.lease_run_id)
                    .where(Server.id == target.server_id)).one()))
            return original(target, deadline)

        self.fetch = fetch_and_look
        return run(self, targets)

    monkeypatch.setattr(runner._BatchWorker, "run", watching)
    return holders


def _commits(func: Callable[[], Any]) -> int:
    engine = get_state().engine
    count = [0]

    def commit(conn: Any) -> None:
        count[0] += 1

    sa.event.listen(engine, "commit", commit)
    try:
        func()
    finally:
        sa.event.remove(engine, "commit", commit)
    return count[0]


def test_from_the_third_server_on_one_commit_stores_a_server_and_claims_the_next(
        oneapp: Flask, sims: Callable[..., HostSim], monkeypatch: pytest.MonkeyPatch) -> None:
    sim = sims(small(lst("a")))
    ids = [add_server(f"S{i}", sim) for i in range(5)]
    holders = _watch_claims(monkeypatch)
    one = _commits(lambda: runner.validate_servers(ids[:1], actor="t"))
    holders.clear()
    result: list[Any] = []
    five = _commits(lambda: result.append(runner.validate_servers(ids, actor="t")))
    assert all(s.ok for s in result[0].servers)
    # Claims of their own for the two handed ahead at the start, then one commit a server.
    assert five - one == (2 + 5) - (1 + 1)
    # Each server is still claimed (committed, seen from another connection) while fetched,
    # by the run that fetches it.
    assert sorted(h[0] for h in holders) == sorted(ids)
    runs = {s.server_id: s.run_id for s in result[0].servers}
    assert all(owner is not None and run_id == runs[sid] for sid, owner, run_id in holders)
    assert session().execute(sa.select(sa.func.count()).select_from(Server)
                             .where(Server.lease_owner.is_not(None))).scalar_one() == 0
    session().commit()


def test_a_store_claims_the_next_server_only_on_sqlite(
        make_app: Callable[..., Flask], db_url: str, sims: Callable[..., HostSim],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL and MariaDB a store holds its server's row lock until its commit; claiming
    another row in that transaction could deadlock with a second batch doing the same."""
    app = make_app(db_url, LM_BILLING_MAX_PARALLEL=1, **FAST)
    sim = sims(small(lst("a")))
    in_store: list[int] = []
    real = runner._BatchWorker._claim_ahead

    def watch(self: Any, now: Any, count: int, **kwargs: Any) -> Any:
        if count == 1 and "current" not in kwargs:  # the store's call
            in_store.append(count)
        return real(self, now, count, **kwargs)

    monkeypatch.setattr(runner._BatchWorker, "_claim_ahead", watch)
    with app.app_context():
        ids = [add_server(f"S{i}", sim) for i in range(4)]
        assert all(s.ok for s in runner.validate_servers(ids, actor="t").servers)
        sqlite = get_state().engine.dialect.name == "sqlite"
        assert bool(in_store) == sqlite
        assert session().execute(sa.select(sa.func.count()).select_from(Server)
                                 .where(Server.lease_owner.is_not(None))).scalar_one() == 0
        session().commit()


def test_a_failed_store_commit_takes_its_claim_of_the_next_server_back_with_it(
        oneapp: Flask, sims: Callable[..., HostSim], monkeypatch: pytest.MonkeyPatch) -> None:
    sim = sims(small(lst("a")))
    ids = [add_server(f"S{i}", sim) for i in range(4)]
    holders = _watch_claims(monkeypatch)
    real = runner._BatchWorker._claim_ahead
    failed: list[set[int]] = []

    def claim_then_fail(self: Any, now: Any, count: int, **kwargs: Any) -> Any:
        claimed = real(self, now, count, **kwargs)
        if not failed and claimed:
            # The store's transaction (this server's result and the next one's claim) fails
            # after the claim was written: both roll back.
            failed.append(claimed)
            raise sa.exc.OperationalError("COMMIT", {}, Exception("disk I/O error"))
        return claimed

    monkeypatch.setattr(runner._BatchWorker, "_claim_ahead", claim_then_fail)
    out = {s.server_id: s for s in runner.validate_servers(ids, actor="t").servers}
    assert failed == [{ids[2]}]  # the first store claimed the third server, then failed
    first = out[ids[0]]
    assert not first.ok and first.error is not None and first.error["code"] == "STORE"
    assert all(out[sid].ok for sid in ids[1:])
    # The third server was claimed again on its own (its claim went with the failed
    # transaction) before it was fetched.
    assert all(owner is not None and run_id is not None for _sid, owner, run_id in holders)
    assert sorted(h[0] for h in holders) == sorted(ids)
    server = session().get(Server, ids[0])
    assert server.validated_at is None  # nothing of the failed store was kept
    assert session().execute(sa.select(sa.func.count()).select_from(Server)
                             .where(Server.lease_owner.is_not(None))).scalar_one() == 0
    session().commit()


def test_a_server_taken_when_the_store_before_it_would_claim_it_is_skipped(
        oneapp: Flask, sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a")))
    ids = [add_server(f"S{i}", sim) for i in range(4)]
    until = utcnow() + timedelta(hours=1)
    session().execute(sa.update(Server).where(Server.id == ids[2])
                      .values(lease_owner="other:1:x", lease_expires_at=until))
    session().commit()
    out = {s.server_id: s for s in runner.validate_servers(ids, actor="t").servers}
    assert out[ids[2]].skipped_reason == "already running"
    assert all(out[sid].ok for sid in ids if sid != ids[2])
    owners = dict(session().execute(sa.select(Server.id, Server.lease_owner)).all())
    session().commit()
    assert owners == {ids[0]: None, ids[1]: None, ids[2]: "other:1:x", ids[3]: None}


def test_the_servers_handed_ahead_at_the_start_are_claimed_together_in_one_commit(
        papp: Flask, sims: Callable[..., HostSim], monkeypatch: pytest.MonkeyPatch) -> None:
    sim = sims(small(lst("a")))
    ids = [add_server(f"S{i}", sim) for i in range(7)]
    holders = _watch_claims(monkeypatch)
    one = _commits(lambda: runner.validate_servers(ids[:1], actor="t"))
    holders.clear()
    result: list[Any] = []
    seven = _commits(lambda: result.append(runner.validate_servers(ids, actor="t")))
    assert all(s.ok for s in result[0].servers)
    # Three fetch at once, six are handed ahead: the first claimed alone (its fetch begins at
    # once), the next five together, the seventh by the first store's commit (SQLite) or on
    # its own (PostgreSQL, MariaDB: a store claims nothing else).
    own_claim = 0 if get_state().engine.dialect.name == "sqlite" else 1
    assert seven - one == (1 + 1 + 7) - (1 + 1) + own_claim
    runs = {s.server_id: s.run_id for s in result[0].servers}
    assert sorted(h[0] for h in holders) == sorted(ids)
    assert all(owner is not None and run_id == runs[sid] for sid, owner, run_id in holders)
    session().commit()


def test_claiming_together_skips_a_held_server_and_takes_over_an_expired_lease(
        papp: Flask, sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a")))
    ids = [add_server(f"S{i}", sim) for i in range(4)]
    old_run = runner.validate_servers(ids[3:], actor="t").servers[0].run_id
    batch_id = runner.create_batch("validate", ids, actor="t")
    # After the batch was made (which sweeps expired leases): one server is held by a live
    # run elsewhere, another's lease has just expired with its run still marked running.
    now = utcnow()
    session().execute(sa.update(Server).where(Server.id == ids[2]).values(
        lease_owner="other:1:live", lease_expires_at=now + timedelta(hours=1)))
    session().execute(sa.update(Server).where(Server.id == ids[3]).values(
        lease_owner="other:2:dead", lease_expires_at=now - timedelta(seconds=1),
        lease_run_id=old_run))
    session().execute(sa.update(Run).where(Run.id == old_run).values(status="running"))
    session().commit()
    out = {s.server_id: s for s in runner.run_batch(batch_id).servers}
    assert out[ids[2]].skipped_reason == "already running"
    assert all(out[sid].ok for sid in (ids[0], ids[1], ids[3]))
    assert session().get(Run, old_run).status == "interrupted"
    owners = dict(session().execute(sa.select(Server.id, Server.lease_owner)).all())
    session().commit()
    assert owners == {ids[0]: None, ids[1]: None, ids[2]: "other:1:live", ids[3]: None}
