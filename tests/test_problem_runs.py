"""Speed (issue 15): "last seen" per run, not per row, and reusing an unchanged server's result.

A run writes only new, changed and closed problems; a server whose inventory, billing snapshot
and problem rows are as its last confirming run left them skips the comparison. Every change
on either side, and every hand on the problem rows, must still be seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

from lm_billing_plugin.catalog import assignment
from lm_billing_plugin.engine import batches as runner
from lm_billing_plugin.engine import servers
from lm_billing_plugin.models import Customer, Problem, ProblemRun
from lm_billing_plugin.testing.simulator import HostSim

__all__ = ["dbapp", "eapp", "sims"]


def problem_writes(seen: list[str]) -> list[str]:
    return [s for s in seen if s.upper().startswith(("INSERT INTO LM_BILLING_PROBLEM ",
                                                     "UPDATE LM_BILLING_PROBLEM "))]


def rows() -> list[Any]:
    out = session().execute(
        sa.select(Problem.id, Problem.kind, Problem.object_name, Problem.status,
                  Problem.last_run_id, Problem.last_seen_at).order_by(Problem.id)).all()
    session().commit()
    return out


def test_unchanged_revalidate_writes_no_problem_row_and_moves_last_seen(
        dbapp: Flask, sims: Callable[..., HostSim]) -> None:
    sid = add_server("Lists", sims(small(lst("a"), lst("b"))))
    runner.sync_servers([sid], actor="t")
    before = rows()
    assert {(r.kind, r.object_name) for r in before} >= {("unassigned_list", "a")}
    with statements() as seen:
        out = runner.validate_servers([sid], actor="t").servers[0]
    assert out.ok and problem_writes(seen) == []
    after = [r for r in rows() if r.status == "open"]
    assert [r.id for r in after] == [r.id for r in before if r.status == "open"]
    assert {r.last_run_id for r in after} == {out.run_id}
    assert all(r.last_seen_at == out.validated_at for r in after)
    assert {p["id"] for p in out.problems} == {r.id for r in after}
    pointer = session().get(ProblemRun, sid)
    assert pointer is not None and pointer.run_id == out.run_id
    session().commit()


def test_closed_problem_keeps_its_last_sighting(eapp: Flask,
                                                sims: Callable[..., HostSim]) -> None:
    sid = add_server("Lists", sims(small(lst("a"))))
    runner.sync_servers([sid], actor="t")
    seen_by = runner.validate_servers([sid], actor="t").servers[0]
    assignment.assign(make_group(), server_id=sid, whole_server=True, actor="t")
    runner.validate_servers([sid], actor="t")
    (row,) = [r for r in rows() if r.kind == "unassigned_list"]
    assert row.status == "resolved"
    assert (row.last_run_id, row.last_seen_at) == (seen_by.run_id, seen_by.validated_at)


def test_billing_change_is_seen_although_the_server_is_unchanged(
        eapp: Flask, sims: Callable[..., HostSim]) -> None:
    sid = add_server("Lists", sims(small(lst("a"), lst("b"))))
    runner.sync_servers([sid], actor="t")
    runner.validate_servers([sid], actor="t")
    group = make_group(active=False)
    assignment.assign(group, server_id=sid, whole_server=True, actor="t")
    runner.validate_servers([sid], actor="t")
    assert open_problems(sid) == {("inactive_customer_has_lists", "Acme")}
    # A change billing's own pages would make, written behind the engine's back.
    session().execute(sa.update(Customer).values(is_active=True))
    session().commit()
    runner.validate_servers([sid], actor="t")
    assert open_problems(sid) == set()


def test_hands_on_problem_rows_are_judged_again(eapp: Flask,
                                                sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a"), logging="no"))
    sid = add_server("Lists", sim)
    runner.sync_servers([sid], actor="t")
    runner.validate_servers([sid], actor="t")
    assert ("logging_off", "Lists") in open_problems(sid)
    # Closed by hand (as enable-logging does) while logging is still off: found again.
    session().execute(sa.update(Problem).where(Problem.kind == "logging_off")
                      .values(status="fixed"))
    session().commit()
    out = runner.validate_servers([sid], actor="t").servers[0]
    assert ("logging_off", "Lists") in open_problems(sid) and out.new_problems == 1
    # Deleted rows come back too.
    session().execute(sa.delete(Problem))
    session().commit()
    runner.validate_servers([sid], actor="t")
    assert open_problems(sid) == {("logging_off", "Lists"), ("unassigned_list", "a")}
    assert servers.get_server(sid).status == "logging_off"
    session().commit()


def test_validate_with_drift_may_be_reused_but_a_sync_still_applies_it(
        eapp: Flask, sims: Callable[..., HostSim]) -> None:
    sim = sims(small(lst("a")))
    sid = add_server("Lists", sim)
    runner.sync_servers([sid], actor="t")
    sim.set_members("a", 99)
    first = runner.validate_servers([sid], actor="t").servers[0]
    with statements() as seen:
        again = runner.validate_servers([sid], actor="t").servers[0]
    assert problem_writes(seen) == []
    assert again.problems == first.problems and ("changed_list", "a") in open_problems(sid)
    synced = runner.sync_servers([sid], actor="t").servers[0]
    assert synced.changes == {"created": 0, "updated": 1, "removed": 0}
    assert open_problems(sid) == {("unassigned_list", "a")}
