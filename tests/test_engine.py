"""The reconciliation engine over real simulated hosting servers and real databases: problems
appearing and resolving, sync/fix idempotency, the gate, parallel batches with dead and hostile
servers, statement counts, the lease across processes, crash atomicity and hostile names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _sim import closed_port
from flask import Flask

from lm_billing_plugin.catalog import assignment
from lm_billing_plugin.engine import batches as runner
from lm_billing_plugin.engine import fixes
from lm_billing_plugin.models import (
    PROBLEM_KINDS,
    Assignment,
    AuditEntry,
    Batch,
    BillingGroup,
    Customer,
    HostingPlan,
    MailingList,
    Problem,
    Run,
    Server,
    Site,
    Usage,
    utcnow,
)
from lm_billing_plugin.state import get_state
from lm_billing_plugin.tclport.records import ListRecord, SiteRecord
from lm_billing_plugin.testing.simulator import Dataset, HostSim

FAST: dict[str, Any] = {
    "LM_BILLING_CONNECT_TIMEOUT": 1.0,
    "LM_BILLING_READ_TIMEOUT": 1.0,
    "LM_BILLING_OPERATION_TIMEOUT": 2.0,
    "LM_BILLING_SERVER_DEADLINE": 2.0,
}
# For peers that answer: a loaded CI machine can stall a simulator longer than FAST allows.
# FAST is kept for the tests that wait for a deadline to pass (hostile peers).
PATIENT: dict[str, Any] = {
    "LM_BILLING_CONNECT_TIMEOUT": 10.0,
    "LM_BILLING_READ_TIMEOUT": 10.0,
    "LM_BILLING_OPERATION_TIMEOUT": 20.0,
    "LM_BILLING_SERVER_DEADLINE": 30.0,
}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def sims() -> Iterator[Callable[..., HostSim]]:
    started: list[HostSim] = []

    def start(dataset: Dataset | None = None, **kwargs: Any) -> HostSim:
        sim = HostSim(dataset or Dataset.generate(sites=2, lists=20), **kwargs).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def eapp(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    """A SQLite host app with patient timeouts, inside an app context."""
    app = make_app(**PATIENT)
    with app.app_context():
        yield app


@pytest.fixture
def fast_app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    """A SQLite host app with short timeouts (2 s a server), for the hostile-peer tests."""
    app = make_app(**FAST)
    with app.app_context():
        yield app


@pytest.fixture
def dbapp(make_app: Callable[..., Flask], db_url: str) -> Iterator[Flask]:
    """The same on each database backend."""
    app = make_app(db_url, **PATIENT)
    with app.app_context():
        yield app


def session() -> Any:
    return get_state().session


def add_server(name: str, where: HostSim | tuple[str, int]) -> int:
    host, port = where.address if isinstance(where, HostSim) else where
    server = Server(name=name, host=host, port=port)
    session().add(server)
    session().commit()
    return server.id


def small(*lists: ListRecord, sites: tuple[str, ...] = ("s1", "s2"),
          logging: str = "lists") -> Dataset:
    return Dataset(sites=[SiteRecord(s, f"Site {s}") for s in sites], lists=list(lists),
                   logging_mode=logging)


def lst(name: str, site: str = "s1", members: int = 10) -> ListRecord:
    return ListRecord(name, site, f"about {name}", date(2020, 1, 1), members, "o@example.com")


def open_problems(server_id: int | None = None) -> set[tuple[str, str]]:
    q = sa.select(Problem.kind, Problem.object_name).where(Problem.status == "open")
    if server_id is not None:
        q = q.where(sa.or_(Problem.server_id == server_id, Problem.server_id.is_(None)))
    out = {(k, n) for k, n in session().execute(q)}
    session().commit()
    return out


def billing_lists(server_id: int) -> dict[str, tuple[str, int, str]]:
    rows = session().execute(
        sa.select(MailingList.name, MailingList.site_name, MailingList.members,
                  MailingList.status).where(MailingList.server_id == server_id)
    ).all()
    session().commit()
    return {r.name: (r.site_name, r.members, r.status) for r in rows}


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every SQL statement the app's engine executes inside the block (executemany = one)."""
    seen: list[str] = []
    engine = get_state().db.engine

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # On SQLite the plugin emits BEGIN itself (lm_billing_plugin.sqlite): not work.
        if not statement.startswith("BEGIN"):
            seen.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def list_writes(seen: list[str]) -> list[str]:
    return [s for s in seen if s.upper().startswith(("INSERT INTO LM_BILLING_LIST ",
                                                     "UPDATE LM_BILLING_LIST "))]


def make_group(*, company: str = "Acme", active: bool = True, **limits: int) -> int:
    s = session()
    customer = Customer(company=company, is_active=active)
    plan = HostingPlan(name=f"Plan of {company}", **limits)
    s.add_all([customer, plan])
    s.flush()
    group = BillingGroup(customer_id=customer.id, name=f"{company} contract", plan_id=plan.id)
    s.add(group)
    s.commit()
    return group.id


# --- every problem kind, appearing and resolved ------------------------------------------------


def test_every_problem_kind_appears_and_is_resolved(eapp: Flask,
                                                    sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a", members=8), lst("b", members=3), lst("c", "s2", members=2),
                     logging="no"))
    sid = add_server("Lists", sim)
    seen_kinds: set[str] = set()

    result = runner.validate_servers([sid], actor="tester")
    found = open_problems(sid)
    seen_kinds |= {k for k, _ in found}
    assert found == {("unknown_site", "s1"), ("unknown_site", "s2"), ("unknown_list", "a"),
                     ("unknown_list", "b"), ("unknown_list", "c"), ("logging_off", "Lists")}
    assert result.exit_code == 1 and result.servers[0].ok
    assert billing_lists(sid) == {}  # validate changes no billing data
    server = session().get(Server, sid)
    assert server.validated_at is not None and server.synced_at is None
    assert server.status == "logging_off" and server.version == "12.3"
    session().commit()

    runner.sync_servers([sid], actor="tester")
    found = open_problems(sid)
    # After a sync the new lists are billing's, and wait for an owner.
    assert found == {("unassigned_list", "a"), ("unassigned_list", "b"),
                     ("unassigned_list", "c"), ("logging_off", "Lists")}
    seen_kinds |= {k for k, _ in found}
    resolved = session().scalars(sa.select(Problem.kind).where(Problem.status == "resolved"))
    assert sorted(resolved) == ["unknown_list"] * 3 + ["unknown_site"] * 2
    session().commit()

    group = make_group(active=False, max_lists=2, max_members=10, max_members_per_list=5,
                       max_lists_per_site=1, max_sites=1)
    assert assignment.assign(group, server_id=sid, whole_server=True, actor="tester") == 1
    runner.validate_servers([sid], actor="tester")
    found = open_problems(sid)
    seen_kinds |= {k for k, _ in found}
    assert found == {
        ("over_max_lists", "Acme contract"), ("over_max_members", "Acme contract"),
        ("over_max_members_per_list", "a"), ("over_max_lists_per_site", "s1"),
        ("over_max_sites", "Acme contract"), ("inactive_customer_has_lists", "Acme"),
        ("logging_off", "Lists"),
    }

    sim.remove_list("c")
    sim.remove_site("s2")
    sim.set_members("b", 4)
    sim.add_list("d", site="s1", members=1)
    sim.set_version("v" * 41)  # longer than Server.version holds
    runner.validate_servers([sid], actor="tester")
    found = open_problems(sid)
    seen_kinds |= {k for k, _ in found}
    assert {("missing_list", "c"), ("missing_site", "s2"), ("changed_list", "b"),
            ("unknown_list", "d"), ("invalid_field", "Lists")} <= found
    assert seen_kinds == set(PROBLEM_KINDS)

    # Resolve everything: a bigger plan, an active customer, logging on, and a sync.
    s = session()
    s.execute(sa.update(HostingPlan).values(max_lists=0, max_members=0, max_members_per_list=0,
                                            max_lists_per_site=0, max_sites=0))
    s.execute(sa.update(Customer).values(is_active=True))
    s.commit()
    sim.set_logging("lists")
    sim.set_version("12.3")
    result = runner.sync_servers([sid], actor="tester")
    assert open_problems() == set()
    assert result.exit_code == 0
    assert result.servers[0].changes == {"created": 1, "updated": 1, "removed": 2}
    kinds_resolved = set(session().scalars(
        sa.select(Problem.kind).where(Problem.status == "resolved")))
    assert kinds_resolved == set(PROBLEM_KINDS)
    assert billing_lists(sid)["c"][2] == "removed"
    # One row per problem: found again keeps the row (unassigned 'a' was seen by two runs).
    counts = session().execute(
        sa.select(Problem.fingerprint, sa.func.count()).group_by(Problem.fingerprint)).all()
    assert all(n == 1 for _fp, n in counts)
    session().commit()


def test_found_again_keeps_row_and_resolved_reopens(eapp: Flask,
                                                    sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a")))
    sid = add_server("Lists", sim)
    runner.sync_servers([sid], actor="t")
    first = session().execute(sa.select(Problem.id, Problem.last_run_id)).one()
    session().commit()
    runner.validate_servers([sid], actor="t")
    again = session().execute(sa.select(Problem.id, Problem.last_run_id, Problem.status)).one()
    session().commit()
    assert again.id == first.id and again.last_run_id != first.last_run_id
    group = make_group()
    assignment.assign(group, server_id=sid, whole_server=True, actor="t")
    runner.validate_servers([sid], actor="t")
    assert session().execute(sa.select(Problem.status)).scalar_one() == "resolved"
    session().commit()
    (aid,) = session().scalars(sa.select(Assignment.id))
    session().commit()
    assignment.unassign([aid], actor="t")
    # Unassigning reopened the same row at once (it judges the billing rules itself) ...
    row = session().execute(sa.select(Problem.id, Problem.status, Problem.closed_at)).one()
    session().commit()
    assert (row.id, row.status, row.closed_at) == (first.id, "open", None)
    # ... so the next validation finds it open already: the same row, nothing new.
    result = runner.validate_servers([sid], actor="t")
    row = session().execute(sa.select(Problem.id, Problem.status, Problem.closed_at)).one()
    assert (row.id, row.status, row.closed_at) == (first.id, "open", None)
    assert result.servers[0].new_problems == 0


# --- validate / sync semantics ----------------------------------------------------------------


def test_failed_validate_keeps_validated_time_and_problems(eapp: Flask,
                                                           sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a")))
    sid = add_server("Lists", sim)
    runner.validate_servers([sid], actor="t")
    before = session().get(Server, sid).validated_at
    session().commit()
    sim.set_password("changed")
    result = runner.validate_servers([sid], actor="t")
    out = result.servers[0]
    assert not out.ok and out.error is not None and out.error["code"] == "AUTH_FAILED"
    assert "password was rejected" in out.error["message"]
    assert result.exit_code == 2
    server = session().get(Server, sid)
    assert server.validated_at == before and server.status == "auth_failed"
    session().commit()
    assert open_problems(sid) == {("unknown_site", "s1"), ("unknown_site", "s2"),
                                  ("unknown_list", "a")}
    run = session().execute(sa.select(Run).order_by(Run.id.desc()).limit(1)).scalar_one()
    assert run.status == "failed" and run.error_code == "AUTH_FAILED"
    session().commit()


def test_dry_run_sync_writes_nothing(eapp: Flask, sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a"), lst("b")))
    sid = add_server("Lists", sim)

    def counts() -> tuple[int, ...]:
        s = session()
        out = tuple(s.scalar(sa.select(sa.func.count()).select_from(m))
                    for m in (MailingList, Site, Problem, Usage))
        s.commit()
        return out

    before = counts()
    result = runner.sync_servers([sid], actor="t", dry_run=True)
    out = result.servers[0]
    assert result.dry_run and out.ok
    assert out.changes == {"created": 4, "updated": 0, "removed": 0}
    assert {(p["kind"], p["object"]) for p in out.problems} == {("unassigned_list", "a"),
                                                                 ("unassigned_list", "b")}
    assert all(p["id"] is None for p in out.problems)
    assert counts() == before
    server = session().get(Server, sid)
    assert server.synced_at is None and server.validated_at is None
    assert server.status == "unchecked"
    session().commit()


def test_usage_is_stored_and_rewritten_only_when_it_changes(eapp: Flask,
                                                            sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a"), lst("b")))
    today = utcnow().date()
    sim.add_send("a", today, 100, 2000)
    sim.add_send("a", today.replace(day=1) - timedelta(days=1), 7, 7)  # last month
    sid = add_server("Lists", sim)
    runner.sync_servers([sid], actor="t")
    rows = session().execute(sa.select(Usage.period, Usage.messages, Usage.recipients,
                                       Usage.bytes)).all()
    session().commit()
    assert [tuple(r) for r in rows] == [(today.replace(day=1), 1, 100, 200_000)]
    with statements() as seen:
        runner.sync_servers([sid], actor="t")
    assert not [s for s in seen if "LM_BILLING_USAGE" in s.upper() and not
                s.upper().startswith("SELECT")]
    sim.add_send("a", today, 10, 10)
    runner.sync_servers([sid], actor="t")
    assert session().scalar(sa.select(Usage.messages)) == 2
    session().commit()


def test_json_shape_and_audit(eapp: Flask, sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a")))
    sid = add_server("Lists", sim)
    add_server("Dead", ("127.0.0.1", closed_port()))
    result = runner.sync_servers(None, actor="alice")
    doc = json.loads(json.dumps(result.to_json()))
    assert list(doc) == ["servers"]
    assert [s["name"] for s in doc["servers"]] == ["Dead", "Lists"]
    for s in doc["servers"]:
        assert set(s) == {"name", "ok", "version", "validated_at", "synced_at", "error",
                          "changes", "problems"}
    dead, ok = doc["servers"]
    assert dead["error"]["code"] == "REFUSED" and "nothing listens" in dead["error"]["message"]
    assert ok["error"] is None and ok["synced_at"] is not None
    assert ok["problems"] == [{"id": ok["problems"][0]["id"], "kind": "unassigned_list",
                               "object": "a", "detail": ok["problems"][0]["detail"]}]
    batch = session().get(Batch, result.batch_id)
    assert (batch.status, batch.total, batch.done, batch.failed) == ("finished", 2, 2, 1)
    audit = session().execute(sa.select(AuditEntry.actor, AuditEntry.action,
                                        AuditEntry.server_id)).all()
    assert sorted(tuple(a) for a in audit) == sorted([("alice", "sync", sid),
                                                      ("alice", "sync", sid + 1)])
    session().commit()
    with pytest.raises(LookupError):
        runner.create_batch("validate", [999], actor="alice")
    with pytest.raises(RuntimeError, match="not queued"):
        runner.run_batch(result.batch_id)


# --- fix -----------------------------------------------------------------------------------


def test_fix_selected_objects_is_idempotent(eapp: Flask, sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("keep"), lst("gone"), lst("grow", members=1), logging="no"))
    sid = add_server("Lists", sim)
    runner.sync_servers([sid], actor="t")
    sim.remove_list("gone")
    sim.set_members("grow", 2)
    sim.add_list("new1")
    sim.add_list("new2")
    runner.validate_servers([sid], actor="t")
    ids = {f"{kind}:{name}": pid for kind, name, pid in session().execute(
        sa.select(Problem.kind, Problem.object_name, Problem.id)
        .where(Problem.status == "open"))}
    session().commit()
    chosen = [ids["missing_list:gone"], ids["changed_list:grow"], ids["unknown_list:new1"],
              ids["unassigned_list:keep"], ids["logging_off:Lists"]]
    result = fixes.fix_problems(chosen, actor="bob")
    outcome = {i.kind: i.outcome for i in result.items}
    assert outcome == {"missing_list": "fixed", "changed_list": "fixed", "unknown_list": "fixed",
                       "unassigned_list": "not_fixable", "logging_off": "needs_confirmation"}
    assert result.exit_code == 1
    unassigned = next(i for i in result.items if i.kind == "unassigned_list")
    assert unassigned.action is not None and "Assign an owner" in unassigned.action
    assert result.changes == {"Lists": {"created": 1, "updated": 1, "removed": 1}}
    lists = billing_lists(sid)
    assert "new1" in lists and "new2" not in lists  # only the chosen objects
    assert lists["gone"][2] == "removed" and lists["grow"][1] == 2
    statuses = dict(session().execute(sa.select(Problem.id, Problem.status)).all())
    session().commit()
    assert statuses[ids["missing_list:gone"]] == "fixed"
    assert statuses[ids["unknown_list:new2"]] == "open"
    assert ("unassigned_list", "new1") in open_problems(sid)
    assert sim.dataset.logging_mode == "no"  # never switched without being asked

    with statements() as seen:
        again = fixes.fix_problems(chosen[:3], actor="bob")
    assert {i.outcome for i in again.items} == {"already_fixed"}
    assert not [s for s in seen if not s.upper().startswith(("SELECT", "BEGIN", "COMMIT"))]

    logging_fix = fixes.fix_problems([ids["logging_off:Lists"]], actor="bob",
                                      enable_logging=True)
    assert [i.outcome for i in logging_fix.items] == ["fixed"]
    assert sim.dataset.logging_mode == "lists"
    assert session().get(Server, sid).status == "ok"
    actions = set(session().scalars(sa.select(AuditEntry.action)))
    session().commit()
    assert {"fix", "enable_logging", "sync", "validate"} <= actions


def test_fix_reports_unreachable_server(eapp: Flask, sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a")))
    sid = add_server("Lists", sim)
    runner.validate_servers([sid], actor="t")
    pid = session().scalar(sa.select(Problem.id).where(Problem.kind == "unknown_list"))
    session().commit()
    sim.stop()
    result = fixes.fix_problems([pid, 424242], actor="t")
    assert [i.outcome for i in result.items] == ["failed", "not_found"]
    assert "nothing listens" in result.items[0].message
    assert result.exit_code == 2 and result.errors
    assert billing_lists(sid) == {}


# --- the gate ------------------------------------------------------------------------------


def test_gate_refuses_until_validated_and_synced(eapp: Flask,
                                                 sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a")))
    sid = add_server("Lists", sim)
    group = make_group()
    with pytest.raises(assignment.GateError, match="Validate and sync server 'Lists' first: it "
                       "was never validated"):
        assignment.assign(group, server_id=sid, whole_server=True, actor="t")
    runner.validate_servers([sid], actor="t")
    with pytest.raises(assignment.GateError, match=r"3 open drift problem\(s\)"):
        assignment.assign(group, server_id=sid, whole_server=True, actor="t")
    runner.sync_servers([sid], actor="t")
    list_id = session().scalar(sa.select(MailingList.id))
    session().commit()
    assert assignment.assign(group, server_id=sid, list_ids=[list_id], actor="t") == 1
    assert assignment.assign(group, server_id=sid, list_ids=[list_id], actor="t") == 0
    aid = session().scalar(sa.select(Assignment.id))
    session().commit()
    sim.add_list("b")
    runner.validate_servers([sid], actor="t")
    with pytest.raises(assignment.GateError, match="unknown_list 'b'"):
        assignment.unassign([aid], actor="t")
    runner.sync_servers([sid], actor="t")
    assert assignment.unassign([aid], actor="t") == 1
    assert assignment.unassign([aid], actor="t") == 0
    end = session().scalar(sa.select(Assignment.end_date))
    session().commit()
    assert end == utcnow().date()  # kept, with its end date
    runner.validate_servers([sid], actor="t")
    assert open_problems(sid) == {("unassigned_list", "a"), ("unassigned_list", "b")}
    audit = [a for a in session().scalars(sa.select(AuditEntry.action))
             if a in ("assign", "unassign")]
    session().commit()
    assert audit == ["assign", "assign", "unassign", "unassign"]


# --- many servers --------------------------------------------------------------------------


def test_parallel_batch_isolates_dead_and_hostile_servers(fast_app: Flask,
                                                          sims: Callable[..., HostSim]) -> None:
    healthy = [add_server(f"ok{i:02d}", sims(Dataset.generate(sites=2, lists=30, seed=i)))
               for i in range(10)]
    dead = add_server("dead", ("127.0.0.1", closed_port()))
    silent = add_server("silent", sims(hostile="silent"))
    trickle = add_server("trickle", sims(hostile="trickle", hostile_on="command",
                                         trickle_interval=0.2))
    started = time.monotonic()
    result = runner.validate_servers(None, actor="t")
    elapsed = time.monotonic() - started
    # Each server has 2 s; the slow ones run alongside the others, not after them.
    assert elapsed < 4.5, elapsed
    by_id = {o.server_id: o for o in result.servers}
    assert all(by_id[i].ok for i in healthy)
    assert by_id[dead].error is not None and by_id[dead].error["code"] == "REFUSED"
    assert by_id[silent].error is not None and by_id[silent].error["code"] == "TIMEOUT"
    assert by_id[trickle].error is not None and by_id[trickle].error["code"] == "TIMEOUT"
    assert result.exit_code == 2
    statuses = dict(session().execute(sa.select(Server.id, Server.status)).all())
    batch = session().get(Batch, result.batch_id)
    assert (batch.done, batch.failed, batch.status) == (13, 3, "finished")
    session().commit()
    assert statuses[dead] == statuses[silent] == "unreachable"
    assert {statuses[i] for i in healthy} == {"ok"}


def test_one_hostile_server_among_fifty_adds_at_most_one_deadline(
        fast_app: Flask, sims: Callable[..., HostSim]) -> None:
    """Issue 14, hostile 4: 1 hostile + 49 healthy: 49 complete, and the batch takes at most
    what the 49 take alone plus one server deadline (2 s here)."""
    healthy = [add_server(f"ok{i:02d}", sims(Dataset.generate(sites=1, lists=3, seed=i)))
               for i in range(49)]
    started = time.monotonic()
    alone = runner.validate_servers(None, actor="t")
    normal = time.monotonic() - started
    assert all(o.ok for o in alone.servers)  # (exit code 1: problems found, not failures)
    silent = add_server("silent", sims(hostile="silent"))
    started = time.monotonic()
    result = runner.validate_servers(None, actor="t")
    elapsed = time.monotonic() - started
    by_id = {o.server_id: o for o in result.servers}
    assert sum(by_id[i].ok for i in healthy) == 49
    assert by_id[silent].error is not None and by_id[silent].error["code"] == "TIMEOUT"
    deadline = get_state().settings.server_deadline
    assert elapsed <= normal + deadline + 1.0, (elapsed, normal, deadline)


def test_statement_count_does_not_grow_with_lists(dbapp: Flask,
                                                  sims: Callable[..., HostSim]) -> None:
    small_id = add_server("small", sims(Dataset.generate(sites=3, lists=100, seed=1)))
    big_id = add_server("big", sims(Dataset.generate(sites=3, lists=2000, seed=1)))
    counts: dict[int, list[int]] = {}
    for sid in (small_id, big_id):
        with statements() as first:
            runner.validate_servers([sid], actor="t")
        with statements() as second:
            runner.sync_servers([sid], actor="t")
        with statements() as third:
            runner.sync_servers([sid], actor="t")
        assert list_writes(third) == []  # nothing changed: no list row written
        counts[sid] = [len(first), len(second), len(third)]
    assert counts[small_id] == counts[big_id]
    assert len(billing_lists(big_id)) == 2000


# --- names, idempotency and atomicity on every backend -----------------------------------------


def test_hostile_names_survive_and_second_sync_writes_nothing(
    dbapp: Flask, sims: Callable[..., HostSim]
) -> None:
    dataset = Dataset.generate(sites=3, lists=60, hostile_names=True, seed=3)
    sim = sims(dataset)
    sid = add_server("Lists {x} & <b>", sim)
    result = runner.validate_servers([sid], actor="t")
    objects = {p["object"] for p in result.servers[0].problems}
    assert {rec.name for rec in dataset.lists} <= objects
    runner.sync_servers([sid], actor="t")
    stored = billing_lists(sid)
    assert {n: (s, m) for n, (s, m, _st) in stored.items()} == {
        rec.name: (rec.site, rec.members) for rec in dataset.lists}
    sites = set(session().scalars(sa.select(Site.name).where(Site.server_id == sid)))
    session().commit()
    assert sites == {s.name for s in dataset.sites}
    assert "Site {Ünïcode} & <b>" in sites
    with statements() as seen:
        again = runner.sync_servers([sid], actor="t")
    assert again.servers[0].changes == {"created": 0, "updated": 0, "removed": 0}
    assert list_writes(seen) == []


def test_group_limits_count_lists_on_other_servers(dbapp: Flask,
                                                   sims: Callable[..., HostSim]) -> None:
    a = add_server("A", sims(small(lst("a1"), lst("a2", "s2"))))
    b = add_server("B", sims(small(lst("b1"), lst("b2"), lst("b3", "s2"))))
    runner.sync_servers(None, actor="t")
    group = make_group(max_lists=3, max_sites=3)
    assignment.assign(group, server_id=a, whole_server=True, actor="t")
    b1 = session().scalar(sa.select(MailingList.id).where(MailingList.name == "b1"))
    site2 = session().scalar(sa.select(Site.id).where(Site.server_id == b, Site.name == "s2"))
    session().commit()
    assignment.assign(group, server_id=b, list_ids=[b1], site_ids=[site2], actor="t")

    def group_problems() -> dict[str, tuple[int, str, int | None]]:
        rows = session().execute(
            sa.select(Problem.kind, Problem.data, Problem.status, Problem.server_id)
            .where(Problem.group_id == group)).all()
        session().commit()
        return {r.kind: (r.data["count"], r.status, r.server_id) for r in rows}

    # On A: a1, a2 (whole server); on B: b1 (the list) and b3 (through site s2); b2 has no
    # owner. 4 lists on 4 sites (s1, s2 of each server), the plan permits 3 of each.
    runner.validate_servers([a], actor="t")
    assert group_problems() == {"over_max_lists": (4, "open", None),
                                "over_max_sites": (4, "open", None)}
    runner.validate_servers([b], actor="t")  # judged from B: the same two problems
    assert group_problems() == {"over_max_lists": (4, "open", None),
                                "over_max_sites": (4, "open", None)}
    (site_assignment,) = session().scalars(
        sa.select(Assignment.id).where(Assignment.site_id == site2))
    session().commit()
    assignment.unassign([site_assignment], actor="t")
    runner.validate_servers([a], actor="t")
    assert group_problems() == {"over_max_lists": (4, "resolved", None),
                                "over_max_sites": (4, "resolved", None)}


def test_crash_mid_sync_leaves_each_server_wholly_old_or_new(
    dbapp: Flask, sims: Callable[..., HostSim]
) -> None:
    sim_a = sims(small(lst("a1"), lst("a2")))
    sim_b = sims(small(lst("b1"), lst("b2")))
    a = add_server("A", sim_a)
    b = add_server("B", sim_b)
    runner.sync_servers(None, actor="t")
    old_b = billing_lists(b)
    old_problems_b = open_problems(b)
    synced_b = session().get(Server, b).synced_at
    session().commit()
    sim_a.add_list("a3")
    sim_a.set_members("a1", 99)
    sim_b.add_list("b3")  # inserted first ...
    sim_b.remove_list("b2")  # ... then the crash hits while marking b2 removed

    def crash(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        sets = parameters if isinstance(parameters, list) else [parameters]
        values = [v for ps in sets for v in (ps.values() if isinstance(ps, dict) else ps)]
        if statement.startswith("UPDATE lm_billing_list") and "removed" in values:
            raise RuntimeError("simulated crash in the middle of a sync")

    engine = get_state().db.engine
    sa.event.listen(engine, "before_cursor_execute", crash)
    try:
        result = runner.sync_servers(None, actor="t")
    finally:
        sa.event.remove(engine, "before_cursor_execute", crash)
    out = {o.name: o for o in result.servers}
    assert out["A"].ok and out["A"].changes == {"created": 1, "updated": 1, "removed": 0}
    assert not out["B"].ok and out["B"].error is not None
    assert out["B"].error["code"] == "STORE" and "nothing was changed" in out["B"].error["message"]
    lists_a = billing_lists(a)
    assert set(lists_a) == {"a1", "a2", "a3"} and lists_a["a1"][1] == 99  # wholly new
    assert billing_lists(b) == old_b  # wholly old: b3 not inserted, b2 still active
    assert open_problems(b) == old_problems_b
    assert session().get(Server, b).synced_at == synced_b
    session().commit()
    # The failed run gave its lease back: the next sync applies B in full.
    again = runner.sync_servers([b], actor="t")
    assert again.servers[0].changes == {"created": 1, "updated": 0, "removed": 1}
    assert billing_lists(b)["b2"][2] == "removed" and "b3" in billing_lists(b)


# --- the lease across processes ----------------------------------------------------------------

HOLDER = """
import os, signal, sys
import sqlalchemy as sa
from sqlalchemy.orm import Session
from lm_billing_plugin.models import utcnow
from lm_billing_plugin.engine.leases import claim_server, release_server
url, server_id, lease, run_id, mode = sys.argv[1:]
engine = sa.create_engine(url)
owner = f"holder:{os.getpid()}"
with Session(engine) as session:
    ok = claim_server(session, int(server_id), owner, float(lease), utcnow(),
                      run_id=int(run_id) or None)
    print("claimed" if ok else "busy", flush=True)
    if mode == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()  # hold the lease until the test closes stdin
    release_server(session, int(server_id), owner)
engine.dispose()
"""


def _holder(db_url: str, server_id: int, lease: float, run_id: int, mode: str
            ) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, db_url, str(server_id), str(lease), str(run_id), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_lease_across_processes(dbapp: Flask, db_url: str, sims: Callable[..., HostSim]) -> None:
    sid = add_server("Lists", sims(small(lst("a"))))
    holder = _holder(db_url, sid, 60, 0, "hold")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "claimed"
        result = runner.validate_servers([sid], actor="t")
        out = result.servers[0]
        assert (out.ok, out.skipped_reason, result.exit_code) == (False, "already running", 1)
        run = session().get(Run, out.run_id)
        assert run.status == "skipped" and "already running" in run.error_message
        assert f"holder:{holder.pid}" in run.error_message
        assert session().get(Server, sid).validated_at is None  # nothing was done
        session().commit()
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        assert holder.wait(20) == 0
        holder.stdout.close()
    assert runner.validate_servers([sid], actor="t").servers[0].ok  # released: free again

    # A process that dies holding the lease: the next claimant, after expiry, marks its run
    # interrupted and goes ahead.
    crashed = Run(server_id=sid, kind="sync", status="running", started_at=utcnow())
    session().add(crashed)
    session().commit()
    crashed_id = crashed.id
    dying = _holder(db_url, sid, 1.5, crashed_id, "crash")
    assert dying.stdout is not None and dying.stdout.readline().strip() == "claimed"
    claimed_at = time.monotonic()
    assert dying.wait(20) == -9
    for pipe in (dying.stdin, dying.stdout):
        assert pipe is not None
        pipe.close()
    # Until the lease expires the dead process still "holds" the server.
    skipped = runner.validate_servers([sid], actor="t").servers[0]
    assert skipped.skipped_reason == "already running"
    assert session().get(Run, crashed_id).status == "running"
    session().commit()
    time.sleep(max(0.0, claimed_at + 1.6 - time.monotonic()))
    result = runner.validate_servers([sid], actor="t")
    assert result.servers[0].ok, result.to_json()
    run = session().get(Run, crashed_id)
    assert run.status == "interrupted" and run.finished_at is not None
    assert "lease expired" in (run.error_message or "")
    session().commit()


def test_expired_leases_are_swept(eapp: Flask, sims: Callable[..., HostSim]) -> None:
    from lm_billing_plugin.engine.leases import claim_server, expire_leases

    sid = add_server("Lists", sims(small(lst("a"))))
    batch = Batch(kind="validate", status="running", total=1)
    session().add(batch)
    session().flush()
    run = Run(server_id=sid, batch_id=batch.id, kind="validate", status="running",
              started_at=utcnow())
    session().add(run)
    session().commit()
    now = utcnow()
    assert claim_server(session(), sid, "me", 10, now, run_id=run.id)
    assert not claim_server(session(), sid, "other", 10, now)
    assert expire_leases(session(), now) == 0
    assert expire_leases(session(), now + timedelta(seconds=11)) == 1
    server = session().get(Server, sid)
    assert server.lease_owner is None and server.status == "interrupted"
    assert session().get(Run, run.id).status == "interrupted"
    assert session().get(Batch, batch.id).status == "interrupted"  # its process is gone
    session().commit()


def test_failure_statuses_and_messages(eapp: Flask, sims: Callable[..., HostSim]) -> None:
    denied = add_server("Denied", sims(small(lst("a")), allowed_hosts=["192.0.2.1"]))
    broken = add_server("Broken", sims(small(lst("a"))))
    session().get(Server, broken).password_encrypted = "not-a-fernet-token"
    session().commit()
    result = runner.validate_servers([denied, broken], actor="t")
    out = {o.name: o for o in result.servers}
    assert out["Denied"].error is not None and out["Denied"].error["code"] == "HOST_DENIED"
    assert "TCLPORT Hosts" in out["Denied"].error["message"]
    assert out["Broken"].error is not None and out["Broken"].error["code"] == "PASSWORD"
    assert "enter the password again" in out["Broken"].error["message"]
    statuses = dict(session().execute(sa.select(Server.name, Server.status)).all())
    session().commit()
    assert statuses == {"Denied": "host_denied", "Broken": "error"}
    assert result.exit_code == 2
    # Each failed run's message names its server (the batch page lists runs of many).
    for o in result.servers:
        run = session().get(Run, o.run_id)
        assert run.error_message.startswith(f"server '{o.name}': "), run.error_message
    session().commit()
    # Assignments name what is wrong with the request itself.
    ok = add_server("Ok", sims(small(lst("a"))))
    runner.sync_servers([ok], actor="t")
    group = make_group()
    with pytest.raises(assignment.AssignmentError, match="not on this server"):
        assignment.assign(group, server_id=ok, list_ids=[999], actor="t")
    with pytest.raises(assignment.AssignmentError, match="no billing group"):
        assignment.assign(999, server_id=ok, whole_server=True, actor="t")
    with pytest.raises(assignment.AssignmentError, match="choose lists"):
        assignment.assign(group, server_id=ok, actor="t")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_no_transaction_is_open_during_network_io(dbapp: Flask, db_url: str,
                                                  sims: Callable[..., HostSim]) -> None:
    slow = sims(small(lst("a"), lst("b")), latency=0.15)
    sid = add_server("Slow", slow)
    probe = sa.create_engine(db_url)
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        with probe.connect() as conn:
            while not done.is_set():
                # Only a look made while one and the same reply was held back counts: the
                # runner was waiting on the server for all of it (a look that overlaps the
                # end of the talk and the store after it proves nothing either way).
                before = slow.pausing_reply
                if before is not None:
                    states = conn.execute(sa.text(
                        "SELECT state FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
                    )).scalars().all()
                    conn.commit()
                    if slow.pausing_reply == before:
                        seen.extend(["checked", *states])
                time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        runner.sync_servers([sid], actor="t")
        fixes.fix_problems([], actor="t")
    finally:
        done.set()
        watcher.join(10)
        probe.dispose()
    assert "checked" in seen  # the probe did look while the server was being read
    assert [s for s in seen if s != "checked"] == []


# --- a batch whose process died; conflicts on MariaDB; races on problem rows -------------------


def _backdate_batch(batch_id: int, seconds: float) -> None:
    """Make everything of a batch look ``seconds`` old (as if its process stopped then)."""
    past = utcnow() - timedelta(seconds=seconds)
    session().execute(sa.update(Batch).where(Batch.id == batch_id).values(started_at=past))
    session().execute(sa.update(Run).where(Run.batch_id == batch_id).values(started_at=past))
    session().commit()


def test_batch_of_a_dead_process_is_closed_by_the_next_batch(
        dbapp: Flask, sims: Callable[..., HostSim]) -> None:
    lease = get_state().settings.lease_seconds
    sim = sims(small(lst("a")))
    ids = [add_server(name, sim) for name in ("Alpha", "Beta", "Gamma")]
    # A batch whose process died after claiming Alpha: Beta and Gamma were never started.
    dead = runner.create_batch("validate", ids, actor="t")
    session().execute(sa.update(Batch).where(Batch.id == dead).values(status="running"))
    session().execute(sa.update(Run).where(Run.batch_id == dead, Run.server_id == ids[0])
                      .values(status="running"))
    session().commit()
    _backdate_batch(dead, lease + 5)
    # A batch that is slow but alive: one of its runs finished a moment ago.
    alive = runner.create_batch("validate", ids, actor="t")
    session().execute(sa.update(Batch).where(Batch.id == alive).values(status="running"))
    session().commit()
    _backdate_batch(alive, lease + 5)
    session().execute(sa.update(Run).where(Run.batch_id == alive, Run.server_id == ids[0])
                      .values(status="ok", finished_at=utcnow() - timedelta(seconds=1)))
    session().commit()

    result = runner.validate_servers([ids[2]], actor="t")  # the next batch sweeps first
    assert result.servers[0].ok, result.to_json()
    batches = dict(session().execute(
        sa.select(Batch.id, Batch.status).where(Batch.id.in_([dead, alive]))).all())
    assert batches == {dead: "interrupted", alive: "running"}
    runs = session().execute(
        sa.select(Server.name, Run.status, Run.error_code, Run.error_message, Run.finished_at)
        .join(Server, Server.id == Run.server_id).where(Run.batch_id == dead)
        .order_by(Server.name)).all()
    session().commit()
    assert [(r.name, r.status, r.error_code) for r in runs] == [
        ("Alpha", "interrupted", "INTERRUPTED"), ("Beta", "interrupted", "INTERRUPTED"),
        ("Gamma", "interrupted", "INTERRUPTED")]
    for r in runs:
        assert r.finished_at is not None
        assert (r.error_message or "").startswith(f"server '{r.name}': ")
        assert "run it again" in (r.error_message or "")
    # Nothing left to sweep: a second sweep changes nothing.
    from lm_billing_plugin.engine.leases import sweep_stale_batches

    assert sweep_stale_batches(session(), utcnow(), lease) == 0


def test_constraint_failures_count_as_conflicts_on_every_backend(
        dbapp: Flask, sims: Callable[..., HostSim]) -> None:
    """PyMySQL raises a failed CHECK as OperationalError (4025): still a conflict."""
    from lm_billing_plugin.engine import servers as registry
    from lm_billing_plugin.engine.store import is_conflict

    sid = add_server("Lists", sims(small(lst("a"))))
    group = make_group()
    s = session()
    # object_type "list" without a list breaks the CHECK constraint.
    s.add(Assignment(group_id=group, object_type="list", server_id=sid,
                     start_date=date(2026, 1, 1)))
    with pytest.raises(sa.exc.DBAPIError) as check:
        s.commit()
    s.rollback()
    assert is_conflict(check.value), repr(check.value)
    if s.get_bind().dialect.name in ("mysql", "mariadb"):
        # The case this guards: IntegrityError alone would not catch it there.
        assert isinstance(check.value, sa.exc.OperationalError), repr(check.value)
    with pytest.raises(sa.exc.DBAPIError) as missing:
        s.execute(sa.text("SELECT nothing FROM lm_billing_no_such_table"))
    s.rollback()
    assert not is_conflict(missing.value)
    # Two requests racing past the duplicate-name check: the unique index decides, and the
    # loser gets the form's message (the race is staged by skipping the check).
    s.add(Server(name="Lists", host="other.example.com", port=2021))
    with pytest.raises(registry.ServerFieldError) as dup:
        registry._commit_or_field_error(s, "Lists")
    assert "already exists; choose another name" in dup.value.errors["name"]
    assert s.execute(sa.select(sa.func.count()).select_from(Server)).scalar_one() == 1
    s.commit()


@contextmanager
def _concurrent_problem_rows(db_url: str, *, times: int) -> Iterator[list[str]]:
    """Act as a second process that records the same problems a moment before this one.

    On this process's first ``times`` INSERTs of problem rows, the other process commits the
    first of those rows (same fingerprint) through its own connection, just before the INSERT
    runs. Its row belongs to no server, so a retry finds it again only when it is group-wide.
    """
    from lm_billing_plugin.engine.store import PROBLEM

    other = sa.create_engine(db_url)
    engine = get_state().db.engine
    struck: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        if len(struck) >= times or not statement.startswith("INSERT INTO lm_billing_problem"):
            return
        first = context.compiled_parameters[0]
        row = {key: first[key] for key in ("fingerprint", "group_id", "kind", "object_type",
                                           "object_name", "detail", "data", "status",
                                           "first_seen_at", "last_seen_at")}
        with other.begin() as c:
            c.execute(PROBLEM.insert(), {**row, "server_id": None})
        struck.append(row["kind"])

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield struck
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
        other.dispose()


# SQLite lets one writer at a time into the database, so two processes cannot race there.
@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_race_on_problem_rows_retries_once_then_says_what_to_do(
        dbapp: Flask, db_url: str, sims: Callable[..., HostSim]) -> None:
    sid = add_server("Lists", sims(small(lst("a"), lst("b"))))
    assert runner.sync_servers([sid], actor="t").servers[0].ok
    group = make_group(active=False)  # an inactive customer with lists: a group-wide problem
    assignment.assign(group, server_id=sid, whole_server=True, actor="t")
    # The assignment judged the billing rules already; the race is the validation's insert.
    session().execute(sa.delete(Problem))
    session().commit()
    # Once: the retry finds the other process's row and keeps it (one row, ours now).
    with _concurrent_problem_rows(db_url, times=1) as struck:
        out = runner.validate_servers([sid], actor="t").servers[0]
    assert struck == ["inactive_customer_has_lists"]
    assert out.ok, out.to_json()
    rows = session().execute(sa.select(Problem.status, Problem.last_run_id).where(
        Problem.kind == "inactive_customer_has_lists")).all()
    session().commit()
    assert [tuple(r) for r in rows] == [("open", out.run_id)]
    # Twice: the other process's row is outside this server's scope here (it belongs to no
    # server), so the retry clashes with it again; the run fails and says what to do.
    session().execute(sa.update(Customer).values(is_active=True))
    session().commit()
    assignment.unassign([a for a in session().execute(sa.select(Assignment.id)).scalars()],
                    actor="t")
    # (The unassignment reopened the lists' problems itself: clear them for the race.)
    session().execute(sa.delete(Problem))
    session().commit()
    with _concurrent_problem_rows(db_url, times=1) as struck:
        result = runner.validate_servers([sid], actor="t")
    out = result.servers[0]
    assert struck == ["unassigned_list"] and not out.ok and result.exit_code == 2
    assert out.error is not None and out.error["code"] == "STORE"
    assert "Validate it again when the other run has finished" in out.error["message"]
    run = session().get(Run, out.run_id)
    assert run.status == "failed"
    assert run.error_message.startswith("server 'Lists': another run was storing")
    server = session().get(Server, sid)
    assert server.lease_owner is None  # released: the next validate may go ahead
    session().commit()
    # (A real second process would have recorded the row on this server, in scope.)
    session().execute(sa.delete(Problem).where(Problem.server_id.is_(None)))
    session().commit()
    assert runner.validate_servers([sid], actor="t").servers[0].ok


def test_run_that_lost_its_lease_stores_nothing_and_says_so(
        make_app: Callable[..., Flask], db_url: str, sims: Callable[..., HostSim]) -> None:
    # The takeover is staged between the store's BEGIN and its first statement. With the
    # plugin's SQLite tuning no other writer can come in there (BEGIN IMMEDIATE holds the
    # lock), so on SQLite it is staged with the tuning off.
    with make_app(db_url, LM_BILLING_SQLITE_TUNING=False, **FAST).app_context():
        _lost_lease(db_url, sims)


def _lost_lease(db_url: str, sims: Callable[..., HostSim]) -> None:
    sid = add_server("Lists", sims(small(lst("a"))))
    other = sa.create_engine(db_url)
    engine = get_state().db.engine

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        # hold_lease (the write transaction's first statement): another run took over.
        if (statement.startswith("UPDATE lm_billing_server SET lease_owner")
                and "lease_expires_at" not in statement):
            with other.begin() as c:
                c.execute(sa.update(Server).where(Server.id == sid)
                          .values(lease_owner="thief:1:x"))

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        out = runner.sync_servers([sid], actor="t").servers[0]
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
        other.dispose()
    assert not out.ok and out.error is not None and out.error["code"] == "LEASE_LOST"
    assert "LM_BILLING_LEASE_SECONDS" in out.error["message"]
    assert "Sync it again" in out.error["message"]
    server = session().get(Server, sid)
    # Nothing stored, and the server's state is the new holder's business.
    assert (server.validated_at, server.status, server.lease_owner) == (
        None, "unchecked", "thief:1:x")
    assert billing_lists(sid) == {}
    session().commit()


def test_batch_that_stops_midway_ends_its_runs_and_frees_its_servers(
        dbapp: Flask, sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a")))
    ids = [add_server(name, sim) for name in ("Alpha", "Beta")]
    engine = get_state().db.engine
    claims: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        # The second server's start fails (a bug, or the database going away mid-batch)
        # while the first one is being read.
        if statement.startswith("UPDATE lm_billing_run SET status") and "pid" in statement:
            claims.append(statement)
            if len(claims) == 2:
                raise RuntimeError("boom")

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            runner.validate_servers(ids, actor="t")
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
    batch = session().execute(sa.select(Batch).order_by(Batch.id.desc())).scalars().first()
    assert batch is not None and batch.status == "failed" and batch.finished_at is not None
    runs = dict(session().execute(
        sa.select(Server.name, Run).join(Server, Server.id == Run.server_id)
        .where(Run.batch_id == batch.id)).all())
    for name in ("Alpha", "Beta"):  # one was running, one never started
        assert (runs[name].status, runs[name].error_code) == ("failed", "BATCH_FAILED")
        assert runs[name].error_message.startswith(f"server '{name}': the batch stopped")
        assert "run it again" in runs[name].error_message
    owners = list(session().execute(sa.select(Server.lease_owner)).scalars())
    session().commit()
    assert owners == [None, None]
    assert all(o.ok for o in runner.validate_servers(ids, actor="t").servers)


class _Boaster(HostSim):
    """A peer whose every `lists` page is valid but announces 10⁸ lists in all."""

    def handle(self, logical: str, args: Any) -> str:
        body = super().handle(logical, args)
        if logical != "lists":
            return body
        from lm_billing_plugin.tclport.codec import decode_dict, encode_dict

        return encode_dict({**decode_dict(body), "total": str(100_000_000)})


class _Padder(HostSim):
    """A peer under the list limit whose every `lists` page is valid but swollen: each list's
    description is 256 KiB, so a page of 4 lists is about 1 MiB (under any reply limit)."""

    def handle(self, logical: str, args: Any) -> str:
        body = super().handle(logical, args)
        if logical != "lists":
            return body
        from lm_billing_plugin.tclport.codec import (
            decode_dict,
            decode_list,
            encode_dict,
            encode_list,
        )

        page = decode_dict(body)
        items = [encode_dict({**decode_dict(item), "descr": "x" * 256 * 1024})
                 for item in decode_list(page["items"])]
        return encode_dict({**page, "items": encode_list(items)})


def test_one_read_takes_at_most_max_read_bytes_whatever_the_pages(
        make_app: Callable[..., Flask]) -> None:
    """Pages each under LM_BILLING_MAX_REPLY_BYTES still add up: the read stops at
    LM_BILLING_MAX_READ_BYTES before the reply that would pass it, names the server and the
    setting, stores nothing, and what it held stayed within the budget."""
    import tracemalloc

    budget = 6 * 1024 * 1024
    app = make_app(**{**FAST, "LM_BILLING_SERVER_DEADLINE": 30.0,
                      "LM_BILLING_OPERATION_TIMEOUT": 30.0},
                   LM_BILLING_MAX_READ_BYTES=budget, LM_BILLING_LIST_PAGE_SIZE=4)
    sim = _Padder(Dataset.generate(sites=1, lists=200)).start()  # ~50 MiB if all were read
    try:
        with app.app_context():
            sid = add_server("padder", sim)
            tracemalloc.start()
            try:
                result = runner.validate_servers([sid], actor="test")
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            (outcome,) = result.servers
            assert not outcome.ok and result.exit_code == 2
            assert outcome.error is not None and outcome.error["code"] == "OVERSIZED"
            message = outcome.error["message"]
            assert outcome.name == "padder" and "LM_BILLING_MAX_READ_BYTES" in message
            assert "(6.0 MiB) one read of a server may take" in message, message
            assert "raise it if the server really holds that much" in message
            # Five pages of ~1 MiB fit, the sixth would pass 6 MiB: asked, refused unread.
            assert sim.requests["lists"] == 6
            assert session().scalar(sa.select(sa.func.count()).select_from(MailingList)) == 0
            assert open_problems(sid) == set()
            # The pages held as text and as records: a few times the budget, not 50 MiB.
            assert peak < 4 * budget, peak
    finally:
        sim.stop()


def test_a_server_within_the_read_budget_is_read_whole(make_app: Callable[..., Flask]) -> None:
    app = make_app(**FAST, LM_BILLING_MAX_READ_BYTES=64 * 1024, LM_BILLING_LIST_PAGE_SIZE=10)
    sim = HostSim(Dataset.generate(sites=2, lists=30)).start()  # a few KiB in all
    try:
        with app.app_context():
            sid = add_server("small", sim)
            (outcome,) = runner.validate_servers([sid], actor="test").servers
            assert outcome.ok, outcome.error
            assert sim.requests["lists"] == 3
    finally:
        sim.stop()


def test_server_announcing_more_lists_than_the_limit_is_refused_unread(
        make_app: Callable[..., Flask]) -> None:
    app = make_app(**FAST, LM_BILLING_MAX_LISTS_PER_SERVER=1000, LM_BILLING_LIST_PAGE_SIZE=10)
    sim = _Boaster(Dataset.generate(sites=2, lists=30)).start()
    try:
        with app.app_context():
            sid = add_server("boaster", sim)
            result = runner.validate_servers([sid], actor="test")
            (outcome,) = result.servers
            assert not outcome.ok and result.exit_code == 2
            assert outcome.error is not None and outcome.error["code"] == "TOO_MANY_LISTS"
            message = outcome.error["message"]
            assert "boaster" in message and "100,000,000" in message
            assert "LM_BILLING_MAX_LISTS_PER_SERVER" in message
            assert open_problems(sid) == set()
            # Refused on the first page: nothing more of the announced lists was asked for.
            assert sim.requests["lists"] == 1
    finally:
        sim.stop()
