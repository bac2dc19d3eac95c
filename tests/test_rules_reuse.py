"""Speed (issue 15): a validate of a server that changed while billing did not (the 1 % case)
reuses the billing rules' result of the last confirming run and compares only the server's
side. The rules read billing's snapshot alone, so that is safe exactly when the snapshot is
the one that run judged and its rule problems are still as it left them; any other change —
billing's, or a hand on the rule rows — must be judged again in full."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from flask import Flask
from test_engine import (  # the engine tests' fixtures and helpers
    add_server,
    dbapp,
    eapp,
    lst,
    make_group,
    open_problems,
    session,
    sims,
    small,
    statements,
)
from test_problem_runs import problem_writes

from lm_billing_plugin.catalog import assignment
from lm_billing_plugin.engine import batches as runner
from lm_billing_plugin.models import Problem
from lm_billing_plugin.testing.simulator import HostSim

__all__ = ["dbapp", "eapp", "sims"]


def _rule_rows_read(seen: list[str]) -> bool:
    """Whether the run's comparison read the server's problems (record_problems' query: the
    one that reads each row's data) of every kind, not only the server-side kinds."""
    return any(s.upper().startswith("SELECT") and "CAST(LM_BILLING_PROBLEM.DATA" in s.upper()
               and "LM_BILLING_PROBLEM.KIND IN" not in s.upper() for s in seen)


def test_a_changed_server_keeps_its_rule_problems_and_reads_only_the_drift_rows(
        dbapp: Flask, sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a"), lst("b"), lst("c")))
    sid = add_server("Lists", sim)
    runner.sync_servers([sid], actor="t")
    first = runner.validate_servers([sid], actor="t").servers[0]
    unassigned = {p["object"]: p["id"] for p in first.problems}
    assert set(unassigned) == {"a", "b", "c"}
    sim.set_members("b", 77)
    with statements() as seen:
        out = runner.validate_servers([sid], actor="t").servers[0]
    assert out.ok and out.new_problems == 1
    assert not _rule_rows_read(seen)
    writes = problem_writes(seen)
    assert len(writes) == 1 and writes[0].upper().startswith("INSERT")
    by_kind = {(p["kind"], p["object"]): p["id"] for p in out.problems}
    assert {k: v for k, v in by_kind.items() if k[0] == "unassigned_list"} == {
        ("unassigned_list", name): pid for name, pid in unassigned.items()}
    assert ("changed_list", "b") in by_kind
    # Every open problem, kept or new, was seen by this run.
    rows = session().execute(sa.select(Problem.last_run_id).where(Problem.status == "open"))
    assert {r for (r,) in rows} == {out.run_id}
    session().commit()
    # Changed again: the same drift row, refreshed; the rule rows still untouched.
    sim.set_members("b", 78)
    again = runner.validate_servers([sid], actor="t").servers[0]
    assert {(p["kind"], p["object"]): p["id"] for p in again.problems} == by_kind
    (detail,) = [p["detail"] for p in again.problems if p["kind"] == "changed_list"]
    assert "78" in detail
    # A sync applies the drift; its rules are judged in full on billing after it.
    synced = runner.sync_servers([sid], actor="t").servers[0]
    assert synced.changes == {"created": 0, "updated": 1, "removed": 0}
    assert open_problems(sid) == {("unassigned_list", n) for n in "abc"}


def test_a_rule_problem_closed_by_hand_is_found_again_although_the_server_changed(
        eapp: Flask, sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a"), lst("b")))
    sid = add_server("Lists", sim)
    runner.sync_servers([sid], actor="t")
    runner.validate_servers([sid], actor="t")
    session().execute(sa.update(Problem).where(Problem.object_name == "a")
                      .values(status="resolved"))
    session().commit()
    sim.set_members("b", 55)
    out = runner.validate_servers([sid], actor="t").servers[0]
    assert out.new_problems == 2  # a's row reopened, b's drift new
    assert open_problems(sid) == {("unassigned_list", "a"), ("unassigned_list", "b"),
                                  ("changed_list", "b")}


def test_a_billing_change_with_a_server_change_is_judged_in_full(
        dbapp: Flask, sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a"), lst("b")))
    sid = add_server("Lists", sim)
    runner.sync_servers([sid], actor="t")
    runner.validate_servers([sid], actor="t")
    list_id = session().execute(sa.text(
        "SELECT id FROM lm_billing_list WHERE name = 'a'")).scalar_one()
    session().commit()
    assignment.assign(make_group(), server_id=sid, list_ids=[list_id], actor="t")
    sim.set_members("b", 55)
    with statements() as seen:
        runner.validate_servers([sid], actor="t")
    assert _rule_rows_read(seen)
    assert open_problems(sid) == {("unassigned_list", "b"), ("changed_list", "b")}
